//! Tiny but real container images (one gzip'd tar layer with random content, a config,
//! an OCI or Docker v2 manifest, optionally a multi-platform index) pushed to a registry
//! over the distribution HTTP API: blob upload (POST then PUT), then manifest PUT.

use serde_json::json;

use crate::http::{Client, Response};

/// Manifest flavour: OCI image spec or Docker v2 schema 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

impl Format {
    fn manifest(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.manifest.v1+json",
            Format::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }
    fn index(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.index.v1+json",
            Format::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }
    fn config(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.config.v1+json",
            Format::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }
    fn layer(self) -> &'static str {
        match self {
            Format::Oci => "application/vnd.oci.image.layer.v1.tar+gzip",
            Format::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        }
    }
}

/// An OS/architecture pair as in an index (`linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`; panics on anything else (test input).
    pub fn parse(s: &str) -> Self {
        let mut parts = s.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(os), Some(arch), variant, None) if !os.is_empty() && !arch.is_empty() => Self {
                os: os.to_owned(),
                architecture: arch.to_owned(),
                variant: variant.map(str::to_owned),
            },
            _ => panic!("platform {s:?} is not os/arch[/variant]"),
        }
    }

    /// This machine's platform in Go/OCI spelling (`linux/amd64`), as pullwatch's
    /// `--platform` default would be.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: std::env::consts::OS.to_owned(),
            architecture: arch.to_owned(),
            variant: None,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let mut v = json!({ "os": self.os, "architecture": self.architecture });
        if let Some(variant) = &self.variant {
            v["variant"] = json!(variant);
        }
        v
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What to push: one manifest, or an index over one manifest per platform.
#[derive(Debug, Clone)]
pub struct Image {
    pub format: Format,
    pub platforms: Vec<Platform>,
    /// Push an index (manifest list) even for a single platform.
    pub as_index: bool,
}

impl Image {
    /// One OCI manifest for `platform`.
    pub fn single(platform: Platform) -> Self {
        Self {
            format: Format::Oci,
            platforms: vec![platform],
            as_index: false,
        }
    }

    /// An OCI index with one manifest for each of `platforms` (`"linux/arm64"`, …).
    pub fn index(platforms: &[&str]) -> Self {
        Self {
            format: Format::Oci,
            platforms: platforms.iter().map(|p| Platform::parse(p)).collect(),
            as_index: true,
        }
    }

    /// Uses Docker v2 media types instead of OCI ones.
    pub fn docker(mut self) -> Self {
        self.format = Format::Docker;
        self
    }
}

/// What a push left in the registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Digest of what the tag points at (the manifest, or the index).
    pub digest: String,
    /// Media type of what the tag points at.
    pub media_type: String,
    /// Each platform's manifest digest (one entry for a single manifest).
    pub manifests: Vec<(Platform, String)>,
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Pushes `image` to `repository:reference` through `client` (which carries TLS and
/// credentials). Every blob is new random content, so each push has fresh digests.
pub fn push(
    client: &Client,
    repository: &str,
    reference: &str,
    image: &Image,
) -> std::io::Result<Pushed> {
    assert!(
        !image.platforms.is_empty(),
        "an image needs at least one platform"
    );
    let format = image.format;
    let mut manifests = Vec::new();
    let mut descriptors = Vec::new();
    for platform in &image.platforms {
        let (bytes, digest) = build_and_upload_manifest(client, repository, format, platform)?;
        let target = if image.as_index {
            digest.clone()
        } else {
            reference.to_owned()
        };
        put_manifest(client, repository, &target, format.manifest(), &bytes)?;
        descriptors.push(json!({
            "mediaType": format.manifest(),
            "digest": digest,
            "size": bytes.len(),
            "platform": platform.to_json(),
        }));
        manifests.push((platform.clone(), digest));
    }
    if !image.as_index {
        let digest = manifests[0].1.clone();
        return Ok(Pushed {
            digest,
            media_type: format.manifest().to_owned(),
            manifests,
        });
    }
    let index =
        json!({ "schemaVersion": 2, "mediaType": format.index(), "manifests": descriptors });
    let bytes = serde_json::to_vec(&index).expect("index JSON");
    put_manifest(client, repository, reference, format.index(), &bytes)?;
    Ok(Pushed {
        digest: sha256_digest(&bytes),
        media_type: format.index().to_owned(),
        manifests,
    })
}

/// Uploads a fresh layer and config for `platform`; returns the manifest bytes and digest.
fn build_and_upload_manifest(
    client: &Client,
    repository: &str,
    format: Format,
    platform: &Platform,
) -> std::io::Result<(Vec<u8>, String)> {
    let content = format!(
        "pullwatch test image {platform} {:016x}{:016x}\n",
        crate::entropy(),
        crate::entropy()
    );
    let tar = tar_one_file("pullwatch-test.txt", content.as_bytes());
    let layer = gzip_stored(&tar);
    let mut config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": platform.architecture,
        "os": platform.os,
        "config": { "Cmd": ["/pullwatch-test.txt"] },
        "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&tar)] },
        "history": [{ "created_by": "pullwatch test harness" }],
    });
    if let Some(variant) = &platform.variant {
        config["variant"] = json!(variant);
    }
    let config = serde_json::to_vec(&config).expect("config JSON");
    let layer_digest = upload_blob(client, repository, &layer)?;
    let config_digest = upload_blob(client, repository, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": format.manifest(),
        "config": { "mediaType": format.config(), "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": format.layer(), "digest": layer_digest, "size": layer.len() }],
    });
    let bytes = serde_json::to_vec(&manifest).expect("manifest JSON");
    let digest = sha256_digest(&bytes);
    Ok((bytes, digest))
}

fn expect_status(what: &str, resp: Response, want: u16) -> std::io::Result<Response> {
    if resp.status == want {
        Ok(resp)
    } else {
        Err(std::io::Error::other(format!(
            "{what}: HTTP {} (want {want}): {}",
            resp.status,
            resp.text()
        )))
    }
}

/// Monolithic blob upload: `POST /v2/<repo>/blobs/uploads/`, then `PUT <Location>&digest=…`.
fn upload_blob(client: &Client, repository: &str, data: &[u8]) -> std::io::Result<String> {
    let digest = sha256_digest(data);
    let started = client.request(
        "POST",
        &format!("/v2/{repository}/blobs/uploads/"),
        &[],
        &[],
    )?;
    let started = expect_status("start blob upload", started, 202)?;
    let location = started
        .header("location")
        .ok_or_else(|| std::io::Error::other("blob upload answer has no Location"))?;
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{sep}digest={digest}");
    let done = client.request(
        "PUT",
        &url,
        &[("Content-Type", "application/octet-stream")],
        data,
    )?;
    expect_status("finish blob upload", done, 201)?;
    Ok(digest)
}

fn put_manifest(
    client: &Client,
    repository: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let resp = client.request(
        "PUT",
        &format!("/v2/{repository}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        bytes,
    )?;
    expect_status(&format!("put manifest {repository}:{reference}"), resp, 201).map(|_| ())
}

/// A ustar archive holding one regular file.
fn tar_one_file(name: &str, data: &[u8]) -> Vec<u8> {
    assert!(name.len() < 100, "tar name too long");
    let mut header = [0u8; 512];
    let mut put =
        |offset: usize, field: &[u8]| header[offset..offset + field.len()].copy_from_slice(field);
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", data.len()).as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A valid gzip stream of `data` using stored (uncompressed) deflate blocks.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let len = chunk.len() as u16;
        out.push(u8::from(chunks.peek().is_none()));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE), as gzip's trailer needs.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
