//! `WWW-Authenticate` as registries send it (RFC 7235): several challenges, quoted strings with
//! escapes.

/// One challenge of a `WWW-Authenticate` header: a scheme and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lower case: `basic`, `bearer`, …
    pub scheme: String,
    /// Names lower case, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value (RFC 7235): several challenges, quoted strings with escapes
/// and commas inside quotes. Errors say what is wrong and where.
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, String> {
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut challenges = Vec::new();
    loop {
        p.skip(|c| c == b' ' || c == b'\t' || c == b',');
        if p.eof() {
            break;
        }
        let scheme = p
            .token()
            .ok_or_else(|| p.error("expected an auth scheme"))?;
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        p.skip_ws();
        if !p.eof() && p.peek() != Some(b',') && !p.at_param() {
            // token68 (`Negotiate abc==`): no parameters to read.
            p.skip(|c| c.is_ascii_alphanumeric() || b"-._~+/=".contains(&c));
        }
        loop {
            p.skip_ws();
            let before = p.i;
            p.skip(|c| c == b' ' || c == b'\t' || c == b',');
            if p.eof() || !p.at_param() {
                if !p.eof() && p.i == before {
                    return Err(p.error("expected ',' between challenges"));
                }
                break;
            }
            let name = p.token().unwrap_or_default().to_ascii_lowercase();
            p.skip_ws();
            p.i += 1; // '=', as at_param saw
            p.skip_ws();
            let value = if p.peek() == Some(b'"') {
                p.quoted()?
            } else {
                p.token()
                    .ok_or_else(|| p.error(&format!("expected a value for {name}")))?
            };
            challenge.params.push((name, value));
            p.skip_ws();
            if !p.eof() && p.peek() != Some(b',') {
                return Err(p.error("expected ',' after a parameter"));
            }
        }
        challenges.push(challenge);
    }
    if challenges.is_empty() {
        return Err("empty header".into());
    }
    Ok(challenges)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, what: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&what) {
            self.i += 1;
        }
    }

    fn skip_ws(&mut self) {
        self.skip(|c| c == b' ' || c == b'\t');
    }

    fn is_tchar(c: u8) -> bool {
        c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        self.skip(Self::is_tchar);
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// At `name = value` (not token68's trailing `=`s).
    fn at_param(&self) -> bool {
        let mut j = self.i;
        while self.s.get(j).is_some_and(|c| Self::is_tchar(*c)) {
            j += 1;
        }
        if j == self.i {
            return false;
        }
        while matches!(self.s.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        if self.s.get(j) != Some(&b'=') {
            return false;
        }
        j += 1;
        while matches!(self.s.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        self.s
            .get(j)
            .is_some_and(|c| *c == b'"' || (Self::is_tchar(*c) && *c != b'='))
    }

    fn quoted(&mut self) -> Result<String, String> {
        let start = self.i;
        self.i += 1;
        let mut value = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => return Ok(String::from_utf8_lossy(&value).into_owned()),
                b'\\' => match self.peek() {
                    Some(escaped) => {
                        value.push(escaped);
                        self.i += 1;
                    }
                    None => break,
                },
                other => value.push(other),
            }
        }
        self.i = start;
        Err(self.error("unterminated quoted string"))
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_challenges() {
        struct Case {
            input: &'static str,
            want: Vec<(&'static str, Vec<(String, String)>)>,
        }
        let cases = [
            Case {
                input: r#"Basic realm="pullwatch-test""#,
                want: vec![("basic", params(&[("realm", "pullwatch-test")]))],
            },
            Case {
                input: r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
                want: vec![(
                    "bearer",
                    params(&[
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                    ]),
                )],
            },
            Case {
                input: r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:org/a:pull,push""#,
                want: vec![(
                    "bearer",
                    params(&[
                        ("realm", "https://ghcr.io/token"),
                        ("service", "ghcr.io"),
                        ("scope", "repository:org/a:pull,push"),
                    ]),
                )],
            },
            Case {
                input: r#"BEARER  Realm = "https://a.test/t" , error=insufficient_scope"#,
                want: vec![(
                    "bearer",
                    params(&[
                        ("realm", "https://a.test/t"),
                        ("error", "insufficient_scope"),
                    ]),
                )],
            },
            Case {
                input: r#"Basic realm="a \"quoted\" realm, with comma", Bearer realm="https://b.test/token",service=b"#,
                want: vec![
                    (
                        "basic",
                        params(&[("realm", r#"a "quoted" realm, with comma"#)]),
                    ),
                    (
                        "bearer",
                        params(&[("realm", "https://b.test/token"), ("service", "b")]),
                    ),
                ],
            },
            Case {
                input: "Negotiate abc==, Basic realm=x",
                want: vec![("negotiate", vec![]), ("basic", params(&[("realm", "x")]))],
            },
            Case {
                input: "Negotiate",
                want: vec![("negotiate", vec![])],
            },
            Case {
                input: "Negotiate YII=",
                want: vec![("negotiate", vec![])],
            },
        ];
        for case in cases {
            let got =
                parse_challenges(case.input).unwrap_or_else(|e| panic!("{}: {e}", case.input));
            let got: Vec<(&str, Vec<(String, String)>)> = got
                .iter()
                .map(|c| (c.scheme.as_str(), c.params.clone()))
                .collect();
            assert_eq!(got, case.want, "{}", case.input);
        }
    }

    #[test]
    fn malformed_challenges_are_errors_not_panics() {
        for bad in [
            "",
            "   ",
            r#"Bearer realm="https://unterminated"#,
            r#"Bearer realm="x" service="y""#,
            "=foo",
            r#"Bearer realm="x"garbage"#,
            "Bearer realm=\"\\",
            "\u{7f}\u{0}",
        ] {
            assert!(parse_challenges(bad).is_err(), "{bad:?} parsed");
        }
    }
}
