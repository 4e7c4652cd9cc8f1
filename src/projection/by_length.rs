//! The longest-prefix-match table for IPv6: one hash map per prefix length in use, probed from
//! the longest length down, each map guarded by a small bit filter.
//!
//! Why not a trie: a multibit trie with 8-bit strides walks up to 16 nodes to a /128, and a
//! binary trie (prefix-trie, path-compressed) follows a pointer per branching bit, about 17
//! dependent cache misses at 100,000 prefixes. The routes of BYOIP prefixes use few distinct
//! lengths (a /32 or /48 prefix, then /56, /64, /128 bindings), so a lookup here costs one
//! probe per length in use. Most probes miss (an address inside a /48 binding is looked for at
//! /128, /64 and /56 first): the filter, a bitmap with ~16 bits per key indexed by the key's
//! hash, answers those from a few hundred KiB that stay in the cache, so a lookup usually
//! touches the hash map once, where it finds its route.
//!
//! A filter never forgets a key it was told about while a removal leaves its bit set (another
//! key may share it), so a stale bit only costs a wasted probe; the filter is rebuilt from the
//! map when the map doubles or after as many removals as it holds keys.

use foldhash::fast::FixedState;

use crate::line_map::LineMap;

/// Keys per filter bit at most before the filter is rebuilt twice as large.
const BITS_PER_KEY: usize = 16;
const MIN_FILTER_BITS: usize = 1 << 10;

/// A level's map, each record (the network and its value: 64 bytes for the routing table's
/// 34-byte entries) one cache line. As a `(u128, V)` pair of 16's alignment, three records of
/// four straddled two lines and a hit missed the cache twice: IPv6 hits through the routing
/// table ran at 2.5-3.8x prefix-trie instead of 3.1-4.2x (docs/benchmarks.md).
type Map<V> = LineMap<u128, V, FixedState>;

/// IPv6 network (as bits, host part zero) and length -> `V`, with longest-prefix search.
pub struct ByLength<V> {
    /// The lengths in use, longest first.
    levels: Vec<Level<V>>,
}

impl<V> Default for ByLength<V> {
    fn default() -> Self {
        ByLength { levels: Vec::new() }
    }
}

struct Level<V> {
    len: u8,
    mask: u128,
    map: Map<V>,
    filter: Vec<u64>,
    /// How far the hash is shifted right to index `filter`'s bits.
    filter_shift: u32,
    removed_since_rebuild: usize,
}

/// The key's bit in a filter of `64 - shift` address bits (a hash independent of the map's).
#[inline]
fn filter_bit(key: u128, shift: u32) -> usize {
    let folded = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
    let hash = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (folded >> 31);
    (hash.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> shift) as usize
}

fn mask(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl<V> Level<V> {
    fn new(len: u8) -> Level<V> {
        let mut level = Level {
            len,
            mask: mask(len),
            map: Map::default(),
            filter: Vec::new(),
            filter_shift: 0,
            removed_since_rebuild: 0,
        };
        level.rebuild_filter();
        level
    }

    #[inline]
    fn may_hold(&self, key: u128) -> bool {
        let bit = filter_bit(key, self.filter_shift);
        self.filter[bit >> 6] >> (bit & 63) & 1 == 1
    }

    fn mark(&mut self, key: u128) {
        let bit = filter_bit(key, self.filter_shift);
        self.filter[bit >> 6] |= 1 << (bit & 63);
    }

    fn rebuild_filter(&mut self) {
        let bits = (self.map.len() * BITS_PER_KEY * 2)
            .next_power_of_two()
            .max(MIN_FILTER_BITS);
        self.filter = vec![0; bits / 64];
        self.filter_shift = 64 - bits.trailing_zeros();
        self.removed_since_rebuild = 0;
        for &key in self.map.keys() {
            let bit = filter_bit(key, self.filter_shift);
            self.filter[bit >> 6] |= 1 << (bit & 63);
        }
    }

    fn filter_bits(&self) -> usize {
        self.filter.len() * 64
    }
}

impl<V> ByLength<V> {
    /// The value stored for exactly `network`/`len`.
    pub fn get(&self, network: u128, len: u8) -> Option<&V> {
        let level = self.levels.iter().find(|level| level.len == len)?;
        level.map.get(&(network & level.mask))
    }

    pub fn get_mut(&mut self, network: u128, len: u8) -> Option<&mut V> {
        let level = self.levels.iter_mut().find(|level| level.len == len)?;
        level.map.get_mut(&(network & level.mask))
    }

    /// Stores `value` for `network`/`len`; returns the value it replaced.
    pub fn insert(&mut self, network: u128, len: u8, value: V) -> Option<V> {
        let index = match self.levels.iter().position(|level| level.len <= len) {
            Some(index) if self.levels[index].len == len => index,
            Some(index) => {
                self.levels.insert(index, Level::new(len));
                index
            }
            None => {
                self.levels.push(Level::new(len));
                self.levels.len() - 1
            }
        };
        let level = &mut self.levels[index];
        let key = network & level.mask;
        if let Some(replaced) = level.map.insert(key, value) {
            return Some(replaced);
        }
        if level.map.len() * BITS_PER_KEY > level.filter_bits() {
            level.rebuild_filter();
        } else {
            level.mark(key);
        }
        None
    }

    /// Removes `network`/`len`; returns its value.
    pub fn remove(&mut self, network: u128, len: u8) -> Option<V> {
        let index = self.levels.iter().position(|level| level.len == len)?;
        let level = &mut self.levels[index];
        let removed = level.map.remove(&(network & level.mask))?;
        if level.map.is_empty() {
            self.levels.remove(index);
        } else {
            level.removed_since_rebuild += 1;
            if level.removed_since_rebuild > level.map.len() {
                level.rebuild_filter();
            }
        }
        Some(removed)
    }

    /// The value of the longest network containing `address`.
    #[inline]
    pub fn longest_match(&self, address: u128) -> Option<&V> {
        for level in &self.levels {
            let key = address & level.mask;
            if level.may_hold(key)
                && let Some(value) = level.map.get(&key)
            {
                return Some(value);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::Ipv6Addr;

    fn net(text: &str) -> (u128, u8) {
        let net: ipnet::Ipv6Net = text.parse().unwrap();
        (net.network().to_bits(), net.prefix_len())
    }

    fn address(text: &str) -> u128 {
        text.parse::<Ipv6Addr>().unwrap().to_bits()
    }

    #[test]
    fn the_longest_containing_network_wins_and_removals_uncover_shorter_ones() {
        let mut table = ByLength::<u32>::default();
        for (value, text) in ["2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::1/128", "::/0"]
            .iter()
            .enumerate()
        {
            let (network, len) = net(text);
            assert_eq!(table.insert(network, len, value as u32), None);
        }
        assert_eq!(table.longest_match(address("2001:db8:1::1")), Some(&2));
        assert_eq!(table.longest_match(address("2001:db8:1::2")), Some(&1));
        assert_eq!(table.longest_match(address("2001:db8:2::1")), Some(&0));
        assert_eq!(table.longest_match(address("2001:db9::1")), Some(&3));

        let (network, len) = net("2001:db8:1::/48");
        assert_eq!(table.insert(network, len, 7), Some(1), "a replaced value is returned");
        assert_eq!(table.get(network, len), Some(&7));
        assert_eq!(table.remove(network, len), Some(7));
        assert_eq!(table.remove(network, len), None);
        assert_eq!(table.longest_match(address("2001:db8:1::2")), Some(&0));
        let (network, len) = net("::/0");
        assert_eq!(table.remove(network, len), Some(3));
        assert_eq!(table.longest_match(address("2001:db9::1")), None);
    }

    /// Against a brute-force search, with the filters rebuilt by growth and by removals.
    #[test]
    fn agrees_with_brute_force_through_growth_and_churn() {
        let mut rng = fastrand::Rng::with_seed(6);
        let mut table = ByLength::<u32>::default();
        let mut held: Vec<(u128, u8, u32)> = Vec::new();
        let base = address("2001:db8::");
        for round in 0..20_000u32 {
            let len = [32u8, 48, 56, 64, 127, 128][rng.usize(..6)];
            let network = (base | u128::from(rng.u16(..512)) << 64 | u128::from(rng.u8(..4))) & mask(len);
            if rng.u8(..3) == 0 && !held.is_empty() {
                let (network, len, value) = held.swap_remove(rng.usize(..held.len()));
                assert_eq!(table.remove(network, len), Some(value));
            } else if let Some(existing) = held.iter_mut().find(|(n, l, _)| *n == network && *l == len) {
                assert_eq!(table.insert(network, len, round), Some(existing.2));
                existing.2 = round;
            } else {
                assert_eq!(table.insert(network, len, round), None);
                held.push((network, len, round));
            }
            let probe = base | u128::from(rng.u16(..512)) << 64 | u128::from(rng.u8(..4));
            let expected = (held.iter())
                .filter(|(network, len, _)| probe & mask(*len) == *network)
                .max_by_key(|(_, len, _)| *len)
                .map(|(_, _, value)| *value);
            assert_eq!(table.longest_match(probe).copied(), expected);
        }
    }
}
