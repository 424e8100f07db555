//! The node's container runtime as the agent sees it: every `--interval`, `Version`, `Status`,
//! `ImageFsInfo` and `ListImages` over CRI into the runtime metrics, and the registries of the
//! images it holds into discovery. A runtime that goes away is a metric, never a crash.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::discovery::Discovery;
use super::health::Liveness;
use super::metrics::{Metrics, RuntimeFacts};
use crate::reference::ImageRef;
use crate::route::Route;
use crate::runtime::{NodeImage, RuntimeClient};

/// Follows the runtime and keeps the discovered routes current.
pub struct NodeWatch {
    pub runtime: Option<RuntimeClient>,
    pub discovery: Discovery,
    /// `--registry`, always first.
    pub static_registries: Vec<String>,
    pub metrics: Arc<Metrics>,
    pub liveness: Arc<Liveness>,
    pub interval: Duration,
    pub max_quiet: Duration,
    /// The registries `ListImages` gave last: kept when a later call fails.
    pub held: Option<Vec<String>>,
}

/// One look at the runtime.
pub struct Refresh {
    pub up: bool,
    pub facts: RuntimeFacts,
    /// The registries of the images the node holds, sorted; `None` when `ListImages` failed.
    pub registries: Option<Vec<String>>,
    pub error: Option<String>,
}

impl NodeWatch {
    /// Looks at the runtime once (no runtime: down, nothing held).
    pub async fn refresh(&self) -> Refresh {
        let Some(client) = &self.runtime else {
            return Refresh {
                up: false,
                facts: RuntimeFacts::default(),
                registries: None,
                error: Some("no container runtime socket found".into()),
            };
        };
        let version = match client.version().await {
            Ok(version) => version,
            Err(error) => {
                return Refresh {
                    up: false,
                    facts: RuntimeFacts::default(),
                    registries: None,
                    error: Some(error.to_string()),
                };
            }
        };
        let status = client.status().await;
        let image_fs = client.image_fs_info().await;
        let images = client.list_images().await;
        let error = [
            status.as_ref().err(),
            image_fs.as_ref().err(),
            images.as_ref().err(),
        ]
        .into_iter()
        .flatten()
        .next()
        .map(ToString::to_string);
        let registries = images.as_ref().ok().map(|images| registries_of(images));
        Refresh {
            up: true,
            facts: RuntimeFacts {
                version: Some(version),
                conditions: status.map(|s| s.conditions).unwrap_or_default(),
                image_fs: image_fs.unwrap_or_default(),
                images: images.ok().map(|i| i.len()),
            },
            registries,
            error,
        }
    }

    /// Records a refresh and returns the routes it makes (`--registry` first, then the runtime's).
    pub fn apply(&mut self, refresh: &Refresh) -> Vec<Route> {
        self.metrics.record_runtime(refresh.up, &refresh.facts);
        // A failed ListImages keeps the registries it found last, rather than dropping them all.
        if let Some(registries) = &refresh.registries {
            self.held = Some(registries.clone());
        }
        let runtime = self.held.as_deref().unwrap_or_default();
        let candidates = self
            .static_registries
            .iter()
            .chain(runtime)
            .map(String::as_str);
        self.discovery.routes(candidates, &self.metrics)
    }

    /// Refreshes every interval (±10 %) until `cancel`, publishing changed routes to `targets`.
    pub async fn run(
        mut self,
        was_up: bool,
        targets: watch::Sender<Vec<Route>>,
        cancel: CancellationToken,
    ) {
        let heart = self.liveness.register("node watch", self.max_quiet);
        let mut was_up = was_up;
        let mut next = Instant::now() + jittered(self.interval);
        loop {
            heart.beat();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            let refresh = tokio::select! {
                _ = cancel.cancelled() => break,
                refresh = self.refresh() => refresh,
            };
            match (was_up, refresh.up) {
                (true, false) => warn!(error = refresh.error, "container runtime down"),
                (false, true) => info!("container runtime up"),
                _ => {}
            }
            was_up = refresh.up;
            let routes = self.apply(&refresh);
            targets.send_if_modified(|current| {
                let changed = *current != routes;
                if changed {
                    *current = routes;
                }
                changed
            });
            next = started + jittered(self.interval);
        }
    }
}

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// The registries the node's images come from, sorted and deduplicated.
pub fn registries_of(images: &[NodeImage]) -> Vec<String> {
    images
        .iter()
        .flat_map(|image| image.repo_tags.iter().chain(&image.repo_digests))
        .filter_map(|reference| ImageRef::parse(reference).ok())
        .map(|reference| reference.registry().to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(tags: &[&str], digests: &[&str]) -> NodeImage {
        NodeImage {
            id: "sha256:1".into(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
            size: 1,
            pinned: false,
        }
    }

    #[test]
    fn registries_come_from_tags_and_digests() {
        let images = [
            image(&["docker.io/library/nginx:1.27"], &[]),
            image(
                &["registry.k8s.io/pause:3.9"],
                &[
                    "registry.k8s.io/pause@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                ],
            ),
            image(
                &[],
                &[
                    "10.0.0.5:5000/app@sha256:1111111111111111111111111111111111111111111111111111111111111111",
                ],
            ),
            image(&["not a reference"], &[]),
        ];
        assert_eq!(
            registries_of(&images),
            ["10.0.0.5:5000", "docker.io", "registry.k8s.io"]
        );
    }
}
