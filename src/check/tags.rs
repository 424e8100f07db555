//! Tags of a repository for the manifest check: `GET tags/list`, paginated (`n`, `Link: rel="next"`)
//! with caps on pages, bytes and time; and the tags nearest to a missing one (edit distance, then version order).

use std::cmp::{Ordering, Reverse};
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Deserialize;

use super::auth::{Authorization, ErrorBody};
use crate::http_client::read_capped;
use crate::text::error_chain;

/// Tags asked per page.
pub const PAGE_SIZE: usize = 1000;
/// Pages read at most (a registry that ignores `n` sends everything in the first).
pub const MAX_PAGES: usize = 10;
/// Largest page read.
const MAX_PAGE_BYTES: usize = 4 << 20;
/// How many nearest tags a report shows.
pub const NEAREST: usize = 5;

/// The tags read, and whether that is all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagList {
    pub tags: Vec<String>,
    /// False when a cap (pages, time) stopped the listing early.
    pub complete: bool,
}

/// Why the tags could not be listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListFailed {
    /// `NAME_UNKNOWN`: the repository does not exist. Carries the server's message.
    NameUnknown(String),
    /// Another answer (401/403: listing not allowed).
    Status { status: u16, says: Option<String> },
    /// No (usable) answer.
    Failed(String),
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// Lists the tags of `repository` under the API root `api_path` (`/v2`) of `base_url`, following
/// `Link` pages on the same origin, until the last page or a cap (`MAX_PAGES`, `budget`). A
/// partial list is returned when at least one page came.
pub async fn list(
    client: &reqwest::Client,
    base_url: &str,
    api_path: &str,
    repository: &str,
    authorization: Option<&Authorization>,
    budget: Duration,
) -> Result<TagList, ListFailed> {
    let deadline = Instant::now() + budget;
    let base = Url::parse(base_url).map_err(|e| ListFailed::Failed(e.to_string()))?;
    let mut next = Some(
        base.join(&format!("{api_path}/{repository}/tags/list?n={PAGE_SIZE}"))
            .map_err(|e| ListFailed::Failed(e.to_string()))?,
    );
    let mut list = TagList::default();
    let mut pages = 0;
    while let Some(url) = next.take() {
        if pages == MAX_PAGES {
            return Ok(list);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let page = tokio::time::timeout(left, page(client, url, authorization)).await;
        let (tags, link) = match page {
            Ok(Ok(page)) => page,
            Ok(Err(failed)) if pages == 0 => return Err(failed),
            Err(_) if pages == 0 => {
                return Err(ListFailed::Failed(format!(
                    "no answer within {}",
                    humantime::format_duration(budget)
                )));
            }
            // A later page failed or ran out of time: what came so far is still useful.
            Ok(Err(_)) | Err(_) => return Ok(list),
        };
        pages += 1;
        list.tags.extend(tags);
        next = link
            .as_deref()
            .and_then(next_link)
            .and_then(|target| base.join(target).ok())
            .filter(|url| same_origin(url, &base));
    }
    list.complete = true;
    Ok(list)
}

/// One page: its tags and its `Link` header.
async fn page(
    client: &reqwest::Client,
    url: Url,
    authorization: Option<&Authorization>,
) -> Result<(Vec<String>, Option<String>), ListFailed> {
    let mut request = client.get(url);
    if let Some(authorization) = authorization {
        request = authorization.apply(request);
    }
    let response = request
        .send()
        .await
        .map_err(|e| ListFailed::Failed(error_chain(&e)))?;
    let status = response.status().as_u16();
    let link = response
        .headers()
        .get("link")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = read_capped(response, MAX_PAGE_BYTES)
        .await
        .map_err(|e| ListFailed::Failed(error_chain(&e)))?;
    match status {
        200 => {
            let page: Page = serde_json::from_slice(&body).map_err(|e| {
                ListFailed::Failed(format!("tags/list answered 200 OK but not a tag list: {e}"))
            })?;
            Ok((page.tags.unwrap_or_default(), link))
        }
        _ => {
            let errors = ErrorBody::parse(&body);
            if status == 404 && errors.has_code("NAME_UNKNOWN") {
                Err(ListFailed::NameUnknown(
                    errors.summary().unwrap_or_default(),
                ))
            } else {
                Err(ListFailed::Status {
                    status,
                    says: errors.summary(),
                })
            }
        }
    }
}

/// The target of `<…>; rel="next"` in a `Link` header.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then_some(target)
    })
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Up to `n` tags closest to `asked`: fewest edits, then longest common prefix, then newest version.
pub fn nearest<'a>(asked: &str, tags: &'a [String], n: usize) -> Vec<&'a str> {
    let mut scored: Vec<(usize, Reverse<usize>, &str)> = tags
        .iter()
        .filter(|t| t.as_str() != asked)
        .map(|t| {
            (
                edit_distance(asked, t),
                Reverse(common_prefix(asked, t)),
                t.as_str(),
            )
        })
        .collect();
    scored.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.cmp(&b.1))
            .then_with(|| version_order(b.2, a.2))
    });
    scored.dedup_by(|a, b| a.2 == b.2);
    scored.into_iter().take(n).map(|(_, _, t)| t).collect()
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

/// Natural order: runs of digits compare as numbers (`1.9` < `1.10`).
fn version_order(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let (ra, rest_a) = split_run(a);
        let (rb, rest_b) = split_run(b);
        let order = match (ra.parse::<u128>(), rb.parse::<u128>()) {
            (Ok(x), Ok(y)) => x.cmp(&y).then(ra.len().cmp(&rb.len())),
            _ => ra.cmp(rb),
        };
        if order != Ordering::Equal {
            return order;
        }
        (a, b) = (rest_a, rest_b);
    }
}

/// The leading run of digits, or of non-digits.
fn split_run(s: &str) -> (&str, &str) {
    let digits = s.starts_with(|c: char| c.is_ascii_digit());
    let end = s
        .find(|c: char| c.is_ascii_digit() != digits)
        .unwrap_or(s.len());
    s.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nearest_tags() {
        struct Case {
            asked: &'static str,
            tags: &'static [&'static str],
            want: &'static [&'static str],
        }
        let cases = [
            Case {
                asked: "1.277",
                tags: &[
                    "latest",
                    "1.26",
                    "1.27.1",
                    "1.27",
                    "1.277-alpine",
                    "2.0",
                    "1.28",
                ],
                want: &["1.27", "1.27.1", "1.28", "1.26", "2.0"],
            },
            Case {
                asked: "v1.10",
                tags: &["v1.9", "v1.11", "v1.1", "v1.100", "main"],
                want: &["v1.100", "v1.11", "v1.1", "v1.9", "main"],
            },
            Case {
                asked: "lates",
                tags: &["latest", "stable"],
                want: &["latest", "stable"],
            },
            Case {
                asked: "x",
                tags: &[],
                want: &[],
            },
            Case {
                asked: "1.0",
                tags: &["1.0", "1.1"],
                want: &["1.1"],
            },
        ];
        for case in cases {
            let list = tags(case.tags);
            assert_eq!(
                nearest(case.asked, &list, NEAREST),
                case.want,
                "asked {}",
                case.asked
            );
        }
        let many: Vec<String> = (0..50).map(|i| format!("1.{i}")).collect();
        assert_eq!(nearest("1.5x", &many, NEAREST).len(), NEAREST);
    }

    #[test]
    fn edit_distances_and_versions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("1.27", "1.27"), 0);
        assert_eq!(version_order("1.9", "1.10"), Ordering::Less);
        assert_eq!(version_order("1.10-alpine", "1.10"), Ordering::Greater);
        assert_eq!(version_order("v2", "v10"), Ordering::Less);
        assert_eq!(
            version_order("99999999999999999999999999999999999999999", "1"),
            Ordering::Greater
        );
    }

    #[test]
    fn link_headers() {
        struct Case {
            input: &'static str,
            want: Option<&'static str>,
        }
        let cases = [
            Case {
                input: r#"</v2/a/tags/list?n=2&last=b>; rel="next""#,
                want: Some("/v2/a/tags/list?n=2&last=b"),
            },
            Case {
                input: r#"<https://x/v2/a/tags/list?last=b>;rel=next"#,
                want: Some("https://x/v2/a/tags/list?last=b"),
            },
            Case {
                input: r#"</first>; rel="prev", </second>; rel="next""#,
                want: Some("/second"),
            },
            Case {
                input: r#"</v2/a/tags/list>; rel="prev""#,
                want: None,
            },
            Case {
                input: "garbage",
                want: None,
            },
        ];
        for case in cases {
            assert_eq!(next_link(case.input), case.want, "{}", case.input);
        }
        let base = Url::parse("https://reg.test:5000").unwrap();
        assert!(same_origin(&base.join("/v2/x").unwrap(), &base));
        assert!(!same_origin(
            &Url::parse("https://evil.test:5000/v2/x").unwrap(),
            &base
        ));
    }
}
