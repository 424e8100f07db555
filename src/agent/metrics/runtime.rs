//! The container runtime's families (up, info, conditions, image filesystems, images) from one
//! refresh of its state, with the label sets they have, so what the runtime stops saying goes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use prometheus::{IntGaugeVec, Registry};

use super::family::{Family, Labels, NoLabels};
use super::{
    IMAGE_FS_INODES_USED, IMAGE_FS_USED_BYTES, IMAGES, RUNTIME_CONDITION, RUNTIME_INFO, RUNTIME_UP,
};
use crate::runtime::{Condition, ImageFs, RuntimeVersion};

/// Runtime conditions and image filesystems exported at most (label values come from the runtime).
const MAX_RUNTIME_LABELS: usize = 16;

/// What the runtime said in one refresh (`Version`, `Status`, `ImageFsInfo`, `ListImages`).
#[derive(Clone, Debug, Default)]
pub struct RuntimeFacts {
    pub version: Option<RuntimeVersion>,
    pub conditions: Vec<Condition>,
    pub image_fs: Vec<ImageFs>,
    pub images: Option<usize>,
}

/// `runtime_name, runtime_version, runtime_api_version`: `runtime_info`.
#[derive(PartialEq)]
struct InfoLabels {
    name: String,
    version: String,
    api_version: String,
}

/// `condition`: `runtime_condition`.
struct ConditionLabels<'a> {
    condition: &'a str,
}

/// `mountpoint`: the image filesystem families.
struct MountpointLabels<'a> {
    mountpoint: &'a str,
}

impl Labels for InfoLabels {
    type Static = InfoLabels;
    const NAMES: &'static [&'static str] =
        &["runtime_name", "runtime_version", "runtime_api_version"];
    fn values(&self) -> Vec<&str> {
        vec![&self.name, &self.version, &self.api_version]
    }
}

impl<'a> Labels for ConditionLabels<'a> {
    type Static = ConditionLabels<'static>;
    const NAMES: &'static [&'static str] = &["condition"];
    fn values(&self) -> Vec<&str> {
        vec![self.condition]
    }
}

impl<'a> Labels for MountpointLabels<'a> {
    type Static = MountpointLabels<'static>;
    const NAMES: &'static [&'static str] = &["mountpoint"];
    fn values(&self) -> Vec<&str> {
        vec![self.mountpoint]
    }
}

/// The runtime's label sets now exported.
#[derive(Default)]
struct RuntimeSeries {
    info: Option<InfoLabels>,
    conditions: BTreeSet<String>,
    mountpoints: BTreeSet<String>,
}

/// Every family about the container runtime on the CRI socket.
pub struct RuntimeMetrics {
    up: Family<IntGaugeVec, NoLabels>,
    info: Family<IntGaugeVec, InfoLabels>,
    condition: Family<IntGaugeVec, ConditionLabels<'static>>,
    image_fs_used_bytes: Family<IntGaugeVec, MountpointLabels<'static>>,
    image_fs_inodes_used: Family<IntGaugeVec, MountpointLabels<'static>>,
    images: Family<IntGaugeVec, NoLabels>,
    /// Held briefly, never across `.await`.
    book: Mutex<RuntimeSeries>,
}

impl RuntimeMetrics {
    pub(super) fn new(registry: &Registry) -> prometheus::Result<Self> {
        Ok(RuntimeMetrics {
            up: Family::gauge(registry, RUNTIME_UP, "1 while the CRI socket answers.")?,
            info: Family::gauge(
                registry,
                RUNTIME_INFO,
                "Always 1: the runtime on the CRI socket (Version).",
            )?,
            condition: Family::gauge(
                registry,
                RUNTIME_CONDITION,
                "The runtime's Status conditions (RuntimeReady, NetworkReady), 0/1.",
            )?,
            image_fs_used_bytes: Family::gauge(
                registry,
                IMAGE_FS_USED_BYTES,
                "Bytes used on the runtime's image filesystem (ImageFsInfo).",
            )?,
            image_fs_inodes_used: Family::gauge(
                registry,
                IMAGE_FS_INODES_USED,
                "Inodes used on the runtime's image filesystem (ImageFsInfo).",
            )?,
            images: Family::gauge(registry, IMAGES, "Images the node holds (ListImages).")?,
            book: Mutex::new(RuntimeSeries::default()),
        })
    }

    /// Records one refresh of the runtime's state; facts it did not give lose their series
    /// (`runtime_info` stays: it names the runtime that went away).
    pub fn record(&self, up: bool, facts: &RuntimeFacts) {
        let mut series = super::lock(&self.book);
        self.up.with(&NoLabels).set(i64::from(up));
        if let Some(version) = &facts.version {
            let info = InfoLabels {
                name: version.runtime_name.clone(),
                version: version.runtime_version.clone(),
                api_version: version.runtime_api_version.clone(),
            };
            if series.info.as_ref() != Some(&info) {
                if let Some(old) = series.info.take() {
                    self.info.remove(&old);
                }
                self.info.with(&info).set(1);
                series.info = Some(info);
            }
        }
        let conditions: BTreeMap<&str, bool> = facts
            .conditions
            .iter()
            .take(MAX_RUNTIME_LABELS)
            .map(|c| (c.kind.as_str(), c.status))
            .collect();
        series.conditions.retain(|condition| {
            let keep = conditions.contains_key(condition.as_str());
            if !keep {
                self.condition.remove(&ConditionLabels { condition });
            }
            keep
        });
        for (condition, status) in conditions {
            self.condition
                .with(&ConditionLabels { condition })
                .set(i64::from(status));
            series.conditions.insert(condition.to_string());
        }
        let filesystems: BTreeMap<&str, &ImageFs> = facts
            .image_fs
            .iter()
            .take(MAX_RUNTIME_LABELS)
            .map(|fs| (fs.mountpoint.as_str(), fs))
            .collect();
        series.mountpoints.retain(|mountpoint| {
            let keep = filesystems.contains_key(mountpoint.as_str());
            if !keep {
                let labels = MountpointLabels { mountpoint };
                self.image_fs_used_bytes.remove(&labels);
                self.image_fs_inodes_used.remove(&labels);
            }
            keep
        });
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (mountpoint, fs) in filesystems {
            let labels = MountpointLabels { mountpoint };
            self.image_fs_used_bytes
                .with(&labels)
                .set(clamp(fs.used_bytes));
            self.image_fs_inodes_used
                .with(&labels)
                .set(clamp(fs.inodes_used));
            series.mountpoints.insert(mountpoint.to_string());
        }
        self.images.set_or_remove(
            &NoLabels,
            facts.images.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        );
    }
}
