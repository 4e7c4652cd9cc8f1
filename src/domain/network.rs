//! CIDR parsing with the contract's distinct failure reasons, writing a CIDR as text (what
//! every reply and stored record holds) and a peer's socket address (what the audit record
//! holds), and the order in which prefixes and bindings are listed: IPv4 before IPv6, then by
//! network address, then shorter first.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// Why a CIDR string is not an acceptable network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidrProblem {
    /// It does not parse as `address/length`.
    Unparsable,
    /// It parses, but host bits are set (e.g. 192.0.2.1/24).
    NotCanonical,
}

/// Parses a canonical CIDR: `address/length` with every host bit zero.
pub fn parse_canonical_cidr(text: &str) -> Result<IpNet, CidrProblem> {
    let network = IpNet::from_str(text).map_err(|_| CidrProblem::Unparsable)?;
    if network.trunc() != network {
        return Err(CidrProblem::NotCanonical);
    }
    Ok(network)
}

/// `cidr` as its `Display` writes it (`192.0.2.0/24`), in a string of its exact size (a
/// reply's CIDR, one per binding answered).
pub fn cidr_text(cidr: &IpNet) -> String {
    let mut text = Vec::with_capacity(match cidr {
        IpNet::V4(_) => "255.255.255.255/32".len(),
        IpNet::V6(_) => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128".len(),
    });
    write_cidr(cidr, &mut text);
    String::from_utf8(text).expect("a CIDR is written in ASCII")
}

/// Appends `cidr` as its `Display` writes it (`192.0.2.0/24`): IPv4 digit by digit, since
/// `core::fmt` took a fifth of a snapshot's encoding; IPv6 (its zero runs compressed) through
/// `Display`.
pub fn write_cidr(cidr: &IpNet, out: &mut Vec<u8>) {
    match cidr {
        IpNet::V4(net) => {
            write_ipv4(net.addr(), out);
            out.push(b'/');
            write_decimal(u16::from(net.prefix_len()), out);
        }
        IpNet::V6(_) => {
            use std::io::Write;
            write!(out, "{cidr}").expect("writing to a Vec");
        }
    }
}

/// `peer` as its `Display` writes it (`192.0.2.7:50312`), IPv4 without `core::fmt` (the
/// audit record of every change names its peer; formatting it was ~2% of a create's
/// handling on the workers, docs/benchmarks.md).
pub fn socket_addr_text(peer: &SocketAddr) -> String {
    match peer {
        SocketAddr::V4(peer) => {
            let mut text = Vec::with_capacity("255.255.255.255:65535".len());
            write_ipv4(*peer.ip(), &mut text);
            text.push(b':');
            write_decimal(peer.port(), &mut text);
            String::from_utf8(text).expect("an address is written in ASCII")
        }
        SocketAddr::V6(_) => peer.to_string(),
    }
}

/// Written on the stack and appended once: appending each octet's digits (from `itoa`) and
/// each dot was ~1% of a create's instructions (three addresses written per create).
fn write_ipv4(address: Ipv4Addr, out: &mut Vec<u8>) {
    let mut text = [0u8; "255.255.255.255".len()];
    let mut len = 0;
    for (index, octet) in address.octets().into_iter().enumerate() {
        if index > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    out.extend_from_slice(&text[..len]);
}

fn write_decimal(n: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Whether `inner` lies inside `outer` (or equals it), in the same address family.
pub fn contains(outer: &IpNet, inner: &IpNet) -> bool {
    outer.contains(inner)
}

/// Whether both networks are of the same address family.
pub fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!((a, b), (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)))
}

/// The list order of networks: family, then network address, then prefix length. Deriving
/// `Ord` on the fields in this order gives exactly the contract's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkKey {
    /// 4 or 6.
    pub family: u8,
    /// The network address as an integer (IPv4 widened to 128 bits).
    pub address: u128,
    pub prefix_len: u8,
}

impl NetworkKey {
    /// Below and above every key: the bounds of a scan over all networks.
    pub const MIN: NetworkKey = NetworkKey {
        family: 0,
        address: 0,
        prefix_len: 0,
    };
    pub const MAX: NetworkKey = NetworkKey {
        family: u8::MAX,
        address: u128::MAX,
        prefix_len: u8::MAX,
    };

    pub fn of(network: &IpNet) -> NetworkKey {
        match network {
            IpNet::V4(v4) => NetworkKey {
                family: 4,
                address: u32::from(v4.network()) as u128,
                prefix_len: v4.prefix_len(),
            },
            IpNet::V6(v6) => NetworkKey {
                family: 6,
                address: u128::from(v6.network()),
                prefix_len: v6.prefix_len(),
            },
        }
    }

    /// The highest address inside the network, as an integer of the same width as `address`.
    pub fn last_address(&self) -> u128 {
        let width = if self.family == 4 { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix_len);
        let host_mask = if host_bits == 0 {
            0
        } else {
            u128::MAX >> (128 - host_bits)
        };
        self.address | host_mask
    }

    /// Fixed-size encoding (family, address, length) used in page tokens.
    pub fn to_bytes(self) -> [u8; 18] {
        let mut bytes = [0u8; 18];
        bytes[0] = self.family;
        bytes[1..17].copy_from_slice(&self.address.to_be_bytes());
        bytes[17] = self.prefix_len;
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<NetworkKey> {
        let bytes: &[u8; 18] = bytes.try_into().ok()?;
        let mut address = [0u8; 16];
        address.copy_from_slice(&bytes[1..17]);
        let key = NetworkKey {
            family: bytes[0],
            address: u128::from_be_bytes(address),
            prefix_len: bytes[17],
        };
        let valid = match key.family {
            4 => key.prefix_len <= 32 && key.address <= u32::MAX as u128,
            6 => key.prefix_len <= 128,
            _ => false,
        };
        valid.then_some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn a_cidr_is_written_as_display_writes_it() {
        let cidrs = [
            "0.0.0.0/0",
            "255.255.255.255/32",
            "10.0.100.0/24",
            "192.0.2.9/32",
            "100.64.0.0/10",
            "2001:db8::/48",
            "::/0",
            "2001:db8:0:1::1/128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        ];
        for cidr in cidrs {
            let cidr: IpNet = cidr.parse().unwrap();
            assert_eq!(cidr_text(&cidr), cidr.to_string());
        }
        for octet in 0..=255u8 {
            let address = [octet, octet.wrapping_mul(7), 255 - octet, octet / 3];
            let cidr = IpNet::V4(ipnet::Ipv4Net::new(address.into(), octet % 33).unwrap());
            assert_eq!(cidr_text(&cidr), cidr.to_string());
        }
        // The longest of each family fits the string's first allocation.
        let longest: IpNet = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128".parse().unwrap();
        assert_eq!(cidr_text(&longest).capacity(), 43);
    }

    #[test]
    fn socket_addresses_are_written_as_display_writes_them() {
        for peer in ["192.0.2.7:50312", "0.0.0.0:0", "10.0.100.9:65535", "[2001:db8::1]:443"] {
            let peer: SocketAddr = peer.parse().unwrap();
            assert_eq!(socket_addr_text(&peer), peer.to_string());
        }
        for n in [0u16, 9, 10, 99, 100, 255, 999, 1000, 9999, 10000, 65535] {
            let peer = SocketAddr::from(([n as u8, 1, 10, 100], n));
            assert_eq!(socket_addr_text(&peer), peer.to_string());
        }
        // The longest IPv4 one fits the string's first allocation.
        let longest = SocketAddr::from(([255; 4], u16::MAX));
        assert_eq!(socket_addr_text(&longest).capacity(), 21);
    }

    #[test]
    fn canonical_parsing() {
        assert_eq!(parse_canonical_cidr("192.0.2.0/24"), Ok(net("192.0.2.0/24")));
        assert_eq!(parse_canonical_cidr("2001:DB8::/48"), Ok(net("2001:db8::/48")));
        assert_eq!(parse_canonical_cidr("192.0.2.1/24"), Err(CidrProblem::NotCanonical));
        for bad in [
            "",
            "192.0.2.0",
            "192.0.2.0/33",
            "x/24",
            " 192.0.2.0/24",
            "192.0.2.0/24 ",
        ] {
            assert_eq!(parse_canonical_cidr(bad), Err(CidrProblem::Unparsable), "{bad:?}");
        }
    }

    #[test]
    fn order_is_family_then_address_then_length() {
        let mut keys: Vec<_> = ["2001:db8::/32", "10.0.0.0/8", "10.0.0.0/16", "9.0.0.0/8"]
            .iter()
            .map(|text| NetworkKey::of(&net(text)))
            .collect();
        keys.sort();
        let order: Vec<_> = keys.iter().map(|key| (key.family, key.prefix_len)).collect();
        assert_eq!(order, [(4, 8), (4, 8), (4, 16), (6, 32)]);
        assert_eq!(keys[0].address, 9 << 24);
    }

    #[test]
    fn key_bytes_round_trip_and_last_address() {
        let key = NetworkKey::of(&net("192.0.2.0/24"));
        assert_eq!(NetworkKey::from_bytes(&key.to_bytes()), Some(key));
        assert_eq!(
            key.last_address(),
            u32::from(std::net::Ipv4Addr::new(192, 0, 2, 255)) as u128
        );
        let all = NetworkKey::of(&net("::/0"));
        assert_eq!(all.last_address(), u128::MAX);
    }
}
