//! Field checks at the edge: turn the raw strings and numbers of a request into domain values,
//! or into an error that names the request field. These need no state, so they run before
//! anything is looked up (the contract's order: shape, then existence, then rules).

use std::net::IpAddr;

use ipnet::IpNet;

use super::error::{Error, Reason};
use super::ids::{AccountId, BindingId, PrefixId, ServiceId};
use super::network::{CidrProblem, parse_canonical_cidr};
use super::service::Service;

/// The most characters a prefix description may have.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;
/// The most characters a request id may have.
pub const MAX_REQUEST_ID_CHARS: usize = 255;
/// The page size used for 0, and the largest one honoured.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The most addresses one LookupAddresses call may carry.
pub const MAX_LOOKUP_BATCH: usize = 10_000;
/// Prefixes must be at least this large (shortest accepted length per family).
pub const MAX_PREFIX_LEN_V4: u8 = 24;
pub const MAX_PREFIX_LEN_V6: u8 = 48;

fn id_error(reason: Reason, field: &str, text: &str) -> Error {
    let what = if text.is_empty() {
        "is required".to_string()
    } else {
        format!("{text:?} is not")
    };
    Error::field(reason, field, format!("{field} {what} 32 lowercase hex characters"))
}

pub fn account_id(field: &str, text: &str) -> Result<AccountId, Error> {
    AccountId::parse(text).ok_or_else(|| id_error(Reason::InvalidAccountId, field, text))
}

pub fn prefix_id(field: &str, text: &str) -> Result<PrefixId, Error> {
    PrefixId::parse(text).ok_or_else(|| id_error(Reason::InvalidPrefixId, field, text))
}

pub fn binding_id(field: &str, text: &str) -> Result<BindingId, Error> {
    BindingId::parse(text).ok_or_else(|| id_error(Reason::InvalidBindingId, field, text))
}

/// An optional id filter: empty means "no filter".
pub fn optional<T>(text: &str, parse: impl FnOnce(&str) -> Result<T, Error>) -> Result<Option<T>, Error> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse(text).map(Some)
    }
}

pub fn service(field: &str, text: &str) -> Result<Service, Error> {
    let id = ServiceId::parse(text).ok_or_else(|| id_error(Reason::InvalidService, field, text))?;
    Service::from_id(id).ok_or_else(|| {
        Error::field(
            Reason::InvalidService,
            field,
            format!("{text} is not a service of the catalog (see ListServices)"),
        )
    })
}

/// A canonical CIDR of any size (a binding's).
pub fn cidr(field: &str, text: &str) -> Result<IpNet, Error> {
    parse_canonical_cidr(text).map_err(|problem| match problem {
        CidrProblem::Unparsable => Error::field(
            Reason::InvalidCidr,
            field,
            format!("{text:?} is not a CIDR such as 192.0.2.0/24 or 2001:db8::/48"),
        ),
        CidrProblem::NotCanonical => Error::field(
            Reason::CidrNotCanonical,
            field,
            format!(
                "{text} has host bits set; did you mean {}?",
                text.parse::<IpNet>().map(|n| n.trunc().to_string()).unwrap_or_default()
            ),
        ),
    })
}

/// A canonical CIDR at least as large as /24 (IPv4) or /48 (IPv6): a prefix's.
pub fn prefix_cidr(field: &str, text: &str) -> Result<IpNet, Error> {
    let network = cidr(field, text)?;
    let longest = match network {
        IpNet::V4(_) => MAX_PREFIX_LEN_V4,
        IpNet::V6(_) => MAX_PREFIX_LEN_V6,
    };
    if network.prefix_len() > longest {
        return Err(Error::field(
            Reason::PrefixTooSmall,
            field,
            format!("{network} is smaller than /{longest}, the smallest prefix accepted for its family"),
        ));
    }
    Ok(network)
}

pub fn description(field: &str, text: &str) -> Result<String, Error> {
    let chars = text.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(Error::field(
            Reason::DescriptionTooLong,
            field,
            format!("{field} has {chars} characters; at most {MAX_DESCRIPTION_CHARS} are allowed"),
        ));
    }
    Ok(text.to_string())
}

/// An idempotency key: empty means none.
pub fn request_id(field: &str, text: &str) -> Result<Option<String>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    let chars = text.chars().count();
    if chars > MAX_REQUEST_ID_CHARS || text.chars().any(char::is_control) {
        return Err(Error::field(
            Reason::InvalidRequestId,
            field,
            format!("{field} must be at most {MAX_REQUEST_ID_CHARS} printable characters"),
        ));
    }
    Ok(Some(text.to_string()))
}

/// The number of items a page holds: 0 means the default, larger values are lowered.
pub fn page_size(field: &str, requested: i32) -> Result<usize, Error> {
    match usize::try_from(requested) {
        Err(_) => Err(Error::field(
            Reason::InvalidPageSize,
            field,
            format!("{field} must not be negative"),
        )),
        Ok(0) => Ok(MAX_PAGE_SIZE),
        Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
    }
}

/// An IPv4 or IPv6 address in any standard textual form. IPv4-mapped IPv6 addresses
/// (::ffff:192.0.2.1) are looked up as the IPv4 address they carry.
pub fn address(field: &str, text: &str) -> Result<IpAddr, Error> {
    super::address::parse(text).ok_or_else(|| not_an_address(field, text))
}

/// [`address`] for each entry of a repeated field, in order; the first that is not an address
/// is refused as `field[index]`. One tight loop: a batch parses thousands, and collecting a
/// `Result` per entry moved each through memory (most of the parse time in a profile).
pub fn addresses(field: &str, texts: &[impl AsRef<str>]) -> Result<Vec<IpAddr>, Error> {
    let mut addresses = Vec::with_capacity(texts.len());
    for text in texts.iter().map(AsRef::as_ref) {
        match super::address::parse(text) {
            Some(address) => addresses.push(address),
            None => return Err(not_an_address(&format!("{field}[{}]", addresses.len()), text)),
        }
    }
    Ok(addresses)
}

fn not_an_address(field: &str, text: &str) -> Error {
    Error::field(
        Reason::InvalidAddress,
        field,
        format!("{text:?} is not an IPv4 or IPv6 address"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_sizes() {
        assert!(prefix_cidr("cidr", "192.0.2.0/24").is_ok());
        assert!(prefix_cidr("cidr", "2001:db8::/48").is_ok());
        assert_eq!(
            prefix_cidr("cidr", "192.0.2.0/25").unwrap_err().reason,
            Reason::PrefixTooSmall
        );
        assert_eq!(
            prefix_cidr("cidr", "2001:db8::/49").unwrap_err().reason,
            Reason::PrefixTooSmall
        );
        assert_eq!(
            prefix_cidr("cidr", "192.0.2.1/24").unwrap_err().reason,
            Reason::CidrNotCanonical
        );
        assert_eq!(prefix_cidr("cidr", "nope").unwrap_err().reason, Reason::InvalidCidr);
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size("page_size", 0), Ok(MAX_PAGE_SIZE));
        assert_eq!(page_size("page_size", 5), Ok(5));
        assert_eq!(page_size("page_size", 5000), Ok(MAX_PAGE_SIZE));
        assert_eq!(page_size("page_size", -1).unwrap_err().reason, Reason::InvalidPageSize);
    }

    #[test]
    fn addresses_in_every_form() {
        assert_eq!(address("address", "192.0.2.1").unwrap().to_string(), "192.0.2.1");
        let batch = addresses("addresses", &["192.0.2.1", "2001:db8::1"]).unwrap();
        assert_eq!(
            batch,
            [address("a", "192.0.2.1").unwrap(), address("a", "2001:db8::1").unwrap()]
        );
        let refused = addresses("addresses", &["192.0.2.1", "192.0.2.256"]).unwrap_err();
        assert_eq!(refused.violations[0].field, "addresses[1]");
        assert_eq!(address("address", "::ffff:192.0.2.1").unwrap().to_string(), "192.0.2.1");
        assert_eq!(address("address", "2001:DB8:0::1").unwrap().to_string(), "2001:db8::1");
        assert_eq!(
            address("address", "192.0.2.256").unwrap_err().violations[0].field,
            "address"
        );
    }

    #[test]
    fn description_counts_characters_not_bytes() {
        assert!(description("description", &"é".repeat(1000)).is_ok());
        assert!(description("description", &"a".repeat(1001)).is_err());
    }
}
