//! Domain errors. Every failure has a [`Reason`]; a reason always maps to the same
//! [`ErrorKind`] (the gRPC status class) and the same stable numeric code, so callers can
//! branch on either. The README lists them all (a test keeps it honest).

use std::fmt;

/// What the caller should do about an error; each kind is one gRPC status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Fix the request (INVALID_ARGUMENT).
    InvalidArgument,
    /// The resource does not exist or belongs to another account (NOT_FOUND).
    NotFound,
    /// Something with that identity is already there (ALREADY_EXISTS).
    AlreadyExists,
    /// The request is well-formed but the current state forbids it (FAILED_PRECONDITION).
    FailedPrecondition,
    /// A position past the end of the log (OUT_OF_RANGE).
    OutOfRange,
    /// Retry later, perhaps elsewhere (UNAVAILABLE).
    Unavailable,
    /// Too much at once: back off (RESOURCE_EXHAUSTED).
    ResourceExhausted,
    /// The call's deadline passed before it finished (DEADLINE_EXCEEDED).
    DeadlineExceeded,
    /// Lost a race with a concurrent change; retrying is safe (ABORTED).
    Aborted,
    /// A bug or corruption on our side (INTERNAL).
    Internal,
    /// No usable credentials (UNAUTHENTICATED).
    Unauthenticated,
    /// The caller is known but lacks the permission (PERMISSION_DENIED).
    PermissionDenied,
    /// The v4 JSON API has no such route (HTTP 404; gRPC's UNIMPLEMENTED).
    UnknownRoute,
    /// The route exists but not with this HTTP method (HTTP 405; gRPC's UNIMPLEMENTED).
    MethodNotAllowed,
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = ($name:literal, $code:literal, $kind:ident),)*) => {
        /// Why a call failed. The name (UPPER_SNAKE_CASE) and code are a stable contract.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The ErrorInfo reason.
            pub fn name(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }

            /// The stable numeric code (ErrorInfo metadata `code`).
            pub fn code(self) -> u32 {
                match self { $(Reason::$variant => $code,)* }
            }

            pub fn kind(self) -> ErrorKind {
                match self { $(Reason::$variant => ErrorKind::$kind,)* }
            }
        }
    };
}

reasons! {
    /// No prefix with that id in the account.
    PrefixNotFound = ("PREFIX_NOT_FOUND", 1000, NotFound),
    /// The CIDR does not parse as address/length.
    InvalidCidr = ("INVALID_CIDR", 1001, InvalidArgument),
    /// No binding with that id in the prefix.
    BindingNotFound = ("BINDING_NOT_FOUND", 1002, NotFound),
    /// The service id is malformed or not in the catalog.
    InvalidService = ("INVALID_SERVICE", 1003, InvalidArgument),
    /// The account id is not 32 lowercase hex characters.
    InvalidAccountId = ("INVALID_ACCOUNT_ID", 1004, InvalidArgument),
    /// The prefix id is not 32 lowercase hex characters.
    InvalidPrefixId = ("INVALID_PREFIX_ID", 1005, InvalidArgument),
    /// The binding id is not 32 lowercase hex characters.
    InvalidBindingId = ("INVALID_BINDING_ID", 1006, InvalidArgument),
    /// The CIDR has host bits set.
    CidrNotCanonical = ("CIDR_NOT_CANONICAL", 1007, InvalidArgument),
    /// A prefix smaller than /24 (IPv4) or /48 (IPv6).
    PrefixTooSmall = ("PREFIX_TOO_SMALL", 1008, InvalidArgument),
    /// A binding CIDR that is not inside its prefix.
    CidrOutsidePrefix = ("CIDR_OUTSIDE_PREFIX", 1009, InvalidArgument),
    /// A binding CIDR of the other address family than its prefix.
    CidrFamilyMismatch = ("CIDR_FAMILY_MISMATCH", 1010, InvalidArgument),
    /// A description longer than 1000 characters.
    DescriptionTooLong = ("DESCRIPTION_TOO_LONG", 1011, InvalidArgument),
    /// A negative page size.
    InvalidPageSize = ("INVALID_PAGE_SIZE", 1012, InvalidArgument),
    /// A page token this server did not issue for this list.
    InvalidPageToken = ("INVALID_PAGE_TOKEN", 1013, InvalidArgument),
    /// A request id longer than 128 characters or with control characters.
    InvalidRequestId = ("INVALID_REQUEST_ID", 1014, InvalidArgument),
    /// A request id already used for a different binding.
    RequestIdReused = ("REQUEST_ID_REUSED", 1015, InvalidArgument),
    /// An address that does not parse as IPv4 or IPv6.
    InvalidAddress = ("INVALID_ADDRESS", 1016, InvalidArgument),
    /// More addresses in one batch than the maximum.
    TooManyAddresses = ("TOO_MANY_ADDRESSES", 1017, InvalidArgument),
    /// A watch filter on prefix or binding without an account.
    FilterNeedsAccount = ("FILTER_NEEDS_ACCOUNT", 1018, InvalidArgument),
    /// The request is not a valid protobuf message (e.g. a string that is not UTF-8).
    MalformedRequest = ("MALFORMED_REQUEST", 1019, InvalidArgument),
    /// The prefix overlaps an existing prefix (of any account).
    PrefixOverlaps = ("PREFIX_OVERLAPS", 1100, AlreadyExists),
    /// The first binding of a prefix must cover exactly the prefix.
    FirstBindingMustCoverPrefix = ("FIRST_BINDING_MUST_COVER_PREFIX", 1101, FailedPrecondition),
    /// The service may not be layered over the prefix-wide binding's service.
    ServiceLayeringNotAllowed = ("SERVICE_LAYERING_NOT_ALLOWED", 1102, FailedPrecondition),
    /// The prefix-wide binding can go only when it is the prefix's last binding.
    PrefixWideBindingInUse = ("PREFIX_WIDE_BINDING_IN_USE", 1103, FailedPrecondition),
    /// A prefix can be deleted only when it has no bindings.
    PrefixHasBindings = ("PREFIX_HAS_BINDINGS", 1104, FailedPrecondition),
    /// The address is inside no prefix.
    AddressNotCovered = ("ADDRESS_NOT_COVERED", 1105, NotFound),
    /// CompleteProvisioning on a server whose built-in timer drives the rollout.
    RolloutNotExternal = ("ROLLOUT_NOT_EXTERNAL", 1106, FailedPrecondition),
    /// A binding already exists for that CIDR in the prefix.
    BindingAlreadyExists = ("BINDING_ALREADY_EXISTS", 1108, AlreadyExists),
    /// A watch from a revision beyond the log's head.
    RevisionOutOfRange = ("REVISION_OUT_OF_RANGE", 1200, OutOfRange),
    /// WatchRoutes from a revision older than the route history kept: export again.
    RoutesHistoryUnavailable = ("ROUTES_HISTORY_UNAVAILABLE", 1201, OutOfRange),
    /// The log could not be written or made durable; nothing was stored.
    StorageUnavailable = ("STORAGE_UNAVAILABLE", 1300, Unavailable),
    /// The server is starting (loading its projections) or shutting down.
    NotReady = ("NOT_READY", 1301, Unavailable),
    /// More calls in flight than the server takes at once.
    Overloaded = ("OVERLOADED", 1302, ResourceExhausted),
    /// The caller's grpc-timeout (or the server's request timeout) passed first. A change may
    /// still have been applied: read before retrying a create without a request_id.
    DeadlineExceeded = ("DEADLINE_EXCEEDED", 1303, DeadlineExceeded),
    /// Replicas: the change lost the race to the stream against other replicas' appends too
    /// many times in a row; nothing was changed, retry.
    WriteConflict = ("WRITE_CONFLICT", 1304, Aborted),
    /// Access control is enforced and the call carries no credentials.
    CredentialsMissing = ("CREDENTIALS_MISSING", 1400, Unauthenticated),
    /// The credentials are unknown, expired, revoked or malformed (the answer never says which).
    CredentialsInvalid = ("CREDENTIALS_INVALID", 1401, Unauthenticated),
    /// The caller lacks the permission the call needs on the account (or the account may not
    /// exist: the answer is the same).
    PermissionDenied = ("PERMISSION_DENIED", 1402, PermissionDenied),
    /// The caller's rate limit is spent; RetryInfo says when to retry.
    RateLimited = ("RATE_LIMITED", 1403, ResourceExhausted),
    /// The v4 JSON API: the body is not a JSON document (or not an object).
    MalformedJson = ("MALFORMED_JSON", 1500, InvalidArgument),
    /// The v4 JSON API: a request with a body whose content type is not JSON.
    UnsupportedContentType = ("UNSUPPORTED_CONTENT_TYPE", 1501, InvalidArgument),
    /// The v4 JSON API: no such route.
    UnknownRoute = ("UNKNOWN_ROUTE", 1502, UnknownRoute),
    /// The v4 JSON API: the route does not take this method.
    MethodNotAllowed = ("METHOD_NOT_ALLOWED", 1503, MethodNotAllowed),
    /// The v4 JSON API: a body over the message size limit.
    RequestTooLarge = ("REQUEST_TOO_LARGE", 1504, ResourceExhausted),
    /// An unexpected failure on our side.
    Internal = ("INTERNAL", 1900, Internal),
}

/// A request field to blame, in the contract's snake_case spelling (`cidr`, `addresses[3]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// A failed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub reason: Reason,
    pub message: String,
    /// The fields to blame; empty when no single request field is at fault.
    pub violations: Vec<FieldViolation>,
    /// When a retry may succeed (RetryInfo over gRPC, `retry-after` over HTTP).
    pub retry_after: Option<std::time::Duration>,
}

impl Error {
    pub fn new(reason: Reason, message: impl Into<String>) -> Error {
        Error {
            reason,
            message: message.into(),
            violations: Vec::new(),
            retry_after: None,
        }
    }

    /// The same error, telling the caller when a retry may succeed.
    pub fn retry_after(mut self, delay: std::time::Duration) -> Error {
        self.retry_after = Some(delay);
        self
    }

    /// An error blamed on one request field.
    pub fn field(reason: Reason, field: impl Into<String>, message: impl Into<String>) -> Error {
        let message = message.into();
        Error {
            reason,
            violations: vec![FieldViolation {
                field: field.into(),
                description: message.clone(),
            }],
            message,
            retry_after: None,
        }
    }

    /// The same error with violations of `from` blamed on `to` (the name a surface gives
    /// the field).
    pub fn renamed_field(mut self, from: &str, to: &str) -> Error {
        for violation in &mut self.violations {
            if violation.field == from {
                violation.field = to.to_string();
            }
        }
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.reason.kind()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.reason.name(), self.reason.code(), self.message)
    }
}

impl std::error::Error for Error {}

/// Checks every field of a request at once: a tuple of field results becomes a tuple of
/// values, or one error that names every failed field (the first failure's reason leads).
pub trait AllFields {
    type Values;
    fn all_fields(self) -> Result<Self::Values, Error>;
}

fn merge(first: &mut Option<Error>, error: Error) {
    match first {
        None => *first = Some(error),
        Some(first) => first.violations.extend(error.violations),
    }
}

macro_rules! all_fields_for_tuple {
    ($($value:ident),+) => {
        impl<$($value),+> AllFields for ($(Result<$value, Error>,)+) {
            type Values = ($($value,)+);

            #[allow(non_snake_case)]
            fn all_fields(self) -> Result<Self::Values, Error> {
                let ($($value,)+) = self;
                let mut first = None;
                $(let $value = $value.map_err(|error| merge(&mut first, error)).ok();)+
                match ($($value,)+) {
                    ($(Some($value),)+) => Ok(($($value,)+)),
                    _ => {
                        let mut error = first.unwrap_or_else(|| Error::new(Reason::Internal, "field check failed"));
                        if error.violations.len() > 1 {
                            error.message = format!("{} (and {} more field violation(s))", error.message, error.violations.len() - 1);
                        }
                        Err(error)
                    }
                }
            }
        }
    };
}

all_fields_for_tuple!(A);
all_fields_for_tuple!(A, B);
all_fields_for_tuple!(A, B, C);
all_fields_for_tuple!(A, B, C, D);
all_fields_for_tuple!(A, B, C, D, E);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_codes_are_unique_and_upper_snake_case() {
        let names: HashSet<_> = Reason::ALL.iter().map(|reason| reason.name()).collect();
        let codes: HashSet<_> = Reason::ALL.iter().map(|reason| reason.code()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        assert_eq!(codes.len(), Reason::ALL.len());
        for name in names {
            assert!(name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{name}");
        }
    }

    #[test]
    fn all_fields_keeps_the_first_reason_and_every_field() {
        let checked: Result<(u8, u8, u8), Error> = (
            Err(Error::field(Reason::InvalidCidr, "cidr", "bad")),
            Ok(1),
            Err(Error::field(Reason::InvalidService, "service_id", "bad")),
        )
            .all_fields();
        let error = checked.unwrap_err();
        assert_eq!(error.reason, Reason::InvalidCidr);
        let fields: Vec<_> = error.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["cidr", "service_id"]);
        assert_eq!((Ok::<u8, Error>(1), Ok::<u8, Error>(2)).all_fields(), Ok((1, 2)));
    }
}
