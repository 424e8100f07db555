//! The limits against real sockets: a half-sent request, an idle keep-alive connection, a full
//! listener, an HTTP/2 client that never asks.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;

const LIMITS: Limits = Limits {
    header_timeout: Duration::from_millis(400),
    idle_timeout: Duration::from_millis(1500),
    max_connections: 4,
};
/// Slack for a loaded machine on top of a deadline.
const SLACK: Duration = Duration::from_secs(3);

fn router() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

async fn start() -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve(
        "test",
        listener,
        router(),
        Protocol::Http1,
        LIMITS,
        cancel.clone(),
    ));
    (addr, cancel, server)
}

/// Waits until the server closes `stream` (EOF or reset); returns how long that took.
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(start + bound, stream.read(&mut buf)).await {
            Err(_) => panic!("still open after {bound:?}"),
            Ok(Ok(0) | Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

async fn get_ok(stream: &mut TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(SLACK, stream.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn a_half_sent_request_is_closed_at_the_header_deadline() {
    let (addr, cancel, server) = start().await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut slow, LIMITS.header_timeout + SLACK).await;
    assert!(
        took >= LIMITS.header_timeout - Duration::from_millis(50),
        "{took:?}"
    );

    // One that sends a byte now and then gets no more time.
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let mut refused = None;
    for _ in 0..30 {
        if trickle.write_all(b"X").await.is_err() {
            refused = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("a trickling client was never closed");
    assert!(refused < LIMITS.header_timeout + SLACK / 2, "{refused:?}");

    cancel.cancel();
    tokio::time::timeout(SLACK, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let (addr, cancel, server) = start().await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nx-filler: {}\r\n\r\n",
        "a".repeat(MAX_HTTP1_BUFFER)
    );
    // The server may close before it has read everything.
    let _ = client.write_all(head.as_bytes()).await;
    let mut answer = vec![];
    let _ = tokio::time::timeout(SLACK, client.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    cancel.cancel();
    tokio::time::timeout(SLACK, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_keep_alive_connection_lives_for_the_idle_timeout_and_no_longer() {
    let (addr, cancel, server) = start().await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    get_ok(&mut client).await;
    // Past the header deadline, idle: still open, and a second request is served.
    tokio::time::sleep(LIMITS.header_timeout * 2).await;
    get_ok(&mut client).await;
    let idle = Instant::now();
    closed_within(&mut client, LIMITS.idle_timeout + SLACK).await;
    assert!(idle.elapsed() >= LIMITS.idle_timeout - Duration::from_millis(50));

    // A next request begun but never finished: the header deadline from its first byte.
    let mut client = TcpStream::connect(addr).await.unwrap();
    get_ok(&mut client).await;
    client.write_all(b"GET / HT").await.unwrap();
    let took = closed_within(&mut client, LIMITS.header_timeout + SLACK).await;
    assert!(took < LIMITS.idle_timeout, "{took:?}");
    cancel.cancel();
    tokio::time::timeout(SLACK, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_full_listener_still_serves_a_new_request_by_closing_the_oldest_idle_one() {
    let (addr, cancel, server) = start().await;
    let mut slow = vec![];
    for _ in 0..LIMITS.max_connections * 3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        slow.push(stream);
    }
    let mut probe = TcpStream::connect(addr).await.unwrap();
    get_ok(&mut probe).await;
    // All but the newest `max_connections - 1` slow ones were closed at once, long before their deadline.
    let evicted = slow.len() - (LIMITS.max_connections - 1);
    for stream in &mut slow[..evicted] {
        let took = closed_within(stream, SLACK).await;
        assert!(took < LIMITS.header_timeout, "{took:?}");
    }
    cancel.cancel();
    tokio::time::timeout(SLACK, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_http2_client_that_never_asks_is_closed_and_one_that_asks_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve(
        "test",
        listener,
        router(),
        Protocol::Http2,
        LIMITS,
        cancel.clone(),
    ));
    // Half the connection preface, then nothing.
    let mut silent = UnixStream::connect(&path).await.unwrap();
    silent.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(LIMITS.header_timeout + SLACK, silent.read(&mut buf)).await {
            Err(_) => panic!("the silent HTTP/2 client is still connected"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
        }
    }
    assert!(start.elapsed() >= LIMITS.header_timeout - Duration::from_millis(50));

    let stream = UnixStream::connect(&path).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::get("http://agent/")
        .body(http_body_util_empty())
        .unwrap();
    let response = tokio::time::timeout(SLACK, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    cancel.cancel();
    tokio::time::timeout(SLACK, server).await.unwrap().unwrap();
}

/// An empty request body for the HTTP/2 client.
fn http_body_util_empty() -> axum::body::Body {
    axum::body::Body::empty()
}
