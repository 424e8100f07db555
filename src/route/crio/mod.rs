//! CRI-O's registries (containers-registries.conf v2, and the deprecated v1 lists): registries.conf
//! plus registries.conf.d/*.conf in name order; for an image, the `[[registry]]` with the longest prefix.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::containerd::cert_files;
use super::{
    Capabilities, ConfigProblem, Endpoint, Role, RouteHost, Scheme, serving_host, split_host_port,
};
use crate::bounded_file;
use crate::trust::TlsOptions;

mod cache;
mod index;
mod parse;
mod rewrite;

pub use self::cache::Cache;
use self::index::LazyIndex;
pub use self::parse::ParseError;
use self::parse::{every_pull_fails, parse};
use self::rewrite::{AskedAs, asked_as};

/// At most this many drop-in files are read.
pub const MAX_DROP_INS: usize = 200;

/// When a mirror is used (`pull-from-mirror`, or `mirror-by-digest-only` for all mirrors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullFromMirror {
    #[default]
    All,
    DigestOnly,
    TagOnly,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub location: String,
    pub insecure: bool,
    pub pull_from_mirror: PullFromMirror,
    pub line: usize,
}

/// One `[[registry]]` table, after defaults (`prefix` = `location` when missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    pub prefix: String,
    pub location: String,
    pub insecure: bool,
    pub blocked: bool,
    pub mirror_by_digest_only: bool,
    pub mirrors: Vec<Mirror>,
    pub source: PathBuf,
    pub line: Option<usize>,
}

/// registries.conf and its drop-ins, merged as containers/image merges them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistriesConf {
    pub registries: Vec<Registry>,
    /// `unqualified-search-registries`, with the file that set it last.
    pub unqualified_search: Vec<String>,
    pub unqualified_search_source: Option<PathBuf>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    pub problems: Vec<ConfigProblem>,
    /// `<dir of registries.conf>/certs.d`: Docker-style per-registry certificates.
    pub certs_dir: Option<PathBuf>,
    /// `registries` by prefix, built at the first lookup (they do not change after loading).
    index: LazyIndex,
}

/// `<conf>.d`, where the drop-ins are.
fn drop_in_dir(conf: &Path) -> PathBuf {
    PathBuf::from(format!("{}.d", conf.display()))
}

/// Reads `conf` and `<conf>.d/*.conf` (the first [`MAX_DROP_INS`] by name) and merges them as
/// containers/image does; a file it would refuse is reported (and skipped here). A missing
/// registries.conf is no problem (no CRI-O config on this node).
pub fn load(conf: &Path) -> RegistriesConf {
    let mut merged = RegistriesConf {
        certs_dir: conf.parent().map(|p| p.join("certs.d")),
        ..Default::default()
    };
    let mut files = vec![(conf.to_path_buf(), false)];
    let drop_in_dir = drop_in_dir(conf);
    match std::fs::read_dir(&drop_in_dir) {
        Ok(entries) => {
            let mut names: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                // Not only regular files: containers/image reads every `*.conf` that is not a
                // directory, so a FIFO or a device there is reported, not skipped.
                .filter(|p| !p.is_dir() && p.extension().is_some_and(|e| e == "conf"))
                .collect();
            names.sort();
            if names.len() > MAX_DROP_INS {
                merged.problems.push(ConfigProblem {
                    file: drop_in_dir.clone(),
                    line: None,
                    message: format!(
                        "{} drop-in files; pullwatch reads only the first {MAX_DROP_INS} by name (CRI-O reads them all), so routes from the rest are not shown",
                        names.len()
                    ),
                });
            }
            files.extend(names.into_iter().take(MAX_DROP_INS).map(|p| (p, true)));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => merged.problems.push(ConfigProblem {
            file: drop_in_dir,
            line: None,
            message: format!("{error}; {}", every_pull_fails(true)),
        }),
    }
    for (path, drop_in) in files {
        let text = match bounded_file::read_to_string(&path, bounded_file::ROUTE_CONFIG) {
            Ok(text) => text,
            Err(error) if error.is_not_found() && !drop_in => continue,
            Err(error) => {
                merged.problems.push(ConfigProblem {
                    file: path,
                    line: None,
                    message: format!("{}; {}", error.problem, every_pull_fails(drop_in)),
                });
                continue;
            }
        };
        match parse(&text, &path, drop_in) {
            Ok(parsed) => {
                merged
                    .problems
                    .extend(parsed.warnings.into_iter().map(|w| ConfigProblem {
                        file: path.clone(),
                        line: w.line,
                        message: w.message,
                    }));
                if drop_in {
                    // A drop-in's table replaces the one with the same prefix; then the tables
                    // are in prefix order (containers/image merges through a map, sorted).
                    let mut by_prefix: BTreeMap<String, Registry> = BTreeMap::new();
                    for registry in merged.registries.drain(..).chain(parsed.registries) {
                        by_prefix.insert(registry.prefix.clone(), registry);
                    }
                    merged.registries = by_prefix.into_values().collect();
                } else {
                    merged.registries = parsed.registries;
                }
                if let Some(search) = parsed.unqualified_search {
                    merged.unqualified_search = search;
                    merged.unqualified_search_source = Some(path.clone());
                }
                merged.files.push(path);
            }
            Err(error) => merged.problems.push(ConfigProblem {
                file: path,
                line: error.line,
                message: format!("{}; {}", error.message, every_pull_fails(drop_in)),
            }),
        }
    }
    merged
}

impl RegistriesConf {
    /// The `[[registry]]` for `name` (`host[:port]/repository`): of the matching ones, the one with
    /// the longest prefix (`*.` counted), the first of equals, as containers/image chooses.
    pub fn find(&self, name: &str) -> Option<&Registry> {
        let index = self.index.get(&self.registries);
        index
            .find(name, &self.registries)
            .map(|i| &self.registries[i])
    }

    /// Registries named by the config (prefix hosts, locations, mirrors, search registries),
    /// each with the file that names it; wildcard prefixes are not registries.
    pub fn registries(&self) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut add = |location: &str, source: &Path| {
            let host = location.split('/').next().unwrap_or_default().to_string();
            if !host.is_empty() && !host.contains('*') && seen.insert(host.clone()) {
                out.push((host, source.to_path_buf()));
            }
        };
        for registry in &self.registries {
            add(&registry.prefix, &registry.source);
        }
        if let Some(source) = &self.unqualified_search_source {
            for name in &self.unqualified_search {
                add(name, source);
            }
        }
        out
    }

    /// The route for `name` (`host[:port]/repository`) when a `[[registry]]` matches: mirrors in
    /// order, then the location; or the file that blocks it.
    pub fn route(&self, name: &str) -> Option<Result<Vec<RouteHost>, PathBuf>> {
        let registry = self.find(name)?;
        if registry.blocked {
            return Some(Err(registry.source.clone()));
        }
        let source = registry.source.display().to_string();
        // Every endpoint is asked for the name as rewritten to its location, at the host (and
        // port) of that name. A name that does not rewrite (containers/image then fails the
        // pull) is shown at the location as written.
        let endpoint = |location: &str, fallback: &str| {
            asked_as(name, &registry.prefix, location).unwrap_or_else(|| AskedAs {
                authority: fallback.split('/').next().unwrap_or_default().to_string(),
                repository: None,
            })
        };
        let mut hosts = Vec::new();
        for mirror in &registry.mirrors {
            let mode = if registry.mirror_by_digest_only {
                PullFromMirror::DigestOnly
            } else {
                mirror.pull_from_mirror
            };
            let capabilities = Capabilities {
                pull: mode != PullFromMirror::TagOnly,
                resolve: mode != PullFromMirror::DigestOnly,
                push: false,
            };
            hosts.extend(self.hosts_for(
                endpoint(&mirror.location, &mirror.location),
                &mirror.location,
                mirror.insecure,
                Role::Mirror,
                capabilities,
                &source,
                Some(mirror.line),
            ));
        }
        // A wildcard prefix without location: the image's own registry.
        let location = if registry.location.is_empty() {
            name.split('/').next().unwrap_or_default()
        } else {
            registry.location.as_str()
        };
        hosts.extend(self.hosts_for(
            endpoint(&registry.location, location),
            location,
            registry.insecure,
            Role::Upstream,
            Capabilities::ALL,
            &source,
            registry.line,
        ));
        Some(Ok(hosts))
    }

    /// The endpoints for one location: HTTPS, and for `insecure` HTTPS without verification
    /// followed by plain HTTP (containers/image falls back to it).
    #[allow(clippy::too_many_arguments)]
    fn hosts_for(
        &self,
        asked: AskedAs,
        location: &str,
        insecure: bool,
        role: Role,
        capabilities: Capabilities,
        source: &str,
        line: Option<usize>,
    ) -> Vec<RouteHost> {
        let registry = asked.authority.as_str();
        let Ok((host, port)) = split_host_port(registry) else {
            return vec![];
        };
        let host = serving_host(&host).to_string();
        let mut tls = match &self.certs_dir {
            Some(dir) if dir.join(registry).is_dir() => {
                let certs = cert_files(&dir.join(registry));
                TlsOptions {
                    ca_files: certs.ca_files,
                    // containers/image loads every pair; Go's TLS client picks among them.
                    client_certs: certs
                        .client
                        .iter()
                        .map(|(c, k)| (c.clone(), k.clone().unwrap_or_else(|| c.clone())))
                        .collect(),
                    skip_verify: false,
                }
            }
            _ => TlsOptions::default(),
        };
        tls.skip_verify = insecure;
        let host_entry = |scheme: Scheme, tls: TlsOptions| RouteHost {
            endpoint: Endpoint {
                scheme,
                host: host.clone(),
                port: port.unwrap_or(match scheme {
                    Scheme::Http => 80,
                    Scheme::Https => 443,
                }),
                role,
                source: source.to_string(),
                tls,
                api_path: "/v2".into(),
                repository: asked.repository.clone(),
                namespace_query: false,
                extras: Default::default(),
                http_fallback: None,
            },
            capabilities,
            location: Some(location.to_string()),
            line,
        };
        let mut hosts = vec![host_entry(Scheme::Https, tls)];
        if insecure {
            hosts.push(host_entry(Scheme::Http, TlsOptions::default()));
        }
        hosts
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite::match_len;
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn prefix_matching() {
        struct Case {
            name: &'static str,
            prefix: &'static str,
            want: Option<usize>,
        }
        let cases = [
            Case {
                name: "example.com/foo/app",
                prefix: "example.com/foo",
                want: Some(15),
            },
            Case {
                name: "example.com/foobar/app",
                prefix: "example.com/foo",
                want: None,
            },
            Case {
                name: "example.com/foo",
                prefix: "example.com",
                want: Some(11),
            },
            // containers/image matches a port-qualified name against a port-less prefix too.
            Case {
                name: "example.com:5000/foo",
                prefix: "example.com",
                want: Some(11),
            },
            Case {
                name: "a.b.example.com/foo",
                prefix: "*.example.com",
                want: Some(15),
            },
            Case {
                name: "example.com/foo",
                prefix: "*.example.com",
                want: None,
            },
            // The match ends with the suffix; a port stays with what follows.
            Case {
                name: "a.example.com:5000/foo",
                prefix: "*.example.com",
                want: Some(13),
            },
            Case {
                name: "a.example.com.evil.net/foo",
                prefix: "*.example.com",
                want: None,
            },
            // Only in the host.
            Case {
                name: "reg.io/a.example.com",
                prefix: "*.example.com",
                want: None,
            },
            // Only a leading `*.` is a wildcard: `*evil.com` is a literal that matches no name.
            Case {
                name: "notevil.com/x",
                prefix: "*evil.com",
                want: None,
            },
        ];
        for case in cases {
            assert_eq!(
                match_len(case.name, case.prefix),
                case.want,
                "{} ~ {}",
                case.name,
                case.prefix
            );
        }
    }

    fn registry(prefix: &str, location: &str) -> Registry {
        Registry {
            prefix: prefix.into(),
            location: location.into(),
            insecure: false,
            blocked: false,
            mirror_by_digest_only: false,
            mirrors: vec![],
            source: PathBuf::from("/r.conf"),
            line: None,
        }
    }

    /// Of the matching tables, the longest prefix (`*.` counted) wins, the first of equals.
    #[test]
    fn the_longest_prefix_wins_then_the_first() {
        struct Case {
            prefixes: &'static [&'static str],
            name: &'static str,
            want: Option<&'static str>,
        }
        let cases = [
            Case {
                prefixes: &["example.com", "example.com/foo"],
                name: "example.com/foo/app",
                want: Some("example.com/foo"),
            },
            Case {
                prefixes: &["example.com/foo", "example.com"],
                name: "example.com/foo/app",
                want: Some("example.com/foo"),
            },
            Case {
                prefixes: &["*.example.com", "a.example.com"],
                name: "a.example.com/app",
                want: Some("*.example.com"),
            },
            Case {
                prefixes: &["a.example.com", "*.example.com"],
                name: "a.example.com/app",
                want: Some("a.example.com"),
            },
            Case {
                prefixes: &["*.example.com", "*.b.example.com"],
                name: "a.b.example.com/app",
                want: Some("*.b.example.com"),
            },
            // A long wildcard beats a shorter literal prefix of the same name.
            Case {
                prefixes: &["*.registry.example.com", "a.registry.example.com"],
                name: "a.registry.example.com/app",
                want: Some("*.registry.example.com"),
            },
            Case {
                prefixes: &["*.example.com"],
                name: "example.com/app",
                want: None,
            },
        ];
        for case in cases {
            let conf = RegistriesConf {
                registries: case
                    .prefixes
                    .iter()
                    .map(|p| registry(p, if p.starts_with('*') { "" } else { p }))
                    .collect(),
                ..RegistriesConf::default()
            };
            assert_eq!(
                conf.find(case.name).map(|r| r.prefix.as_str()),
                case.want,
                "{} in {:?}",
                case.name,
                case.prefixes
            );
        }
    }

    /// containers/image asks each endpoint for `location` + what follows the prefix's match
    /// (`rewriteReference`); rows from system_registries_v2_test.go's TestRewriteReferenceSuccess
    /// and TestRewriteReferenceFailedDuringParseNamed (tags and digests left out: pullwatch
    /// routes repositories), plus pullwatch's own.
    #[test]
    fn names_are_rewritten_to_the_location() {
        struct Case {
            input: (&'static str, &'static str, &'static str),
            /// `host[:port]` contacted, repository asked when not the image's own; `None`: no
            /// valid name, the pull fails.
            want: Option<(&'static str, Option<&'static str>)>,
        }
        let cases = [
            // Standard use cases.
            Case {
                input: ("example.com/image", "example.com", "example.com"),
                want: Some(("example.com", None)),
            },
            Case {
                input: (
                    "example.com:5000/image",
                    "example.com:5000",
                    "example.com:5000",
                ),
                want: Some(("example.com:5000", None)),
            },
            Case {
                input: ("example.com/foo/image", "example.com/foo", "example.com"),
                want: Some(("example.com", Some("image"))),
            },
            Case {
                input: (
                    "example.com/foo/image",
                    "example.com/foo",
                    "example.com/path",
                ),
                want: Some(("example.com", Some("path/image"))),
            },
            // Docker examples.
            Case {
                input: (
                    "docker.io/library/image",
                    "docker.io/library",
                    "example.com",
                ),
                want: Some(("example.com", Some("image"))),
            },
            Case {
                input: ("docker.io/library/image", "docker.io", "example.com"),
                want: Some(("example.com", None)),
            },
            // Wildcard prefixes: the whole host is replaced, the port and path kept.
            Case {
                input: ("docker.io/namespace/image", "*.io", "example.com"),
                want: Some(("example.com", None)),
            },
            Case {
                input: (
                    "sub.example.io/library/prefix/image",
                    "*.example.io",
                    "example.com",
                ),
                want: Some(("example.com", None)),
            },
            Case {
                input: (
                    "another.sub.example.io:5000/library/prefix/image",
                    "*.sub.example.io",
                    "example.com",
                ),
                want: Some(("example.com:5000", None)),
            },
            Case {
                input: (
                    "foo.bar.io/ns1/ns2/ns3/ns4",
                    "*.bar.io",
                    "omg.bbq.com/roflmao",
                ),
                want: Some(("omg.bbq.com", Some("roflmao/ns1/ns2/ns3/ns4"))),
            },
            // A wildcard without location: the name as it is, port included.
            Case {
                input: (
                    "abc.internal.registry.com/foo",
                    "*.internal.registry.com",
                    "",
                ),
                want: Some(("abc.internal.registry.com", None)),
            },
            Case {
                input: ("alien.vs.predator.foobar.io:5000/omg", "*.foobar.io", ""),
                want: Some(("alien.vs.predator.foobar.io:5000", None)),
            },
            // Failed during ParseNamed: a port after a location with a port or a path.
            Case {
                input: ("example.com:5000/image", "example.com", "example.com:5000"),
                want: None,
            },
            Case {
                input: (
                    "a.example.com:5000/app",
                    "*.example.com",
                    "mirror.example/sub",
                ),
                want: None,
            },
            // Failed: the prefix does not match the name.
            Case {
                input: ("docker.io/library/image", "*.com", "example.com"),
                want: None,
            },
            Case {
                input: ("example.com/foo/image", "example.com/f", "example.com/foo"),
                want: None,
            },
            // Failed: an empty location needs a wildcard prefix.
            Case {
                input: ("example.com:5000/image", "example.com", ""),
                want: None,
            },
            // pullwatch: a registry alone (`targets`) has no repository to rewrite.
            Case {
                input: ("example.com", "example.com", "internal.example/bar"),
                want: Some(("internal.example", None)),
            },
        ];
        for case in cases {
            let (name, prefix, location) = case.input;
            let got = asked_as(name, prefix, location);
            let got = got
                .as_ref()
                .map(|a| (a.authority.as_str(), a.repository.as_deref()));
            assert_eq!(got, case.want, "{name} under {prefix} at {location}");
        }
    }

    /// A wildcard prefix's port is kept: the location's host at the image's port, with the
    /// certificates of that `host:port` (containers/image looks certs.d up by the rewritten name).
    #[test]
    fn a_wildcard_rewrite_keeps_the_port() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        write(
            &conf,
            "[[registry]]\nprefix = \"*.corp.example\"\nlocation = \"mirror.example\"\n\n[[registry.mirror]]\nlocation = \"cache.example\"\n",
        );
        write(
            &dir.path().join("certs.d/mirror.example:5000/ca.crt"),
            "pem",
        );
        let conf = load(&conf);
        let hosts = conf.route("team.corp.example:5000/app").unwrap().unwrap();
        let urls: Vec<String> = hosts.iter().map(|h| h.endpoint.url()).collect();
        assert_eq!(
            urls,
            ["https://cache.example:5000", "https://mirror.example:5000"]
        );
        assert_eq!(
            hosts[1].endpoint.tls.ca_files,
            vec![dir.path().join("certs.d/mirror.example:5000/ca.crt")]
        );
        assert_eq!(hosts[1].location.as_deref(), Some("mirror.example"));
        assert!(hosts.iter().all(|h| h.endpoint.repository.is_none()));
    }

    #[test]
    fn routes_mirrors_blocking_and_drop_ins() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        write(
            &conf,
            r#"unqualified-search-registries = ["docker.io", "quay.io"]

[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "mirror.local:5000"

[[registry.mirror]]
location = "digest-mirror.local"
pull-from-mirror = "digest-only"

[[registry]]
location = "insecure.local:5000"
insecure = true

[[registry]]
prefix = "example.com/foo"
location = "internal.example/bar"
mirror-by-digest-only = true

[[registry.mirror]]
location = "mirror.example/foo"

[[registry]]
location = "evil.example"
"#,
        );
        let drop_ins = dir.path().join("registries.conf.d");
        write(
            &drop_ins.join("50-block.conf"),
            "[[registry]]\nlocation = \"evil.example\"\nblocked = true\n",
        );
        write(
            &drop_ins.join("60-broken.conf"),
            "[[registry]]\nlocation = [\n",
        );
        write(&drop_ins.join("README"), "not a conf file");
        write(&dir.path().join("certs.d/mirror.local:5000/ca.crt"), "pem");

        let conf = load(&conf);
        assert_eq!(conf.files.len(), 2, "{:?}", conf.files);
        assert_eq!(conf.problems.len(), 1, "{:?}", conf.problems);
        assert_eq!(conf.problems[0].file, drop_ins.join("60-broken.conf"));
        assert_eq!(conf.problems[0].line, Some(3));
        assert!(
            conf.problems[0].message.contains(
                "CRI-O cannot pull any image until it is fixed (containers/image fails every pull: \"loading drop-in registries configuration\")"
            ),
            "{:?}",
            conf.problems
        );

        let hosts = conf.route("docker.io/library/nginx").unwrap().unwrap();
        let urls: Vec<String> = hosts.iter().map(|h| h.endpoint.url()).collect();
        assert_eq!(
            urls,
            [
                "https://mirror.local:5000",
                "https://digest-mirror.local",
                "https://registry-1.docker.io"
            ]
        );
        assert_eq!(hosts[0].endpoint.role, Role::Mirror);
        assert_eq!(hosts[2].endpoint.role, Role::Upstream);
        assert_eq!(hosts[0].line, Some(7));
        assert_eq!(
            hosts[0].endpoint.tls.ca_files,
            vec![dir.path().join("certs.d/mirror.local:5000/ca.crt")]
        );
        assert!(hosts[1].capabilities.pull && !hosts[1].capabilities.resolve);

        let hosts = conf.route("insecure.local:5000/app").unwrap().unwrap();
        let urls: Vec<String> = hosts.iter().map(|h| h.endpoint.url()).collect();
        assert_eq!(
            urls,
            ["https://insecure.local:5000", "http://insecure.local:5000"]
        );
        assert!(hosts[0].endpoint.tls.skip_verify);

        let hosts = conf.route("example.com/foo/app").unwrap().unwrap();
        let urls: Vec<String> = hosts.iter().map(|h| h.endpoint.url()).collect();
        assert_eq!(urls, ["https://mirror.example", "https://internal.example"]);
        assert!(!hosts[0].capabilities.resolve, "mirror-by-digest-only");
        assert_eq!(hosts[1].location.as_deref(), Some("internal.example/bar"));
        // mirror.example/foo serves example.com/foo/app as foo/app, internal.example/bar as bar/app.
        assert_eq!(hosts[0].endpoint.repository, None);
        assert_eq!(hosts[1].endpoint.repository.as_deref(), Some("bar/app"));
        assert!(hosts.iter().all(|h| h.endpoint.api_path == "/v2"));

        assert_eq!(
            conf.route("evil.example/x"),
            Some(Err(drop_ins.join("50-block.conf")))
        );
        assert_eq!(conf.route("ghcr.io/org/app"), None);

        // Merged with a drop-in, the tables are in prefix order, as containers/image has them.
        let names: Vec<String> = conf.registries().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "docker.io",
                "evil.example",
                "example.com",
                "insecure.local:5000",
                "quay.io"
            ]
        );
    }

    #[test]
    fn malformed_tables_name_the_line() {
        struct Case {
            text: &'static str,
            line: Option<usize>,
            message: &'static str,
        }
        let cases = [
            Case {
                text: "[[registry]]\ninsecure = true\n",
                line: Some(1),
                message: "needs a prefix or a location",
            },
            Case {
                text: "\n[[registry]]\nprefix = \"*.example.com:5000\"\n",
                line: Some(2),
                message: "must be a host like *.example.com",
            },
            Case {
                text: "[[registry]]\nprefix = \"*.example.com/foo\"\nlocation = \"x.example\"\n",
                line: Some(1),
                message: "must be a host like *.example.com",
            },
            Case {
                text: "[[registry]]\nprefix = \"*evil.com\"\n",
                line: Some(1),
                message: "only a leading *. is a wildcard",
            },
            Case {
                text: "[[registry]]\nprefix = \"example.com\"\n",
                line: Some(1),
                message: "without a location must be a wildcard",
            },
            Case {
                text: "[[registry]]\nlocation = \"https://x.example\"\n",
                line: Some(1),
                message: "must not have a scheme",
            },
            Case {
                text: "[[registry]]\nlocation = \"x.example\"\n[[registry.mirror]]\nlocation = \"m:99999\"\n",
                line: Some(3),
                message: "mirror location",
            },
            Case {
                text: "[[registry]]\nlocation = \"x\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"sometimes\"\n",
                line: Some(5),
                message: "is not one of \"all\", \"digest-only\", \"tag-only\"",
            },
            Case {
                text: "[registries.search]\nregistries = [\"a\"]\n[[registry]]\nlocation = \"x\"\n",
                line: Some(1),
                message: "mixes the v1",
            },
        ];
        for case in cases {
            let error = parse(case.text, Path::new("/r.conf"), false).expect_err(case.text);
            assert_eq!(error.line, case.line, "{}: {error:?}", case.text);
            assert!(
                error.message.contains(case.message),
                "{}: {error:?}",
                case.text
            );
        }
    }

    /// Files containers/image (pkg/sysregistriesv2, v5.x) refuses as a whole; each row names the
    /// upstream test (system_registries_v2_test.go) and testdata file it follows.
    #[test]
    fn files_containers_image_refuses() {
        struct Case {
            /// Upstream test and testdata.
            from: &'static str,
            input: &'static str,
            want: (Option<usize>, &'static str),
        }
        let cases = [
            Case {
                from: "TestInvalidV2Configs insecure-conflicts.conf",
                input: "[[registry]]\nlocation = \"registry.com\"\n\n[[registry.mirror]]\nlocation = \"mirror-1.registry.com\"\n\n[[registry]]\nlocation = \"registry.com\"\ninsecure = true\n",
                want: (
                    Some(7),
                    "registry \"registry.com\" is defined more than once with different `insecure` (lines 1 and 7)",
                ),
            },
            Case {
                from: "TestInvalidV2Configs blocked-conflicts.conf",
                input: "[[registry]]\nlocation = \"registry.com\"\n\n[[registry]]\nlocation = \"registry.com\"\nblocked = true\n",
                want: (
                    Some(4),
                    "registry \"registry.com\" is defined more than once with different `blocked` (lines 1 and 4)",
                ),
            },
            // postProcessRegistries keys the check on the location: two prefixes, one location.
            Case {
                from: "postProcessRegistries regMap (keyed by location)",
                input: "[[registry]]\nprefix = \"a.example/x\"\nlocation = \"registry.com\"\n[[registry]]\nprefix = \"a.example/y\"\nlocation = \"registry.com/\"\ninsecure = true\n",
                want: (
                    Some(4),
                    "registry \"registry.com\" is defined more than once",
                ),
            },
            // Without location, keyed on the (wildcard) prefix.
            Case {
                from: "postProcessRegistries regMap (keyed by prefix without location)",
                input: "[[registry]]\nprefix = \"*.example.com\"\n[[registry]]\nprefix = \"*.example.com\"\nblocked = true\n",
                want: (
                    Some(3),
                    "registry \"*.example.com\" is defined more than once with different `blocked`",
                ),
            },
            Case {
                from: "TestInvalidV2Configs missing-mirror-location.conf",
                input: "[[registry]]\nlocation = \"registry.com\"\n[[registry.mirror]]\ninsecure = true\n",
                want: (Some(3), "[[registry.mirror]] needs a location"),
            },
            Case {
                from: "TestInvalidV2Configs invalid-prefix.conf (http:// prefix)",
                input: "[[registry]]\nlocation = \"registry.com:5000\"\nprefix = \"http://schema-is-invalid.com\"\n",
                want: (
                    Some(1),
                    "prefix: \"http://schema-is-invalid.com\" must not have a scheme",
                ),
            },
            Case {
                from: "TestInvalidMirrorConfig invalid-config-level-mirror.conf (v5.21.0)",
                input: "[[registry]]\nprefix = \"registry-a.com/foo\"\nlocation = \"registry-a.com/bar\"\npull-from-mirror = \"digest-only\"\n",
                want: (
                    Some(4),
                    "pull-from-mirror is set on the registry \"registry-a.com/foo\" itself",
                ),
            },
            Case {
                from: "TestInvalidMirrorConfig invalid-conflict-mirror.conf (v5.21.0)",
                input: "[[registry]]\nprefix = \"registry-a.com/foo\"\nlocation = \"registry-a.com/bar\"\nmirror-by-digest-only = true\n\n[[registry.mirror]]\npull-from-mirror = \"digest-only\"\nlocation = \"mirror-1.registry-a.com\"\n",
                want: (
                    Some(7),
                    "mirror \"mirror-1.registry-a.com\" has pull-from-mirror but its registry \"registry-a.com/foo\" has mirror-by-digest-only",
                ),
            },
            // Any non-empty value conflicts, "all" too (`mir.PullFromMirror != ""`).
            Case {
                from: "postProcessRegistries (pull-from-mirror = \"all\" with mirror-by-digest-only)",
                input: "[[registry]]\nlocation = \"r.example\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m.example\"\npull-from-mirror = \"all\"\n",
                want: (Some(6), "has mirror-by-digest-only"),
            },
            Case {
                from: "TestInvalidMirrorConfig invalid-value-mirror.conf (v5.21.0)",
                input: "[[registry]]\nprefix = \"registry-a.com/foo\"\nlocation = \"registry-a.com/bar\"\n\n[[registry.mirror]]\npull-from-mirror = \"notvalid\"\nlocation = \"mirror-1.registry-a.com\"\n",
                want: (
                    Some(6),
                    "mirror \"mirror-1.registry-a.com\": pull-from-mirror \"notvalid\" is not one of",
                ),
            },
            Case {
                from: "TestFindUnqualifiedSearchRegistries invalid-search.conf",
                input: "unqualified-search-registries = [\"registry-a.com/namespace-is-forbidden\"]\n",
                want: (
                    Some(1),
                    "unqualified-search-registries entry \"registry-a.com/namespace-is-forbidden\" must be a host[:port]",
                ),
            },
            Case {
                from: "postProcessRegistries (search entry through parseLocation)",
                input: "\nunqualified-search-registries = [\"quay.io\", \"https://docker.io\"]\n",
                want: (
                    Some(2),
                    "unqualified-search-registries entry \"https://docker.io\" must not have a scheme",
                ),
            },
            Case {
                from: "TestV1BackwardsCompatibility v1-invalid-block.conf",
                input: "[registries.search]\nregistries = [\"registry-a.com////\"]\n\n[registries.block]\nregistries = [\"registry-b.com\", \"http://schema-is-invalid.com\"]\n",
                want: (
                    Some(1),
                    "[registries.block] entry \"http://schema-is-invalid.com\" must not have a scheme",
                ),
            },
            Case {
                from: "TestV1BackwardsCompatibility v1-invalid-insecure.conf",
                input: "[registries.insecure]\nregistries = [\"registry-b.com////\", \"http://schema-is-invalid.com\"]\n",
                want: (
                    Some(1),
                    "[registries.insecure] entry \"http://schema-is-invalid.com\" must not have a scheme",
                ),
            },
            Case {
                from: "TestV1BackwardsCompatibility v1-invalid-search.conf",
                input: "[registries.search]\nregistries = [\"registry-a.com////\", \"http://schema-is-invalid.com\"]\n",
                want: (
                    Some(1),
                    "[registries.search] entry \"http://schema-is-invalid.com\" must not have a scheme",
                ),
            },
            // v1 search lists go through the v2 checks too (loadConfigFile post-processes them).
            Case {
                from: "loadConfigFile (converted v1 through postProcessRegistries)",
                input: "[registries.search]\nregistries = [\"quay.io/team\"]\n",
                want: (
                    Some(1),
                    "[registries.search] entry \"quay.io/team\" must be a host[:port]",
                ),
            },
        ];
        for case in cases {
            let error = parse(case.input, Path::new("/r.conf"), false).expect_err(case.from);
            assert_eq!(error.line, case.want.0, "{}: {error:?}", case.from);
            assert!(
                error.message.contains(case.want.1),
                "{}: {error:?}",
                case.from
            );
        }
    }

    /// What containers/image accepts, and how it reads it.
    #[test]
    fn files_containers_image_accepts() {
        struct Case {
            /// Upstream test and testdata.
            from: &'static str,
            input: &'static str,
            /// (prefix, location) of each table, in the order containers/image keeps them.
            want: &'static [(&'static str, &'static str)],
        }
        let cases = [
            // invalid-prefix.conf's last table: `prefix = ""` is the location.
            Case {
                from: "postProcessRegistries (reg.Prefix == \"\")",
                input: "[[registry]]\nlocation = \"empty-prefix.com\"\nprefix = \"\"\n",
                want: &[("empty-prefix.com", "empty-prefix.com")],
            },
            Case {
                from: "TestParseLocation (trailing slashes are stripped)",
                input: "[[registry]]\nprefix = \"example.com/foo//\"\nlocation = \"example.com:5000/with/path/\"\n",
                want: &[("example.com/foo", "example.com:5000/with/path")],
            },
            // Same location, same settings: no conflict.
            Case {
                from: "postProcessRegistries (no conflict when settings agree)",
                input: "[[registry]]\nprefix = \"a.example/x\"\nlocation = \"registry.com\"\ninsecure = true\n[[registry]]\nprefix = \"a.example/y\"\nlocation = \"registry.com\"\ninsecure = true\n",
                want: &[
                    ("a.example/x", "registry.com"),
                    ("a.example/y", "registry.com"),
                ],
            },
            // The same prefix twice: the first table only, then prefix order (since v5.3.0).
            Case {
                from: "postProcessRegistries (uniqueRegistries, sort.Strings)",
                input: "[[registry]]\nprefix = \"z.example\"\nlocation = \"first.example\"\n[[registry]]\nprefix = \"a.example\"\nlocation = \"a.example\"\n[[registry]]\nprefix = \"z.example\"\nlocation = \"second.example\"\n",
                want: &[("a.example", "a.example"), ("z.example", "first.example")],
            },
            // An empty pull-from-mirror is "all", even with mirror-by-digest-only.
            Case {
                from: "postProcessRegistries (mir.PullFromMirror != \"\")",
                input: "[[registry]]\nlocation = \"r.example\"\nmirror-by-digest-only = true\npull-from-mirror = \"\"\n[[registry.mirror]]\nlocation = \"m.example\"\npull-from-mirror = \"\"\n",
                want: &[("r.example", "r.example")],
            },
            Case {
                from: "TestFindUnqualifiedSearchRegistries unqualified-search.conf",
                input: "unqualified-search-registries = [\"registry-a.com\", \"registry-c.com:5000\", \"registry-d.com/\"]\n",
                want: &[],
            },
            Case {
                from: "TestV1BackwardsCompatibility v1-compatibility.conf",
                input: "[registries.search]\nregistries = [\"registry-a.com////\"]\n[registries.block]\nregistries = [\"registry-b.com\"]\n[registries.insecure]\nregistries = [\"registry-b.com////\", \"registry-d.com\"]\n",
                want: &[
                    ("registry-b.com", "registry-b.com"),
                    ("registry-d.com", "registry-d.com"),
                ],
            },
        ];
        for case in cases {
            let parsed = parse(case.input, Path::new("/r.conf"), false)
                .unwrap_or_else(|e| panic!("{}: {e:?}", case.from));
            let got: Vec<(&str, &str)> = parsed
                .registries
                .iter()
                .map(|r| (r.prefix.as_str(), r.location.as_str()))
                .collect();
            assert_eq!(got, case.want, "{}", case.from);
        }
    }

    /// A file containers/image refuses fails every CRI-O pull, and the problem says so; a warning
    /// leaves the file in use; past the cap, the first drop-ins by name are read and the rest reported.
    #[test]
    fn load_reports_what_each_problem_does() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        write(&conf, "[[registry]]\nlocation = \"quay.io\"\nblocked = [\n");
        let loaded = load(&conf);
        assert!(loaded.files.is_empty());
        assert_eq!(loaded.problems.len(), 1);
        assert!(
            loaded.problems[0].message.ends_with(
                "; CRI-O cannot pull any image until it is fixed (containers/image fails every pull: \"loading registries configuration\"); the routes shown skip this file"
            ),
            "{:?}",
            loaded.problems
        );

        write(
            &conf,
            "[[registry]]\nprefix = \"*evil.com\"\nlocation = \"m.example\"\n",
        );
        let drop_ins = dir.path().join("registries.conf.d");
        for i in (0..=MAX_DROP_INS).rev() {
            write(
                &drop_ins.join(format!("{i:03}.conf")),
                &format!("[[registry]]\nlocation = \"r{i:03}.example\"\n"),
            );
        }
        let loaded = load(&conf);
        assert_eq!(loaded.files.len(), 1 + MAX_DROP_INS);
        assert_eq!(
            loaded.files.last(),
            Some(&drop_ins.join(format!("{:03}.conf", MAX_DROP_INS - 1)))
        );
        let messages: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            messages,
            [
                format!(
                    "{}: {} drop-in files; pullwatch reads only the first {MAX_DROP_INS} by name (CRI-O reads them all), so routes from the rest are not shown",
                    drop_ins.display(),
                    MAX_DROP_INS + 1
                ),
                format!(
                    "{}:1: prefix \"*evil.com\" never matches an image: only a leading *. is a wildcard",
                    conf.display()
                ),
            ]
        );
    }

    /// What containers/image accepts but cannot work as meant is reported, and the file is used.
    #[test]
    fn a_star_inside_a_prefix_is_reported_and_never_matches() {
        let parsed = parse(
            "[[registry]]\nlocation = \"quay.io\"\n\n[[registry]]\nprefix = \"*evil.com\"\nlocation = \"mirror.example\"\n",
            Path::new("/r.conf"),
            false,
        )
        .unwrap();
        assert_eq!(parsed.registries.len(), 2);
        assert_eq!(
            parsed.warnings,
            [ParseError {
                line: Some(4),
                message:
                    "prefix \"*evil.com\" never matches an image: only a leading *. is a wildcard"
                        .into(),
            }]
        );
        let conf = RegistriesConf {
            registries: parsed.registries,
            ..RegistriesConf::default()
        };
        assert!(conf.find("notevil.com/app").is_none());
        let names: Vec<String> = conf.registries().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["quay.io"]);
    }

    #[test]
    fn version_1_lists() {
        let parsed = parse(
            "[registries.search]\nregistries = ['registry1.com']\n[registries.insecure]\nregistries = ['registry3.com']\n[registries.block]\nregistries = ['bad.com']\n",
            Path::new("/r.conf"),
            false,
        )
        .unwrap();
        assert_eq!(
            parsed.unqualified_search,
            Some(vec!["registry1.com".to_string()])
        );
        let insecure = parsed
            .registries
            .iter()
            .find(|r| r.prefix == "registry3.com")
            .unwrap();
        assert!(insecure.insecure && !insecure.blocked);
        assert!(
            parsed
                .registries
                .iter()
                .find(|r| r.prefix == "bad.com")
                .unwrap()
                .blocked
        );
    }
}
