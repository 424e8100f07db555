//! distribution/reference's grammar for what follows the registry (`path[:tag][@digest]`, its
//! `regexp.go`), checked by hand: oci-spec's regex for it builds a matcher cache of megabytes
//! for every thread that parses a reference. Errors are oci-spec's, as the regex gave them.

use oci_spec::distribution::ParseError;

/// A tag is at most this long (`[\w][\w.-]{0,127}`).
const TAG_MAX: usize = 128;

/// The parts of `path[:tag][@digest]`, each checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Parts<'a> {
    pub repository: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// Splits and checks `remainder`; oci-spec's digest length rules apply after the grammar's.
pub fn parse(remainder: &str) -> Result<Parts<'_>, ParseError> {
    if remainder.is_empty() {
        return Err(ParseError::NameEmpty);
    }
    let (name, digest) = match remainder.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (remainder, None),
    };
    // The path has no ':' (the registry, with its port, is gone): one ends the path.
    let (repository, tag) = match name.split_once(':') {
        Some((repository, tag)) => (repository, Some(tag)),
        None => (name, None),
    };
    let grammatical = repository.split('/').all(component)
        && tag.is_none_or(valid_tag)
        && digest.is_none_or(valid_digest);
    if !grammatical {
        return Err(ParseError::ReferenceInvalidFormat);
    }
    if let Some(digest) = digest {
        digest_length(digest)?;
    }
    Ok(Parts {
        repository,
        tag,
        digest,
    })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn component(text: &str) -> bool {
    let lower_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = text.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !lower_alnum(*first) || !lower_alnum(*last) {
        return false;
    }
    // Each run of separators between alphanumerics is ".", "_", "__" or dashes.
    text.split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        .all(|run| {
            run.is_empty()
                || run == "."
                || run == "_"
                || run == "__"
                || run.bytes().all(|b| b == b'-')
        })
        && text.bytes().all(|b| lower_alnum(b) || b"._-".contains(&b))
}

/// `[\w][\w.-]{0,127}`, `\w` being ASCII as in Go.
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= TAG_MAX
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}`
fn valid_digest(digest: &str) -> bool {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let bytes = part.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphabetic()
            && bytes.iter().all(u8::is_ascii_alphanumeric)
    });
    algorithm_ok && encoded.len() >= 32 && encoded.bytes().all(|b| b.is_ascii_hexdigit())
}

/// oci-spec's rule after the grammar: a known algorithm's digest has its exact length.
fn digest_length(digest: &str) -> Result<(), ParseError> {
    let (algorithm, encoded) = digest
        .split_once(':')
        .ok_or(ParseError::DigestInvalidFormat)?;
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ParseError::DigestUnsupported),
    };
    match encoded.len() == want {
        true => Ok(()),
        false => Err(ParseError::DigestInvalidLength),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_like_distributions_grammar() {
        let sha = "a".repeat(64);
        let ok = [
            "library/nginx".to_string(),
            "a/b-c/d__e/f.g/h_i/j---k:v1.2_3-x".to_string(),
            format!("team/app@sha256:{sha}"),
            format!("team/app:1@sha256:{sha}"),
            format!("t:{}", "x".repeat(128)),
        ];
        for input in &ok {
            assert!(parse(input).is_ok(), "{input}");
        }
        let bad = [
            ("Team/app", ParseError::ReferenceInvalidFormat),
            ("team//app", ParseError::ReferenceInvalidFormat),
            ("team/app.", ParseError::ReferenceInvalidFormat),
            ("team/a..b", ParseError::ReferenceInvalidFormat),
            ("team/a___b", ParseError::ReferenceInvalidFormat),
            ("team/a.-b", ParseError::ReferenceInvalidFormat),
            ("team/-a", ParseError::ReferenceInvalidFormat),
            ("team/app:.tag", ParseError::ReferenceInvalidFormat),
            ("team/app:tâg", ParseError::ReferenceInvalidFormat),
            ("team/app:a:b", ParseError::ReferenceInvalidFormat),
            ("team/app@sha256:abc", ParseError::ReferenceInvalidFormat),
            ("team/app@sha256", ParseError::ReferenceInvalidFormat),
            ("", ParseError::NameEmpty),
        ];
        for (input, want) in bad {
            assert_eq!(parse(input).err(), Some(want), "{input}");
        }
        let long_tag = format!("t:{}", "x".repeat(129));
        assert_eq!(
            parse(&long_tag).err(),
            Some(ParseError::ReferenceInvalidFormat)
        );
        let md5 = format!("t@md5:{}", "a".repeat(32));
        assert_eq!(parse(&md5).err(), Some(ParseError::DigestUnsupported));
        let short = format!("t@sha256:{}", "a".repeat(63));
        assert_eq!(parse(&short).err(), Some(ParseError::DigestInvalidLength));
        let parts = parse("team/app:1.0").unwrap();
        assert_eq!(
            parts,
            Parts {
                repository: "team/app",
                tag: Some("1.0"),
                digest: None
            }
        );
    }
}
