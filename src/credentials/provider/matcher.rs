//! `matchImages` patterns matched to an image the way the kubelet does it (`URLsMatchStr` over
//! `ParseSchemelessURL`): host labels globbed one by one, the port exact, the path a prefix.

/// A pattern or an image read as the kubelet reads it: `https://` put in front and parsed as a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SchemelessUrl {
    /// The host as written, with its port (`registry.io:8080`, `[::1]:5000`).
    host: String,
    /// The decoded path (`/team/app`), empty when none.
    path: String,
}

impl SchemelessUrl {
    /// Go's `url.Parse("https://" + text)` for what matters here: control characters, bad `%`
    /// escapes, characters a host cannot hold and non-numeric ports are errors; `?…` and `#…` are
    /// cut off (a query and a fragment), userinfo before `@` dropped.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err("invalid control character in URL".into());
        }
        let text = text.split_once('#').map_or(text, |(before, _)| before);
        let text = text.split_once('?').map_or(text, |(before, _)| before);
        let (authority, path) = match text.find('/') {
            Some(i) => text.split_at(i),
            None => (text, ""),
        };
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        check_host(host)?;
        Ok(SchemelessUrl {
            host: host.to_string(),
            path: unescape_path(path)?,
        })
    }

    /// Go's `net.SplitHostPort`, falling back to (whole host, no port) where it fails, then the
    /// host split on dots: the kubelet's `SplitURL`.
    fn labels_and_port(&self) -> (Vec<&str>, &str) {
        let host = self.host.as_str();
        let (name, port) = if let Some(rest) = host.strip_prefix('[') {
            match rest.split_once(']') {
                Some((inside, after)) => match after.strip_prefix(':') {
                    Some(port) if !port.contains(':') => (inside, port),
                    _ => (host, ""),
                },
                None => (host, ""),
            }
        } else {
            match host.rsplit_once(':') {
                Some((name, port)) if !name.contains(':') => (name, port),
                _ => (host, ""),
            }
        };
        (name.split('.').collect(), port)
    }
}

/// Whether `image` (the repository the kubelet looks up, `registry.io/team/app`) falls under the
/// pattern `glob`: same port, same number of host labels each matching its glob, and the
/// pattern's path a string prefix of the image's. Anything that does not parse matches nothing,
/// as in the kubelet.
pub(super) fn urls_match(glob: &str, image: &str) -> bool {
    let (Ok(glob), Ok(target)) = (SchemelessUrl::parse(glob), SchemelessUrl::parse(image)) else {
        return false;
    };
    let (glob_labels, glob_port) = glob.labels_and_port();
    let (target_labels, target_port) = target.labels_and_port();
    glob_port == target_port
        && glob_labels.len() == target_labels.len()
        && target.path.starts_with(&glob.path)
        && glob_labels
            .iter()
            .zip(&target_labels)
            .all(|(pattern, label)| label_match(pattern, label) == Ok(true))
}

/// Why a host cannot be parsed (Go's `parseHost` and its host escaping rules).
fn check_host(host: &str) -> Result<(), String> {
    let port = if let Some(rest) = host.strip_prefix('[') {
        let Some((_, after)) = rest.split_once(']') else {
            return Err("missing ']' in host".into());
        };
        match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(format!("invalid port {after:?} after host")),
        }
    } else {
        host.rsplit_once(':').map(|(_, port)| port)
    };
    if let Some(port) = port
        && !port.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("invalid port {:?} after host", format!(":{port}")));
    }
    let bytes = host.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            if !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return Err("invalid URL escape in host".into());
            }
        } else if b < 0x80 && !host_char_ok(b) {
            return Err(format!("invalid character {:?} in host name", b as char));
        }
    }
    Ok(())
}

/// The ASCII characters Go's URL parser lets stand unescaped in a host.
fn host_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.~!$&'()*+,;=:[]<>\"".contains(&b)
}

/// The path with `%XX` escapes decoded; a `%` not followed by two hex digits is an error.
fn unescape_path(path: &str) -> Result<String, String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let value = hex
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "invalid URL escape in path".to_string())?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A malformed glob (an unclosed `[`, an empty or reversed range): Go's `ErrBadPattern`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BadPattern;

/// Go's `filepath.Match` on one host label: `*` any run, `?` one character, `[a-z]` / `[^a-z]`
/// classes, `\` escapes. A malformed pattern never matches (the kubelet drops the error).
pub(super) fn label_match(pattern: &str, label: &str) -> Result<bool, BadPattern> {
    let pattern: Vec<char> = pattern.chars().collect();
    let label: Vec<char> = label.chars().collect();
    check_pattern(&pattern)?;
    Ok(glob(&pattern, &label))
}

/// Rejects what Go's `filepath.Match` rejects, whatever the text.
fn check_pattern(pattern: &[char]) -> Result<(), BadPattern> {
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            '\\' => {
                if i + 1 >= pattern.len() {
                    return Err(BadPattern);
                }
                i += 2;
            }
            '[' => i = class_end(pattern, i + 1).ok_or(BadPattern)?,
            _ => i += 1,
        }
    }
    Ok(())
}

/// The index after the `]` closing a class that starts at `start` (after its `[`), if well formed.
fn class_end(pattern: &[char], start: usize) -> Option<usize> {
    let mut i = start;
    if pattern.get(i) == Some(&'^') {
        i += 1;
    }
    let mut first = true;
    loop {
        let c = *pattern.get(i)?;
        if c == ']' && !first {
            return Some(i + 1);
        }
        first = false;
        let (lo, next) = class_char(pattern, i)?;
        i = next;
        if pattern.get(i) == Some(&'-') && pattern.get(i + 1) != Some(&']') {
            let (hi, next) = class_char(pattern, i + 1)?;
            if hi < lo {
                return None;
            }
            i = next;
        }
    }
}

/// One (possibly escaped) character inside a class; `-` and `]` need escaping.
fn class_char(pattern: &[char], i: usize) -> Option<(char, usize)> {
    match *pattern.get(i)? {
        '\\' => Some((*pattern.get(i + 1)?, i + 2)),
        '-' | ']' => None,
        c => Some((c, i + 1)),
    }
}

/// Whether `label` matches a checked `pattern`. Only the last `*` is ever backtracked to (as Go
/// does), so many stars cost at most pattern × label steps: the label is a pod's image.
fn glob(pattern: &[char], label: &[char]) -> bool {
    let (mut p, mut l) = (0, 0);
    // The pattern index after the last `*` seen, and the label index that star's run ends at.
    let mut star: Option<(usize, usize)> = None;
    while l < label.len() {
        if pattern.get(p) == Some(&'*') {
            star = Some((p + 1, l));
            p += 1;
        } else if let Some(next) = one_char(pattern, p, label[l]) {
            p = next;
            l += 1;
        } else if let Some((after, end)) = star {
            star = Some((after, end + 1));
            p = after;
            l = end + 1;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// The pattern index after its item at `p` (not a `*`) when that item admits `c`.
fn one_char(pattern: &[char], p: usize, c: char) -> Option<usize> {
    match *pattern.get(p)? {
        '?' => Some(p + 1),
        '\\' => (pattern.get(p + 1) == Some(&c)).then_some(p + 2),
        '[' => {
            let end = class_end(pattern, p + 1)?;
            class_contains(&pattern[p + 1..end - 1], c).then_some(end)
        }
        other => (other == c).then_some(p + 1),
    }
}

/// Whether the class body (between `[` and `]`) admits `c`.
fn class_contains(body: &[char], c: char) -> bool {
    let (negated, body) = match body.split_first() {
        Some(('^', rest)) => (true, rest),
        _ => (false, body),
    };
    let mut i = 0;
    let mut found = false;
    while let Some((lo, next)) = class_char(body, i) {
        i = next;
        let mut hi = lo;
        if body.get(i) == Some(&'-')
            && let Some((upper, next)) = class_char(body, i + 1)
        {
            hi = upper;
            i = next;
        }
        found |= lo <= c && c <= hi;
    }
    found != negated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_images_like_the_kubelet() {
        struct Case {
            input: (&'static str, &'static str),
            want: bool,
        }
        let cases = [
            // The examples of matchImages in kubelet/config/v1/types.go and the task page.
            Case {
                input: (
                    "123456789.dkr.ecr.us-east-1.amazonaws.com",
                    "123456789.dkr.ecr.us-east-1.amazonaws.com/app",
                ),
                want: true,
            },
            Case {
                input: ("*.azurecr.io", "example.azurecr.io/app"),
                want: true,
            },
            Case {
                input: ("*.azurecr.io", "azurecr.io/app"),
                want: false,
            },
            Case {
                input: ("gcr.io", "gcr.io/project/app"),
                want: true,
            },
            Case {
                input: ("*.*.registry.io", "foo.bar.registry.io/app"),
                want: true,
            },
            Case {
                input: ("*.*.registry.io", "foo.registry.io/app"),
                want: false,
            },
            Case {
                input: ("registry.io:8080/path", "registry.io:8080/path/app"),
                want: true,
            },
            Case {
                input: ("registry.io:8080/path", "registry.io:8080/other/app"),
                want: false,
            },
            // One glob, one label: `*.registry.io` is neither `registry.io` nor two labels deep.
            Case {
                input: ("*.registry.io", "foo.registry.io/app"),
                want: true,
            },
            Case {
                input: ("*.registry.io", "registry.io/app"),
                want: false,
            },
            Case {
                input: ("*.registry.io", "a.b.registry.io/app"),
                want: false,
            },
            Case {
                input: ("*.io", "k8s.gcr.io/app"),
                want: false,
            },
            Case {
                input: ("k8s.*.io", "k8s.gcr.io/app"),
                want: true,
            },
            Case {
                input: ("k8s.*", "k8s.io/app"),
                want: true,
            },
            Case {
                input: ("app*.k8s.io", "app2.k8s.io/app"),
                want: true,
            },
            Case {
                input: ("app*.k8s.io", "web.k8s.io/app"),
                want: false,
            },
            // Ports: exact, and a pattern without one does not cover an image with one.
            Case {
                input: ("registry.io:5000", "registry.io:5000/app"),
                want: true,
            },
            Case {
                input: ("registry.io:5000", "registry.io:5001/app"),
                want: false,
            },
            Case {
                input: ("registry.io", "registry.io:5000/app"),
                want: false,
            },
            Case {
                input: ("registry.io:5000", "registry.io/app"),
                want: false,
            },
            // The path is a string prefix (`/team` covers `/team2`), as in the kubelet.
            Case {
                input: ("registry.io/team", "registry.io/team2/app"),
                want: true,
            },
            Case {
                input: ("registry.io/team/app", "registry.io/team"),
                want: false,
            },
            // Go's filepath.Match in a label: `?` and classes; a broken class matches nothing.
            Case {
                input: ("reg[0-9].io", "reg1.io/app"),
                want: true,
            },
            Case {
                input: ("reg[^0-9].io", "reg1.io/app"),
                want: false,
            },
            Case {
                input: ("reg[0-9.io", "reg1.io/app"),
                want: false,
            },
            // `?` starts a URL query in the pattern, so it is no glob here (as in the kubelet).
            Case {
                input: ("reg?.io", "reg1.io/app"),
                want: false,
            },
            Case {
                input: ("docker.io", "docker.io/library/nginx"),
                want: true,
            },
            Case {
                input: ("[::1]:5000", "[::1]:5000/app"),
                want: true,
            },
            Case {
                input: ("10.0.0.*:5000", "10.0.0.7:5000/app"),
                want: true,
            },
            Case {
                input: ("Registry.io", "registry.io/app"),
                want: false,
            },
        ];
        for case in cases {
            let (glob, image) = case.input;
            assert_eq!(urls_match(glob, image), case.want, "{glob} ~ {image}");
        }
    }

    #[test]
    fn parses_patterns_like_go_url_parse() {
        struct Case {
            input: &'static str,
            want: Result<(), &'static str>,
        }
        let cases = [
            Case {
                input: "registry.io:8080/path",
                want: Ok(()),
            },
            Case {
                input: "*.azurecr.io",
                want: Ok(()),
            },
            Case {
                input: "registry.io:http",
                want: Err("invalid port"),
            },
            Case {
                input: "registry io",
                want: Err("invalid character ' '"),
            },
            Case {
                input: "reg\u{7}istry.io",
                want: Err("control character"),
            },
            Case {
                input: "registry.io/%zz",
                want: Err("invalid URL escape"),
            },
            Case {
                input: "[::1",
                want: Err("missing ']'"),
            },
            Case {
                input: "reg{1}.io",
                want: Err("invalid character '{'"),
            },
        ];
        for case in cases {
            let got = SchemelessUrl::parse(case.input).map(|_| ());
            match (got, case.want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(want)) => assert!(e.contains(want), "{}: {e}", case.input),
                (got, want) => panic!("{}: got {got:?}, want {want:?}", case.input),
            }
        }
    }

    /// A pattern of many stars against a long label (both from outside) is decided in a number of
    /// steps the product of their lengths bounds: tried star by star, it never finished.
    #[test]
    fn many_stars_are_matched_without_backtracking_each() {
        let pattern = "*a".repeat(30) + "*b";
        let label = "a".repeat(62);
        assert_eq!(label_match(&pattern, &label), Ok(false));
        assert_eq!(label_match(&pattern, &(label.clone() + "b")), Ok(true));
        assert_eq!(label_match("*[ab]*\\?*c", "xxbyy?zzc"), Ok(true));
        assert_eq!(label_match("*[ab]*\\?*c", "xxbyyzzc"), Ok(false));
    }

    #[test]
    fn globs_one_label_like_filepath_match() {
        struct Case {
            input: (&'static str, &'static str),
            want: Result<bool, BadPattern>,
        }
        let cases = [
            Case {
                input: ("*", "anything"),
                want: Ok(true),
            },
            Case {
                input: ("a?c", "abc"),
                want: Ok(true),
            },
            Case {
                input: ("a?c", "ac"),
                want: Ok(false),
            },
            Case {
                input: ("[a-c]x", "bx"),
                want: Ok(true),
            },
            Case {
                input: ("[^a-c]x", "bx"),
                want: Ok(false),
            },
            Case {
                input: ("[z-a]", "a"),
                want: Err(BadPattern),
            },
            Case {
                input: ("[ab", "a"),
                want: Err(BadPattern),
            },
            Case {
                input: ("x*", "y"),
                want: Ok(false),
            },
        ];
        for case in cases {
            let (pattern, label) = case.input;
            assert_eq!(
                label_match(pattern, label),
                case.want,
                "{pattern} ~ {label}"
            );
        }
    }
}
