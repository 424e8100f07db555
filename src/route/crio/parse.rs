//! Reading one registries.conf file as containers/image does: the v2 tables and the deprecated
//! v1 lists, and the files it refuses outright (conflicting settings, bad mirrors, bad search lists).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::{Mirror, PullFromMirror, Registry};
use crate::route::{Lines, split_host_port};

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct FileV2 {
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(default)]
    registry: Vec<Spanned<RegistryTable>>,
    registries: Option<V1Tables>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct RegistryTable {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    /// Only a mirror may have it; read here so that it can be refused, as containers/image does.
    pull_from_mirror: Option<Spanned<String>>,
    #[serde(default)]
    mirror: Vec<Spanned<MirrorTable>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct MirrorTable {
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    /// A string, so that a bad value gets containers/image's message rather than serde's.
    pull_from_mirror: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
pub(super) struct V1Tables {
    #[serde(default)]
    search: V1List,
    #[serde(default)]
    insecure: V1List,
    #[serde(default)]
    block: V1List,
}

#[derive(Deserialize, Default)]
pub(super) struct V1List {
    #[serde(default)]
    registries: Vec<String>,
}

/// A file's content, parsed.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub(super) registries: Vec<Registry>,
    pub(super) unqualified_search: Option<Vec<String>>,
    /// What containers/image accepts but that cannot work as meant; the file is still used.
    pub(super) warnings: Vec<ParseError>,
}

/// A problem at a line of one file.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: Option<usize>,
    pub message: String,
}

pub(super) fn parse(text: &str, source: &Path, drop_in: bool) -> Result<Parsed, ParseError> {
    let lines = Lines::new(text);
    let file: FileV2 = toml::from_str(text).map_err(|e| ParseError {
        line: e.span().map(|s| lines.line(s.start)),
        message: e.message().trim_end().to_string(),
    })?;
    let search_line = text
        .find("unqualified-search-registries")
        .map(|at| lines.line(at));
    if let Some(v1) = file.registries {
        let line = text.find("[registries").map(|at| lines.line(at));
        if !file.registry.is_empty() || file.unqualified_search_registries.is_some() {
            return Err(ParseError {
                line,
                message: "mixes the v1 [registries.*] lists with v2 settings".into(),
            });
        }
        if drop_in {
            return Err(ParseError {
                line,
                message: "drop-in files must use the v2 format ([[registry]])".into(),
            });
        }
        let mut parsed = parse_v1(v1, source, line)?;
        parsed.registries = first_of_each_prefix(parsed.registries);
        return Ok(parsed);
    }
    let mut registries = Vec::new();
    let mut warnings = Vec::new();
    for table in file.registry {
        let line = lines.line(table.span().start);
        let table = table.into_inner();
        let at = |message: String| ParseError {
            line: Some(line),
            message,
        };
        let location = trim_location(&table.location.unwrap_or_default())
            .map_err(|m| at(format!("location: {m}")))?;
        // An empty prefix is a missing one: the location (containers/image postProcessRegistries).
        let prefix = match table.prefix.filter(|p| !p.is_empty()) {
            None if location.is_empty() => {
                return Err(at("[[registry]] needs a prefix or a location".into()));
            }
            None => location.clone(),
            Some(prefix) => trim_location(&prefix).map_err(|m| at(format!("prefix: {m}")))?,
        };
        // Only a leading `*.` is a wildcard (containers-registries.conf(5)).
        if let Some(suffix) = prefix.strip_prefix("*.") {
            if suffix.contains(['/', '@', ':', '*']) || suffix.is_empty() {
                return Err(at(format!(
                    "wildcard prefix {prefix:?} must be a host like *.example.com (no port, namespace or other *)"
                )));
            }
        } else {
            if location.is_empty() {
                return Err(at(format!(
                    "prefix {prefix:?} without a location must be a wildcard like *.example.com (only a leading *. is a wildcard)"
                )));
            }
            validate_location(&prefix).map_err(|m| at(format!("prefix: {m}")))?;
            if prefix.contains('*') {
                warnings.push(at(format!(
                    "prefix {prefix:?} never matches an image: only a leading *. is a wildcard"
                )));
            }
        }
        if !location.is_empty() {
            validate_location(&location).map_err(|m| at(format!("location: {m}")))?;
        }
        if let Some(value) = table.pull_from_mirror.filter(|v| !v.get_ref().is_empty()) {
            return Err(ParseError {
                line: Some(lines.line(value.span().start)),
                message: format!(
                    "pull-from-mirror is set on the registry {prefix:?} itself; only a [[registry.mirror]] may have it"
                ),
            });
        }
        let mut mirrors = Vec::new();
        for mirror in table.mirror {
            let mirror_line = lines.line(mirror.span().start);
            let mirror = mirror.into_inner();
            let at = |message: String| ParseError {
                line: Some(mirror_line),
                message,
            };
            let location =
                trim_location(&mirror.location).map_err(|m| at(format!("mirror location: {m}")))?;
            if location.is_empty() {
                return Err(at("[[registry.mirror]] needs a location".into()));
            }
            validate_location(&location).map_err(|m| at(format!("mirror location: {m}")))?;
            let (pull_from_mirror, at) = match mirror.pull_from_mirror {
                Some(value) => {
                    let value_line = lines.line(value.span().start);
                    (value.into_inner(), value_line)
                }
                None => (String::new(), mirror_line),
            };
            let at = |message: String| ParseError {
                line: Some(at),
                message,
            };
            if table.mirror_by_digest_only && !pull_from_mirror.is_empty() {
                return Err(at(format!(
                    "mirror {location:?} has pull-from-mirror but its registry {prefix:?} has mirror-by-digest-only: set one or the other"
                )));
            }
            let pull_from_mirror = PullFromMirror::parse(&pull_from_mirror).ok_or_else(|| {
                at(format!(
                    "mirror {location:?}: pull-from-mirror {pull_from_mirror:?} is not one of \"all\", \"digest-only\", \"tag-only\""
                ))
            })?;
            mirrors.push(Mirror {
                location,
                insecure: mirror.insecure,
                pull_from_mirror,
                line: mirror_line,
            });
        }
        registries.push(Registry {
            prefix,
            location,
            insecure: table.insecure,
            blocked: table.blocked,
            mirror_by_digest_only: table.mirror_by_digest_only,
            mirrors,
            source: source.to_path_buf(),
            line: Some(line),
        });
    }
    if let Some(conflict) = conflicting_settings(&registries) {
        return Err(conflict);
    }
    if let Some(search) = &file.unqualified_search_registries {
        validate_search(search, "unqualified-search-registries").map_err(|message| ParseError {
            line: search_line,
            message,
        })?;
    }
    Ok(Parsed {
        registries: first_of_each_prefix(registries),
        unqualified_search: file.unqualified_search_registries.map(|s| {
            s.iter()
                .map(|r| r.trim_end_matches('/').to_string())
                .collect()
        }),
        warnings,
    })
}

impl PullFromMirror {
    /// `pull-from-mirror`'s values; empty is `all` (containers/image `MirrorAll`).
    fn parse(value: &str) -> Option<Self> {
        match value {
            "" | "all" => Some(Self::All),
            "digest-only" => Some(Self::DigestOnly),
            "tag-only" => Some(Self::TagOnly),
            _ => None,
        }
    }
}

/// containers/image's `parseLocation`: trailing `/`s dropped, an `http://` or `https://` scheme
/// refused.
pub(super) fn trim_location(value: &str) -> Result<String, String> {
    let trimmed = value.trim_end_matches('/');
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        return Err(format!(
            "{value:?} must not have a scheme (give host[:port][/namespace])"
        ));
    }
    Ok(trimmed.to_string())
}

/// Two tables for one registry (the same location, or the same prefix when without location)
/// must agree on `insecure` and `blocked`, or containers/image refuses the file. Same file only:
/// drop-ins replace tables by prefix without this check.
pub(super) fn conflicting_settings(registries: &[Registry]) -> Option<ParseError> {
    let key = |r: &Registry| {
        if r.location.is_empty() {
            r.prefix.clone()
        } else {
            r.location.clone()
        }
    };
    // The first table of each registry; each later one is compared with it (settings that agree
    // with the first agree with each other).
    let mut first_of: HashMap<String, &Registry> = HashMap::new();
    for second in registries {
        let key = key(second);
        let Some(first) = first_of.get(&key) else {
            first_of.insert(key, second);
            continue;
        };
        let setting = if first.insecure != second.insecure {
            "insecure"
        } else if first.blocked != second.blocked {
            "blocked"
        } else {
            continue;
        };
        let lines = match (first.line, second.line) {
            (Some(a), Some(b)) => format!(" (lines {a} and {b})"),
            _ => String::new(),
        };
        return Some(ParseError {
            line: second.line,
            message: format!(
                "registry {key:?} is defined more than once with different `{setting}`{lines}; containers/image refuses this"
            ),
        });
    }
    None
}

/// `unqualified-search-registries` entries are `host[:port]`: no namespace, no scheme
/// (containers/image checks them against its reference domain pattern).
/// `list` names the setting in messages.
pub(super) fn validate_search(search: &[String], list: &str) -> Result<(), String> {
    for entry in search {
        let trimmed = trim_location(entry).map_err(|m| format!("{list} entry {m}"))?;
        if !is_domain(&trimmed) {
            return Err(format!(
                "{list} entry {entry:?} must be a host[:port] (no namespace, scheme or other characters)"
            ));
        }
    }
    Ok(())
}

/// containers/image's reference domain: `label(.label)*[:port]`, each label alphanumeric with
/// inner `-`, the port digits.
pub(super) fn is_domain(value: &str) -> bool {
    let (host, port) = match value.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (value, None),
    };
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Of tables with the same prefix, the first (later ones are never chosen), in prefix order:
/// containers/image's postProcessRegistries (since v5.3.0) does this for every file.
pub(super) fn first_of_each_prefix(registries: Vec<Registry>) -> Vec<Registry> {
    let mut by_prefix: BTreeMap<String, Registry> = BTreeMap::new();
    for registry in registries {
        by_prefix.entry(registry.prefix.clone()).or_insert(registry);
    }
    by_prefix.into_values().collect()
}

/// v1 lists as containers/image's `ConvertToV2`: one table per location (trailing `/`s dropped,
/// a scheme refused), then the v2 checks of the search list.
pub(super) fn parse_v1(
    v1: V1Tables,
    source: &Path,
    line: Option<usize>,
) -> Result<Parsed, ParseError> {
    let mut registries: Vec<Registry> = Vec::new();
    let mut positions: HashMap<String, usize> = HashMap::new();
    let mut entry = |list: &str, name: &str| -> Result<usize, ParseError> {
        let name = trim_location(name).map_err(|m| ParseError {
            line,
            message: format!("[registries.{list}] entry {m}"),
        })?;
        if let Some(&i) = positions.get(&name) {
            return Ok(i);
        }
        positions.insert(name.clone(), registries.len());
        registries.push(Registry {
            prefix: name.clone(),
            location: name,
            insecure: false,
            blocked: false,
            mirror_by_digest_only: false,
            mirrors: vec![],
            source: source.to_path_buf(),
            line,
        });
        Ok(registries.len() - 1)
    };
    let mut blocked = Vec::new();
    for name in &v1.block.registries {
        blocked.push(entry("block", name)?);
    }
    let mut insecure = Vec::new();
    for name in &v1.insecure.registries {
        insecure.push(entry("insecure", name)?);
    }
    for i in insecure {
        registries[i].insecure = true;
    }
    for i in blocked {
        registries[i].blocked = true;
    }
    validate_search(&v1.search.registries, "[registries.search]")
        .map_err(|message| ParseError { line, message })?;
    Ok(Parsed {
        registries,
        unqualified_search: Some(
            v1.search
                .registries
                .iter()
                .map(|r| r.trim_end_matches('/').to_string())
                .collect(),
        ),
        warnings: vec![],
    })
}

/// `host[:port][/namespace…]`.
pub(super) fn validate_location(location: &str) -> Result<(), String> {
    let host = location.split('/').next().unwrap_or_default();
    if location.contains("://") {
        return Err(format!("{location:?} must not have a scheme"));
    }
    split_host_port(host)
        .map(|_| ())
        .map_err(|e| format!("{location:?}: {}", e.problem))
}

/// What a file containers/image cannot load does to CRI-O: every pull fails, whatever the image.
pub(super) fn every_pull_fails(drop_in: bool) -> &'static str {
    if drop_in {
        "CRI-O cannot pull any image until it is fixed (containers/image fails every pull: \"loading drop-in registries configuration\"); the routes shown skip this file"
    } else {
        "CRI-O cannot pull any image until it is fixed (containers/image fails every pull: \"loading registries configuration\"); the routes shown skip this file"
    }
}
