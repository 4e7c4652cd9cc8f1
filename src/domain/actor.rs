//! Who made a change: recorded on every event (the audit trail), shown by `export` and, as
//! the principal, to watchers. Never a secret: a token is named by its id, a certificate by
//! its fingerprint.

/// The principal of changes the built-in rollout makes.
pub const ROLLOUT_PRINCIPAL: &str = "system:rollout";

/// The principal of calls made while access control is off.
pub const ANONYMOUS_PRINCIPAL: &str = "anonymous";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// The name grants are given to (a token's principal or a SPIFFE id).
    pub principal: String,
    /// How the principal proved itself: `token:<id>`, `x509:sha256:<hex>` (a client
    /// certificate's fingerprint), `xfcc:<SPIFFE id of the proxy>`; empty for none.
    pub credential: String,
    /// The peer identity a token was presented over (mTLS or a trusted proxy); empty for none.
    pub via: String,
    /// The call's `x-request-id`.
    pub call_id: String,
    /// The caller's idempotency key (`request_id`, `Idempotency-Key`); empty for none.
    pub request_id: String,
    /// The peer's socket address; empty when unknown.
    pub peer: String,
}

impl Actor {
    /// A change the service makes by itself.
    pub fn system(principal: &str) -> Actor {
        Actor {
            principal: principal.to_string(),
            ..Actor::default()
        }
    }

    /// The same actor with the caller's idempotency key.
    pub fn with_request_id(mut self, request_id: Option<&str>) -> Actor {
        self.request_id = request_id.unwrap_or_default().to_string();
        self
    }
}
