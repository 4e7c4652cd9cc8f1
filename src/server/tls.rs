//! TLS terminated by the server itself (`--tls-cert`, `--tls-key`, `--tls-client-ca`), so that
//! the HTTP/2 connection over it is wrapped like a plaintext one ([`Unvectored`]): tonic's own
//! TLS hands h2 tokio-rustls's stream, which says it writes vectored, and h2 then flushed every
//! unary answer above 256 bytes alone (one `sendto` per lookup; docs/benchmarks.md, unary
//! lookups over TLS). The rustls configuration is tonic's: ALPN h2, client certificates
//! required and verified against the CA when one is given. The connection's
//! `TlsConnectInfo` (peer address and certificates, for the auth layer) is tonic's type too.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::{Stream, StreamExt};
use tracing::debug;

use super::ServeError;
use super::connection::Unvectored;

/// A handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handed over but not yet taken by the server.
const ACCEPTED_QUEUE: usize = 64;

/// The acceptor for `cert` and `key` (PEM), requiring client certificates signed by
/// `client_ca` when given.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, ServeError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| ServeError::Tls(format!("cannot read {}: {error}", path.display())))
    };
    let certificates = |path: &Path| {
        let pem = read(path)?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| ServeError::Tls(format!("{} is not a PEM certificate chain: {error}", path.display())))?;
        if chain.is_empty() {
            return Err(ServeError::Tls(format!("{} holds no PEM certificate", path.display())));
        }
        Ok(chain)
    };
    let builder = ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certificates(path)?);
            let verifier = WebPkiClientVerifier::builder(roots.into())
                .build()
                .map_err(|error| ServeError::Tls(format!("{} cannot verify clients: {error}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let private_key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|error| ServeError::Tls(format!("{} is not a PEM private key: {error}", key.display())))?;
    let mut config = builder
        .with_single_cert(certificates(cert)?, private_key)
        .map_err(|error| {
            ServeError::Tls(format!(
                "{} and {} do not make an identity: {error}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TLS connections of `accepted`: each handshake runs in a task of its own (a slow client
/// holds up no one), and a failed or timed-out one is logged at debug and dropped, as tonic
/// does. Accept errors pass through for the server to judge. Ends when the server stops
/// taking connections: tonic drops this stream at the stop signal, so the listener closes (new
/// connections are refused during the drain) and the handshaken connections still queued are
/// closed with it.
pub fn incoming<S>(
    accepted: S,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = std::io::Result<Unvectored<TlsStream<TcpStream>>>> + Send + 'static
where
    S: Stream<Item = std::io::Result<TcpStream>> + Send + 'static,
{
    let (handed, taken) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        loop {
            let next = tokio::select! {
                next = accepted.next() => next,
                () = handed.closed() => return,
            };
            let Some(next) = next else { return };
            let tcp = match next {
                Ok(tcp) => tcp,
                Err(error) => {
                    if handed.send(Err(error)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let (acceptor, handed) = (acceptor.clone(), handed.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = handed.send(Ok(Unvectored::new(tls))).await;
                    }
                    Ok(Err(error)) => debug!(%error, "TLS handshake failed"),
                    Err(_) => debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(taken)
}
