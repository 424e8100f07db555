//! The API server's address and credentials, found as kube-rs's `Config::infer` finds them
//! (`KUBECONFIG`'s files merged, else `~/.kube/config`, else the in-cluster service account), but
//! every kubeconfig and every certificate file it names read through the bounded reader.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};

use crate::bounded_file;

/// No kubeconfig could be used; says which file and why (never a credential).
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct KubeconfigError {
    pub path: PathBuf,
    pub problem: String,
}

/// The client config: the kubeconfig when one loads, else the in-cluster one (as kube-rs); both
/// failing is an error naming both causes.
pub async fn infer() -> Result<kube::Config, String> {
    let home = std::env::home_dir();
    let paths = kubeconfig_paths(std::env::var_os("KUBECONFIG"), home.as_deref());
    let from_file = match read(&paths) {
        Ok(kubeconfig) => {
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", shown(&paths)))
        }
        Err(error) => Err(format!("kubeconfig {error}")),
    };
    let mut config = match from_file {
        Ok(config) => config,
        Err(kubeconfig) => kube::Config::incluster()
            .map_err(|in_cluster| format!("{kubeconfig}; in-cluster: {in_cluster}"))?,
    };
    config.apply_debug_overrides();
    Ok(config)
}

/// `KUBECONFIG`'s non-empty entries, else `~/.kube/config`.
fn kubeconfig_paths(env: Option<OsString>, home: Option<&Path>) -> Vec<PathBuf> {
    let listed: Vec<PathBuf> = env
        .map(|value| {
            std::env::split_paths(&value)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    home.map(|h| vec![h.join(".kube").join("config")])
        .unwrap_or_default()
}

fn shown(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(":")
}

/// Every file read and merged, the first to set a value winning (kube-rs's `Kubeconfig::merge`).
fn read(paths: &[PathBuf]) -> Result<Kubeconfig, KubeconfigError> {
    let Some((first, rest)) = paths.split_first() else {
        return Err(KubeconfigError {
            path: PathBuf::from("~/.kube/config"),
            problem: "no home directory to look in".into(),
        });
    };
    let mut merged = read_one(first)?;
    for path in rest {
        merged = merged.merge(read_one(path)?).map_err(|e| KubeconfigError {
            path: path.clone(),
            problem: e.to_string(),
        })?;
    }
    Ok(merged)
}

/// One kubeconfig: read bounded, parsed by kube-rs, its relative paths made absolute as kube-rs
/// does, and the certificate files it names read bounded here and embedded, so kube-rs reads
/// no file of its own (but a `tokenFile`, which it re-reads as the token rotates).
fn read_one(path: &Path) -> Result<Kubeconfig, KubeconfigError> {
    let fail = |problem: String| KubeconfigError {
        path: path.to_path_buf(),
        problem,
    };
    let text = bounded_file::read_to_string(path, bounded_file::KUBECONFIG)
        .map_err(|e| fail(e.problem.to_string()))?;
    let mut config = Kubeconfig::from_yaml(&text).map_err(|e| fail(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let embedded = |file: &str| -> Result<String, KubeconfigError> {
        let file = dir.join(file);
        let pem = bounded_file::read(&file, bounded_file::PEM).map_err(|e| fail(e.to_string()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(pem))
    };
    for named in &mut config.clusters {
        let Some(cluster) = named.cluster.as_mut() else {
            continue;
        };
        if let Some(file) = cluster.certificate_authority.take()
            && cluster.certificate_authority_data.is_none()
        {
            cluster.certificate_authority_data = Some(embedded(&file)?);
        }
    }
    for named in &mut config.auth_infos {
        let Some(auth) = named.auth_info.as_mut() else {
            continue;
        };
        if let Some(file) = auth.client_certificate.take()
            && auth.client_certificate_data.is_none()
        {
            auth.client_certificate_data = Some(embedded(&file)?);
        }
        if let Some(file) = auth.client_key.take()
            && auth.client_key_data.is_none()
        {
            // The field's type is secrecy's; its own deserializer makes one.
            let key: AuthInfo =
                serde_json::from_value(serde_json::json!({ "client-key-data": embedded(&file)? }))
                    .map_err(|e| fail(format!("client-key: {e}")))?;
            auth.client_key_data = key.client_key_data;
        }
        if let Some(file) = auth.token_file.as_mut() {
            *file = dir.join(&*file).display().to_string();
        }
        if let Some(command) = auth.exec.as_mut().and_then(|e| e.command.as_mut())
            && command.contains('/')
        {
            *command = dir.join(&*command).display().to_string();
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn read_bounded(paths: Vec<PathBuf>) -> Result<Kubeconfig, KubeconfigError> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read(&paths));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("reading the kubeconfig blocked for 10 s")
    }

    #[test]
    fn finds_the_files_as_kube_rs_does() {
        let home = Path::new("/home/u");
        assert_eq!(
            kubeconfig_paths(Some("/a:/b".into()), Some(home)),
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(
            kubeconfig_paths(Some(":".into()), Some(home)),
            [PathBuf::from("/home/u/.kube/config")]
        );
        assert_eq!(
            kubeconfig_paths(None, Some(home)),
            [PathBuf::from("/home/u/.kube/config")]
        );
        assert!(kubeconfig_paths(None, None).is_empty());
    }

    #[test]
    fn refuses_devices_fifos_and_oversized_files_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(bounded_file::KUBECONFIG.max_bytes + 1)
            .unwrap();
        let ca_zero = dir.path().join("ca-zero");
        std::fs::write(
            &ca_zero,
            "clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: /dev/zero\n",
        )
        .unwrap();
        let cases = [
            (
                PathBuf::from("/dev/zero"),
                "/dev/zero: is a character device, not a regular file".to_string(),
            ),
            (
                fifo.clone(),
                format!(
                    "{}: is a FIFO (named pipe), not a regular file",
                    fifo.display()
                ),
            ),
            (
                big.clone(),
                format!(
                    "{}: 8388609 bytes, more than the 8 MiB a kubeconfig may have",
                    big.display()
                ),
            ),
            (
                ca_zero.clone(),
                format!(
                    "{}: /dev/zero: is a character device, not a regular file",
                    ca_zero.display()
                ),
            ),
        ];
        for (path, want) in cases {
            let error = read_bounded(vec![path]).unwrap_err();
            assert_eq!(error.to_string(), want);
        }
    }

    #[test]
    fn embeds_certificate_files_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA PEM").unwrap();
        std::fs::write(dir.path().join("client.crt"), "CLIENT PEM").unwrap();
        std::fs::write(dir.path().join("client.key"), "KEY PEM").unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: ca.crt\n\
             users:\n- name: u\n  user:\n    client-certificate: client.crt\n    client-key: client.key\n    tokenFile: token\n",
        )
        .unwrap();
        let config = read_bounded(vec![path]).unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.certificate_authority, None);
        assert_eq!(cluster.certificate_authority_data, Some(b64("CA PEM")));
        let user = config.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.client_certificate_data, Some(b64("CLIENT PEM")));
        assert!(user.client_key.is_none() && user.client_key_data.is_some());
        assert_eq!(
            user.token_file.as_deref(),
            Some(dir.path().join("token").to_str().unwrap())
        );
    }
}
