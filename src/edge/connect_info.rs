//! What a call knows of the connection it came over: tonic hands every call the connect info
//! of its connection (`server/connection.rs` builds it), which here wraps tonic's own
//! (`TcpConnectInfo`, or `TlsConnectInfo` over it) with the connection's [`IndexedNames`].
//! [`CallConnection::of`] is the one place that knows which types that info can take; the
//! auth layer reads the peer and its certificates from it, the edge the names.

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::IndexedNames;

/// A connection's connect info as each of its calls finds it in its request's extensions.
#[derive(Clone, Debug)]
pub struct ConnectInfo<I> {
    pub info: I,
    pub names: IndexedNames,
}

/// A call's connection.
pub struct CallConnection<'a> {
    pub tcp: &'a TcpConnectInfo,
    /// The TLS session's info (the peer's certificates), over TLS.
    pub tls: Option<&'a TlsConnectInfo<TcpConnectInfo>>,
    pub names: &'a IndexedNames,
}

impl<'a> CallConnection<'a> {
    /// The connection of the call whose request has `extensions`; none when the call did not
    /// come over one of the server's connections (as in the layers' unit tests). Plaintext is
    /// looked for first: one lookup in the common case.
    pub fn of(extensions: &'a http::Extensions) -> Option<CallConnection<'a>> {
        if let Some(plain) = extensions.get::<ConnectInfo<TcpConnectInfo>>() {
            return Some(CallConnection {
                tcp: &plain.info,
                tls: None,
                names: &plain.names,
            });
        }
        let tls = extensions.get::<ConnectInfo<TlsConnectInfo<TcpConnectInfo>>>()?;
        Some(CallConnection {
            tcp: tls.info.get_ref(),
            tls: Some(&tls.info),
            names: &tls.names,
        })
    }
}
