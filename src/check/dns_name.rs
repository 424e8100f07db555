//! Whether a host name can be asked of DNS at all, by the rule of Go's resolver (the runtime's,
//! `net.isDomainName`): a name it refuses is "no such host" with no query sent, so none is sent here.

/// Most characters in a name (254 with the root's trailing dot).
pub const MAX_NAME: usize = 253;
/// Most characters in one label.
pub const MAX_LABEL: usize = 63;

/// Why `name` is not a name Go's resolver would look up; `None` when it would.
pub fn problem(name: &str) -> Option<String> {
    if name == "." {
        return None;
    }
    let bare = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Some("empty".into());
    }
    if bare.len() > MAX_NAME {
        return Some(format!("{} characters, more than {MAX_NAME}", bare.len()));
    }
    if let Some(bad) = bare
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "{bad:?} is not allowed: letters, digits, '-', '_' and '.' only"
        ));
    }
    for (index, label) in bare.split('.').enumerate() {
        let place = index + 1;
        if label.is_empty() {
            return Some(format!("label {place} is empty"));
        }
        if label.len() > MAX_LABEL {
            return Some(format!(
                "label {place} has {} characters, more than {MAX_LABEL}",
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label {place} starts or ends with '-'"));
        }
    }
    if bare.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Some("only digits and dots, yet not an IP address".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_gos_resolver_refuses() {
        struct Case {
            name: String,
            want: Option<&'static str>,
        }
        let case = |name: &str, want| Case {
            name: name.to_string(),
            want,
        };
        let label63 = "a".repeat(63);
        let cases = [
            case("registry.test", None),
            case("registry.test.", None),
            case("REGISTRY.Test", None),
            case("_srv.my-host.test", None),
            case("localhost", None),
            case(".", None),
            case("x1.2", None),
            case(&format!("{label63}.test"), None),
            case(
                &format!("{}a.test", label63),
                Some("label 1 has 64 characters, more than 63"),
            ),
            case(
                &format!("registry.{}b", label63),
                Some("label 2 has 64 characters, more than 63"),
            ),
            case(
                &[label63.as_str(); 4].join("."),
                Some("255 characters, more than 253"),
            ),
            case("", Some("empty")),
            case("a..b", Some("label 2 is empty")),
            case(".a", Some("label 1 is empty")),
            case("-a.test", Some("label 1 starts or ends with '-'")),
            case("a-.test", Some("label 1 starts or ends with '-'")),
            case(
                "a b.test",
                Some("' ' is not allowed: letters, digits, '-', '_' and '.' only"),
            ),
            case(
                "é.test",
                Some("'é' is not allowed: letters, digits, '-', '_' and '.' only"),
            ),
            case("1.2.3", Some("only digits and dots, yet not an IP address")),
        ];
        for case in cases {
            assert_eq!(problem(&case.name).as_deref(), case.want, "{:?}", case.name);
        }
        // 253 characters, with or without the root's dot, is the most there is.
        let longest = format!("{}.{}.{}.{}", label63, label63, label63, "a".repeat(61));
        assert_eq!(longest.len(), 253);
        assert_eq!(problem(&longest), None);
        assert_eq!(problem(&format!("{longest}.")), None);
    }
}
