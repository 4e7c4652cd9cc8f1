//! The accepted TCP connection as HTTP/2 sees it: a stream that does not offer vectored
//! writes, so that small responses share system calls.
//!
//! h2 copies a DATA frame's payload into its write buffer only below a threshold: 256 bytes
//! when the transport writes vectored, 1,024 when it does not. A larger payload is chained
//! behind the buffer instead and must be written out before any other frame is buffered, so
//! every response above 256 bytes cost a `writev` of its own. A unary LookupAddress answer is
//! ~300 bytes: measured with `perf stat` under h2load (`benches/h2load.sh`), the server made one
//! `writev` per lookup, against one per 16 health checks (docs/benchmarks.md, unary lookups).
//! Without vectored writes, answers up to 1 KiB are copied and go out together; a larger one
//! costs one more `write` (the buffer, then the payload) instead of one `writev`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection whose writes are never vectored (see the module's doc).
pub struct Unvectored(pub TcpStream);

impl AsyncRead for Unvectored {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Unvectored {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Connected for Unvectored {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}
