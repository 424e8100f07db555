//! The chain's one connection: the tcp check's socket, with TLS on it for an HTTPS endpoint, handed
//! from check to check and closed politely at the end (TLS close_notify, then FIN), so the registry
//! sees one connection per check and logs no error for it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// `AsyncWrite` for a read-side wrapper `$wrapper<S>` with an `inner: S`: writes, flushes and
/// the shutdown go straight through.
macro_rules! writes_through {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                data: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use writes_through;

/// How long closing may take: a peer that does not read is not waited for.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A byte stream a check can talk over: a TCP socket, a proxy tunnel, or TLS on either.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// An open connection to an endpoint, ready for its first HTTP/1.1 request.
pub struct Conn {
    io: Box<dyn Io>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(io: impl Io + 'static) -> Self {
        Conn { io: Box::new(io) }
    }

    /// The stream itself, for an HTTP client connection.
    pub fn into_io(self) -> Box<dyn Io> {
        self.io
    }

    /// Closes politely: close_notify on TLS, then the socket's FIN; bounded by [`CLOSE_WAIT`].
    pub async fn close(self) {
        close(self.io).await;
    }
}

/// Shuts `io` down politely, within [`CLOSE_WAIT`]; a peer that does not take it is not waited for.
pub async fn close(mut io: Box<dyn Io>) {
    let _ = tokio::time::timeout(CLOSE_WAIT, io.shutdown()).await;
}

/// A stream with bytes already read from it put back in front: what a check read while waiting
/// for something else (the verdict on a client certificate) still reaches the HTTP client.
pub struct Rewound<S> {
    prefix: Vec<u8>,
    taken: usize,
    inner: S,
}

impl<S> Rewound<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewound {
            prefix,
            taken: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.prefix.len() {
            let rest = &this.prefix[this.taken..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.taken += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

writes_through!(Rewound);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_read_early_come_first_then_the_stream() {
        let (client, mut server) = tokio::io::duplex(64);
        server.write_all(b" world").await.unwrap();
        drop(server);
        let mut rewound = Rewound::new(b"hello".to_vec(), client);
        let mut all = String::new();
        rewound.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
