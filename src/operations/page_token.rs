//! Page tokens: opaque to callers, they carry the network key of the last item served. Each is
//! bound to the list it came from (which account's prefixes, which prefix's bindings) and
//! sealed with a checksum, so that a token this server did not issue for this list is refused
//! as INVALID_ARGUMENT instead of silently starting somewhere else. Tokens stay valid across
//! restarts: paging resumes after the key, whatever changed in between.

use crate::domain::network::NetworkKey;
use crate::domain::{Error, Reason};

const TOKEN_VERSION: u8 = 1;
/// Mixed into the checksum so that a token is not just any hex string with a valid CRC.
const SEAL: &[u8] = b"ipam-bindings page token v1";
const KEY_LEN: usize = 18;
const TOKEN_LEN: usize = 1 + KEY_LEN + 4;

/// Which list a token belongs to: a tag and the id that scopes the list.
pub struct ListScope<'a> {
    pub list: &'static str,
    pub scope: &'a [u8],
}

fn seal(scope: &ListScope<'_>, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(SEAL);
    hasher.update(scope.list.as_bytes());
    hasher.update(scope.scope);
    hasher.update(body);
    hasher.finalize()
}

pub fn encode(scope: &ListScope<'_>, after: NetworkKey) -> String {
    let mut bytes = Vec::with_capacity(TOKEN_LEN);
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(&after.to_bytes());
    let checksum = seal(scope, &bytes);
    bytes.extend_from_slice(&checksum.to_be_bytes());
    crate::hex::encode(&bytes)
}

/// The key to continue after: `None` for the first page (empty token).
pub fn decode(scope: &ListScope<'_>, field: &str, token: &str) -> Result<Option<NetworkKey>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Error::field(
            Reason::InvalidPageToken,
            field,
            format!("{field} was not issued by this server for this list; start again with an empty {field}"),
        )
    };
    let bytes = crate::hex::decode(token).ok_or_else(invalid)?;
    if bytes.len() != TOKEN_LEN || bytes[0] != TOKEN_VERSION {
        return Err(invalid());
    }
    let (body, checksum) = bytes.split_at(1 + KEY_LEN);
    if seal(scope, body).to_be_bytes() != checksum {
        return Err(invalid());
    }
    NetworkKey::from_bytes(&body[1..]).map(Some).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_forgeries() {
        let scope = ListScope {
            list: "prefixes",
            scope: b"account-a",
        };
        let key = NetworkKey::of(&"192.0.2.0/24".parse().unwrap());
        let token = encode(&scope, key);
        assert_eq!(decode(&scope, "page_token", &token).unwrap(), Some(key));
        assert_eq!(decode(&scope, "page_token", "").unwrap(), None);
        let other = ListScope {
            list: "prefixes",
            scope: b"account-b",
        };
        assert!(decode(&other, "page_token", &token).is_err());
        let mut tampered = token.clone().into_bytes();
        tampered[10] = if tampered[10] == b'0' { b'1' } else { b'0' };
        assert!(decode(&scope, "page_token", std::str::from_utf8(&tampered).unwrap()).is_err());
        for junk in ["x", "00", "zz", "é", &"0".repeat(46)] {
            assert_eq!(
                decode(&scope, "page_token", junk).unwrap_err().reason,
                Reason::InvalidPageToken
            );
        }
    }
}
