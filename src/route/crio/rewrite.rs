//! How a `[[registry]]` prefix matches an image name and rewrites it to its location (or a
//! mirror's), as containers/image's `rewriteReference` does, wildcard prefixes included.

use super::parse::is_domain;

/// How much of `name` (`host[:port]/repository`) a prefix matches (what a location replaces), or
/// `None`: the name must start with it followed by `/`, `:`, `@` or nothing; `*.example.com`
/// matches a host ending in `.example.com`, up to the end of that suffix.
pub(super) fn match_len(name: &str, prefix: &str) -> Option<usize> {
    let (start, matched) = match prefix.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') => {
            // The first occurrence, and within the host (containers/image's subdomain match).
            let at = name.find(suffix)?;
            if name[..at].contains('/') {
                return None;
            }
            (at, suffix)
        }
        _ => (0, name.strip_prefix(prefix).map(|_| prefix)?),
    };
    let end = start + matched.len();
    let rest = &name[end..];
    (rest.is_empty() || rest.starts_with(['/', ':', '@'])).then_some(end)
}

/// The name an endpoint at `location` is asked for `name` (`host[:port][/repository]`) under
/// `prefix`, as containers/image's `rewriteReference`: `location` + what follows the prefix's
/// match. A wildcard's match ends with its suffix, so the image's whole host is replaced and its
/// port and path kept (`a.example.com:5000/app` under `*.example.com` at `mirror.example` is
/// `mirror.example:5000/app`); without location, the name as it is. `None`: no valid name
/// (`mirror.example/sub:5000/app`), which fails the pull in containers/image.
pub(super) fn rewrite(name: &str, prefix: &str, location: &str) -> Option<String> {
    let end = match_len(name, prefix)?;
    if location.is_empty() {
        return prefix.starts_with("*.").then(|| name.to_string());
    }
    let rewritten = format!("{location}{}", &name[end..]);
    let (host, path) = match rewritten.split_once('/') {
        Some((host, path)) => (host, Some(path)),
        None => (rewritten.as_str(), None),
    };
    let path_ok = path.is_none_or(|path| {
        path.split('/')
            .all(|c| !c.is_empty() && !c.contains([':', '@']))
    });
    (is_domain(host) && path_ok).then_some(rewritten)
}

/// What one endpoint is asked: the `host[:port]` contacted, and the repository when it is not
/// the image's own.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AskedAs {
    pub(super) authority: String,
    pub(super) repository: Option<String>,
}

/// [`rewrite`], split for an endpoint; `None` when the rewrite gives no valid name.
pub(super) fn asked_as(name: &str, prefix: &str, location: &str) -> Option<AskedAs> {
    let rewritten = rewrite(name, prefix, location)?;
    let original = name.split_once('/').map(|(_, r)| r);
    let (authority, repository) = match rewritten.split_once('/') {
        Some((authority, repository)) => (authority, Some(repository)),
        None => (rewritten.as_str(), None),
    };
    Some(AskedAs {
        authority: authority.to_string(),
        repository: repository
            .filter(|r| original.is_some_and(|o| o != *r))
            .map(str::to_string),
    })
}
