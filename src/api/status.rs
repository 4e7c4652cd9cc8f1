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
        ErrorKind::Internal => Code::Internal,
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
        Status::with_error_details(code, error.message, details)
    }
}
