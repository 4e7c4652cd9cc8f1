//! Reading credentials: bearer tokens (`ipam_<id>_<secret>`, checked against a SHA-256 in
//! constant time), the SPIFFE id of a client certificate (its one URI SAN), and Envoy's
//! `x-forwarded-client-cert` header. Also makes new tokens.

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use super::policy::is_token_id;
use crate::hex::encode as hex;

/// The prefix every token starts with.
const TOKEN_PREFIX: &str = "ipam_";
/// The shortest secret a token may carry.
const MIN_SECRET_LEN: usize = 32;

/// A token as presented: its id (to find its entry) and the whole string (to hash).
#[derive(Debug, PartialEq, Eq)]
pub struct PresentedToken<'a> {
    pub id: &'a str,
    pub whole: &'a str,
}

/// The token of an `authorization` header's value: `Bearer ipam_<id>_<secret>`. `None` for
/// any other shape (another scheme, a malformed token).
pub fn bearer_token(header: &str) -> Option<PresentedToken<'_>> {
    let (scheme, token) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    let (id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let secret_ok = secret.len() >= MIN_SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (is_token_id(id) && secret_ok).then_some(PresentedToken { id, whole: token })
}

pub fn sha256(text: &[u8]) -> [u8; 32] {
    let mut hash = [0; 32];
    hash.copy_from_slice(digest(&SHA256, text).as_ref());
    hash
}

/// Whether `token` hashes to `expected`, compared in constant time.
pub fn token_matches(token: &PresentedToken<'_>, expected: &[u8; 32]) -> bool {
    sha256(token.whole.as_bytes()).ct_eq(expected).into()
}

/// A new token for `id`: 32 random bytes as 64 hex digits of secret.
pub fn new_token(id: &str) -> Result<String, String> {
    let mut secret = [0u8; 32];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| "the system's random generator failed".to_string())?;
    Ok(format!("{TOKEN_PREFIX}{id}_{}", hex(&secret)))
}

/// A fresh token id: 8 random hex digits.
pub fn new_token_id() -> Result<String, String> {
    let mut id = [0u8; 4];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| "the system's random generator failed".to_string())?;
    Ok(hex(&id))
}

/// Why a client certificate is not an identity.
pub const CERTIFICATE_NEEDS_ONE_URI: &str =
    "the client certificate must carry exactly one URI SAN, a SPIFFE id (spiffe://...)";

/// The SPIFFE id of a client certificate (DER): its only URI SAN, which must be `spiffe://`.
pub fn spiffe_id(certificate: &[u8]) -> Result<String, &'static str> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(certificate).map_err(|_| "the client certificate does not parse")?;
    let uris: Vec<&str> = match parsed.subject_alternative_name() {
        Ok(Some(names)) => (names.value.general_names.iter())
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => return Err("the client certificate's subjectAltName does not parse"),
    };
    match uris.as_slice() {
        [uri] if uri.starts_with("spiffe://") => Ok((*uri).to_string()),
        _ => Err(CERTIFICATE_NEEDS_ONE_URI),
    }
}

/// The elements of an `x-forwarded-client-cert` header, each a list of `key=value` pairs
/// (keys as sent; values unquoted). Elements are separated by `,` and pairs by `;`; a value
/// in double quotes may hold `,;=` and `\"`. `None` if the header is malformed.
pub fn xfcc_elements(header: &str) -> Option<Vec<Vec<(String, String)>>> {
    let mut elements = Vec::new();
    let mut pairs = Vec::new();
    let (mut key, mut value) = (String::new(), String::new());
    let (mut in_value, mut quoted, mut escaped) = (false, false, false);
    for c in header.chars() {
        if quoted {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {
                    escaped = false;
                    value.push(c);
                }
            }
            continue;
        }
        match c {
            '"' if in_value && value.is_empty() => quoted = true,
            '=' if !in_value => in_value = true,
            ';' | ',' => {
                if !in_value || key.trim().is_empty() {
                    return None;
                }
                pairs.push((key.trim().to_string(), std::mem::take(&mut value)));
                key.clear();
                in_value = false;
                if c == ',' {
                    elements.push(std::mem::take(&mut pairs));
                }
            }
            _ if in_value => value.push(c),
            _ => key.push(c),
        }
    }
    if quoted || !in_value || key.trim().is_empty() {
        return None;
    }
    pairs.push((key.trim().to_string(), value));
    elements.push(pairs);
    Some(elements)
}

/// The identity a trusted proxy vouches for: the header's last element (the one our own
/// proxy appended) must say `By=<trusted>`; its `URI` is the peer's SPIFFE id. Elements
/// before it were written by others and are ignored.
pub fn xfcc_identity(header: &str, trusted: &str) -> Option<String> {
    let elements = xfcc_elements(header)?;
    let last = elements.last()?;
    let field = |name: &str| {
        let mut values = last.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name));
        let value = values.next()?;
        values.next().is_none().then_some(value.1.as_str())
    };
    let uri = field("URI")?;
    (field("By")? == trusted && uri.starts_with("spiffe://")).then(|| uri.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_tokens() {
        let secret = "a".repeat(32);
        let header = format!("Bearer ipam_ci-1_{secret}");
        assert_eq!(
            bearer_token(&header),
            Some(PresentedToken {
                id: "ci-1",
                whole: &header[7..]
            })
        );
        assert!(bearer_token(&format!("bearer ipam_ci_{secret}")).is_some());
        for bad in [
            format!("Basic ipam_ci_{secret}"),
            format!("Bearer ipam_ci_{}", "a".repeat(31)),
            format!("Bearer ipam__{secret}"),
            format!("Bearer xyz_ci_{secret}"),
            format!("Bearer ipam_ci_{secret}!"),
            "Bearer".to_string(),
        ] {
            assert_eq!(bearer_token(&bad), None, "{bad}");
        }
    }

    #[test]
    fn new_tokens_parse_and_match_their_hash() {
        let token = new_token("ci1").unwrap();
        let header = format!("Bearer {token}");
        let presented = bearer_token(&header).unwrap();
        assert_eq!(presented.id, "ci1");
        assert!(token_matches(&presented, &sha256(token.as_bytes())));
        assert!(!token_matches(&presented, &sha256(b"another")));
        assert_ne!(new_token("ci1").unwrap(), token);
    }

    #[test]
    fn only_the_last_xfcc_element_by_our_proxy_counts() {
        let us = "spiffe://prod/ns/ipam/sa/ipam";
        let ours = format!("By={us};Hash=abc;URI=spiffe://prod/ns/edge/sa/router");
        assert_eq!(
            xfcc_identity(&ours, us).as_deref(),
            Some("spiffe://prod/ns/edge/sa/router")
        );
        // A forged element in front of ours is ignored; ours decides.
        let forged = format!("By={us};URI=spiffe://prod/ns/admin/sa/root,{ours}");
        assert_eq!(
            xfcc_identity(&forged, us).as_deref(),
            Some("spiffe://prod/ns/edge/sa/router")
        );
        // A last element not written by our proxy: no identity.
        let appended = format!("{ours},By=spiffe://elsewhere;URI=spiffe://prod/ns/admin/sa/root");
        assert_eq!(xfcc_identity(&appended, us), None);
        // Quoted values may hold separators.
        let quoted = format!("By={us};Subject=\"CN=router,O=Edge;x\";URI=spiffe://prod/r");
        assert_eq!(xfcc_identity(&quoted, us).as_deref(), Some("spiffe://prod/r"));
        for malformed in ["By", "By=a;URI=\"b", "=x", "By=a;;URI=b", ""] {
            assert_eq!(xfcc_identity(malformed, us), None, "{malformed}");
        }
        // Two URIs in our element: ambiguous, refused.
        assert_eq!(
            xfcc_identity(&format!("By={us};URI=spiffe://a;URI=spiffe://b"), us),
            None
        );
    }
}
