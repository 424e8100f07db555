//! Which registries this node pulls from and why each is listed: `--registry`, the runtime's
//! registry config files, the images the runtime holds. One answer for `pullwatch targets` and the agent.

use std::collections::BTreeMap;

use crate::reference::ImageRef;
use crate::route::{ConfigProblem, RouteConfig};
use crate::runtime::NodeImage;

/// A registry to check, with every reason it is listed (`runtime images (N)`, a config file or
/// directory, `--registry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub registry: String,
    pub sources: Vec<String>,
}

/// The registries of the node's images, each with how many images have a name there (every tag
/// and digest of an image counts, so an image known by two registries is listed under both).
pub fn image_registries(images: &[NodeImage]) -> BTreeMap<String, usize> {
    let mut registries = BTreeMap::new();
    for image in images {
        let mut own: Vec<String> = image
            .repo_tags
            .iter()
            .chain(&image.repo_digests)
            .filter_map(|name| ImageRef::parse(name).ok())
            .map(|reference| reference.registry().to_string())
            .collect();
        own.sort();
        own.dedup();
        for registry in own {
            *registries.entry(registry).or_default() += 1;
        }
    }
    registries
}

/// Every candidate, highest priority first (`--registry`, then the config files, then the
/// images: the order a cap keeps them in), each listed once with all its sources; and the config
/// files' problems met on the way.
pub fn candidates(
    routes: &RouteConfig,
    image_registries: &BTreeMap<String, usize>,
    flagged: &[String],
) -> (Vec<Candidate>, Vec<ConfigProblem>) {
    let (configured, problems) = routes.configured_registries();
    let mut order: Vec<&str> = Vec::new();
    let mut sources: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let listed = flagged
        .iter()
        .map(|registry| (registry.as_str(), "--registry".to_string()))
        .chain(
            configured
                .iter()
                .map(|(registry, source)| (registry.as_str(), source.clone())),
        )
        .chain(
            image_registries
                .iter()
                .map(|(registry, count)| (registry.as_str(), format!("runtime images ({count})"))),
        );
    for (registry, source) in listed {
        let known = sources.entry(registry).or_default();
        if known.is_empty() {
            order.push(registry);
        }
        if !known.contains(&source) {
            known.push(source);
        }
    }
    let candidates = order
        .into_iter()
        .map(|registry| {
            let mut sources = sources.remove(registry).unwrap_or_default();
            // For people: what the node does first (its images), then its config, then flags.
            sources.sort_by_key(|source| match source.as_str() {
                s if s.starts_with("runtime images") => 0,
                "--registry" => 2,
                _ => 1,
            });
            Candidate {
                registry: registry.to_string(),
                sources,
            }
        })
        .collect();
    (candidates, problems)
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
    fn every_name_of_an_image_counts_once_per_registry() {
        let digest = "sha256:0123456789012345678901234567890123456789012345678901234567890123";
        let images = [
            image(&["nginx:1", "docker.io/library/nginx:latest"], &[]),
            // One image known by two registries: both are ones the node pulls from.
            image(
                &["ghcr.io/org/app:1"],
                &[&format!("quay.io/org/app@{digest}")],
            ),
            image(&[], &[&format!("ghcr.io/org/tool@{digest}")]),
            image(&[], &[&format!("10.0.0.5:5000/app@{digest}")]),
            image(&["not a reference"], &[]),
        ];
        let got = image_registries(&images);
        let want = BTreeMap::from([
            ("10.0.0.5:5000".to_string(), 1),
            ("docker.io".to_string(), 1),
            ("ghcr.io".to_string(), 2),
            ("quay.io".to_string(), 1),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn flags_then_config_then_images_each_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.d");
        std::fs::create_dir_all(certs.join("mirrored.example")).unwrap();
        std::fs::write(
            certs.join("mirrored.example/hosts.toml"),
            "server = \"https://mirrored.example\"\n",
        )
        .unwrap();
        let routes = RouteConfig::new(certs.clone(), dir.path().join("none.conf"), vec![]);
        let images = BTreeMap::from([
            ("docker.io".to_string(), 2),
            ("mirrored.example".to_string(), 1),
        ]);
        let flagged = ["docker.io".to_string(), "quay.io".to_string()];
        let (found, problems) = candidates(&routes, &images, &flagged);
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = found.iter().map(|c| c.registry.as_str()).collect();
        assert_eq!(names, ["docker.io", "quay.io", "mirrored.example"]);
        assert_eq!(found[0].sources, ["runtime images (2)", "--registry"]);
        assert_eq!(
            found[2].sources,
            [
                "runtime images (1)".to_string(),
                certs.join("mirrored.example").display().to_string()
            ]
        );
    }
}
