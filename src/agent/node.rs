//! The node's container runtime as the agent sees it: every `--interval`, `Version`, `Status`,
//! `ImageFsInfo` and `ListImages` over CRI into the runtime metrics, and the registries of the
//! images it holds (with a canary each) plus those of the runtime's registry config into
//! discovery. A runtime that goes away is a metric, never a crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config_watch::ConfigFiles;
use super::discovery::Discovery;
use super::health::Liveness;
use super::metrics::{Metrics, RuntimeFacts};
use super::scheduler::WatchedRegistry;
use crate::discovery;
use crate::route::RouteConfig;
use crate::runtime::{RuntimeClient, canary_for};

/// How often the runtime's registry config files are looked at for changes.
const CONFIG_POLL: Duration = Duration::from_secs(5);

/// Follows the runtime and keeps the discovered routes current.
pub struct NodeWatch {
    pub runtime: Option<Arc<RuntimeClient>>,
    /// The runtime's registry config (files re-read at every refresh, as the runtime does).
    pub routes: RouteConfig,
    pub discovery: Discovery,
    /// `--registry`, always first.
    pub static_registries: Vec<String>,
    pub metrics: Arc<Metrics>,
    pub liveness: Arc<Liveness>,
    pub interval: Duration,
    pub max_quiet: Duration,
    /// What `ListImages` gave last: kept when a later call fails.
    pub held: Option<Held>,
    /// The last targets, with the config files' fingerprint and the images they were routed
    /// for: while neither changed, routing again would give the same (see `apply`).
    pub routed: Option<Routed>,
}

/// Targets as routed for one state of the config files and one set of held images.
pub struct Routed {
    fingerprint: u64,
    held: Held,
    targets: Vec<WatchedRegistry>,
}

/// The registries of the node's images (with how many images each), and for each a canary: an
/// image from there, by digest (the sandbox image first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub registries: BTreeMap<String, usize>,
    pub canaries: BTreeMap<String, String>,
}

/// One look at the runtime.
pub struct Refresh {
    pub up: bool,
    pub facts: RuntimeFacts,
    /// What the node holds; `None` when `ListImages` failed.
    pub held: Option<Held>,
    pub error: Option<String>,
}

impl NodeWatch {
    /// Looks at the runtime once (no runtime: down, nothing held).
    pub async fn refresh(&self) -> Refresh {
        let Some(client) = &self.runtime else {
            return Refresh {
                up: false,
                facts: RuntimeFacts::default(),
                held: None,
                error: Some("no container runtime socket found".into()),
            };
        };
        let version = match client.version().await {
            Ok(version) => version,
            Err(error) => {
                return Refresh {
                    up: false,
                    facts: RuntimeFacts::default(),
                    held: None,
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
        let sandbox = status.as_ref().ok().and_then(|s| s.sandbox_image.clone());
        let held = images.as_ref().ok().map(|images| {
            let registries = discovery::image_registries(images);
            let canaries = registries
                .keys()
                .filter_map(|r| Some((r.clone(), canary_for(images, sandbox.as_deref(), r)?)))
                .collect();
            Held {
                registries,
                canaries,
            }
        });
        Refresh {
            // Up only if no call of this look timed out: Version alone answering is not enough.
            up: client.state().await.up,
            facts: RuntimeFacts {
                version: Some(version),
                conditions: status.map(|s| s.conditions).unwrap_or_default(),
                image_fs: image_fs.unwrap_or_default(),
                images: images.ok().map(|i| i.len()),
            },
            held,
            error,
        }
    }

    /// Records a refresh and returns the targets it makes: `--registry` first, then the
    /// registries of the runtime's config files, then those of the node's images. Reading and
    /// routing the config runs off the async threads (a large config must not stall `/healthz`);
    /// `None` when that work failed, and the targets stay as they were.
    ///
    /// With the config files' `fingerprint` (their sizes and times, taken every [`CONFIG_POLL`]),
    /// the files are not routed again while it and the held images stay the same: the routes
    /// would be the same, and reading and parsing every registry's hosts.toml each interval was a
    /// visible share of the agent's CPU. A change is still seen within [`CONFIG_POLL`].
    pub async fn apply(
        &mut self,
        refresh: &Refresh,
        fingerprint: Option<u64>,
    ) -> Option<Vec<WatchedRegistry>> {
        self.metrics.runtime().record(refresh.up, &refresh.facts);
        // A failed ListImages keeps what it found last, rather than dropping every registry.
        if let Some(held) = &refresh.held {
            self.held = Some(held.clone());
        }
        let held = self.held.clone().unwrap_or_default();
        if let (Some(routed), Some(now)) = (&self.routed, fingerprint)
            && routed.fingerprint == now
            && routed.held == held
        {
            return Some(routed.targets.clone());
        }
        let routes = self.routes.clone();
        let statics = self.static_registries.clone();
        let metrics = Arc::clone(&self.metrics);
        let placeholder = Discovery::new(self.discovery.max_registries());
        let mut discovery = std::mem::replace(&mut self.discovery, placeholder);
        let routed = tokio::task::spawn_blocking(move || {
            // The config files' problems are logged where routes are resolved, per registry.
            let (candidates, _problems) =
                discovery::candidates(&routes, &held.registries, &statics);
            let candidates = candidates.iter().map(|c| c.registry.as_str());
            let targets = discovery.targets(candidates, &routes, &held.canaries, &metrics);
            (discovery, targets, held)
        })
        .await;
        match routed {
            Ok((discovery, targets, held)) => {
                self.discovery = discovery;
                self.routed = fingerprint.map(|fingerprint| Routed {
                    fingerprint,
                    held,
                    targets: targets.clone(),
                });
                Some(targets)
            }
            Err(error) => {
                warn!(%error, "discovery failed; the watched registries stay as they were");
                None
            }
        }
    }

    /// The first discovery. The files' fingerprint is taken before they are read, and the run
    /// loop polls from it: a change made while they are read, or before the loop starts, is seen
    /// by the loop's first poll (a fingerprint taken when the loop started missed it until the
    /// next interval).
    pub async fn first_apply(&mut self, refresh: &Refresh) -> Option<Vec<WatchedRegistry>> {
        let before = fingerprint(&self.config_files()).await;
        self.apply(refresh, Some(before)).await
    }

    fn config_files(&self) -> ConfigFiles {
        ConfigFiles {
            certs_dir: self.routes.containerd_certs_dir.clone(),
            registries_conf: self.routes.registries_conf.clone(),
        }
    }

    /// Where the run loop's polling starts: the fingerprint the current routes were made with.
    async fn polled_from(&self, files: &ConfigFiles) -> u64 {
        match &self.routed {
            Some(routed) => routed.fingerprint,
            None => fingerprint(files).await,
        }
    }

    /// Refreshes every interval (±10 %), and within [`CONFIG_POLL`] of a change to the registry
    /// config files, until `cancel`, publishing changed routes to `targets`.
    pub async fn run(
        mut self,
        was_up: bool,
        targets: watch::Sender<Vec<WatchedRegistry>>,
        cancel: CancellationToken,
    ) {
        let heart = self.liveness.register("node watch", self.max_quiet);
        let mut was_up = was_up;
        let mut next = Instant::now() + jittered(self.interval);
        let files = self.config_files();
        let mut seen = self.polled_from(&files).await;
        let mut poll = tokio::time::interval(CONFIG_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            heart.beat();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
                _ = poll.tick() => {
                    let now = fingerprint(&files).await;
                    if now == seen {
                        continue;
                    }
                    info!("the runtime's registry config changed; discovering again");
                    seen = now;
                }
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
            let Some(discovered) = self.apply(&refresh, Some(seen)).await else {
                next = started + jittered(self.interval);
                continue;
            };
            targets.send_if_modified(|current| {
                let changed = *current != discovered;
                if changed {
                    *current = discovered;
                }
                changed
            });
            next = started + jittered(self.interval);
        }
    }
}

/// The config files' fingerprint, taken off the async threads.
async fn fingerprint(files: &ConfigFiles) -> u64 {
    let files = files.clone();
    tokio::task::spawn_blocking(move || files.fingerprint())
        .await
        .unwrap_or_default()
}

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &std::path::Path) -> NodeWatch {
        NodeWatch {
            runtime: None,
            routes: RouteConfig::new(dir.join("certs.d"), dir.join("registries.conf"), vec![]),
            discovery: Discovery::new(10),
            static_registries: vec!["mirrored.example".into()],
            metrics: Arc::new(Metrics::new("n", "v", "r", 10).unwrap()),
            liveness: Arc::new(Liveness::default()),
            interval: Duration::from_secs(30),
            max_quiet: Duration::from_secs(60),
            held: None,
            routed: None,
        }
    }

    fn endpoints(targets: &[WatchedRegistry]) -> Vec<String> {
        targets[0].route.endpoints.iter().map(|e| e.url()).collect()
    }

    #[tokio::test]
    async fn routes_are_read_again_only_when_the_files_or_the_images_change() {
        let dir = tempfile::tempdir().unwrap();
        let host_dir = dir.path().join("certs.d/mirrored.example");
        std::fs::create_dir_all(&host_dir).unwrap();
        let hosts = |mirror: &str| {
            let text =
                format!("[host.\"https://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
            std::fs::write(host_dir.join("hosts.toml"), text).unwrap();
        };
        hosts("one.example");
        let mut node = node(dir.path());
        let refresh = node.refresh().await;
        let first = node.apply(&refresh, Some(1)).await.unwrap();
        assert_eq!(endpoints(&first)[0], "https://one.example");

        // The same fingerprint and images: the last routes, the file not read again.
        hosts("two.example");
        let same = node.apply(&refresh, Some(1)).await.unwrap();
        assert_eq!(endpoints(&same), endpoints(&first));

        // The files changed: routed again.
        let changed = node.apply(&refresh, Some(2)).await.unwrap();
        assert_eq!(endpoints(&changed)[0], "https://two.example");

        // Other images held: routed again too (a new registry may now be watched).
        hosts("three.example");
        let mut held = Held::default();
        held.registries.insert("held.example".into(), 1);
        let with_images = Refresh {
            held: Some(held),
            ..node.refresh().await
        };
        let more = node.apply(&with_images, Some(2)).await.unwrap();
        assert_eq!(endpoints(&more)[0], "https://three.example");
        assert!(more.iter().any(|t| t.route.registry == "held.example"));

        // No fingerprint (the first discovery): always routed.
        hosts("four.example");
        let unkeyed = node.apply(&with_images, None).await.unwrap();
        assert_eq!(endpoints(&unkeyed)[0], "https://four.example");
    }

    /// A hosts.toml written after the first discovery read the files, before the run loop
    /// started: the loop's first poll sees it (the agent_metrics test that writes one at once
    /// flaked when the loop took its first fingerprint after the write).
    #[tokio::test]
    async fn a_change_before_the_loop_starts_is_seen_by_its_first_poll() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("certs.d")).unwrap();
        let mut node = node(dir.path());
        let refresh = node.refresh().await;
        node.first_apply(&refresh).await.unwrap();
        let host_dir = dir.path().join("certs.d/new.example");
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(
            host_dir.join("hosts.toml"),
            "server = \"https://new.example\"\n",
        )
        .unwrap();
        let files = node.config_files();
        assert_ne!(
            node.polled_from(&files).await,
            fingerprint(&files).await,
            "the loop would poll from after the change and never see it"
        );
    }
}
