//! The endpoints, under `/client/v4`. Each turns the path, headers and body into an
//! operation's inputs and its result into the envelope; unknown routes and wrong methods get
//! their own reasons.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

use super::BASE_PATH;
use super::body;
use super::error::RestError;
use super::objects::{self, success};
use crate::auth::{Caller, Permission};
use crate::domain::{Error, Reason};
use crate::operations::{self, AppContext, ListPage, NewBinding, NewPrefix, authorize};

/// The header that makes a binding create safe to retry (the request id of the gRPC API).
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// An idempotency key's longest form.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

#[derive(Clone)]
pub struct RestState {
    pub app: AppContext,
    pub max_body_bytes: usize,
}

type Reply = Result<Response, RestError>;

pub fn router(state: RestState) -> Router {
    let accounts = format!("{BASE_PATH}/accounts/{{account_id}}/addressing");
    Router::new()
        .route(&format!("{accounts}/prefixes"), get(list_prefixes).post(create_prefix))
        .route(
            &format!("{accounts}/prefixes/{{prefix_id}}"),
            get(get_prefix).patch(update_prefix).delete(delete_prefix),
        )
        .route(
            &format!("{accounts}/prefixes/{{prefix_id}}/bindings"),
            get(list_bindings).post(create_binding),
        )
        .route(
            &format!("{accounts}/prefixes/{{prefix_id}}/bindings/{{binding_id}}"),
            get(get_binding).delete(delete_binding),
        )
        .route(&format!("{accounts}/services"), get(list_services))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

fn ok(result: Value) -> Reply {
    Ok(success(result).into_response())
}

fn created(result: Value) -> Reply {
    Ok((StatusCode::CREATED, success(result)).into_response())
}

/// Errors of a route whose body holds `body_fields`.
fn blaming(body_fields: &'static [&'static str]) -> impl Fn(Error) -> RestError {
    move |error| RestError { error, body_fields }
}

async fn create_prefix(
    State(state): State<RestState>,
    Extension(caller): Extension<Caller>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
    request_body: Body,
) -> Reply {
    const FIELDS: &[&str] = &["cidr", "asn", "description"];
    authorize(&caller, Permission::PrefixesEdit, &account_id)?;
    let bytes = read_body(&state, request_body).await.map_err(blaming(FIELDS))?;
    let mut body = body::parse(&headers, &bytes).map_err(blaming(FIELDS))?;
    let (cidr, asn, description) = (body.string("cidr"), body.u32("asn"), body.string("description"));
    body.finish().map_err(blaming(FIELDS))?;
    let new = NewPrefix {
        account_id: &account_id,
        cidr: cidr.as_deref().unwrap_or_default(),
        asn,
        description: description.as_deref().unwrap_or_default(),
        validate_only: false,
    };
    let prefix = operations::create_prefix(&state.app, &caller, new)
        .await
        .map_err(blaming(FIELDS))?;
    created(objects::prefix(&prefix))
}

async fn list_prefixes(
    State(state): State<RestState>,
    Extension(caller): Extension<Caller>,
    Path(account_id): Path<String>,
) -> Reply {
    let listed = operations::list_prefixes(&state.app, &caller, &account_id, ListPage::All)?;
    ok(listed.items.iter().map(objects::prefix).collect())
}

async fn get_prefix(
    State(state): State<RestState>,
    Extension(caller): Extension<Caller>,
    Path((account_id, prefix_id)): Path<(String, String)>,
) -> Reply {
    let prefix = operations::get_prefix(&state.app, &caller, &account_id, &prefix_id)?;
    ok(objects::prefix(&prefix))
}

async fn update_prefix(
    State(state): State<RestState>,
    Extension(caller): Extension<Caller>,
    Path((account_id, prefix_id)): Path<(String, String)>,
    headers: HeaderMap,
    request_body: Body,
) -> Reply {
    const FIELDS: &[&str] = &["description"];
    authorize(&caller, Permission::PrefixesEdit, &account_id)?;
    let bytes = read_body(&state, request_body).await.map_err(blaming(FIELDS))?;
    let mut body = body::parse(&headers, &bytes).map_err(blaming(FIELDS))?;
    let description = body.string("description");
    body.finish().map_err(blaming(FIELDS))?;
    let prefix = operations::update_prefix(
        &state.app,
        &caller,
        &account_id,
        &prefix_id,
        description.as_deref(),
        false,
    )
    .await
    .map_err(blaming(FIELDS))?;
    ok(objects::prefix(&prefix))
}

async fn delete_prefix(
    State(state): State<RestState>,
    Extension(caller): Extension<Caller>,
    Path((account_id, prefix_id)): Path<(String, String)>,
) -> Reply {
    operations::delete_prefix(&state.app, &caller, &account_id, &prefix_id, false).await?;
    ok(Value::Null)
}

async fn create_binding(
    State(state): State<RestState>,
    Extension(caller): Extension<Caller>,
    Path((account_id, prefix_id)): Path<(String, String)>,
    headers: HeaderMap,
    request_body: Body,
) -> Reply {
    const FIELDS: &[&str] = &["cidr", "service_id"];
    authorize(&caller, Permission::PrefixesEdit, &account_id)?;
    let idempotency_key = idempotency_key(&headers).map_err(blaming(FIELDS))?;
    let bytes = read_body(&state, request_body).await.map_err(blaming(FIELDS))?;
    let mut body = body::parse(&headers, &bytes).map_err(blaming(FIELDS))?;
    let (cidr, service_id) = (body.string("cidr"), body.string("service_id"));
    body.finish().map_err(blaming(FIELDS))?;
    let new = NewBinding {
        account_id: &account_id,
        prefix_id: &prefix_id,
        cidr: cidr.as_deref().unwrap_or_default(),
        service_id: service_id.as_deref().unwrap_or_default(),
        request_id: &idempotency_key,
        request_id_field: IDEMPOTENCY_KEY,
        validate_only: false,
    };
    let binding = operations::create_binding(&state.app, &caller, new)
        .await
        .map_err(blaming(FIELDS))?;
    created(objects::binding(&binding))
}

async fn list_bindings(
    State(state): State<RestState>,
    Extension(caller): Extension<Caller>,
    Path((account_id, prefix_id)): Path<(String, String)>,
) -> Reply {
    let listed = operations::list_bindings(&state.app, &caller, &account_id, &prefix_id, ListPage::All)?;
    ok(listed.items.iter().map(objects::binding).collect())
}

async fn get_binding(
    State(state): State<RestState>,
    Extension(caller): Extension<Caller>,
    Path((account_id, prefix_id, binding_id)): Path<(String, String, String)>,
) -> Reply {
    let binding = operations::get_binding(&state.app, &caller, &account_id, &prefix_id, &binding_id)?;
    ok(objects::binding(&binding))
}

async fn delete_binding(
    State(state): State<RestState>,
    Extension(caller): Extension<Caller>,
    Path((account_id, prefix_id, binding_id)): Path<(String, String, String)>,
) -> Reply {
    operations::delete_binding(&state.app, &caller, &account_id, &prefix_id, &binding_id, false).await?;
    ok(Value::Null)
}

async fn list_services(Extension(caller): Extension<Caller>, Path(account_id): Path<String>) -> Reply {
    let services = operations::list_services(&caller, &account_id)?;
    ok(services.iter().copied().map(objects::service).collect())
}

async fn unknown_route() -> RestError {
    Error::new(Reason::UnknownRoute, "no such route in the v4 API (see the README)").into()
}

async fn wrong_method() -> RestError {
    Error::new(Reason::MethodNotAllowed, "this route does not take this method").into()
}

/// The `Idempotency-Key` header: absent is none; present, 1-255 printable ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<String, Error> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(String::new());
    };
    let bytes = value.as_bytes();
    let printable = bytes.iter().all(|byte| (0x20..=0x7e).contains(byte));
    if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY_LEN || !printable {
        return Err(Error::field(
            Reason::InvalidRequestId,
            IDEMPOTENCY_KEY,
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"),
        ));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// The request's body, up to the server's message size limit.
async fn read_body(state: &RestState, body: Body) -> Result<Bytes, Error> {
    axum::body::to_bytes(body, state.max_body_bytes).await.map_err(|_| {
        Error::new(
            Reason::RequestTooLarge,
            format!("the body is larger than {} bytes", state.max_body_bytes),
        )
    })
}
