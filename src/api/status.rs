//! The one mapping from domain errors to gRPC statuses: the status code of the reason's kind,
//! a `google.rpc.ErrorInfo` (reason, domain, metadata `code`) and, when request fields are to
//! blame, a `google.rpc.BadRequest` naming them.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{Error, ErrorKind};

/// The ErrorInfo domain of every error this service returns.
pub const ERROR_DOMAIN: &str = "ipam-bindings.addressing.v1";

pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::OutOfRange => Code::OutOfRange,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::Internal => Code::Internal,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::UnknownRoute | ErrorKind::MethodNotAllowed => Code::Unimplemented,
    }
}

/// The canonical name of a status code (OK, INVALID_ARGUMENT, ...), as metrics label it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let code = code_of(error.kind());
        let metadata = HashMap::from([("code".to_string(), error.reason.code().to_string())]);
        let mut details = ErrorDetails::with_error_info(error.reason.name(), ERROR_DOMAIN, metadata);
        for violation in error.violations {
            details.add_bad_request_violation(violation.field, violation.description);
        }
        if let Some(delay) = error.retry_after {
            details.set_retry_info(Some(delay));
        }
        Status::with_error_details(code, error.message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Reason;

    #[test]
    fn the_readme_lists_every_reason_with_its_code_and_status() {
        let readme = include_str!("../../README.md");
        for reason in Reason::ALL {
            let status_name = code_name(code_of(reason.kind()));
            let row = format!("| `{}` | {} | {} |", reason.name(), reason.code(), status_name);
            assert!(readme.contains(&row), "README.md lacks the row {row}");
        }
    }
}
