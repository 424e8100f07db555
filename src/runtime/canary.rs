//! The runtime check's canary: an image the node already holds, by digest, so a pull of it resolves
//! remotely along the runtime's route and downloads nothing (the sandbox image first).

use std::collections::HashMap;

use super::NodeImage;

/// The sandbox (pause) image from `Status{verbose}` info: containerd puts its CRI config there as
/// JSON under `config` (`sandboxImage` in 1.x, `pinnedImages.sandbox` in 2.x).
pub fn sandbox_image_from_info(info: &HashMap<String, String>) -> Option<String> {
    let config: serde_json::Value = serde_json::from_str(info.get("config")?).ok()?;
    let image = config
        .get("sandboxImage")
        .or_else(|| config.pointer("/pinnedImages/sandbox"))?
        .as_str()?;
    (!image.is_empty()).then(|| image.to_string())
}

/// The by-digest reference to pull for the runtime check of `registry`: the sandbox image when it
/// comes from there, else the first image the node holds from it; `None` when it holds none.
pub fn canary_for(
    images: &[NodeImage],
    sandbox_image: Option<&str>,
    registry: &str,
) -> Option<String> {
    let from_registry = |digest: &&String| {
        crate::reference::ImageRef::parse(digest).is_ok_and(|r| r.registry() == registry)
    };
    let sandbox = sandbox_image.and_then(|name| {
        images
            .iter()
            .find(|i| i.repo_tags.iter().any(|t| same_image(t, name)))
            .and_then(|i| i.repo_digests.iter().find(from_registry))
    });
    sandbox
        .or_else(|| {
            images
                .iter()
                .find_map(|i| i.repo_digests.iter().find(from_registry))
        })
        .cloned()
}

/// The by-digest reference of the sandbox image, when the node holds it.
pub fn sandbox_canary(images: &[NodeImage], sandbox_image: &str) -> Option<String> {
    images
        .iter()
        .find(|i| i.repo_tags.iter().any(|t| same_image(t, sandbox_image)))
        .and_then(|i| i.repo_digests.first())
        .cloned()
}

/// Two spellings of one reference (`pause:3.9` vs `docker.io/library/pause:3.9`).
fn same_image(a: &str, b: &str) -> bool {
    use crate::reference::ImageRef;
    match (ImageRef::parse(a), ImageRef::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_image_from_verbose_info() {
        let info = |config: &str| HashMap::from([("config".to_string(), config.to_string())]);
        let cases = [
            (
                info(r#"{"sandboxImage":"registry.k8s.io/pause:3.9","x":1}"#),
                Some("registry.k8s.io/pause:3.9"),
            ),
            (
                info(r#"{"pinnedImages":{"sandbox":"registry.k8s.io/pause:3.10"}}"#),
                Some("registry.k8s.io/pause:3.10"),
            ),
            (info(r#"{"sandboxImage":""}"#), None),
            (info("not json"), None),
            (HashMap::new(), None),
        ];
        for (info, want) in cases {
            assert_eq!(sandbox_image_from_info(&info).as_deref(), want, "{info:?}");
        }
    }

    fn image(tag: &str, digest: &str) -> NodeImage {
        NodeImage {
            id: format!("sha256:{}", "0".repeat(64)),
            repo_tags: vec![tag.to_string()],
            repo_digests: vec![digest.to_string()],
            size: 1,
            pinned: false,
        }
    }

    #[test]
    fn canary_prefers_the_sandbox_image_of_the_registry() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let images = vec![
            image("ghcr.io/org/app:1", &format!("ghcr.io/org/app@{}", d('a'))),
            image(
                "registry.k8s.io/pause:3.9",
                &format!("registry.k8s.io/pause@{}", d('b')),
            ),
            image(
                "registry.k8s.io/coredns:1",
                &format!("registry.k8s.io/coredns@{}", d('c')),
            ),
        ];
        let pause = Some("registry.k8s.io/pause:3.9");
        assert_eq!(
            canary_for(&images, pause, "registry.k8s.io"),
            Some(format!("registry.k8s.io/pause@{}", d('b')))
        );
        assert_eq!(
            canary_for(&images, None, "registry.k8s.io"),
            Some(format!("registry.k8s.io/pause@{}", d('b')))
        );
        assert_eq!(
            canary_for(&images, pause, "ghcr.io"),
            Some(format!("ghcr.io/org/app@{}", d('a')))
        );
        assert_eq!(canary_for(&images, pause, "quay.io"), None);
        assert_eq!(
            sandbox_canary(&images, "registry.k8s.io/pause:3.9"),
            Some(format!("registry.k8s.io/pause@{}", d('b')))
        );
        assert_eq!(sandbox_canary(&images, "pause:3.9"), None);
    }
}
