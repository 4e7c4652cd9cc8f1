//! The access policy: the TOML file (`--auth-policy`) parsed and checked into lookups by token
//! id and by SPIFFE id. Unknown fields, duplicate ids, malformed hashes and grants that do not
//! fit their permission are refused with a message that names the entry.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::time::SystemTime;

use serde::Deserialize;

use crate::domain::AccountId;

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Get and list prefixes and bindings, list services, watch an account.
    PrefixesRead,
    /// Create, update and delete prefixes and bindings (implies read).
    PrefixesEdit,
    /// Lookups (global: a lookup reveals which account holds an address).
    RoutingLookup,
    /// Watch every account's bindings (global).
    BindingsWatchAll,
    /// Report that a binding's rollout completed (global).
    RolloutComplete,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::PrefixesRead,
        Permission::PrefixesEdit,
        Permission::RoutingLookup,
        Permission::BindingsWatchAll,
        Permission::RolloutComplete,
    ];

    /// The name in the policy file and in errors.
    pub fn name(self) -> &'static str {
        match self {
            Permission::PrefixesRead => "ip_prefixes.read",
            Permission::PrefixesEdit => "ip_prefixes.edit",
            Permission::RoutingLookup => "routing.lookup",
            Permission::BindingsWatchAll => "bindings.watch_all",
            Permission::RolloutComplete => "rollout.complete",
        }
    }

    /// Global permissions are granted without accounts.
    pub fn is_global(self) -> bool {
        !matches!(self, Permission::PrefixesRead | Permission::PrefixesEdit)
    }

    fn from_name(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|permission| permission.name() == name)
    }
}

/// The accounts a grant covers.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Accounts {
    /// A global permission.
    Global,
    /// `accounts = ["*"]`.
    Every,
    Listed(HashSet<AccountId>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    permission: Permission,
    accounts: Accounts,
}

/// What one principal or token may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants(Vec<Grant>);

impl Grants {
    /// Whether the grants allow `permission`, on `account` for a per-account one.
    pub fn allow(&self, permission: Permission, account: Option<&AccountId>) -> bool {
        self.0.iter().any(|grant| {
            let covers_permission = grant.permission == permission
                || (permission == Permission::PrefixesRead && grant.permission == Permission::PrefixesEdit);
            covers_permission
                && match (&grant.accounts, account) {
                    (Accounts::Global, _) => permission.is_global(),
                    (Accounts::Every, Some(_)) => true,
                    (Accounts::Listed(accounts), Some(account)) => accounts.contains(account),
                    (_, None) => false,
                }
        })
    }
}

/// A rate limit: a sustained rate and the burst allowed above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// A bearer token's entry: never the token, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEntry {
    pub sha256: [u8; 32],
    pub principal: String,
    pub expires_at: Option<SystemTime>,
    pub grants: Grants,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// By token id.
    pub tokens: HashMap<String, TokenEntry>,
    /// By SPIFFE id (from mTLS or a trusted proxy's XFCC).
    pub principals: HashMap<String, Grants>,
    /// By principal name.
    pub rate_limits: HashMap<String, RateLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    token: Vec<TokenFile>,
    #[serde(default)]
    principal: Vec<PrincipalFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    id: String,
    sha256: String,
    principal: String,
    expires_at: Option<toml::value::Datetime>,
    #[serde(default)]
    grants: Vec<GrantFile>,
    rate_limit: Option<RateLimitFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalFile {
    id: String,
    #[serde(default)]
    grants: Vec<GrantFile>,
    rate_limit: Option<RateLimitFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    permission: String,
    accounts: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    per_second: u32,
    /// Defaults to `per_second`.
    burst: Option<u32>,
}

/// A token id: 1 to 32 letters, digits and dashes (the token is `ipam_<id>_<secret>`).
pub fn is_token_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Policy {
    /// Parses and checks a policy file's text.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|error| error.to_string().trim_end().to_string())?;
        let mut policy = Policy::default();
        for token in file.token {
            let entry = format!("token `{}`", token.id);
            if !is_token_id(&token.id) {
                return Err(format!("{entry}: an id is 1 to 32 letters, digits or dashes"));
            }
            let sha256 = parse_sha256(&token.sha256)
                .ok_or_else(|| format!("{entry}: sha256 must be the 64 lowercase hex digits of the token's SHA-256"))?;
            if token.principal.is_empty() {
                return Err(format!("{entry}: principal is empty"));
            }
            let expires_at = token
                .expires_at
                .map(|at| {
                    humantime::parse_rfc3339(&at.to_string())
                        .map_err(|_| format!("{entry}: expires_at must be a UTC date and time (2027-01-01T00:00:00Z)"))
                })
                .transpose()?;
            let grants = parse_grants(&entry, token.grants)?;
            add_rate_limit(&mut policy, &entry, &token.principal, token.rate_limit)?;
            let parsed = TokenEntry {
                sha256,
                principal: token.principal,
                expires_at,
                grants,
            };
            if policy.tokens.insert(token.id.clone(), parsed).is_some() {
                return Err(format!("{entry} is listed twice"));
            }
        }
        for principal in file.principal {
            let entry = format!("principal `{}`", principal.id);
            if !principal.id.starts_with("spiffe://") {
                return Err(format!("{entry}: an id is a SPIFFE id (spiffe://trust-domain/path)"));
            }
            let grants = parse_grants(&entry, principal.grants)?;
            add_rate_limit(&mut policy, &entry, &principal.id, principal.rate_limit)?;
            if policy.principals.insert(principal.id, grants).is_some() {
                return Err(format!("{entry} is listed twice"));
            }
        }
        Ok(policy)
    }
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    crate::hex::decode(text)?.try_into().ok()
}

fn parse_grants(entry: &str, grants: Vec<GrantFile>) -> Result<Grants, String> {
    let mut parsed = Vec::with_capacity(grants.len());
    for grant in grants {
        let permission = Permission::from_name(&grant.permission).ok_or_else(|| {
            let known: Vec<_> = Permission::ALL.iter().map(|p| p.name()).collect();
            format!(
                "{entry}: unknown permission `{}` (known: {})",
                grant.permission,
                known.join(", ")
            )
        })?;
        let accounts = match (permission.is_global(), grant.accounts) {
            (true, None) => Accounts::Global,
            (true, Some(_)) => {
                return Err(format!(
                    "{entry}: `{}` is global and takes no accounts",
                    permission.name()
                ));
            }
            (false, None) => {
                return Err(format!(
                    "{entry}: `{}` needs accounts (ids, or \"*\")",
                    permission.name()
                ));
            }
            (false, Some(accounts)) if accounts.iter().any(|account| account == "*") => Accounts::Every,
            (false, Some(accounts)) => Accounts::Listed(
                accounts
                    .iter()
                    .map(|account| {
                        crate::domain::fields::account_id("accounts", account)
                            .map_err(|_| format!("{entry}: `{account}` is not an account id (32 lowercase hex)"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        parsed.push(Grant { permission, accounts });
    }
    Ok(Grants(parsed))
}

fn add_rate_limit(
    policy: &mut Policy,
    entry: &str,
    principal: &str,
    limit: Option<RateLimitFile>,
) -> Result<(), String> {
    let Some(limit) = limit else { return Ok(()) };
    let (Some(per_second), Some(burst)) = (
        NonZeroU32::new(limit.per_second),
        NonZeroU32::new(limit.burst.unwrap_or(limit.per_second)),
    ) else {
        return Err(format!("{entry}: rate_limit needs per_second and burst above 0"));
    };
    let limit = RateLimit { per_second, burst };
    match policy.rate_limits.insert(principal.to_string(), limit) {
        Some(other) if other != limit => Err(format!(
            "{entry}: principal `{principal}` has two different rate limits"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_documented_example() {
        let text = format!(
            r#"
[[token]]
id = "ci1"
sha256 = "{HASH}"
principal = "ci-bot"
expires_at = 2027-01-01T00:00:00Z
grants = [ {{ permission = "ip_prefixes.edit", accounts = ["{ACCOUNT}"] }},
           {{ permission = "routing.lookup" }} ]
rate_limit = {{ per_second = 100, burst = 200 }}

[[principal]]
id = "spiffe://prod/ns/edge/sa/router"
grants = [ {{ permission = "routing.lookup" }} ]
"#
        );
        let policy = Policy::parse(&text).unwrap();
        let token = &policy.tokens["ci1"];
        assert_eq!(token.principal, "ci-bot");
        let account = crate::domain::fields::account_id("a", ACCOUNT).unwrap();
        let other = crate::domain::fields::account_id("a", &"f".repeat(32)).unwrap();
        assert!(token.grants.allow(Permission::PrefixesEdit, Some(&account)));
        assert!(
            token.grants.allow(Permission::PrefixesRead, Some(&account)),
            "edit implies read"
        );
        assert!(!token.grants.allow(Permission::PrefixesRead, Some(&other)));
        assert!(token.grants.allow(Permission::RoutingLookup, None));
        assert!(!token.grants.allow(Permission::BindingsWatchAll, None));
        assert_eq!(policy.rate_limits["ci-bot"].burst.get(), 200);
        let router = &policy.principals["spiffe://prod/ns/edge/sa/router"];
        assert!(router.allow(Permission::RoutingLookup, None));
        assert!(!router.allow(Permission::PrefixesRead, Some(&account)));
    }

    #[test]
    fn refuses_what_would_be_misread() {
        let token = |extra: &str| format!("[[token]]\nid = \"t\"\nsha256 = \"{HASH}\"\nprincipal = \"p\"\n{extra}");
        for (text, expected) in [
            (token("colour = \"red\""), "unknown field"),
            (
                token("grants = [ { permission = \"ip_prefixes.admin\", accounts = [\"*\"] } ]"),
                "unknown permission",
            ),
            (
                token("grants = [ { permission = \"routing.lookup\", accounts = [\"*\"] } ]"),
                "takes no accounts",
            ),
            (
                token("grants = [ { permission = \"ip_prefixes.read\" } ]"),
                "needs accounts",
            ),
            (
                token("grants = [ { permission = \"ip_prefixes.read\", accounts = [\"acme\"] } ]"),
                "not an account id",
            ),
            (token("expires_at = 2027-01-01T00:00:00+01:00"), "UTC"),
            (token("rate_limit = { per_second = 0 }"), "above 0"),
            (format!("{}\n{}", token(""), token("")), "listed twice"),
            (
                "[[token]]\nid = \"t_1\"\nsha256 = \"x\"\nprincipal = \"p\"".into(),
                "letters, digits or dashes",
            ),
            (
                "[[token]]\nid = \"t\"\nsha256 = \"ABC\"\nprincipal = \"p\"".into(),
                "64 lowercase hex",
            ),
            ("[[principal]]\nid = \"router\"".into(), "SPIFFE id"),
        ] {
            let error = Policy::parse(&text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert_eq!(Policy::parse("").unwrap(), Policy::default());
    }
}
