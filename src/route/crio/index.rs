//! Which `[[registry]]` tables can match a name, found by looking up the name's own prefixes
//! rather than trying every table: a lookup costs the length of the name, not of the config.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::Registry;
use super::rewrite::match_len;

/// The tables by prefix: a literal prefix is one of the name's prefixes ending at `/`, `:`, `@`
/// or its end; a wildcard's suffix (`.example.com`) is a piece of the name's host that starts at
/// a `.` and ends at such a boundary. Each candidate is then checked with [`match_len`].
#[derive(Clone, Debug, Default)]
pub(super) struct PrefixIndex {
    /// Prefix → the first table with it.
    literal: HashMap<String, usize>,
    /// `*.`-wildcard suffix (from its `.`) → the first table with it.
    wildcard: HashMap<String, usize>,
    /// Wildcards whose suffix has a boundary character in it (refused when parsing): tried each.
    odd: Vec<usize>,
}

impl PrefixIndex {
    pub(super) fn new(registries: &[Registry]) -> Self {
        let mut index = PrefixIndex::default();
        for (i, registry) in registries.iter().enumerate() {
            match registry.prefix.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => {
                    if suffix.contains(['/', ':', '@']) {
                        index.odd.push(i);
                    } else {
                        index.wildcard.entry(suffix.to_string()).or_insert(i);
                    }
                }
                _ => {
                    index.literal.entry(registry.prefix.clone()).or_insert(i);
                }
            }
        }
        index
    }

    /// The table for `name`, as [`super::RegistriesConf::find`] defines it: of the matching
    /// ones, the longest prefix, the first of equals.
    pub(super) fn find(&self, name: &str, registries: &[Registry]) -> Option<usize> {
        let ends: Vec<usize> = name
            .match_indices(['/', ':', '@'])
            .map(|(at, _)| at)
            .chain([name.len()])
            .collect();
        let host_end = name.find('/').unwrap_or(name.len());
        let literal = ends
            .iter()
            .filter_map(|&end| self.literal.get(&name[..end]));
        let wildcard = name[..host_end].match_indices('.').flat_map(|(start, _)| {
            ends.iter()
                .filter(move |&&end| end > start && end <= host_end)
                .filter_map(move |&end| self.wildcard.get(&name[start..end]))
        });
        let mut best: Option<usize> = None;
        for &i in literal.chain(wildcard).chain(&self.odd) {
            let prefix = &registries[i].prefix;
            if match_len(name, prefix).is_none() {
                continue;
            }
            let better = best.is_none_or(|b| {
                let current = registries[b].prefix.len();
                prefix.len() > current || (prefix.len() == current && i < b)
            });
            if better {
                best = Some(i);
            }
        }
        best
    }
}

/// A [`PrefixIndex`] built on first use; equal to any other (it is derived from the tables).
#[derive(Clone, Debug, Default)]
pub(super) struct LazyIndex(OnceLock<PrefixIndex>);

impl LazyIndex {
    pub(super) fn get(&self, registries: &[Registry]) -> &PrefixIndex {
        self.0.get_or_init(|| PrefixIndex::new(registries))
    }
}

impl PartialEq for LazyIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LazyIndex {}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn table(prefix: &str) -> Registry {
        Registry {
            prefix: prefix.into(),
            location: String::new(),
            insecure: false,
            blocked: false,
            mirror_by_digest_only: false,
            mirrors: vec![],
            source: PathBuf::from("/r.conf"),
            line: None,
        }
    }

    /// The definition: every table tried, the longest matching prefix, the first of equals.
    fn every_table(name: &str, registries: &[Registry]) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, r) in registries.iter().enumerate() {
            if match_len(name, &r.prefix).is_some()
                && best.is_none_or(|b| r.prefix.len() > registries[b].prefix.len())
            {
                best = Some(i);
            }
        }
        best
    }

    /// The index finds what trying every table finds, for prefixes and names that overlap in
    /// every way (wildcards, ports, namespaces, equal lengths, repeated suffixes, odd wildcards).
    #[test]
    fn finds_what_trying_every_table_finds() {
        let prefixes = [
            "example.com",
            "example.com/foo",
            "example.com/foo/bar",
            "example.com:5000",
            "*.example.com",
            "a.example.com",
            "*.b.example.com",
            "*.registry.example.com",
            "a.registry.example.com",
            "*evil.com",
            "*.example.com/odd",
            "example.com/foo",
            "docker.io/library",
            "*.com",
        ];
        let names = [
            "example.com/foo/app",
            "example.com/foobar/app",
            "example.com/foo/bar/x",
            "example.com:5000/foo",
            "example.com",
            "a.example.com/app",
            "a.b.example.com/app",
            "a.example.com:5000/foo",
            "a.example.com.evil.net/foo",
            "a.example.com.example.com/x",
            "reg.io/a.example.com",
            "notevil.com/x",
            "*evil.com/x",
            "a.registry.example.com/app",
            "x.example.com/odd/app",
            "docker.io/library/nginx",
            "docker.io/nginx",
            "a.com@sha256:1",
        ];
        // Every rotation of the tables, so that order (the first of equals) is covered too.
        for shift in 0..prefixes.len() {
            let registries: Vec<Registry> = prefixes
                .iter()
                .cycle()
                .skip(shift)
                .take(prefixes.len())
                .map(|p| table(p))
                .collect();
            let index = PrefixIndex::new(&registries);
            for name in names {
                assert_eq!(
                    index.find(name, &registries),
                    every_table(name, &registries),
                    "{name} (shift {shift})"
                );
            }
        }
    }
}
