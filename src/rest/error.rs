//! The one mapping from domain errors to HTTP responses, beside `api::status` for gRPC: the
//! HTTP status of the reason's kind, the v4 envelope with the reason's numeric code, and a
//! `source.pointer` for each request field to blame (`/cidr` for a body field,
//! `/headers/idempotency-key` for the header; none for path parameters).

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

use super::objects::failure;
use crate::domain::{Error, ErrorKind};

/// The header that tells v4 clients (the official SDKs) not to retry.
const SHOULD_RETRY: &str = "x-should-retry";

pub fn http_status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument | ErrorKind::FailedPrecondition => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound | ErrorKind::UnknownRoute => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::Aborted => StatusCode::CONFLICT,
        ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::OutOfRange | ErrorKind::DeadlineExceeded | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A failed REST call: the domain error and the body fields of its route (the fields that
/// get a JSON pointer).
pub struct RestError {
    pub error: Error,
    pub body_fields: &'static [&'static str],
}

impl From<Error> for RestError {
    fn from(error: Error) -> RestError {
        RestError {
            error,
            body_fields: &[],
        }
    }
}

/// Where a field lives in the request, as a JSON pointer; `None` for path parameters.
fn pointer(field: &str, body_fields: &[&str]) -> Option<String> {
    if body_fields.contains(&field) {
        Some(format!("/{field}"))
    } else if field == "idempotency-key" {
        Some("/headers/idempotency-key".into())
    } else if field.is_empty() {
        // The document as a whole (a body that is not JSON).
        Some(String::new())
    } else {
        None
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let RestError { error, body_fields } = self;
        let status = http_status_of(error.kind());
        let code = error.reason.code();
        let errors: Vec<(u32, String, Option<String>)> = if error.violations.is_empty() {
            vec![(code, error.message.clone(), None)]
        } else {
            (error.violations.iter())
                .map(|violation| {
                    let pointer = pointer(&violation.field, body_fields);
                    (code, violation.description.clone(), pointer)
                })
                .collect()
        };
        let mut response = (status, failure(&errors)).into_response();
        if status == StatusCode::CONFLICT {
            (response.headers_mut()).insert(SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        if let Some(delay) = error.retry_after {
            // Whole seconds, rounded up: a client that waits this long is not refused again.
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            (response.headers_mut()).insert(http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Reason;

    #[test]
    fn the_readme_lists_every_reason_with_its_http_status() {
        let readme = include_str!("../../README.md");
        for reason in Reason::ALL {
            let grpc = crate::api::status::code_name(crate::api::status::code_of(reason.kind()));
            let http = http_status_of(reason.kind()).as_u16();
            let row = format!("| `{}` | {} | {grpc} | {http} |", reason.name(), reason.code());
            assert!(readme.contains(&row), "README.md lacks the row {row}");
        }
    }
}
