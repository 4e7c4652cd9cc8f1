//! Access control: who is calling and what they may do.
//!
//! - [`Access`] holds the policy ([`policy`]) and answers [`Access::authenticate`]: from a
//!   call's credentials ([`credentials`]: a bearer token, the client certificate's SPIFFE id,
//!   or a trusted proxy's `x-forwarded-client-cert`) to a [`Caller`], rate limit included.
//! - [`Caller::require`] checks one permission against the *current* policy, so a grant
//!   revoked by a reload ends open watch streams too.
//! - [`methods`] says what each gRPC method needs; [`layer`] applies it in front of the
//!   gRPC services (the v4 JSON API authenticates in its own edge).
//! - Refusals are logged on the `audit` target; secrets never are (the layer removes the
//!   `authorization` header before any handler sees the call).

pub mod credentials;
pub mod layer;
pub mod methods;
pub mod policy;
mod reload;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::watch;
use tracing::warn;

pub use crate::config::AuthMode;
use crate::domain::actor::ANONYMOUS_PRINCIPAL;
use crate::domain::{AccountId, Actor, Error, Reason};
pub use methods::Required;
pub use policy::{Permission, Policy};
pub use reload::watch_policy_file;

/// The header a v4 or gRPC caller's token comes in.
pub use http::header::AUTHORIZATION;
/// Envoy's header naming the client certificates of the hops a call came through.
pub static XFCC: http::HeaderName = http::HeaderName::from_static("x-forwarded-client-cert");

/// A permission a call needs.
#[derive(Clone, Copy, Debug)]
pub enum Need<'a> {
    OnAccount(Permission, &'a AccountId),
    Global(Permission),
}

/// What a call presents: read from the headers and the connection by a surface's edge.
#[derive(Clone, Copy, Debug, Default)]
pub struct Presented<'a> {
    pub authorization: Option<&'a str>,
    pub xfcc: Option<&'a str>,
    /// The client certificate (DER) of a mutual-TLS connection.
    pub peer_certificate: Option<&'a [u8]>,
    pub peer: Option<SocketAddr>,
    /// The call's `x-request-id`.
    pub call_id: Option<&'a http::HeaderValue>,
}

impl<'a> Presented<'a> {
    /// The credentials in `headers` (`authorization`, `x-forwarded-client-cert`, the request
    /// id the edge set), with what the connection knows.
    pub fn from_headers(
        headers: &'a http::HeaderMap,
        peer_certificate: Option<&'a [u8]>,
        peer: Option<SocketAddr>,
    ) -> Presented<'a> {
        let header = |name: &http::HeaderName| headers.get(name).and_then(|value| value.to_str().ok());
        Presented {
            authorization: header(&AUTHORIZATION),
            xfcc: header(&XFCC),
            peer_certificate,
            peer,
            call_id: headers.get(&crate::edge::REQUEST_ID),
        }
    }
}

/// How a caller proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Credential {
    None,
    /// A bearer token: its id and its hash (re-checked against the policy on every check).
    Token {
        id: String,
        sha256: [u8; 32],
    },
    /// A client certificate, by its SHA-256 fingerprint.
    Certificate {
        fingerprint: String,
    },
    /// An identity vouched for by our proxy.
    ForwardedBy {
        proxy: String,
    },
}

/// An authenticated caller: what the audit trail records and what permissions are checked for.
#[derive(Clone)]
pub struct Caller {
    principal: Arc<str>,
    credential: Credential,
    /// The peer identity a token came over (mTLS or XFCC).
    via: Option<String>,
    peer: Option<SocketAddr>,
    /// The call's `x-request-id` (a header value: cloning it costs no allocation).
    call_id: Option<http::HeaderValue>,
    access: Arc<Access>,
}

/// Every anonymous caller's principal, shared (a call without access control allocates none).
static ANONYMOUS: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(ANONYMOUS_PRINCIPAL));

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("principal", &self.principal)
            .field("credential", &self.actor().credential)
            .finish()
    }
}

impl Caller {
    /// A caller without credentials on a server that enforces access control: refused
    /// everything.
    pub fn nobody() -> Caller {
        let access = Access::with(AuthMode::Enforce, None, None, Policy::default(), String::new());
        access.anonymous(&Presented::default())
    }

    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The audit record of this caller (the idempotency key is added per call).
    pub fn actor(&self) -> Actor {
        Actor {
            principal: self.principal.to_string(),
            credential: match &self.credential {
                Credential::None => String::new(),
                Credential::Token { id, .. } => format!("token:{id}"),
                Credential::Certificate { fingerprint } => format!("x509:sha256:{fingerprint}"),
                Credential::ForwardedBy { proxy } => format!("xfcc:{proxy}"),
            },
            via: self.via.clone().unwrap_or_default(),
            call_id: (self.call_id.as_ref())
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            request_id: String::new(),
            peer: (self.peer.as_ref()).map_or_else(String::new, crate::domain::network::socket_addr_text),
        }
    }

    /// Whether the current policy lets this caller do what `need` says. A token that was
    /// revoked, changed or expired since the call began is CREDENTIALS_INVALID.
    pub fn require(&self, need: Need<'_>) -> Result<(), Error> {
        if self.access.mode == AuthMode::Off {
            return Ok(());
        }
        let loaded = self.access.loaded();
        let no_grants = policy::Grants::default();
        let grants = match &self.credential {
            Credential::Token { id, sha256 } => match loaded.policy.tokens.get(id) {
                Some(entry) if entry.sha256 == *sha256 && !expired(entry.expires_at) => &entry.grants,
                _ => return Err(self.refused(invalid_credentials(), None)),
            },
            Credential::Certificate { .. } | Credential::ForwardedBy { .. } => {
                loaded.policy.principals.get(&*self.principal).unwrap_or(&no_grants)
            }
            Credential::None => return Err(self.refused(missing_credentials(), None)),
        };
        let (permission, account) = match need {
            Need::OnAccount(permission, account) => (permission, Some(account)),
            Need::Global(permission) => (permission, None),
        };
        if grants.allow(permission, account) {
            return Ok(());
        }
        let message = match account {
            Some(account) => format!(
                "Permission `{}` denied on account `{account}` (or it might not exist)",
                permission.name()
            ),
            None => format!("Permission `{}` denied", permission.name()),
        };
        Err(self.refused(Error::new(Reason::PermissionDenied, message), Some(permission)))
    }

    /// What a read of one account or of every account needs: `ip_prefixes.read` on the
    /// account, or the global permission without one (a watch of all bindings, the whole
    /// routing table).
    pub fn require_account_or(&self, account: Option<&AccountId>, global: Permission) -> Result<(), Error> {
        match account {
            Some(account) => self.require(Need::OnAccount(Permission::PrefixesRead, account)),
            None => self.require(Need::Global(global)),
        }
    }

    /// Logs a refusal on the audit target and returns it.
    fn refused(&self, error: Error, permission: Option<Permission>) -> Error {
        let actor = self.actor();
        warn!(
            target: "audit",
            reason = error.reason.name(),
            principal = %actor.principal,
            credential = %actor.credential,
            permission = permission.map(Permission::name).unwrap_or_default(),
            peer = %actor.peer,
            request_id = %actor.call_id,
            message = %error.message,
            "refused"
        );
        error
    }
}

fn expired(expires_at: Option<SystemTime>) -> bool {
    expires_at.is_some_and(|at| SystemTime::now() >= at)
}

fn missing_credentials() -> Error {
    Error::new(
        Reason::CredentialsMissing,
        "this server requires credentials: send `authorization: Bearer <token>` or a client certificate",
    )
}

fn invalid_credentials() -> Error {
    Error::new(Reason::CredentialsInvalid, "the credentials are not valid")
}

/// The policy in force and what is derived from it.
struct Loaded {
    policy: Policy,
    /// By principal.
    limiters: HashMap<String, DefaultDirectRateLimiter>,
    /// The file's text, to tell a changed file from a touched one.
    text: String,
}

impl Loaded {
    fn new(policy: Policy, text: String) -> Loaded {
        let limiters = (policy.rate_limits.iter())
            .map(|(principal, limit)| {
                let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
                (principal.clone(), RateLimiter::direct(quota))
            })
            .collect();
        Loaded { policy, limiters, text }
    }
}

/// Access control for one server: the mode, the policy in force, and who to trust.
pub struct Access {
    mode: AuthMode,
    trust_xfcc: Option<String>,
    path: Option<PathBuf>,
    loaded: RwLock<Arc<Loaded>>,
    /// Bumped on every reload that changed the policy.
    changes: watch::Sender<u64>,
}

impl Access {
    /// No access control: every caller may do everything (its identity is still recorded).
    pub fn off() -> Arc<Access> {
        Access::with(AuthMode::Off, None, None, Policy::default(), String::new())
    }

    /// Access control as configured: `mode` (default: enforce with a policy, off without)
    /// and the policy file, read now. A file that does not parse refuses the start.
    pub fn open(
        mode: Option<AuthMode>,
        path: Option<&Path>,
        trust_xfcc: Option<String>,
    ) -> Result<Arc<Access>, String> {
        let mode = mode.unwrap_or(if path.is_some() {
            AuthMode::Enforce
        } else {
            AuthMode::Off
        });
        let (policy, text) = match path {
            Some(path) => read_policy(path)?,
            None if mode == AuthMode::Enforce => {
                return Err("--auth enforce needs a policy (--auth-policy FILE)".into());
            }
            None => (Policy::default(), String::new()),
        };
        Ok(Access::with(
            mode,
            path.map(Path::to_path_buf),
            trust_xfcc,
            policy,
            text,
        ))
    }

    fn with(
        mode: AuthMode,
        path: Option<PathBuf>,
        trust_xfcc: Option<String>,
        policy: Policy,
        text: String,
    ) -> Arc<Access> {
        Arc::new(Access {
            mode,
            trust_xfcc,
            path,
            loaded: RwLock::new(Arc::new(Loaded::new(policy, text))),
            changes: watch::channel(0).0,
        })
    }

    /// Changes when the policy may have changed (a reload): open streams check their callers
    /// again.
    pub fn policy_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    fn loaded(&self) -> Arc<Loaded> {
        Arc::clone(&self.loaded.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Re-reads the policy file. `Ok(true)` if the policy changed; an unreadable or invalid
    /// file keeps the policy in force and says why.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(path) = &self.path else { return Ok(false) };
        let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        if text == self.loaded().text {
            return Ok(false);
        }
        let policy = Policy::parse(&text).map_err(|error| format!("{}: {error}", path.display()))?;
        *self.loaded.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(Loaded::new(policy, text));
        self.changes.send_modify(|generation| *generation += 1);
        Ok(true)
    }

    /// Who is calling. The first that applies: a bearer token (over a peer identity, which
    /// becomes `via`), the client certificate's SPIFFE id, the identity our proxy vouches
    /// for in `x-forwarded-client-cert`. Then the caller's rate limit. With access control
    /// off, nothing is refused: the caller is who it says, or anonymous.
    pub fn authenticate(self: &Arc<Self>, presented: &Presented<'_>) -> Result<Caller, Error> {
        if self.mode == AuthMode::Off {
            // Nothing is checked: the caller is who it says (for the audit trail), or anonymous.
            return Ok(self.identify(presented).unwrap_or_else(|_| self.anonymous(presented)));
        }
        let caller = match self.identify(presented) {
            Ok(caller) => caller,
            Err(error) => {
                warn!(
                    target: "audit",
                    reason = error.reason.name(),
                    peer = %presented.peer.map(|peer| peer.to_string()).unwrap_or_default(),
                    request_id = presented.call_id.and_then(|value| value.to_str().ok()).unwrap_or_default(),
                    message = %error.message,
                    "refused"
                );
                return Err(error);
            }
        };
        if let Some(limiter) = self.loaded().limiters.get(&*caller.principal)
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let limited = Error::new(
                Reason::RateLimited,
                format!(
                    "the rate limit of `{}` is spent; retry in {} ms",
                    caller.principal,
                    wait.as_millis().max(1)
                ),
            )
            .retry_after(wait);
            return Err(caller.refused(limited, None));
        }
        Ok(caller)
    }

    fn anonymous(self: &Arc<Self>, presented: &Presented<'_>) -> Caller {
        Caller {
            principal: Arc::clone(&ANONYMOUS),
            credential: Credential::None,
            via: None,
            peer: presented.peer,
            call_id: presented.call_id.cloned(),
            access: Arc::clone(self),
        }
    }

    fn identify(self: &Arc<Self>, presented: &Presented<'_>) -> Result<Caller, Error> {
        let caller = |principal: &str, credential: Credential, via: Option<String>| Caller {
            principal: Arc::from(principal),
            credential,
            via,
            peer: presented.peer,
            call_id: presented.call_id.cloned(),
            access: Arc::clone(self),
        };
        // A certificate is a claim of identity: one that names no single SPIFFE id is refused,
        // with or without a token.
        let peer_identity = match presented.peer_certificate {
            Some(der) => {
                let spiffe_id =
                    credentials::spiffe_id(der).map_err(|why| Error::new(Reason::CredentialsInvalid, why))?;
                let fingerprint = crate::hex::encode(&credentials::sha256(der));
                Some((spiffe_id, Credential::Certificate { fingerprint }))
            }
            None => match (&self.trust_xfcc, presented.xfcc) {
                (Some(proxy), Some(header)) => credentials::xfcc_identity(header, proxy)
                    .map(|spiffe_id| (spiffe_id, Credential::ForwardedBy { proxy: proxy.clone() })),
                _ => None,
            },
        };
        if let Some(header) = presented.authorization {
            let token = credentials::bearer_token(header).ok_or_else(invalid_credentials)?;
            let loaded = self.loaded();
            let entry = loaded.policy.tokens.get(token.id).ok_or_else(invalid_credentials)?;
            // Hash and compare even for an expired token: the time taken says nothing.
            let matches = credentials::token_matches(&token, &entry.sha256);
            if !matches || expired(entry.expires_at) {
                return Err(invalid_credentials());
            }
            let credential = Credential::Token {
                id: token.id.to_string(),
                sha256: entry.sha256,
            };
            return Ok(caller(&entry.principal, credential, peer_identity.map(|(id, _)| id)));
        }
        match peer_identity {
            Some((spiffe_id, credential)) => Ok(caller(&spiffe_id, credential, None)),
            None => Err(missing_credentials()),
        }
    }
}

fn read_policy(path: &Path) -> Result<(Policy, String), String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let policy = Policy::parse(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    Ok((policy, text))
}
