//! The routing table as address ranges: what a change does to traffic (preview), the effective
//! table (every covered address -> its most specific binding, as maximal ranges) and the range
//! arithmetic both need. Bindings of a prefix are laminar (nested or disjoint), so a binding
//! owns its range minus its children's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::network::NetworkKey;

/// A range of addresses of one family, `first..=last` as integers (IPv4 widened).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressRange {
    /// 4 or 6: IPv4 ranges sort first.
    pub family: u8,
    pub first: u128,
    pub last: u128,
}

impl AddressRange {
    pub fn of(network: &IpNet) -> AddressRange {
        let key = NetworkKey::of(network);
        AddressRange::of_key(&key)
    }

    pub fn of_key(key: &NetworkKey) -> AddressRange {
        AddressRange {
            family: key.family,
            first: key.address,
            last: key.last_address(),
        }
    }

    fn width(&self) -> u32 {
        if self.family == 4 { 32 } else { 128 }
    }

    fn address(&self, value: u128) -> IpAddr {
        if self.family == 4 {
            IpAddr::V4(Ipv4Addr::from(value as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(value))
        }
    }

    pub fn first_address(&self) -> IpAddr {
        self.address(self.first)
    }

    pub fn last_address(&self) -> IpAddr {
        self.address(self.last)
    }

    /// The fewest CIDRs that cover exactly this range, in address order.
    pub fn cidrs(&self) -> Vec<IpNet> {
        let width = self.width();
        let mut cidrs = Vec::new();
        let mut start = self.first;
        loop {
            let remaining = self.last - start;
            // The largest block that starts at `start` (alignment) and fits in what is left.
            let aligned = if start == 0 {
                width
            } else {
                start.trailing_zeros().min(width)
            };
            let fits = if remaining == u128::MAX {
                128
            } else {
                127 - (remaining + 1).leading_zeros()
            };
            let bits = aligned.min(fits);
            let prefix_len = (width - bits) as u8;
            cidrs.push(IpNet::new(self.address(start), prefix_len).expect("a prefix length within the width"));
            if bits >= 128 {
                return cidrs;
            }
            let next = start + ((1u128 << bits) - 1);
            if next >= self.last {
                return cidrs;
            }
            start = next + 1;
        }
    }
}

/// How many addresses the ranges hold, in decimal (all of IPv6 is one more than `u128` holds).
pub fn count_addresses(ranges: impl IntoIterator<Item = AddressRange>) -> String {
    let mut total: u128 = 0;
    for range in ranges {
        let size_minus_one = range.last - range.first;
        match total.checked_add(size_minus_one).and_then(|sum| sum.checked_add(1)) {
            Some(sum) => total = sum,
            // Disjoint ranges of one family hold at most 2^128 addresses: this is exactly that.
            None => return "340282366920938463463374607431768211456".into(),
        }
    }
    total.to_string()
}

/// `outer` minus the `inner` ranges (sorted by first address; ranges nested in an earlier one
/// are skipped): the parts of `outer` that no inner range covers, in address order.
pub fn uncovered(outer: AddressRange, inner: impl IntoIterator<Item = AddressRange>) -> Vec<AddressRange> {
    let mut gaps = Vec::new();
    let mut cursor = Some(outer.first);
    for range in inner {
        let Some(from) = cursor else { break };
        if range.first < from {
            // Nested in (or equal to) the range before: already covered.
            continue;
        }
        if range.first > from {
            gaps.push(AddressRange {
                first: from,
                last: range.first - 1,
                ..outer
            });
        }
        cursor = range.last.checked_add(1).filter(|next| *next <= outer.last);
    }
    if let Some(from) = cursor
        && from <= outer.last
    {
        gaps.push(AddressRange { first: from, ..outer });
    }
    gaps
}

/// The effective table of one prefix: each binding's range minus its children's, for
/// `bindings` in list order (address, then shorter first: parents before children).
pub fn effective_ranges<B: Copy>(bindings: impl IntoIterator<Item = (AddressRange, B)>) -> Vec<(AddressRange, B)> {
    let bindings: Vec<(AddressRange, B)> = bindings.into_iter().collect();
    let mut routes = Vec::new();
    for (index, (range, binding)) in bindings.iter().enumerate() {
        // Its descendants follow it in list order, up to the first range past its end.
        let descendants = bindings[index + 1..]
            .iter()
            .take_while(|(inner, _)| inner.first <= range.last && inner.family == range.family)
            .map(|(inner, _)| *inner);
        routes.extend(uncovered(*range, descendants).into_iter().map(|gap| (gap, *binding)));
    }
    routes.sort_by_key(|(range, _)| *range);
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(network: &str) -> AddressRange {
        AddressRange::of(&network.parse().unwrap())
    }

    fn between(first: &str, last: &str) -> AddressRange {
        let (first, last) = (range(&format!("{first}/32")), range(&format!("{last}/32")));
        AddressRange {
            last: last.first,
            ..first
        }
    }

    #[test]
    fn the_fewest_cidrs_cover_a_range() {
        let texts = |r: AddressRange| r.cidrs().iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(texts(range("192.0.2.0/24")), ["192.0.2.0/24"]);
        assert_eq!(
            texts(between("192.0.2.1", "192.0.2.6")),
            ["192.0.2.1/32", "192.0.2.2/31", "192.0.2.4/31", "192.0.2.6/32"]
        );
        assert_eq!(
            texts(between("192.0.2.128", "192.0.3.255")),
            ["192.0.2.128/25", "192.0.3.0/24"]
        );
        assert_eq!(texts(range("0.0.0.0/0")), ["0.0.0.0/0"]);
        assert_eq!(texts(range("::/0")), ["::/0"]);
        assert_eq!(texts(range("2001:db8::/48")), ["2001:db8::/48"]);
        let top = AddressRange {
            family: 6,
            first: u128::MAX - 2,
            last: u128::MAX,
        };
        assert_eq!(
            texts(top),
            [
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd/128",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"
            ]
        );
    }

    #[test]
    fn counts_exceed_64_bits() {
        assert_eq!(count_addresses([range("192.0.2.0/25")]), "128");
        assert_eq!(count_addresses([range("2001:db8::/48")]), (1u128 << 80).to_string());
        assert_eq!(
            count_addresses([range("::/0")]),
            "340282366920938463463374607431768211456"
        );
        assert_eq!(count_addresses([]), "0");
    }

    #[test]
    fn uncovered_skips_nested_ranges() {
        let gaps = uncovered(
            range("192.0.2.0/24"),
            [range("192.0.2.0/26"), range("192.0.2.8/29"), range("192.0.2.128/25")],
        );
        assert_eq!(gaps, [between("192.0.2.64", "192.0.2.127")]);
        assert_eq!(uncovered(range("192.0.2.0/24"), []), [range("192.0.2.0/24")]);
        assert_eq!(uncovered(range("::/0"), [range("::/1")]), [range("8000::/1")]);
        assert_eq!(uncovered(range("::/0"), [range("8000::/1")]), [range("::/1")]);
    }

    #[test]
    fn the_effective_table_gives_each_address_its_most_specific_binding() {
        let table = effective_ranges([
            (range("192.0.2.0/24"), 'w'),
            (range("192.0.2.0/25"), 'a'),
            (range("192.0.2.8/29"), 'b'),
            (range("192.0.2.200/32"), 'c'),
        ]);
        assert_eq!(
            table,
            [
                (between("192.0.2.0", "192.0.2.7"), 'a'),
                (range("192.0.2.8/29"), 'b'),
                (between("192.0.2.16", "192.0.2.127"), 'a'),
                (between("192.0.2.128", "192.0.2.199"), 'w'),
                (range("192.0.2.200/32"), 'c'),
                (between("192.0.2.201", "192.0.2.255"), 'w'),
            ]
        );
    }
}
