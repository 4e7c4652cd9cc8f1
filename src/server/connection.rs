//! The accepted TCP connection as HTTP/2 sees it: a stream that does not offer vectored
//! writes, so that small responses share system calls, and that holds its writes to send
//! them together, so that a large answer goes out in a few system calls, not one per frame.
//!
//! h2 copies a DATA frame's payload into its write buffer only below a threshold: 256 bytes
//! when the transport writes vectored, 1,024 when it does not. A larger payload is chained
//! behind the buffer instead and must be written out before any other frame is buffered, so
//! every response above 256 bytes cost a `writev` of its own. A unary LookupAddress answer is
//! ~300 bytes: measured with `perf stat` under h2load (`benches/h2load.sh`), the server made one
//! `writev` per lookup, against one per 16 health checks (docs/benchmarks.md, unary lookups).
//! Without vectored writes, answers up to 1 KiB are copied and go out together.
//!
//! Its connect info, handed to every call, carries the connection's record of the reply
//! headers whose names its HPACK table holds (`edge/indexed_names.rs`).
//!
//! Every write is held here (up to [`HELD_CAPACITY`] bytes) and sent at the next flush, with
//! a write that would not fit, or at shutdown. h2 flushes after each large DATA frame, and a
//! peer's frames are 16 KiB unless it asks for larger ones, so a batch answer of ~200 KB was
//! ~14 `writev`s and as many wake-ups of the peer. So a flush that finds bytes written since
//! the last flush and at least [`DEFER_FLUSH_FROM`] bytes held sends nothing: it wakes the
//! connection's task instead, and the flush of that next poll, which finds no new bytes,
//! sends the whole round in one call (docs/benchmarks.md, batched lookups, a round of writes
//! sent at once). A flush with fewer bytes held writes at once, so a small answer waits for
//! nothing, and at most [`MAX_DEFERRED_IN_A_ROW`] flushes are deferred before one writes.
//!
//! This rests on h2 (0.4) flushing on every poll of the connection, which the wake-up causes.
//! Should it stop doing so, answers would sit here until the connection's next write; the
//! integration tests' calls must see their answers' headers within a deadline, so large
//! batch answers held back (headers and all) fail them.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::edge::{ConnectInfo, IndexedNames};

/// The most bytes held at once; a write that would pass it sends what is held first.
const HELD_CAPACITY: usize = 256 * 1024;
/// From this many bytes held, a flush is deferred to the connection's next poll (see the
/// module's doc); below it, a flush writes at once, so a small answer waits for nothing.
const DEFER_FLUSH_FROM: usize = 16 * 1024;
/// The most flushes deferred in a row: a stream whose every poll adds a few bytes (a busy
/// watch) is not held back for more than this many polls of its connection.
const MAX_DEFERRED_IN_A_ROW: u8 = 16;
/// A write this large is part of a large answer: h2 writes a DATA frame as its head with the
/// payload's first KiB, then the rest of the payload (~15 KiB with a peer's default 16 KiB
/// frames, more with larger ones).
const LARGE_WRITE: usize = 8 * 1024;
/// Past this capacity, the buffer is freed once everything held is out, so that an idle
/// connection that once sent a large answer does not keep its buffer.
const KEEP_CAPACITY: usize = 16 * 1024;

/// An accepted connection (TCP, or TLS over it) whose writes are never vectored to h2, and
/// whose writes are held and sent together (see the module's doc).
pub struct Unvectored<S> {
    stream: S,
    /// Bytes accepted from h2 and not yet written to the socket.
    held: Vec<u8>,
    /// Whether bytes were accepted since the last flush: a flush that finds none is the end
    /// of a round of writes.
    written_since_flush: bool,
    /// Flushes deferred since bytes were last written out.
    deferred_in_a_row: u8,
    /// Which reply headers' names this connection's HPACK table holds, for its calls.
    indexed_names: IndexedNames,
}

impl<S: AsyncWrite + Unpin> Unvectored<S> {
    pub fn new(stream: S) -> Unvectored<S> {
        Unvectored {
            stream,
            held: Vec::new(),
            written_since_flush: false,
            deferred_in_a_row: 0,
            indexed_names: IndexedNames::default(),
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
                self.deferred_in_a_row = 0;
                if self.held.capacity() > KEEP_CAPACITY {
                    self.held = Vec::new();
                }
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
        if this.held.len() + buf.len() <= HELD_CAPACITY {
            if this.held.capacity() < this.held.len() + buf.len() && buf.len() >= LARGE_WRITE {
                // Room for a whole round of large writes at once: grown by doubling instead,
                // a 200 KB answer was copied once more.
                this.held.reserve_exact(HELD_CAPACITY - this.held.len());
            }
            this.held.extend_from_slice(buf);
            this.written_since_flush = true;
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
        if this.written_since_flush
            && this.held.len() >= DEFER_FLUSH_FROM
            && this.deferred_in_a_row < MAX_DEFERRED_IN_A_ROW
        {
            // h2 flushes after every large DATA frame: more frames of this round may follow.
            // The connection is polled again at once, and that poll's flush, finding no new
            // bytes, writes them all out.
            this.written_since_flush = false;
            this.deferred_in_a_row += 1;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_write_held_then(cx, &[]))?;
        this.written_since_flush = false;
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
    type ConnectInfo = ConnectInfo<S::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectInfo {
            info: self.stream.connect_info(),
            names: self.indexed_names.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A client and the server's side of its connection, on loopback.
    async fn connected() -> (TcpStream, Unvectored<TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, Unvectored::new(accepted))
    }

    /// Writes `len` bytes, which the connection must take at once (held).
    fn write_now(connection: &mut Unvectored<TcpStream>, cx: &mut Context<'_>, len: usize) {
        let poll = Pin::new(connection).poll_write(cx, &vec![7u8; len]);
        assert!(matches!(poll, Poll::Ready(Ok(n)) if n == len));
    }

    /// Flushes, which must complete at once (written out or deferred).
    fn flush_now(connection: &mut Unvectored<TcpStream>, cx: &mut Context<'_>) {
        assert!(matches!(Pin::new(connection).poll_flush(cx), Poll::Ready(Ok(()))));
    }

    /// Writes held and sent together arrive whole and in order, also when the socket is full
    /// and writes go out in parts.
    #[tokio::test]
    async fn held_writes_arrive_in_order_when_the_socket_fills() {
        let (client, mut connection) = connected().await;
        // Frames as h2 writes them: a head with the payload's first bytes, then the rest;
        // and runs of small frames. Each byte names its write, so a reordering shows.
        let writes: Vec<Vec<u8>> = (0..400u32)
            .map(|index| {
                let len = match index % 4 {
                    0 => 1024,
                    1 => 60_000,
                    2 => 30,
                    _ => DEFER_FLUSH_FROM + 1,
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

    /// Counts the wake-ups of the task polling the connection.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// What the peer has received so far, waiting a little for bytes in flight.
    async fn received_now(client: &TcpStream) -> usize {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut buf = vec![0; 1 << 20];
        let mut total = 0;
        while let Ok(n) = client.try_read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    }

    /// A flush after a small write sends it at once; a flush after a large round of writes
    /// wakes the connection and sends nothing, and the next flush (no new bytes since) sends
    /// the whole round.
    #[tokio::test]
    async fn a_large_round_of_writes_goes_out_at_the_flush_after_its_end() {
        let (client, mut connection) = connected().await;
        let wakes = std::sync::Arc::new(CountingWaker(Default::default()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let woken = || wakes.0.load(std::sync::atomic::Ordering::SeqCst);

        write_now(&mut connection, &mut cx, 300);
        flush_now(&mut connection, &mut cx);
        assert_eq!((received_now(&client).await, woken()), (300, 0));

        for _ in 0..3 {
            write_now(&mut connection, &mut cx, DEFER_FLUSH_FROM);
            flush_now(&mut connection, &mut cx);
        }
        assert_eq!((received_now(&client).await, woken()), (0, 3));
        flush_now(&mut connection, &mut cx);
        assert_eq!((received_now(&client).await, woken()), (3 * DEFER_FLUSH_FROM, 3));
    }

    /// A connection whose every poll writes a few more bytes has its flush deferred at most
    /// `MAX_DEFERRED_IN_A_ROW` times; the next flush writes everything held.
    #[tokio::test]
    async fn flushes_are_deferred_a_bounded_number_of_times_in_a_row() {
        let (client, mut connection) = connected().await;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut sent = 0;
        let mut write_and_flush = |connection: &mut Unvectored<TcpStream>, len: usize| {
            write_now(connection, &mut cx, len);
            flush_now(connection, &mut cx);
            sent += len;
            sent
        };
        write_and_flush(&mut connection, DEFER_FLUSH_FROM);
        for _ in 1..MAX_DEFERRED_IN_A_ROW {
            write_and_flush(&mut connection, 100);
        }
        assert_eq!(received_now(&client).await, 0);
        let all = write_and_flush(&mut connection, 100);
        assert_eq!(received_now(&client).await, all);
    }
}
