//! Unary calls answered outside tonic's generated servers: the request read as tonic's unary
//! path reads it (its `Streaming` with this crate's codec, the same size limit and the same
//! errors), and the answer, one gRPC message already written, handed to HTTP/2 in the buffers
//! it was written in, then `grpc-status: 0` in trailers. A refused call is tonic's
//! trailers-only response. tonic's encoder writes every answer into a buffer of its own and
//! polls it through its encoding state; the lookups (`routing_endpoint.rs`) and a create
//! (`bindings_endpoint.rs`) write theirs once, where their bytes are at hand. An [`Endpoint`]
//! is a service so served: the methods it answers itself, by path, and its generated server
//! for the rest.

use std::convert::Infallible;
use std::future::Future;
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
use crate::api::wire::grpc_frame_prefix;
use crate::pb::api;

/// A call's HTTP answer, as every service gives it: never an error (a refusal is its
/// trailers-only response).
pub type Answer = BoxFuture<Response<Body>, Infallible>;

/// A gRPC service as tonic's server calls it (a generated server, an [`Endpoint`]).
pub trait GrpcService: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = Answer> {}

impl<S> GrpcService for S where S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = Answer>
{}

/// A method served here: from the HTTP request (with the service and the size limit) to the
/// HTTP answer.
pub type Method<S> = fn(Arc<S>, Request<Body>, usize) -> Answer;

/// A service as it is served: its generated server `G` for every method but `methods`, which
/// are answered here by their paths (`/package.Service/Method`).
pub struct Endpoint<S: 'static, G> {
    service: Arc<S>,
    generated: G,
    max_message_bytes: usize,
    methods: &'static [(&'static str, Method<S>)],
}

impl<S: 'static, G> Endpoint<S, G> {
    /// `service` served: `generated` builds its generated server on it, refusing requests
    /// above `max_message_bytes` as `methods` refuse them.
    pub fn new(
        service: S,
        max_message_bytes: usize,
        generated: impl FnOnce(Arc<S>, usize) -> G,
        methods: &'static [(&'static str, Method<S>)],
    ) -> Endpoint<S, G> {
        let service = Arc::new(service);
        Endpoint {
            generated: generated(Arc::clone(&service), max_message_bytes),
            service,
            max_message_bytes,
            methods,
        }
    }
}

impl<S: 'static, G: Clone> Clone for Endpoint<S, G> {
    fn clone(&self) -> Self {
        Endpoint {
            service: Arc::clone(&self.service),
            generated: self.generated.clone(),
            max_message_bytes: self.max_message_bytes,
            methods: self.methods,
        }
    }
}

impl<S: 'static, G: NamedService> NamedService for Endpoint<S, G> {
    const NAME: &'static str = G::NAME;
}

impl<S: 'static, G: GrpcService> Service<Request<Body>> for Endpoint<S, G> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    /// A generated server is always ready.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        match self.methods.iter().find(|(method, _)| *method == path) {
            Some((_, answer)) => answer(Arc::clone(&self.service), request, self.max_message_bytes),
            None => self.generated.call(request),
        }
    }
}

/// The headers a handler's metadata may not set on an answer (tonic's reserved ones).
const RESERVED: [&str; 5] = ["te", "content-type", "grpc-message", "grpc-message-type", "grpc-status"];

/// A method answered outside its generated server, as the dispatch wants it: a refusal is its
/// trailers-only response.
pub fn answered_here(answer: impl Future<Output = Result<Response<Body>, Status>> + Send + 'static) -> Answer {
    Box::pin(async move { Ok(answer.await.unwrap_or_else(Status::into_http)) })
}

/// A unary call's request message with its metadata, read as tonic's unary path reads it.
pub async fn decoded<M>(request: Request<Body>, max_message_bytes: usize) -> Result<tonic::Request<M>, Status>
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
pub fn answered(metadata: MetadataMap, body: OneMessage, extensions: Extensions) -> Response<Body> {
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
pub struct OneMessage {
    chunks: [Bytes; 3],
    next: usize,
    trailers: Option<HeaderMap>,
}

impl OneMessage {
    /// A batch answer, its prefix written here.
    pub fn batch(answer: api::LookupAddressesResponse) -> OneMessage {
        let [results, bindings] = answer.into_encoded();
        let prefix = grpc_frame_prefix(results.len() + bindings.len());
        OneMessage::of([Bytes::copy_from_slice(&prefix), results, bindings])
    }

    /// A message already written as a whole gRPC frame, its prefix included.
    pub fn framed(frame: Bytes) -> OneMessage {
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
