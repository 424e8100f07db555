//! A small fake Kubernetes API server on 127.0.0.1:0: pod list and watch as real (resourceVersion,
//! BOOKMARK, 410 Gone, drops), Events recorded, Secrets and ServiceAccounts by name; a pod request
//! without `fieldSelector=spec.nodeName=<node>`, or a list or watch of secrets, is a violation.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::server::{Exchange, HttpServer, Response};

/// Bookmarks on an idle watch that asked for them, this often.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);
/// A watch without `timeoutSeconds` ends after this (the API server's default is 30-60 min).
const MAX_WATCH: Duration = Duration::from_secs(300);

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query, percent-encoded as sent.
    pub target: String,
}

/// A running fake API server; stops on drop.
pub struct KubeApi {
    /// Dropped after `Drop::drop` has told the open watches to end.
    _server: HttpServer,
    shared: Arc<Shared>,
    kubeconfig: PathBuf,
    _dir: TempDir,
    /// With [`KubeApi::start_tls`]: the CA and the server's certificate files, kept alive.
    _tls: Option<(crate::certs::TestCa, crate::certs::Leaf)>,
}

struct Shared {
    node: String,
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
}

#[derive(Default)]
struct State {
    /// With [`KubeApi::start_tls`]: every request must carry `Authorization: Bearer <token>`.
    token: Option<String>,
    /// The last resourceVersion handed out.
    rv: u64,
    pods: BTreeMap<(String, String), Value>,
    /// Every change: (resourceVersion, watch event type, object).
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from an older resourceVersion get 410 Gone (the history before it was compacted).
    oldest_valid: u64,
    /// Bumped to close every open watch without a word (a dropped connection).
    drop_generation: u64,
    /// Bumped to send every open watch `malformed_line`, after which it sends nothing more.
    malformed_generation: u64,
    malformed_line: String,
    /// Bumped to send every open watch a 410 Gone.
    gone_generation: u64,
    /// While set, pod requests get 503 (the API server is down).
    failing: bool,
    /// While set, every watch is answered 200 and ended at once, without a line.
    end_watches_at_once: bool,
    /// While set, a list that names a resourceVersion is refused 410 Expired.
    expire_versioned_lists: bool,
    events: Vec<Value>,
    patches: Vec<(String, Value)>,
    /// Served by name: (namespace, name) → object.
    secrets: BTreeMap<(String, String), Value>,
    service_accounts: BTreeMap<(String, String), Value>,
    /// Secret or service account GETs answered 403, as RBAC without the pull-secrets component.
    forbidden: Vec<(String, String, String)>,
    /// Secret and service account GETs answer this late (for client timeouts).
    delay: Duration,
    /// Event POSTs answer this late (a slow API server), and how many were in flight at once.
    event_delay: Duration,
    events_in_flight: usize,
    events_in_flight_peak: usize,
    violations: Vec<String>,
    requests: Vec<Seen>,
    open_watches: usize,
}

impl KubeApi {
    /// Serves the pods of every node but lets clients see only `node`'s; writes a kubeconfig for it.
    pub fn start(node: &str) -> Self {
        Self::serve(node, None)
    }

    /// As [`KubeApi::start`] but over TLS (a certificate for 127.0.0.1 from a test CA), every
    /// request refused 401 without `Authorization: Bearer <token>`; the kubeconfig names the CA
    /// file and a `tokenFile` beside it (see [`KubeApi::rotate_token`]).
    pub fn start_tls(node: &str, token: &str) -> Self {
        let ca = crate::certs::TestCa::new("fake API server CA");
        let leaf = ca.valid_leaf(&["127.0.0.1"]);
        let tls = crate::http::server_config(&leaf.cert_path, &leaf.key_path);
        let mut api = Self::serve(node, Some(tls));
        api.shared.lock().token = Some(token.to_string());
        let dir = api
            .kubeconfig
            .parent()
            .expect("kubeconfig dir")
            .to_path_buf();
        std::fs::write(dir.join("token"), format!("{token}\n")).expect("write token");
        let text = std::fs::read_to_string(&api.kubeconfig).expect("read kubeconfig");
        let text = text
            .replace("server: http://", "server: https://")
            .replace("  user: {}\n", "  user:\n    tokenFile: token\n")
            .replace(
                "    server: https://",
                &format!(
                    "    certificate-authority: {}\n    server: https://",
                    ca.cert_path_str()
                ),
            );
        std::fs::write(&api.kubeconfig, text).expect("write kubeconfig");
        api._tls = Some((ca, leaf));
        api
    }

    /// A new token in the kubeconfig's `tokenFile`, and the only one accepted from now on (as a
    /// service account token rotates in place).
    pub fn rotate_token(&self, token: &str) {
        let dir = self.kubeconfig.parent().expect("kubeconfig dir");
        std::fs::write(dir.join("token"), format!("{token}\n")).expect("write token");
        self.shared.lock().token = Some(token.to_string());
    }

    fn serve(node: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let shared = Arc::new(Shared {
            node: node.to_string(),
            state: Mutex::new(State {
                rv: 100,
                ..State::default()
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
        });
        let serving = Arc::clone(&shared);
        let server = HttpServer::start("kube-api", Ipv4Addr::LOCALHOST, tls, move |req, ex| {
            serve(req, ex, &serving)
        });
        let addr = server.addr();
        let dir = tempfile::Builder::new()
            .prefix("pw-kube-")
            .tempdir()
            .expect("kubeconfig tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
                 current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
            ),
        )
        .expect("write kubeconfig");
        KubeApi {
            _server: server,
            shared,
            kubeconfig,
            _dir: dir,
            _tls: None,
        }
    }

    /// A kubeconfig pointing at this server (for `KUBECONFIG`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn kubeconfig_str(&self) -> &str {
        self.kubeconfig.to_str().expect("UTF-8 tempdir")
    }

    /// Creates or replaces a pod (its `metadata.resourceVersion` is set here); watchers see ADDED or MODIFIED.
    pub fn apply_pod(&self, mut pod: Value) {
        let key = pod_key(&pod);
        let mut state = self.shared.lock();
        state.rv += 1;
        let rv = state.rv;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = if state.pods.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.pods.insert(key, pod.clone());
        state.history.push((rv, kind, pod));
        self.shared.changed.notify_all();
    }

    /// Deletes a pod; watchers see DELETED.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let mut state = self.shared.lock();
        let Some(mut pod) = state
            .pods
            .remove(&(namespace.to_string(), name.to_string()))
        else {
            panic!("no pod {namespace}/{name} to delete");
        };
        state.rv += 1;
        let rv = state.rv;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.history.push((rv, "DELETED", pod));
        self.shared.changed.notify_all();
    }

    /// Compacts the history: open watches get 410 Gone, and so does any watch resumed from an
    /// older resourceVersion; a client must relist.
    pub fn expire(&self) {
        let mut state = self.shared.lock();
        state.oldest_valid = state.rv;
        state.gone_generation += 1;
        self.shared.changed.notify_all();
    }

    /// While `on`, a list that names a resourceVersion is refused 410 Expired (as by a server
    /// that cannot serve that version any more); a list without one is served.
    pub fn expire_versioned_lists(&self, on: bool) {
        self.shared.lock().expire_versioned_lists = on;
    }

    /// Drops every open watch connection without ending the response.
    pub fn drop_watches(&self) {
        let mut state = self.shared.lock();
        state.drop_generation += 1;
        self.shared.changed.notify_all();
    }

    /// Sends every open watch `line` (as one chunk, a newline added: a hostile or broken API
    /// server's event that does not decode), then keeps those connections open and silent.
    pub fn send_malformed(&self, line: &str) {
        let mut state = self.shared.lock();
        state.malformed_line = line.to_string();
        state.malformed_generation += 1;
        self.shared.changed.notify_all();
    }

    /// The `resourceVersion` of every pod watch asked for, in order.
    pub fn watch_versions(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.target.contains("/pods") && r.target.contains("watch=true"))
            .map(|r| {
                r.target
                    .split(['?', '&'])
                    .find_map(|p| p.strip_prefix("resourceVersion="))
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    /// While `failing`, pod lists and watches get 503 (and open watches are dropped).
    /// While `on`, every watch is accepted and ended at once without a line (a broken proxy or
    /// API server): a client that watches again at once would spin.
    pub fn end_watches_at_once(&self, on: bool) {
        self.shared.lock().end_watches_at_once = on;
    }

    /// Pod watches requested so far.
    pub fn watches(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r.method == "GET" && r.target.contains("/pods") && r.target.contains("watch=true")
            })
            .count()
    }

    pub fn set_failing(&self, failing: bool) {
        let mut state = self.shared.lock();
        state.failing = failing;
        if failing {
            state.drop_generation += 1;
        }
        self.shared.changed.notify_all();
    }

    /// Adds or replaces a Secret (see [`secret`]), served by GET on its name.
    pub fn add_secret(&self, secret: Value) {
        let key = object_key(&secret);
        self.shared.lock().secrets.insert(key, secret);
    }

    /// Adds or replaces a ServiceAccount (see [`service_account`]), served by GET on its name.
    pub fn add_service_account(&self, account: Value) {
        let key = object_key(&account);
        self.shared.lock().service_accounts.insert(key, account);
    }

    /// GETs of `resource` (`secrets`, `serviceaccounts`) `namespace/name` get 403 Forbidden.
    pub fn forbid(&self, resource: &str, namespace: &str, name: &str) {
        self.shared.lock().forbidden.push((
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        ));
    }

    /// Secret and service account GETs are answered after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Event POSTs are answered `delay` late, as a slow API server would.
    pub fn set_event_delay(&self, delay: Duration) {
        self.shared.lock().event_delay = delay;
    }

    /// The most Event POSTs that were waiting for their answer at once.
    pub fn event_posts_peak(&self) -> usize {
        self.shared.lock().events_in_flight_peak
    }

    /// Event objects POSTed (events.k8s.io/v1), in order.
    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.clone()
    }

    /// Event PATCHes: (event name, merge patch).
    pub fn patches(&self) -> Vec<(String, Value)> {
        self.shared.lock().patches.clone()
    }

    /// Requests that broke the rules (no node field selector, unknown paths), with why.
    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    /// Every request, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.lock().requests.clone()
    }

    /// Pod lists served (first list plus relists).
    pub fn lists(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r.method == "GET" && r.target.contains("/pods") && !r.target.contains("watch=true")
            })
            .count()
    }

    /// Watches open now.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().open_watches
    }

    /// Polls until `ready` holds, at most `timeout`; panics naming `what` (with the requests seen).
    pub fn wait(&self, what: &str, timeout: Duration, ready: impl Fn(&KubeApi) -> bool) {
        let deadline = Instant::now() + timeout;
        while !ready(self) {
            assert!(
                Instant::now() < deadline,
                "fake API server: timed out after {timeout:?} waiting for {what}; requests: {:#?}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn pod_key(pod: &Value) -> (String, String) {
    object_key(pod)
}

/// (namespace, name) of an object; panics naming what is missing.
fn object_key(object: &Value) -> (String, String) {
    let field = |name: &str| {
        object["metadata"][name]
            .as_str()
            .unwrap_or_else(|| panic!("object without metadata.{name}: {object}"))
            .to_string()
    };
    (field("namespace"), field("name"))
}

fn on_node(pod: &Value, node: &str) -> bool {
    pod["spec"]["nodeName"].as_str() == Some(node)
}

/// A parsed request: the path and query percent-decoded.
struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn parse(request: &crate::server::Request) -> Self {
        let target = &request.path;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Request {
            method: request.method.clone(),
            path: percent_decode(path),
            query,
            body: request.body.clone(),
        }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request per connection (every answer says `Connection: close`).
fn serve(request: &crate::server::Request, exchange: &mut Exchange<'_>, shared: &Shared) {
    exchange.close();
    let token = {
        let mut state = shared.lock();
        state.requests.push(Seen {
            method: request.method.clone(),
            target: request.path.clone(),
        });
        state.token.clone()
    };
    if let Some(token) = token
        && request.header("authorization") != Some(format!("Bearer {token}").as_str())
    {
        let Answer::Json(code, body) = status(401, "Unauthorized", "Unauthorized") else {
            unreachable!("status() is a JSON answer")
        };
        let _ = exchange.respond(&Response::new(code).json(&body));
        return;
    }
    let request = Request::parse(request);
    let event_post = request.method == "POST" && request.path.ends_with("/events");
    if event_post {
        let mut state = shared.lock();
        state.events_in_flight += 1;
        state.events_in_flight_peak = state.events_in_flight_peak.max(state.events_in_flight);
    }
    match route(&request, shared) {
        Answer::Json(status, body) => {
            let _ = exchange.respond(&Response::new(status).json(&body));
        }
        Answer::Late(status, body, delay) => {
            let _ = exchange.respond(&Response::new(status).json(&body).delay(delay));
        }
        Answer::Watch(from) => watch(exchange, &request, from, shared),
    }
    if event_post {
        shared.lock().events_in_flight -= 1;
    }
}

enum Answer {
    Json(u16, Value),
    /// A JSON answer written after a delay.
    Late(u16, Value, Duration),
    /// Stream watch events after this resourceVersion.
    Watch(u64),
}

fn status(code: u16, reason: &str, message: &str) -> Answer {
    Answer::Json(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn route(request: &Request, shared: &Shared) -> Answer {
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["api", "v1", "pods"]) => pods(request, shared),
        (
            "GET",
            [
                "api",
                "v1",
                "namespaces",
                namespace,
                resource @ ("secrets" | "serviceaccounts"),
                name,
            ],
        ) if request.param("watch").is_none() => by_name(shared, resource, namespace, name),
        (_, ["api", "v1", "secrets"] | ["api", "v1", "namespaces", _, "secrets", ..]) => {
            let why = format!(
                "secrets may only be read by name: {} {}?{:?}",
                request.method, request.path, request.query
            );
            shared.lock().violations.push(why.clone());
            status(403, "Forbidden", &why)
        }
        (
            "POST",
            [
                "apis",
                "events.k8s.io",
                "v1",
                "namespaces",
                namespace,
                "events",
            ],
        ) => {
            let Ok(mut event) = serde_json::from_slice::<Value>(&request.body) else {
                return status(400, "BadRequest", "the body is not JSON");
            };
            let mut state = shared.lock();
            if event["metadata"]["namespace"].as_str() != Some(namespace) {
                state.violations.push(format!(
                    "Event posted to {namespace} for another namespace: {event}"
                ));
            }
            state.rv += 1;
            event["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            state.events.push(event.clone());
            Answer::Late(201, event, state.event_delay)
        }
        (
            "PATCH",
            [
                "apis",
                "events.k8s.io",
                "v1",
                "namespaces",
                _,
                "events",
                name,
            ],
        ) => {
            let Ok(patch) = serde_json::from_slice::<Value>(&request.body) else {
                return status(400, "BadRequest", "the body is not JSON");
            };
            let mut state = shared.lock();
            state.patches.push((name.to_string(), patch.clone()));
            Answer::Json(200, patch)
        }
        _ => {
            shared
                .lock()
                .violations
                .push(format!("unexpected {} {}", request.method, request.path));
            status(
                404,
                "NotFound",
                "the fake API server serves pods, events, secrets and service accounts only",
            )
        }
    }
}

/// A Secret or ServiceAccount by name: the object, 403 if forbidden, else a 404 `Status` as the
/// API server words it.
fn by_name(shared: &Shared, resource: &str, namespace: &str, name: &str) -> Answer {
    let state = shared.lock();
    let delay = state.delay;
    let key = (namespace.to_string(), name.to_string());
    let late = |code: u16, body: Value| Answer::Late(code, body, delay);
    let fail = |code: u16, reason: &str, message: String| {
        late(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": message, "reason": reason,
                   "details": {"name": name, "kind": resource}, "code": code}),
        )
    };
    if state
        .forbidden
        .iter()
        .any(|(r, ns, n)| r == resource && ns == namespace && n == name)
    {
        return fail(
            403,
            "Forbidden",
            format!(
                "{resource} \"{name}\" is forbidden: User \"system:serviceaccount:pullwatch:pullwatch\" \
                 cannot get resource \"{resource}\" in API group \"\" in the namespace \"{namespace}\""
            ),
        );
    }
    let found = if resource == "secrets" {
        state.secrets.get(&key)
    } else {
        state.service_accounts.get(&key)
    };
    match found {
        Some(object) => late(200, object.clone()),
        None => fail(404, "NotFound", format!("{resource} \"{name}\" not found")),
    }
}

/// A Secret as the API server returns it: `type` and each value of `data` base64-encoded.
pub fn secret(namespace: &str, name: &str, kind: &str, data: &[(&str, &[u8])]) -> Value {
    use base64::Engine as _;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(key, value)| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            (key.to_string(), json!(encoded))
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-secret-{name}"),
                     "resourceVersion": "1", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "type": kind,
        "data": data
    })
}

/// A ServiceAccount naming `pull_secrets` in its `imagePullSecrets`.
pub fn service_account(namespace: &str, name: &str, pull_secrets: &[&str]) -> Value {
    let refs: Vec<Value> = pull_secrets.iter().map(|s| json!({"name": s})).collect();
    json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-sa-{name}"),
                     "resourceVersion": "1", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "imagePullSecrets": refs
    })
}

/// A pod list or watch: only ever for this node.
fn pods(request: &Request, shared: &Shared) -> Answer {
    let want = format!("spec.nodeName={}", shared.node);
    let mut state = shared.lock();
    if request.param("fieldSelector") != Some(want.as_str()) {
        let why = format!(
            "pod request without fieldSelector={want}: {:?}",
            request.query
        );
        state.violations.push(why.clone());
        return status(400, "BadRequest", &why);
    }
    // The API server refuses resourceVersionMatch without a resourceVersion, and on a watch.
    if request.param("resourceVersionMatch").is_some()
        && (request.param("resourceVersion").is_none_or(str::is_empty)
            || request.param("watch") == Some("true"))
    {
        let why = format!(
            "resourceVersionMatch without resourceVersion, or on a watch: {:?}",
            request.query
        );
        state.violations.push(why.clone());
        return status(400, "BadRequest", &why);
    }
    if state.failing {
        return status(
            503,
            "ServiceUnavailable",
            "the API server is failing (test)",
        );
    }
    if request.param("watch") == Some("true") {
        let from = request
            .param("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(state.rv);
        return Answer::Watch(from);
    }
    if state.expire_versioned_lists
        && request
            .param("resourceVersion")
            .is_some_and(|v| !v.is_empty())
    {
        return status(410, "Expired", "too old resource version (test)");
    }
    let items: Vec<Value> = state
        .pods
        .values()
        .filter(|p| on_node(p, &shared.node))
        .cloned()
        .collect();
    Answer::Json(
        200,
        json!({"kind": "PodList", "apiVersion": "v1",
               "metadata": {"resourceVersion": state.rv.to_string()}, "items": items}),
    )
}

/// Streams watch events after `from` as chunked JSON lines until the watch times out, is dropped,
/// expires (410), or the client goes away.
fn watch(out: &mut Exchange<'_>, request: &Request, from: u64, shared: &Shared) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if out.write_raw(head.as_bytes()).is_err() {
        return;
    }
    let bookmarks = request.param("allowWatchBookmarks") == Some("true");
    let limit = request
        .param("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map_or(MAX_WATCH, Duration::from_secs);
    let ends = Instant::now() + limit;
    let mut state = shared.lock();
    if state.end_watches_at_once {
        drop(state);
        let _ = out.write_raw(b"0\r\n\r\n");
        return;
    }
    state.open_watches += 1;
    let (drops, gones) = (state.drop_generation, state.gone_generation);
    let malformed = state.malformed_generation;
    let mut muted = false;
    let mut sent = from;
    let mut last_write = Instant::now();
    let gone = |rv: u64, oldest: u64| {
        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("too old resource version: {rv} ({oldest})"),
            "reason": "Expired", "code": 410}})
    };
    let clean_end = loop {
        if shared.stopping.load(Ordering::SeqCst) || state.drop_generation != drops {
            break false;
        }
        if !muted && state.malformed_generation != malformed {
            let line = format!("{}\n", state.malformed_line);
            drop(state);
            let written = out
                .write_raw(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
                .is_ok();
            state = shared.lock();
            if !written {
                break false;
            }
            muted = true;
        }
        if muted {
            // Silent until dropped, stopped, or its time is up: a dead stream to the client.
            if Instant::now() >= ends {
                break false;
            }
            state = shared
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        if sent < state.oldest_valid || state.gone_generation != gones {
            let event = gone(sent, state.oldest_valid);
            drop(state);
            let _ = write_chunk(out, &event);
            state = shared.lock();
            break true;
        }
        let pending: Vec<Value> = state
            .history
            .iter()
            .filter(|(rv, _, pod)| *rv > sent && on_node(pod, &shared.node))
            .map(|(_, kind, pod)| json!({"type": kind, "object": pod}))
            .collect();
        let newest = state.rv;
        if !pending.is_empty() || (bookmarks && last_write.elapsed() >= BOOKMARK_EVERY) {
            drop(state);
            let mut events = pending;
            if events.is_empty() {
                events.push(
                    json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                    "metadata": {"resourceVersion": newest.to_string()}}}),
                );
            }
            let written = events.iter().all(|e| write_chunk(out, e).is_ok());
            state = shared.lock();
            if !written {
                break false;
            }
            sent = newest;
            last_write = Instant::now();
            continue;
        }
        if Instant::now() >= ends {
            break true;
        }
        state = shared
            .changed
            .wait_timeout(state, Duration::from_millis(100))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    };
    state.open_watches -= 1;
    drop(state);
    if clean_end {
        let _ = out.write_raw(b"0\r\n\r\n");
    }
    // Else a dropped connection: no last chunk, the socket just closes (the server closes it).
}

fn write_chunk(out: &mut Exchange<'_>, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    out.write_raw(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A pod as the API server returns it, on `node`, built up container by container.
pub struct PodBuilder {
    pod: Value,
}

/// A pod `namespace/name` on `node` with the given UID; add containers and their states.
pub fn pod(namespace: &str, name: &str, uid: &str, node: &str) -> PodBuilder {
    PodBuilder {
        pod: json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name, "namespace": namespace, "uid": uid,
                "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": {"app": name}
            },
            "spec": {
                "nodeName": node, "restartPolicy": "Always", "schedulerName": "default-scheduler",
                "containers": []
            },
            "status": {"phase": "Pending", "qosClass": "BestEffort", "startTime": "2025-01-01T00:00:00Z"}
        }),
    }
}

impl PodBuilder {
    /// A regular container waiting as the kubelet says: `reason` (ErrImagePull, …) and `message`.
    pub fn waiting(self, container: &str, image: &str, reason: &str, message: &str) -> Self {
        self.container(
            "containers",
            "containerStatuses",
            container,
            image,
            json!({
                "waiting": {"reason": reason, "message": message}
            }),
        )
    }

    /// An init container waiting as the kubelet says.
    pub fn init_waiting(self, container: &str, image: &str, reason: &str, message: &str) -> Self {
        self.container(
            "initContainers",
            "initContainerStatuses",
            container,
            image,
            json!({
                "waiting": {"reason": reason, "message": message}
            }),
        )
    }

    /// A regular container running.
    pub fn running(self, container: &str, image: &str) -> Self {
        self.container(
            "containers",
            "containerStatuses",
            container,
            image,
            json!({
                "running": {"startedAt": "2025-01-01T00:01:00Z"}
            }),
        )
    }

    fn container(
        mut self,
        list: &str,
        statuses: &str,
        name: &str,
        image: &str,
        state: Value,
    ) -> Self {
        let mut specs = self.pod["spec"][list]
            .as_array()
            .cloned()
            .unwrap_or_default();
        specs.push(json!({"name": name, "image": image, "imagePullPolicy": "IfNotPresent"}));
        self.pod["spec"][list] = Value::Array(specs);
        let running = state.get("running").is_some();
        let mut list = self.pod["status"][statuses]
            .as_array()
            .cloned()
            .unwrap_or_default();
        list.push(json!({
            "name": name, "image": image,
            "imageID": if running { "docker.io/library/app@sha256:0000000000000000000000000000000000000000000000000000000000000000" } else { "" },
            "ready": running, "restartCount": 0, "started": running, "state": state
        }));
        self.pod["status"][statuses] = Value::Array(list);
        if running {
            self.pod["status"]["phase"] = json!("Running");
        }
        self
    }

    /// Names these secrets in `spec.imagePullSecrets`, in order.
    pub fn pull_secrets(mut self, names: &[&str]) -> Self {
        let refs: Vec<Value> = names.iter().map(|s| json!({"name": s})).collect();
        self.pod["spec"]["imagePullSecrets"] = Value::Array(refs);
        self
    }

    /// Sets `spec.serviceAccountName`.
    pub fn service_account(mut self, name: &str) -> Self {
        self.pod["spec"]["serviceAccountName"] = json!(name);
        self
    }

    pub fn build(self) -> Value {
        self.pod
    }
}

/// The message of case `name` of the containerd error corpus (tests/fixtures/containerd_errors.json)
/// and its image, as the kubelet puts it in a container status: the CRI error as gRPC prints it,
/// `rpc error: code = … desc = <containerd's message>` (NotFound for containerd's not-found errors).
pub fn kubelet_message(case: &str) -> (String, String) {
    // The corpus is pullwatch's own test fixture, next to this crate.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/containerd_errors.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let corpus: Value = serde_json::from_str(&text).expect("the corpus is JSON");
    let found = corpus["cases"]
        .as_array()
        .and_then(|cases| cases.iter().find(|c| c["case"] == case))
        .unwrap_or_else(|| panic!("no case {case:?} in {}", path.display()));
    let message = found["message"].as_str().expect("a message").to_string();
    let image = found["image"].as_str().expect("an image").to_string();
    let code = if message.ends_with(": not found") {
        "NotFound"
    } else {
        "Unknown"
    };
    (image, format!("rpc error: code = {code} desc = {message}"))
}

/// The kubelet's waiting message while it backs off (pkg/kubelet/images/image_manager.go).
pub fn back_off_message(image: &str) -> String {
    format!("Back-off pulling image \"{image}\"")
}
