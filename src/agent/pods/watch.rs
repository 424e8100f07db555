//! The watch on this node's pods: a list with `spec.nodeName=<node>` (never cluster-wide), then a
//! watch from the list's resourceVersion, watched again from the last one seen when the API
//! server ends it. Any error (410 Gone, a line that does not decode, a silent stream) drops the
//! watch and its connection; the next one lists afresh after a jittered, bounded backoff.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::api::{self, ApiClient, ApiError};
use super::object::Pod;
use crate::backoff::Backoff;

/// The watch's `timeoutSeconds`: the API server ends it then, and a stream silent for this long
/// plus [`READ_GRACE`] is taken for dead (bookmarks come about once a minute on a live one).
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(120);
/// How much longer than a watch's own timeout a read from the API server may take.
const READ_GRACE: Duration = Duration::from_secs(30);
/// A list answers within this, or is an error (one node's pods, from the API server's cache).
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// One node's pod list: 110 pods by default, a few hundred at most, tens of KiB each.
const MAX_LIST: usize = 64 * 1024 * 1024;
/// One watch event (one pod; etcd refuses objects over 1.5 MiB).
const MAX_EVENT: usize = 4 * 1024 * 1024;
/// A watch the API server ends sooner than this without sending anything is an error (so a
/// server that closes every watch at once is backed off from, not asked again in a loop).
const MIN_QUIET_WATCH: Duration = Duration::from_secs(1);
/// After an error, a fresh list waits this long, doubling, jittered.
pub const RELIST_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(30),
};
/// A watch that ran this long without an error starts the backoff over.
const BACKOFF_RESET: Duration = Duration::from_secs(120);

/// What the watch says of this node's pods: a list (`Init`, each pod, `InitDone`), then changes.
#[derive(Debug)]
pub enum PodEvent {
    Init,
    InitApply(Box<Pod>),
    InitDone,
    Apply(Box<Pod>),
    Delete(Box<Pod>),
}

/// Why a list or watch ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("list: {0}")]
    List(ApiError),
    #[error("watch: {0}")]
    Watch(ApiError),
    #[error("watch: the API server sent an error: {code} {reason}")]
    Sent { code: u16, reason: String },
    #[error("watch: an event of unknown type {0:?}")]
    UnknownType(String),
    #[error("watch: ended within {}s of starting, without a word", MIN_QUIET_WATCH.as_secs())]
    EndedAtOnce,
}

/// The pods of `node`, from a list served by the API server's cache, then a watch with
/// bookmarks. `on_ok` is told each time the API server accepts a list or a watch.
///
/// Any error ends the stream of one list and its watches, closing the connection at once; what
/// follows is a fresh list (its own resourceVersion), so nothing from a stream gone wrong is
/// trusted. The kubelet's reflector, too, drops a watch it cannot decode.
pub fn pods_on_node(
    client: ApiClient,
    node: &str,
    on_ok: Arc<dyn Fn() + Send + Sync>,
) -> impl Stream<Item = Result<PodEvent, WatchError>> + Send + 'static {
    let selector = api::escape(&node_selector(node));
    let list_from = Arc::new(Mutex::new(ListFrom::Cache));
    relisting(
        move || {
            let watch = Watch {
                client: client.clone(),
                selector: selector.clone(),
                on_ok: Arc::clone(&on_ok),
                list_from: Arc::clone(&list_from),
                version: None,
                pending: VecDeque::new(),
                body: None,
            };
            futures_util::stream::unfold(watch, |mut watch| async move {
                let item = watch.next().await;
                Some((item, watch))
            })
            .boxed()
        },
        RELIST_BACKOFF,
    )
}

/// Where a list reads from, as client-go's reflector chooses (tools/cache/reflector.go,
/// `relistResourceVersion`): the first from the API server's cache, any version (at 5,000 nodes
/// a quorum read per node would weigh on etcd); a relist from the cache but no older than the
/// last version seen, so pods never go back in time when another API server answers; after that
/// list is refused as expired (410), one quorum read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ListFrom {
    Cache,
    NotOlderThan(String),
    Quorum,
}

impl ListFrom {
    /// The list's query parameters for it.
    fn query(&self) -> String {
        match self {
            ListFrom::Cache => "&resourceVersion=0".into(),
            ListFrom::NotOlderThan(version) => format!(
                "&resourceVersion={}&resourceVersionMatch=NotOlderThan",
                api::escape(version)
            ),
            ListFrom::Quorum => String::new(),
        }
    }
}

/// One list and the watches that follow it.
struct Watch {
    client: ApiClient,
    selector: String,
    on_ok: Arc<dyn Fn() + Send + Sync>,
    /// Shared by every list of the stream: the last version seen, across relists.
    list_from: Arc<Mutex<ListFrom>>,
    /// The resourceVersion to watch from; none until the list is in.
    version: Option<String>,
    pending: VecDeque<PodEvent>,
    body: Option<Lines>,
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: Option<String>,
}

/// One line of a watch: its type and the object, decoded once the type says what it is.
#[derive(Deserialize)]
struct WatchLine<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    object: &'a RawValue,
}

/// What a BOOKMARK's object holds.
#[derive(Deserialize)]
struct Bookmark {
    #[serde(default)]
    metadata: ListMeta,
}

/// An ERROR's object: a Status.
#[derive(Deserialize)]
struct SentStatus {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    reason: String,
}

impl Watch {
    async fn next(&mut self) -> Result<PodEvent, WatchError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if self.version.is_none() {
                return self.list().await;
            }
            let body = match &mut self.body {
                Some(body) => body,
                None => {
                    let response = self
                        .client
                        .stream(&self.watch_path(), LIST_TIMEOUT)
                        .await
                        .map_err(WatchError::Watch)?;
                    (self.on_ok)();
                    self.body.insert(Lines::new(response))
                }
            };
            match body
                .next_line(WATCH_TIMEOUT + READ_GRACE)
                .await
                .map_err(WatchError::Watch)?
            {
                Some(line) => {
                    if let Some(event) = self.event(&line)? {
                        return Ok(event);
                    }
                }
                None => {
                    // The API server ended the watch (its timeout): watch again from where it was.
                    let at_once = !body.said_anything && body.opened.elapsed() < MIN_QUIET_WATCH;
                    self.body = None;
                    if at_once {
                        return Err(WatchError::EndedAtOnce);
                    }
                }
            }
        }
    }

    /// The list: `Init`, each pod, `InitDone` queued; the resourceVersion kept to watch from.
    async fn list(&mut self) -> Result<PodEvent, WatchError> {
        let from = self.list_from().clone();
        let path = format!(
            "/api/v1/pods?fieldSelector={}{}",
            self.selector,
            from.query()
        );
        let body = match self.client.get_bytes(&path, MAX_LIST, LIST_TIMEOUT).await {
            Ok(body) => body,
            Err(error) => {
                if matches!(error, ApiError::Status { code: 410, .. }) {
                    *self.list_from() = ListFrom::Quorum;
                }
                return Err(WatchError::List(error));
            }
        };
        (self.on_ok)();
        let (version, pods) = parse_list(&body).map_err(WatchError::List)?;
        drop(body);
        self.seen(version.unwrap_or_default());
        self.pending.extend(
            pods.into_iter()
                .map(|pod| PodEvent::InitApply(Box::new(pod))),
        );
        self.pending.push_back(PodEvent::InitDone);
        Ok(PodEvent::Init)
    }

    fn list_from(&self) -> std::sync::MutexGuard<'_, ListFrom> {
        self.list_from.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `version` is where the watch goes on from, and no list after this goes back before it.
    fn seen(&mut self, version: String) {
        if version.is_empty() && self.version.is_some() {
            return;
        }
        if !version.is_empty() {
            *self.list_from() = ListFrom::NotOlderThan(version.clone());
        }
        self.version = Some(version);
    }

    fn watch_path(&self) -> String {
        format!(
            "/api/v1/pods?fieldSelector={}&watch=true&allowWatchBookmarks=true&timeoutSeconds={}&resourceVersion={}",
            self.selector,
            WATCH_TIMEOUT.as_secs(),
            api::escape(self.version.as_deref().unwrap_or_default()),
        )
    }

    /// One line of the watch: a pod event, or `None` for a bookmark (its version kept).
    fn event(&mut self, line: &[u8]) -> Result<Option<PodEvent>, WatchError> {
        let event = match parse_line(line)? {
            Line::Bookmark(version) => {
                if let Some(version) = version {
                    self.seen(version);
                }
                return Ok(None);
            }
            Line::Pod(event) => event,
        };
        if let PodEvent::Apply(pod) | PodEvent::Delete(pod) = &event
            && let Some(version) = pod.metadata.resource_version.clone()
        {
            self.seen(version);
        }
        Ok(Some(event))
    }
}

/// What one line of a watch says.
pub enum Line {
    /// `Apply` or `Delete`.
    Pod(PodEvent),
    /// A bookmark's resourceVersion.
    Bookmark(Option<String>),
}

/// One line of a watch, decoded; an ERROR line or a type this does not know is an error.
pub fn parse_line(line: &[u8]) -> Result<Line, WatchError> {
    let parsed: WatchLine<'_> = api::decode(line).map_err(WatchError::Watch)?;
    let object = parsed.object.get().as_bytes();
    let pod = |bytes: &[u8]| -> Result<Box<Pod>, WatchError> {
        api::decode(bytes).map(Box::new).map_err(WatchError::Watch)
    };
    match parsed.kind.as_str() {
        "ADDED" | "MODIFIED" => Ok(Line::Pod(PodEvent::Apply(pod(object)?))),
        "DELETED" => Ok(Line::Pod(PodEvent::Delete(pod(object)?))),
        "BOOKMARK" => {
            let bookmark: Bookmark = api::decode(object).map_err(WatchError::Watch)?;
            Ok(Line::Bookmark(bookmark.metadata.resource_version))
        }
        "ERROR" => {
            let status: SentStatus = api::decode(object).map_err(WatchError::Watch)?;
            Err(WatchError::Sent {
                code: status.code,
                reason: crate::text::clip(&status.reason, 64),
            })
        }
        other => Err(WatchError::UnknownType(crate::text::clip(other, 32))),
    }
}

/// A pod list's pods and resourceVersion.
pub fn parse_list(body: &[u8]) -> Result<(Option<String>, Vec<Pod>), ApiError> {
    let list: PodList = api::decode(body)?;
    Ok((list.metadata.resource_version, list.items))
}

/// A streaming body cut into lines, each at most [`MAX_EVENT`] bytes.
struct Lines {
    response: reqwest::Response,
    buffer: Vec<u8>,
    opened: Instant,
    said_anything: bool,
}

impl Lines {
    fn new(response: reqwest::Response) -> Self {
        Lines {
            response,
            buffer: Vec::new(),
            opened: Instant::now(),
            said_anything: false,
        }
    }

    /// The next non-empty line, or `None` at the end; a read waits at most `timeout`.
    async fn next_line(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, ApiError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                self.said_anything = true;
                return Ok(Some(line));
            }
            if self.buffer.len() > MAX_EVENT {
                return Err(ApiError::TooLarge(MAX_EVENT));
            }
            let chunk = tokio::time::timeout(timeout, self.response.chunk())
                .await
                .map_err(|_| ApiError::Timeout(timeout))?
                .map_err(|e| ApiError::Transport(crate::text::error_chain(&e)))?;
            match chunk {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None if self.buffer.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                // A last line without its newline is still a line.
                None => {
                    self.said_anything = true;
                    return Ok(Some(std::mem::take(&mut self.buffer)));
                }
            }
        }
    }
}

/// Items of `start()`'s stream until it fails; then that stream is dropped and, after the
/// backoff, a new one started. Errors are passed on (the caller reports them).
pub fn relisting<T, E, F>(start: F, backoff: Backoff) -> impl Stream<Item = Result<T, E>> + Send
where
    T: Send + 'static,
    E: Send + 'static,
    F: Fn() -> BoxStream<'static, Result<T, E>> + Send + 'static,
{
    struct State<T, E, F> {
        start: F,
        current: Option<BoxStream<'static, Result<T, E>>>,
        failures: u32,
        last_failure: Option<Instant>,
    }
    let state = State {
        start,
        current: None,
        failures: 0,
        last_failure: None,
    };
    futures_util::stream::unfold(state, move |mut state| async move {
        loop {
            let stream = match &mut state.current {
                Some(stream) => stream,
                None => {
                    if state.failures > 0 {
                        tokio::time::sleep(backoff.delay(state.failures)).await;
                    }
                    state.current.insert((state.start)())
                }
            };
            match stream.next().await {
                Some(Ok(item)) => return Some((Ok(item), state)),
                Some(Err(error)) => {
                    state.current = None;
                    let calm = state
                        .last_failure
                        .is_none_or(|at| at.elapsed() >= BACKOFF_RESET);
                    state.failures = if calm { 1 } else { state.failures + 1 };
                    state.last_failure = Some(Instant::now());
                    return Some((Err(error), state));
                }
                // A watcher never ends; should one, a new one starts with a list, not at once.
                None => {
                    state.current = None;
                    state.failures = state.failures.max(1);
                }
            }
        }
    })
}

/// The field selector that keeps the watch on one node.
pub fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A stream that fails is dropped at once (its connection with it) and a new one started
    /// after the backoff; what the failed one would have sent next is never read.
    #[tokio::test]
    async fn an_error_drops_the_stream_and_starts_afresh() {
        use std::sync::atomic::AtomicBool;

        /// Flags its drop: the stream (and so its connection) is gone.
        struct Connection(Arc<AtomicBool>);
        impl Drop for Connection {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let starts = Arc::new(AtomicUsize::new(0));
        let first_closed = Arc::new(AtomicBool::new(false));
        let started = Arc::clone(&starts);
        let closed = Arc::clone(&first_closed);
        let start = move || {
            let n = started.fetch_add(1, Ordering::SeqCst);
            let connection = Connection(if n == 0 {
                Arc::clone(&closed)
            } else {
                Arc::new(AtomicBool::new(false))
            });
            let items: Vec<Result<String, String>> = if n == 0 {
                vec![
                    Ok("listed rv=5".into()),
                    Err("cannot decode".into()),
                    Ok("bogus rv=999999".into()),
                ]
            } else {
                vec![Ok(format!("listed again #{n}"))]
            };
            futures_util::stream::iter(items)
                .map(move |item| {
                    let _alive = &connection;
                    item
                })
                .chain(futures_util::stream::pending())
                .boxed()
        };
        let backoff = Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(50),
        };
        let mut stream = Box::pin(relisting(start, backoff));
        assert_eq!(stream.next().await, Some(Ok("listed rv=5".to_string())));
        assert_eq!(stream.next().await, Some(Err("cannot decode".to_string())));
        assert!(
            first_closed.load(Ordering::SeqCst),
            "the failed stream is dropped when its error is handed on"
        );
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a new stream within the backoff");
        assert_eq!(next, Some(Ok("listed again #1".to_string())));
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_selector_names_the_node() {
        assert_eq!(node_selector("node-1"), "spec.nodeName=node-1");
    }

    fn watch() -> Watch {
        let client = ApiClient::new(api::ApiConfig {
            server: "http://127.0.0.1:1".into(),
            ca_pem: None,
            insecure_skip_verify: false,
            identity_pem: None,
            auth: api::Auth::None,
        })
        .unwrap();
        Watch {
            client,
            selector: String::new(),
            on_ok: Arc::new(|| {}),
            list_from: Arc::new(Mutex::new(ListFrom::Cache)),
            version: Some("1".into()),
            pending: VecDeque::new(),
            body: None,
        }
    }

    #[test]
    fn watch_lines_row_by_row() {
        let pod = r#"{"metadata":{"name":"p","namespace":"a","resourceVersion":"7"}}"#;
        let mut w = watch();
        let event = w.event(format!(r#"{{"type":"ADDED","object":{pod}}}"#).as_bytes());
        assert!(
            matches!(event, Ok(Some(PodEvent::Apply(ref p))) if p.metadata.name.as_deref() == Some("p"))
        );
        assert_eq!(
            w.version.as_deref(),
            Some("7"),
            "a pod's resourceVersion is the resume point"
        );
        let event = w.event(format!(r#"{{"type":"DELETED","object":{pod}}}"#).as_bytes());
        assert!(matches!(event, Ok(Some(PodEvent::Delete(_)))));
        let bookmark =
            r#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"12"}}}"#;
        assert!(matches!(w.event(bookmark.as_bytes()), Ok(None)));
        assert_eq!(w.version.as_deref(), Some("12"));
        assert_eq!(
            *w.list_from(),
            ListFrom::NotOlderThan("12".into()),
            "a relist goes no further back"
        );
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version"}}"#;
        assert_eq!(
            w.event(gone.as_bytes()).unwrap_err().to_string(),
            "watch: the API server sent an error: 410 Expired"
        );
        assert_eq!(
            w.event(br#"{"type":"SHRUG","object":{}}"#)
                .unwrap_err()
                .to_string(),
            "watch: an event of unknown type \"SHRUG\""
        );
        let error = w
            .event(br#"{"type":"ADDED","object":{"metadata":{"name":["secret-ish"]}}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("watch: cannot decode the answer (not the expected object"),
            "{error}"
        );
        assert!(!error.contains("secret-ish"), "{error}");
        assert!(w.event(b"{\"type\":").is_err());
    }

    #[test]
    fn lists_read_from_the_cache_then_no_older_than_the_last_version() {
        assert_eq!(ListFrom::Cache.query(), "&resourceVersion=0");
        assert_eq!(
            ListFrom::NotOlderThan("12".into()).query(),
            "&resourceVersion=12&resourceVersionMatch=NotOlderThan"
        );
        assert_eq!(ListFrom::Quorum.query(), "");
    }
}
