//! The Routing service as it is served: tonic's generated server for every method but the two
//! lookups, whose answers go to HTTP/2 in the buffers they were written in.
//!
//! tonic's encoder writes every answer into a buffer of its own, so a batch answer (~200 KB
//! for 1,000 addresses) was copied once more on its way out: a tenth of the server's CPU
//! under batches (docs/benchmarks.md, a batch answer handed over as written); a unary
//! lookup's answer (~300 bytes) is written with room for the frame's prefix in front, so it
//! is one buffer from the route cache to HTTP/2. Here the request is read as tonic reads it
//! (its `Streaming` with this crate's codec, the same size limit and the same errors), the
//! handlers are the same, and the answers are the same bytes: one gRPC message, then
//! `grpc-status: 0` in trailers. A refused call is tonic's trailers-only response. The layers
//! in front of every service (the edge's limits and deadlines, access control) see these
//! methods as they see the others.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Extensions, HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::BoxFuture;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tower::Service;

use crate::api::codec::AddressingCodec;
use crate::api::routing::RoutingService;
use crate::api::wire::grpc_frame_prefix;
use crate::pb::api;
use crate::pb::api::routing_server::{Routing, RoutingServer};

/// The methods answered here rather than by the generated server.
const LOOKUP_ADDRESS: &str = "/addressing.v1.Routing/LookupAddress";
const LOOKUP_ADDRESSES: &str = "/addressing.v1.Routing/LookupAddresses";
/// The headers a handler's metadata may not set on an answer (tonic's reserved ones).
const RESERVED: [&str; 5] = ["te", "content-type", "grpc-message", "grpc-message-type", "grpc-status"];

/// `addressing.v1.Routing`, as the router serves it.
#[derive(Clone)]
pub struct RoutingEndpoint {
    service: Arc<RoutingService>,
    generated: RoutingServer<RoutingService>,
    max_message_bytes: usize,
}

impl RoutingEndpoint {
    /// Requests above `max_message_bytes` are refused, as the other services refuse them.
    pub fn new(service: RoutingService, max_message_bytes: usize) -> RoutingEndpoint {
        let service = Arc::new(service);
        RoutingEndpoint {
            generated: RoutingServer::from_arc(Arc::clone(&service)).max_decoding_message_size(max_message_bytes),
            service,
            max_message_bytes,
        }
    }
}

impl NamedService for RoutingEndpoint {
    const NAME: &'static str = <RoutingServer<RoutingService> as NamedService>::NAME;
}

impl Service<Request<Body>> for RoutingEndpoint {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (service, max_message_bytes) = (Arc::clone(&self.service), self.max_message_bytes);
        match request.uri().path() {
            LOOKUP_ADDRESS => answered_here(lookup_address(service, request, max_message_bytes)),
            LOOKUP_ADDRESSES => answered_here(lookup_addresses(service, request, max_message_bytes)),
            _ => self.generated.call(request),
        }
    }
}

/// A method answered here, as the router wants it: a refusal is its trailers-only response.
fn answered_here(
    answer: impl Future<Output = Result<Response<Body>, Status>> + Send + 'static,
) -> BoxFuture<Response<Body>, Infallible> {
    Box::pin(async move { Ok(answer.await.unwrap_or_else(Status::into_http)) })
}

/// LookupAddress from the HTTP request to the HTTP answer, as tonic's unary path takes it.
async fn lookup_address(
    service: Arc<RoutingService>,
    request: Request<Body>,
    max_message_bytes: usize,
) -> Result<Response<Body>, Status> {
    let request = decoded::<api::LookupAddressRequest>(request, max_message_bytes).await?;
    let (metadata, answer, extensions) = service.lookup_address(request).await?.into_parts();
    Ok(answered(
        metadata,
        OneMessage::framed(answer.into_grpc_frame()),
        extensions,
    ))
}

/// LookupAddresses from the HTTP request to the HTTP answer, as tonic's unary path takes it.
async fn lookup_addresses(
    service: Arc<RoutingService>,
    request: Request<Body>,
    max_message_bytes: usize,
) -> Result<Response<Body>, Status> {
    let request = decoded::<api::LookupAddressesRequest>(request, max_message_bytes).await?;
    let (metadata, answer, extensions) = service.lookup_addresses(request).await?.into_parts();
    Ok(answered(metadata, OneMessage::batch(answer), extensions))
}

/// A unary call's request message with its metadata, read as tonic's unary path reads it.
async fn decoded<M>(request: Request<Body>, max_message_bytes: usize) -> Result<tonic::Request<M>, Status>
where
    M: prost::Message + Default + Send + 'static,
{
    refuse_compressed(request.headers())?;
    let (parts, body) = request.into_parts();
    let decoder = AddressingCodec::<(), M>::default().decoder();
    let mut messages = Streaming::new_request(decoder, body, None, Some(max_message_bytes));
    let message = messages
        .message()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))?;
    let mut headers = parts.headers;
    if let Some(trailers) = messages.trailers().await? {
        headers.extend(trailers.into_headers());
    }
    Ok(tonic::Request::from_parts(
        MetadataMap::from_headers(headers),
        parts.extensions,
        message,
    ))
}

/// The HTTP answer of a call that succeeded: the handler's metadata as headers (but tonic's
/// reserved ones), then `body`.
fn answered(metadata: MetadataMap, body: OneMessage, extensions: Extensions) -> Response<Body> {
    let mut headers = metadata.into_headers();
    for reserved in RESERVED {
        headers.remove(reserved);
    }
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let mut response = Response::new(Body::new(body));
    *response.version_mut() = http::Version::HTTP_2;
    *response.headers_mut() = headers;
    *response.extensions_mut() = extensions;
    response
}

/// No compression is accepted (as the generated servers are configured): a compressed request
/// is UNIMPLEMENTED, saying which encoding is accepted, as tonic answers it.
fn refuse_compressed(headers: &HeaderMap) -> Result<(), Status> {
    match headers.get("grpc-encoding") {
        None => Ok(()),
        Some(encoding) if encoding == "identity" => Ok(()),
        Some(encoding) => {
            let mut status = Status::unimplemented(format!(
                "Content is compressed with `{}` which isn't supported",
                String::from_utf8_lossy(encoding.as_bytes())
            ));
            status
                .metadata_mut()
                .insert("grpc-accept-encoding", MetadataValue::from_static("identity"));
            Err(status)
        }
    }
}

/// An answer's body: one gRPC message in up to three buffers (for a batch answer the
/// message's prefix, its results and its listed bindings; each a DATA frame's worth for hyper,
/// split into frames by h2 without copying), then the trailers.
struct OneMessage {
    chunks: [Bytes; 3],
    next: usize,
    trailers: Option<HeaderMap>,
}

impl OneMessage {
    /// A batch answer, its prefix written here.
    fn batch(answer: api::LookupAddressesResponse) -> OneMessage {
        let [results, bindings] = answer.into_encoded();
        let prefix = grpc_frame_prefix(results.len() + bindings.len());
        OneMessage::of([Bytes::copy_from_slice(&prefix), results, bindings])
    }

    /// A message already written as a whole gRPC frame, its prefix included.
    fn framed(frame: Bytes) -> OneMessage {
        OneMessage::of([frame, Bytes::new(), Bytes::new()])
    }

    fn of(chunks: [Bytes; 3]) -> OneMessage {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        OneMessage {
            chunks,
            next: 0,
            trailers: Some(trailers),
        }
    }
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        while let Some(chunk) = this.chunks.get_mut(this.next) {
            this.next += 1;
            if !chunk.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(std::mem::take(chunk)))));
            }
        }
        Poll::Ready(this.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.chunks.len() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    /// Every frame of a body, polled to its end.
    fn frames(mut body: OneMessage) -> Vec<Frame<Bytes>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut frames = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            frames.push(frame);
        }
        assert!(body.is_end_stream());
        frames
    }

    /// The gRPC message prefix (uncompressed, the message's length), the message (for a batch
    /// answer its results, then its listed bindings when there are any), then `grpc-status: 0`.
    #[test]
    fn one_message_then_ok_in_trailers() {
        let mut compact = api::LookupAddressesResponse::with_capacity(1, 64, 64);
        let index = compact.push_binding(b"\x0a\x01b");
        compact.push_compact(None, Some(index));
        let mut full = api::LookupAddressesResponse::with_capacity(1, 64, 0);
        full.push("192.0.2.1", None);
        let mut unary = api::LookupAddressResponse::default();
        unary.address = "192.0.2.1".into();
        unary.prefix_id = "p".into();
        let bodies = [compact, full]
            .map(|answer| (prost::Message::encode_to_vec(&answer), OneMessage::batch(answer)))
            .into_iter()
            .chain([(
                prost::Message::encode_to_vec(&unary),
                OneMessage::framed(unary.into_grpc_frame()),
            )]);
        for (encoded, body) in bodies {
            let frames = frames(body);
            let (data, trailers): (Vec<_>, Vec<_>) = frames.into_iter().partition(Frame::is_data);
            assert!(
                data.iter().all(|frame| !frame.data_ref().unwrap().is_empty()),
                "no empty DATA"
            );
            let data: Vec<u8> = data.into_iter().flat_map(|frame| frame.into_data().unwrap()).collect();
            let mut expected = vec![0];
            expected.extend((encoded.len() as u32).to_be_bytes());
            expected.extend(&encoded);
            assert_eq!(data, expected);
            let trailers = trailers
                .into_iter()
                .map(|frame| frame.into_trailers().unwrap())
                .collect::<Vec<_>>();
            assert_eq!(trailers.len(), 1);
            assert_eq!(trailers[0].get("grpc-status").unwrap(), "0");
        }
    }
}
