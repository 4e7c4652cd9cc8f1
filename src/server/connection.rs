//! The accepted TCP connection as HTTP/2 sees it: a stream that does not offer vectored
//! writes, so that small responses share system calls, and that holds a small write back to
//! send it with the next one, so that a large DATA frame goes out in one system call.
//!
//! h2 copies a DATA frame's payload into its write buffer only below a threshold: 256 bytes
//! when the transport writes vectored, 1,024 when it does not. A larger payload is chained
//! behind the buffer instead and must be written out before any other frame is buffered, so
//! every response above 256 bytes cost a `writev` of its own. A unary LookupAddress answer is
//! ~300 bytes: measured with `perf stat` under h2load (`benches/h2load.sh`), the server made one
//! `writev` per lookup, against one per 16 health checks (docs/benchmarks.md, unary lookups).
//! Without vectored writes, answers up to 1 KiB are copied and go out together.
//!
//! A larger payload h2 then writes in two calls: its buffer (the frame's head and the first
//! ~1 KiB of the payload), then the rest. Each was a `write` of its own, so each 16 KiB frame of
//! a batch answer was two system calls and two segments. A write of up to [`HOLD_AT_MOST`]
//! bytes is therefore held here and sent with the next write (one `writev`), or at the flush
//! h2 ends every round of writes with.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Writes up to this many bytes are held for the next write or the flush.
const HOLD_AT_MOST: usize = 4096;
/// The most bytes held at once.
const HELD_CAPACITY: usize = 16 * 1024;

/// An accepted connection (TCP, or TLS over it) whose writes are never vectored to h2, and
/// whose small writes are sent with the next one (see the module's doc).
pub struct Unvectored<S> {
    stream: S,
    /// Bytes accepted from h2 and not yet written to the socket.
    held: Vec<u8>,
}

impl<S: AsyncWrite + Unpin> Unvectored<S> {
    pub fn new(stream: S) -> Unvectored<S> {
        Unvectored {
            stream,
            held: Vec::new(),
        }
    }

    /// Writes out every held byte, with as much of `next` as the same system call takes after
    /// them; returns how many bytes of `next` went (0 until every held byte is out).
    fn poll_write_held_then(&mut self, cx: &mut Context<'_>, next: &[u8]) -> Poll<io::Result<usize>> {
        while !self.held.is_empty() {
            let slices = [IoSlice::new(&self.held), IoSlice::new(next)];
            let written = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &slices))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if written >= self.held.len() {
                let of_next = written - self.held.len();
                self.held.clear();
                return Poll::Ready(Ok(of_next));
            }
            self.held.drain(..written);
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Unvectored<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Unvectored<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.len() <= HOLD_AT_MOST && this.held.len() + buf.len() <= HELD_CAPACITY {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // The held bytes go first, in the same system call as this write when they fit.
        let of_buf = ready!(this.poll_write_held_then(cx, buf))?;
        if of_buf > 0 {
            return Poll::Ready(Ok(of_buf));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held_then(cx, &[]))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held_then(cx, &[]))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<S: Connected> Connected for Unvectored<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> S::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Small writes (held) and large ones (sent with what is held) arrive whole and in order,
    /// also when the socket is full and writes go out in parts.
    #[tokio::test]
    async fn held_writes_arrive_in_order_when_the_socket_fills() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut connection = Unvectored::new(accepted);
        // Frames as h2 writes them: a head with the payload's first bytes, then the rest;
        // and runs of small frames. Each byte names its write, so a reordering shows.
        let writes: Vec<Vec<u8>> = (0..400u32)
            .map(|index| {
                let len = match index % 4 {
                    0 => 1024,
                    1 => 60_000,
                    2 => 30,
                    _ => HOLD_AT_MOST + 1,
                };
                vec![(index % 251) as u8; len]
            })
            .collect();
        let expected: Vec<u8> = writes.concat();
        let reader = tokio::spawn(async move {
            let mut client = client;
            // Let the socket's buffers fill first, so that writes go out in parts.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.unwrap();
            received
        });
        for write in &writes {
            connection.write_all(write).await.unwrap();
        }
        connection.flush().await.unwrap();
        connection.shutdown().await.unwrap();
        drop(connection);
        let received = reader.await.unwrap();
        assert_eq!(received.len(), expected.len());
        assert!(received == expected, "the bytes arrived reordered");
    }
}
