//! Go's duration syntax (`1h30m`, `500ms`), as the kubelet's and containerd's config files
//! write durations (`defaultCacheDuration`, hosts.toml `dial_timeout`). A leaf module.

use std::time::Duration;

/// A Go duration's sign matters: the kubelet refuses a negative default, and a negative
/// response duration means "already expired".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoDuration {
    Positive(Duration),
    Negative,
}

/// Go's `time.ParseDuration`: `[-+]` then one or more `<number><unit>` (`1h30m`, `1.5s`,
/// `500ms`); units `ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`; `0` alone allowed; at most
/// 2^63-1 nanoseconds.
pub fn parse_go_duration(text: &str) -> Result<GoDuration, String> {
    let invalid = || format!("{text:?} is not a duration (like \"12h\", \"1h30m\", \"500ms\")");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(GoDuration::Positive(Duration::ZERO));
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(after) => {
                let frac_len = after.bytes().take_while(u8::is_ascii_digit).count();
                after.split_at(frac_len)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        // Digits beyond what can overflow anyway are an overflow, as in Go.
        if int_part.len() > 20 {
            return Err(invalid());
        }
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut fraction: u128 = 0;
        let mut scale: u128 = 1;
        for digit in frac_part.bytes().take(18) {
            fraction = fraction * 10 + u128::from(digit - b'0');
            scale *= 10;
        }
        total = total
            .checked_add(whole.checked_mul(nanos_per).ok_or_else(invalid)?)
            .and_then(|t| t.checked_add(fraction * nanos_per / scale))
            .ok_or_else(invalid)?;
        if total > i64::MAX as u128 {
            return Err(invalid());
        }
        rest = after;
    }
    let secs = (total / 1_000_000_000) as u64;
    let nanos = (total % 1_000_000_000) as u32;
    Ok(if negative && total > 0 {
        GoDuration::Negative
    } else {
        GoDuration::Positive(Duration::new(secs, nanos))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        struct Case {
            input: &'static str,
            want: Option<GoDuration>,
        }
        let secs = |s: f64| Some(GoDuration::Positive(Duration::from_secs_f64(s)));
        let cases = [
            Case {
                input: "12h",
                want: secs(43200.0),
            },
            Case {
                input: "1h30m",
                want: secs(5400.0),
            },
            Case {
                input: "500ms",
                want: secs(0.5),
            },
            Case {
                input: "1.5s",
                want: secs(1.5),
            },
            Case {
                input: ".5m",
                want: secs(30.0),
            },
            Case {
                input: "2us",
                want: Some(GoDuration::Positive(Duration::from_nanos(2000))),
            },
            Case {
                input: "3µs",
                want: Some(GoDuration::Positive(Duration::from_nanos(3000))),
            },
            Case {
                input: "+5s",
                want: secs(5.0),
            },
            Case {
                input: "0",
                want: secs(0.0),
            },
            Case {
                input: "0s",
                want: secs(0.0),
            },
            Case {
                input: "-0s",
                want: secs(0.0),
            },
            Case {
                input: "-3s",
                want: Some(GoDuration::Negative),
            },
            Case {
                input: "2562047h47m16.854775807s",
                want: Some(GoDuration::Positive(Duration::from_nanos(i64::MAX as u64))),
            },
            Case {
                input: "2562048h",
                want: None,
            },
            Case {
                input: "",
                want: None,
            },
            Case {
                input: "12",
                want: None,
            },
            Case {
                input: "1h30",
                want: None,
            },
            Case {
                input: "1d",
                want: None,
            },
            Case {
                input: ".s",
                want: None,
            },
            Case {
                input: "1 h",
                want: None,
            },
            Case {
                input: "99999999999999999999999h",
                want: None,
            },
        ];
        for case in cases {
            assert_eq!(
                parse_go_duration(case.input).ok(),
                case.want,
                "{:?}",
                case.input
            );
        }
    }
}
