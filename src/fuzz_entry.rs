//! One entry point per fuzz target (`fuzz/fuzz_targets/<name>.rs`), each taking the raw bytes a
//! hostile peer or a broken file could hand pullwatch. The fuzzers call them, and so does the
//! replay test below, which runs every committed corpus and regression file on stable.
//!
//! An entry panics only when pullwatch would: a parser that panics, or an invariant broken (named
//! in the panic message). Files are written to a private temporary directory where the real code
//! reads files (hosts.toml, registries.conf and its drop-ins, resolv.conf), so the code under test
//! is the code that runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::agent::pods::failures::{self, Tracker};
use crate::agent::pods::watch::{self, Line, PodEvent};
use crate::check::auth;
use crate::check::dns::DnsResolver;
use crate::check::manifest;
use crate::credentials::{Keyring, provider};
use crate::reason::classify_runtime_message;
use crate::reference::ImageRef;
use crate::route::{containerd, crio};

/// A target's entry: any bytes in, a panic only for a bug.
pub type Entry = fn(&[u8]);

/// Every target: its name (the file under `fuzz/fuzz_targets/`, the corpus directory) and entry.
pub const TARGETS: &[(&str, Entry)] = &[
    ("reference", reference),
    ("www_authenticate", www_authenticate),
    ("token_response", token_response),
    ("hosts_toml", hosts_toml),
    ("registries_conf", registries_conf),
    ("docker_config", docker_config),
    ("resolv_conf", resolv_conf),
    ("runtime_message", runtime_message),
    ("provider_config", provider_config),
    ("provider_response", provider_response),
    ("manifest_index", manifest_index),
    ("watch_event", watch_event),
    ("dns_answer", dns_answer),
];

/// Images looked up where a target needs some (credentials, provider patterns, routes).
const IMAGES: [&str; 5] = [
    "docker.io/library/nginx",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.com/app",
    "registry.example.com:5000/team/app",
    "localhost:5000/a",
    "[::1]:5000/b",
];

/// An image reference: parsed like the kubelet; a parsed one prints to a name that parses back to
/// the same reference (pullwatch hands it on in that form).
pub fn reference(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = failures::registry_of(&text);
    let Ok(parsed) = ImageRef::parse(&text) else {
        return;
    };
    let (_, _, _) = (
        parsed.registry(),
        parsed.repository(),
        parsed.manifest_reference(),
    );
    let _ = (parsed.tag(), parsed.digest());
    let shown = parsed.to_string();
    match ImageRef::parse(&shown) {
        Ok(again) => assert_eq!(again, parsed, "{text:?} → {shown:?} parses differently"),
        Err(e) => panic!("{text:?} parses, but its normal form {shown:?} does not: {e}"),
    }
}

/// A `WWW-Authenticate` value, and the auth plan made from it for a 401 answer.
pub fn www_authenticate(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(challenges) = auth::parse_challenges(&text) {
        for challenge in &challenges {
            let _ = challenge.param("realm");
        }
    }
    let _ = auth::quote(&text);
    let _ = auth::plan(401, Some(&text));
}

/// A token server's 200 answer; and a registry's or token server's error body.
pub fn token_response(data: &[u8]) {
    let _ = auth::parse_token_response(data);
    let _ = auth::ErrorBody::parse(data).summary();
}

/// `<registry>\n<hosts.toml>`: the file in the registry's host directory, routed under the rules
/// of containerd 1.6, 1.7 and 2.0.
pub fn hosts_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (registry, toml) = text.split_once('\n').unwrap_or(("", &text));
    let dir_name = if safe_name(registry) {
        registry
    } else {
        "_default"
    };
    with_dir(|root| {
        let dir = root.join(dir_name);
        if std::fs::create_dir_all(&dir).is_err()
            || std::fs::write(dir.join(containerd::HOSTS_FILE), toml).is_err()
        {
            return;
        }
        for version in ["1.6.20", "1.7.13", "2.0.0"] {
            let quirks = containerd::Quirks::for_version(version);
            let _ = containerd::parse_hosts_toml(toml, &dir, quirks);
            for insecure in [false, true] {
                let _ = containerd::route(root, registry, insecure, quirks);
            }
        }
        let _ = containerd::configured_registries(root);
    });
}

/// registries.conf, then its drop-ins, separated by NUL bytes: loaded and merged as CRI-O does,
/// every registry it names routed, and a few common names looked up.
pub fn registries_conf(data: &[u8]) {
    let mut files = data.split(|b| *b == 0);
    let main = files.next().unwrap_or_default();
    with_dir(|root| {
        let conf = root.join("registries.conf");
        let drop_ins = root.join("registries.conf.d");
        if std::fs::write(&conf, main).is_err() || std::fs::create_dir(&drop_ins).is_err() {
            return;
        }
        for (i, file) in files.take(4).enumerate() {
            if std::fs::write(drop_ins.join(format!("{i:02}.conf")), file).is_err() {
                return;
            }
        }
        let loaded = crio::load(&conf);
        let names = loaded.registries().into_iter().map(|(name, _)| name);
        for name in names.chain(IMAGES.map(String::from)) {
            let _ = loaded.find(&name);
            let _ = loaded.route(&name);
        }
    });
}

/// `<image>\n<config.json>`: a docker config file, then the image's credentials looked up.
pub fn docker_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (image, json) = text.split_once('\n').unwrap_or(("nginx", &text));
    let Ok(keyring) = Keyring::parse("fuzz", json) else {
        return;
    };
    let (registry, repository) = match ImageRef::parse(image) {
        Ok(image) => (image.registry().to_string(), image.repository().to_string()),
        Err(_) => {
            let (registry, repository) = image.split_once('/').unwrap_or((image, ""));
            (registry.to_string(), repository.to_string())
        }
    };
    let all = keyring.lookup_all(&registry, &repository);
    let first = keyring.lookup(&registry, &repository);
    assert_eq!(
        first.map(|c| &c.key),
        all.first().map(|c| &c.key),
        "lookup is lookup_all's first"
    );
}

/// A resolv.conf, as `--resolv-conf` reads it.
pub fn resolv_conf(data: &[u8]) {
    with_dir(|root| {
        let path = root.join("resolv.conf");
        if std::fs::write(&path, data).is_ok() {
            let _ = DnsResolver::from_resolv_conf(&path);
        }
    });
}

/// A DNS answer off the network, read as the answer to an A query for a fixed name, and as the
/// answer to its own question (the first 12 bytes and question taken as the query's).
pub fn dns_answer(data: &[u8]) {
    use crate::check::dns_wire::{Family, answer, query};
    if let Some(asked) = query(
        u16::from_be_bytes([
            data.first().copied().unwrap_or(0),
            data.get(1).copied().unwrap_or(0),
        ]),
        "registry.example.",
        Family::A,
    ) {
        let _ = answer(data, &asked, Family::A);
    }
    let _ = answer(data, data, Family::Aaaa);
}

/// `<waiting reason>\n<message>`: what a runtime or the kubelet says of a failed pull, classified;
/// and the fix shown for the reason.
pub fn runtime_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let reason = classify_runtime_message(&text);
    let _ = reason.fix("registry.example.com", "https://registry.example.com");
    let (waiting, message) = text.split_once('\n').unwrap_or(("ErrImagePull", &text));
    let _ = failures::reason_of(waiting, message, None);
    let _ = failures::reason_of(waiting, message, Some(reason));
    let _ = failures::clip(&text, 100);
}

/// A `CredentialProviderConfig` (YAML or JSON), its `matchImages` matched against a few images.
pub fn provider_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = provider::fuzz_config(text, &IMAGES);
    }
}

/// A credential provider plugin's stdout, checked, cached and looked up as the kubelet would.
pub fn provider_response(data: &[u8]) {
    for image in IMAGES {
        let _ = provider::fuzz_response(data, image);
    }
}

/// A manifest index (or any JSON a registry answers a manifest GET with): its platforms.
pub fn manifest_index(data: &[u8]) {
    if let Ok((platforms, _)) = manifest::read_index(data) {
        let _ = manifest::list_platforms(&platforms);
        for platform in &platforms {
            assert_eq!(
                platform.normalized(),
                *platform,
                "normalising {platform} twice changes it"
            );
        }
    }
}

/// A line of the pod watch (or the list before it), taken in by the failure tracker; a deleted
/// pod leaves nothing behind.
pub fn watch_event(data: &[u8]) {
    let mut tracker = Tracker::default();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let later = now + Duration::from_secs(30);
    if let Ok((_, pods)) = watch::parse_list(data) {
        tracker.relisting();
        for pod in &pods {
            let _ = tracker.apply(pod, now);
        }
        tracker.relisted();
        let _ = tracker.failures();
        return;
    }
    let Ok(Line::Pod(PodEvent::Apply(pod) | PodEvent::Delete(pod))) = watch::parse_line(data)
    else {
        return;
    };
    let _ = failures::pull_waits(&pod);
    let _ = tracker.apply(&pod, now);
    let _ = tracker.apply(&pod, later);
    let _ = tracker.failures();
    tracker.delete(&pod);
    if let Some(uid) = &pod.metadata.uid {
        assert!(
            tracker.failures().iter().all(|f| &f.pod.uid != uid),
            "a deleted pod's failures are kept"
        );
    }
}

/// A name usable as one directory under the fuzz root.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 200
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}

/// Runs `f` in a fresh empty directory of this process and thread, removed afterwards.
fn with_dir(f: impl FnOnce(&Path)) {
    let root: PathBuf = std::env::temp_dir().join(format!(
        "pullwatch-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    if std::fs::create_dir_all(&root).is_ok() {
        f(&root);
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed inputs of `kind` (`corpus` or `regressions`) for `target`.
    fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(kind)
            .join(target);
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        files.sort();
        files
    }

    #[test]
    fn every_fuzz_target_has_an_entry_and_a_corpus() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(files, names, "fuzz/fuzz_targets/*.rs and TARGETS differ");
        for (name, _) in TARGETS {
            assert!(!inputs("corpus", name).is_empty(), "no corpus for {name}");
            let source = std::fs::read_to_string(dir.join(format!("{name}.rs"))).unwrap();
            assert!(
                source.contains(&format!("fuzz_entry::{name}(")),
                "fuzz/fuzz_targets/{name}.rs does not call fuzz_entry::{name}"
            );
        }
    }

    /// Every corpus and regression file through its target, as the fuzzer ran it.
    #[test]
    fn replays_the_corpus_and_every_regression() {
        for (name, entry) in TARGETS {
            for file in inputs("corpus", name)
                .into_iter()
                .chain(inputs("regressions", name))
            {
                let data = std::fs::read(&file).unwrap();
                if std::panic::catch_unwind(|| entry(&data)).is_err() {
                    panic!("{name}: {} fails", file.display());
                }
            }
        }
    }
}
