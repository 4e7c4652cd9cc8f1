//! A longest-prefix-match table over IPv4 keys (`u32`) with `u32` values: a multibit trie of a
//! 16-bit root array, then 8-bit nodes compressed by bitmaps with their children laid out
//! consecutively (in the spirit of Poptrie).
//!
//! Why not the prefix-trie crate: it is a binary trie, so a lookup follows one pointer per
//! branching bit (about 20 dependent cache misses at a million prefixes); this table reads at
//! most three places: a root slot, a mid node and a leaf. `benches/lookup.rs` measures both
//! side by side; the numbers are in docs/benchmarks.md.
//!
//! Not used for IPv6: 8-bit strides without path compression walk up to 14 nodes to a /128,
//! and measured slower than prefix-trie's path-compressed trie on IPv6 hits; IPv6 uses
//! [`by_length`](super::by_length) (a hash map per prefix length).
//!
//! Layout. A prefix up to /16 lives in the root: it is painted onto the `2^(16-len)` root
//! slots it covers, then the longer such prefixes inside it are painted again over it (found
//! in an ordered map of them), so that each slot holds its longest prefix's value. A /17../24
//! lives in the mid node of its /16, a /25../32 in the leaf of its /24. A root slot is 4 bytes
//! and holds either its value or its mid node; a mid node's slot holds a value and may go on
//! into a leaf. A node inherits the value of the slot it hangs from and paints it under its
//! own prefixes, so a lookup takes the value of the deepest place it reaches. A node derives
//! its 256 slots' values from its prefixes, run-length encoded (`node::Painted`); its prefixes
//! and the inherited value live apart (`node::Side`), since only updates read them. A mid
//! node's leaves are consecutive in one array, so the leaf of a slot is the node's first leaf
//! plus the slot's rank among the node's leaf bits: no pointer to chase. A leaf is one cache
//! line, a mid node two.
//!
//! Sizes, at a million bindings in 250,000 random /24s: the root is 256 KiB (it stays in the
//! L2 cache), the mid nodes a few MiB (the L3), the leaves 64 bytes per /24 with bindings
//! inside. A 24-bit root (64 MiB, a root slot and a leaf per lookup) was the previous design:
//! one fewer level, but every root slot read was a miss to memory and it cost ~60 bytes per
//! binding (docs/benchmarks.md, the routing table).
//!
//! `longest_matches` walks many keys a level at a time, prefetching a group's mid nodes and
//! then its leaves, so that their cache misses overlap. Updates repaint one node (256 slots)
//! and the leaves under it whose inherited value changed, or the root slots a short prefix
//! covers. A /32 or a /24 sets its one slot instead, splicing the runs around it (a /24 filled
//! with /32s, or a /16 with /24s, has a run per slot), and a /24 the leaf under its slot and its
//! group in the root slot. A node's prefixes are sorted, and found by binary search. A mid
//! node gaining or losing a leaf moves its leaves to a run of the new length (freed runs are
//! reused by length), or grows in place when its run ends the array; once a quarter of the
//! leaves are free, they are laid out again. A whole table is loaded with the
//! painting deferred (`defer_painting`, `paint_deferred`): each node is painted once at the
//! end, where a /16 holding 256 prefixes was painted whole for each of them.

use std::collections::BTreeMap;

mod leaves;
mod node;
use leaves::Leaves;
use node::{Mid, NONE, Overflow, STRIDE, Side};

use crate::huge_pages::push_advised;
use crate::prefetch::prefetch;

/// Bits of the key the root array indexes.
const ROOT_BITS: u32 = 16;
/// Where a mid node's bits end: prefixes up to this long (and longer than the root's bits)
/// end in a mid node, longer ones in a leaf.
const MID_END: u32 = ROOT_BITS + STRIDE;
/// The shortest prefix that ends in a mid node.
const MID_FIRST: u32 = ROOT_BITS + 1;
/// Marks a root slot that holds a mid node rather than a value.
const CHILD: u32 = 1 << 31;
/// In a root slot holding a mid node, the node's index (at most one node per root slot).
const MID_INDEX: u32 = 0xffff;
/// In a root slot holding a mid node, from this bit on: per group of 16 of the node's slots,
/// whether a lookup must read the node. A clear bit says that the group holds no value (its
/// own or inherited) and no leaf, so a lookup there is a miss without reading the node
/// (most addresses outside every prefix). The last group's bit is [`CHILD`]'s, always set.
const GROUPS_SHIFT: u32 = 16;
/// Every group's bit but the last (which is [`CHILD`]'s).
const ALL_GROUPS: u32 = 0x7fff;

/// Whether a lookup must read the mid node for a key in its slots' `group` (of 16): one of
/// them holds a value (`value` gives each slot's: its own or the inherited one) or goes on
/// into a leaf.
fn group_needed(node: &Mid, group: usize, value: impl Fn(usize) -> u32) -> bool {
    (group * 16..group * 16 + 16).any(|slot| value(slot) != NONE || node.has_leaf.get(slot))
}

/// What a root slot says about a key.
enum RootStep {
    /// The key's value (NONE for none).
    Value(u32),
    /// Read on in this mid node.
    Mid(usize),
}

#[inline]
fn root_step(root: u32, key: u32) -> RootStep {
    let Some(mid) = root_mid(root) else {
        return RootStep::Value(root.wrapping_sub(1));
    };
    let group = (mid_slot(key) >> 4) as u32;
    match root >> (GROUPS_SHIFT + group) & 1 {
        0 => RootStep::Value(NONE),
        _ => RootStep::Mid(mid),
    }
}

/// The mid node a root slot holds, if it holds one.
#[inline]
fn root_mid(root: u32) -> Option<usize> {
    (root & CHILD != 0).then_some((root & MID_INDEX) as usize)
}

/// The table. Keys are given with their prefix length; bits past it are ignored.
pub struct Lpm {
    /// Per root slot: 0 when empty, [`CHILD`] | groups | node when a mid node hangs there (the
    /// slot's own value is then the node's inherited one), value + 1 otherwise.
    root: Box<[u32]>,
    /// Prefixes of length 0..=16, which live in the root, by length then key (so the longer
    /// ones inside a prefix are ranges).
    short: BTreeMap<(u8, u32), u32>,
    mids: Vec<Mid>,
    mid_sides: Vec<Side>,
    /// Per mid node, the root slot it hangs from.
    mid_root_slots: Vec<u16>,
    free_mids: Vec<u32>,
    leaves: Leaves,
    overflow: Overflow,
    len: usize,
    /// Between [`Lpm::defer_painting`] and [`Lpm::paint_deferred`]: nodes are not painted.
    deferred: bool,
}

impl Default for Lpm {
    fn default() -> Self {
        Lpm {
            root: vec![0u32; 1 << ROOT_BITS].into_boxed_slice(),
            short: BTreeMap::new(),
            mids: Vec::new(),
            mid_sides: Vec::new(),
            mid_root_slots: Vec::new(),
            free_mids: Vec::new(),
            leaves: Leaves::default(),
            overflow: Overflow::default(),
            deferred: false,
            len: 0,
        }
    }
}

fn masked(key: u32, len: u8) -> u32 {
    key & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// The key with all but its top `len` bits set: the last key of the prefix.
fn last_in(key: u32, len: u8) -> u32 {
    key | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0)
}

fn root_slot(key: u32) -> usize {
    (key >> ROOT_BITS) as usize
}

fn mid_slot(key: u32) -> usize {
    (key >> (32 - MID_END) & 0xff) as usize
}

fn leaf_slot(key: u32) -> usize {
    (key & 0xff) as usize
}

/// The (length, bits) of a prefix within the node whose bits start `start` bits from the top.
fn local_part(key: u32, len: u8, start: u32) -> (u8, u8) {
    let local_len = u32::from(len) - start;
    (local_len as u8, ((key << start) >> (32 - local_len)) as u8)
}

impl Lpm {
    /// How many prefixes the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// For loading a whole table: the inserts that follow paint no node, until
    /// [`paint_deferred`](Self::paint_deferred) paints each node once and sets each leaf's
    /// inherited value (a leaf made meanwhile read it from its node's stale paint). A /16
    /// holding 256 prefixes was otherwise painted whole 256 times. Lookups are wrong until
    /// then.
    pub fn defer_painting(&mut self) {
        self.deferred = true;
    }

    /// Paints every node once, ending [`defer_painting`](Self::defer_painting).
    pub fn paint_deferred(&mut self) {
        self.deferred = false;
        let mids: Vec<usize> = self.root.iter().filter_map(|&slot| root_mid(slot)).collect();
        for mid in mids {
            self.paint_mid(mid, true);
        }
    }

    /// The value of the longest prefix containing `key`.
    #[inline]
    pub fn longest_match(&self, key: u32) -> Option<u32> {
        self.search(key, None::<fn(u32)>)
    }

    /// [`longest_match`](Self::longest_match), and when the answer is still a leaf's read
    /// away (a prefix longer than /24 lies in `key`'s /24), `cover` is first told the value of
    /// the longest prefix of at most 24 bits containing `key` (`NONE` for none): a caller can
    /// start loading what that value points at while the leaf loads.
    #[inline(always)]
    pub fn longest_match_with_cover(&self, key: u32, cover: impl FnOnce(u32)) -> Option<u32> {
        self.search(key, Some(cover))
    }

    #[inline(always)]
    fn search(&self, key: u32, cover: Option<impl FnOnce(u32)>) -> Option<u32> {
        debug_assert!(!self.deferred, "looked up while painting is deferred");
        let value = match root_step(self.root[root_slot(key)], key) {
            RootStep::Value(value) => value,
            RootStep::Mid(mid) => {
                let mid = &self.mids[mid];
                if cover.is_some() {
                    // The cover is read from the node's second line: asked for with the
                    // first, not once the first has said which run holds it.
                    mid.prefetch_second_line();
                }
                match mid.leaf(mid_slot(key)) {
                    Some(leaf) => {
                        if let Some(cover) = cover {
                            cover(mid.painted.value(mid_slot(key), &self.overflow));
                        }
                        self.leaves.nodes[leaf].0.value(leaf_slot(key), &self.overflow)
                    }
                    None => mid.painted.value(mid_slot(key), &self.overflow),
                }
            }
        };
        (value != NONE).then_some(value)
    }

    /// The longest matches of many keys, in order: each level of a group of keys is started
    /// for all of them before any is finished (prefetching the mid nodes, then the leaves), so
    /// their cache misses overlap instead of following each other.
    pub fn longest_matches(&self, keys: &[u32]) -> Vec<Option<u32>> {
        const GROUP: usize = 16;
        let mut matches = Vec::with_capacity(keys.len());
        for group in keys.chunks(GROUP) {
            let mut mids = [None; GROUP];
            for (node, &key) in mids.iter_mut().zip(group) {
                if let RootStep::Mid(mid) = root_step(self.root[root_slot(key)], key) {
                    self.mids[mid].prefetch();
                    *node = Some(&self.mids[mid]);
                }
            }
            for (mid, &key) in mids.iter().zip(group) {
                if let Some(leaf) = mid.and_then(|mid| mid.leaf(mid_slot(key))) {
                    prefetch(&self.leaves.nodes[leaf]);
                }
            }
            matches.extend(group.iter().map(|&key| self.longest_match(key)));
        }
        matches
    }

    /// The value stored for exactly this prefix.
    pub fn get(&self, key: u32, len: u8) -> Option<u32> {
        let key = masked(key, len);
        let (side, start) = match u32::from(len) {
            0..=ROOT_BITS => return self.short.get(&(len, key)).copied(),
            MID_FIRST..=MID_END => (&self.mid_sides[self.mid_of(key)?], ROOT_BITS),
            _ => (&self.leaves.sides[self.leaf_of(key)?], MID_END),
        };
        let (local_len, bits) = local_part(key, len, start);
        side.position(local_len, bits).map(|at| side.locals[at].value)
    }

    /// Stores `value` for the prefix; returns the value it replaces.
    pub fn insert(&mut self, key: u32, len: u8, value: u32) -> Option<u32> {
        assert!(len <= 32 && value < CHILD - 1, "prefix length or value out of range");
        let key = masked(key, len);
        let replaced = if u32::from(len) <= ROOT_BITS {
            let replaced = self.short.insert((len, key), value);
            self.paint_root(key, len, value);
            replaced
        } else {
            let mid = self.mid_or_insert(key);
            if u32::from(len) <= MID_END {
                let (local_len, bits) = local_part(key, len, ROOT_BITS);
                let replaced = self.mid_sides[mid].upsert(local_len, bits, value);
                self.repaint_mid_after(mid, local_len, bits);
                replaced
            } else {
                let leaf = self.leaf_or_insert(mid, mid_slot(key));
                let (local_len, bits) = local_part(key, len, MID_END);
                let replaced = self.leaves.sides[leaf].upsert(local_len, bits, value);
                self.repaint_leaf_after(leaf, local_len, bits);
                replaced
            }
        };
        if replaced.is_none() {
            self.len += 1;
        }
        self.leaves.compact_if_sparse(&mut self.mids);
        replaced
    }

    /// Removes the prefix; returns its value.
    pub fn remove(&mut self, key: u32, len: u8) -> Option<u32> {
        let key = masked(key, len);
        let removed = if u32::from(len) <= ROOT_BITS {
            let removed = self.short.remove(&(len, key))?;
            let fallback = (0..len)
                .rev()
                .find_map(|shorter| self.short.get(&(shorter, masked(key, shorter))).copied())
                .unwrap_or(NONE);
            self.paint_root(key, len, fallback);
            removed
        } else {
            let mid = self.mid_of(key)?;
            let removed = if u32::from(len) <= MID_END {
                let (local_len, bits) = local_part(key, len, ROOT_BITS);
                let removed = self.mid_sides[mid].remove(local_len, bits)?;
                self.repaint_mid_after(mid, local_len, bits);
                removed
            } else {
                let slot = mid_slot(key);
                let leaf = self.mids[mid].leaf(slot)?;
                let (local_len, bits) = local_part(key, len, MID_END);
                let removed = self.leaves.sides[leaf].remove(local_len, bits)?;
                match self.leaves.sides[leaf].locals.is_empty() {
                    true => self.remove_leaf(mid, slot),
                    false => self.repaint_leaf_after(leaf, local_len, bits),
                }
                removed
            };
            self.prune_mid(mid, root_slot(key));
            removed
        };
        self.len -= 1;
        self.leaves.compact_if_sparse(&mut self.mids);
        Some(removed)
    }

    fn mid_of(&self, key: u32) -> Option<usize> {
        root_mid(self.root[root_slot(key)])
    }

    fn leaf_of(&self, key: u32) -> Option<usize> {
        self.mids[self.mid_of(key)?].leaf(mid_slot(key))
    }

    /// Paints `value` on the root slots of the short prefix `key`/`len`, then the longer short
    /// prefixes inside it with their own values, shortest first: each slot ends with the value
    /// of the longest prefix covering it. A /16 paints one slot and looks for nothing.
    fn paint_root(&mut self, key: u32, len: u8, value: u32) {
        for slot in Self::root_slots(key, len) {
            self.set_root_value(slot, value);
        }
        let last = last_in(key, len);
        for longer in len + 1..=ROOT_BITS as u8 {
            let inside: Vec<(u32, u32)> = (self.short.range((longer, key)..=(longer, last)))
                .map(|(&(_, key), &value)| (key, value))
                .collect();
            for (key, value) in inside {
                for slot in Self::root_slots(key, longer) {
                    self.set_root_value(slot, value);
                }
            }
        }
    }

    fn root_slots(key: u32, len: u8) -> std::ops::Range<usize> {
        let first = root_slot(key);
        first..first + (1usize << (ROOT_BITS - u32::from(len)))
    }

    fn set_root_value(&mut self, slot: usize, value: u32) {
        match root_mid(self.root[slot]) {
            Some(mid) => {
                self.mid_sides[mid].inherited = value;
                self.repaint_mid(mid);
            }
            None => self.root[slot] = value.wrapping_add(1),
        }
    }

    /// Paints the mid node again from its side, then the leaves whose inherited value changed,
    /// and its groups in the root slot (while painting is deferred, only hangs it).
    fn repaint_mid(&mut self, mid: usize) {
        match self.deferred {
            true => self.hang_mid_deferred(mid),
            false => self.paint_mid(mid, false),
        }
    }

    /// Paints the mid node from its side, then its leaves (`all_leaves`, or those whose
    /// inherited value changed), and hangs it from its root slot.
    fn paint_mid(&mut self, mid: usize, all_leaves: bool) {
        let slots = self.mid_sides[mid].slots();
        self.mids[mid].painted.paint(&slots, &mut self.overflow);
        let node = self.mids[mid];
        for (rank, slot) in node.has_leaf.ones().enumerate() {
            let leaf = node.first_leaf as usize + rank;
            if all_leaves || self.leaves.sides[leaf].inherited != slots[slot] {
                self.leaves.sides[leaf].inherited = slots[slot];
                self.repaint_leaf(leaf);
            }
        }
        self.hang_mid(mid, &slots);
    }

    /// Paints the mid node again after its prefix of `local_len` bits `bits` changed: for a
    /// /24, only its one slot, that slot's leaf if its inherited value changed, and its group
    /// in the root slot; all of it otherwise.
    fn repaint_mid_after(&mut self, mid: usize, local_len: u8, bits: u8) {
        if self.deferred || u32::from(local_len) < STRIDE {
            return self.repaint_mid(mid);
        }
        let slot = usize::from(bits);
        let value = self.mid_sides[mid].slot_value(slot);
        self.mids[mid].painted.set_slot(slot, value, &mut self.overflow);
        if let Some(leaf) = self.mids[mid].leaf(slot)
            && self.leaves.sides[leaf].inherited != value
        {
            self.leaves.sides[leaf].inherited = value;
            self.repaint_leaf(leaf);
        }
        self.rehang_mid(mid, slot);
    }

    /// Hangs the mid node from its root slot again after its `slot` gained or lost a leaf or
    /// a value: only that slot's group can change.
    fn rehang_mid(&mut self, mid: usize, slot: usize) {
        if self.deferred {
            return self.hang_mid_deferred(mid);
        }
        let group = slot / 16;
        if group == 15 {
            // Its bit is `CHILD`'s, always set.
            return;
        }
        let node = &self.mids[mid];
        let needed = group_needed(node, group, |slot| node.painted.value(slot, &self.overflow));
        let root = &mut self.root[usize::from(self.mid_root_slots[mid])];
        let bit = 1 << (GROUPS_SHIFT + group as u32);
        *root = if needed { *root | bit } else { *root & !bit };
    }

    /// Hangs the mid node with every group marked (lookups are not served while painting is
    /// deferred; [`paint_deferred`](Self::paint_deferred) computes the groups).
    fn hang_mid_deferred(&mut self, mid: usize) {
        self.root[usize::from(self.mid_root_slots[mid])] = CHILD | ALL_GROUPS << GROUPS_SHIFT | mid as u32;
    }

    /// Writes the mid node's root slot: the node, and which groups of its slots a lookup must
    /// read it for (`slots` are its values).
    fn hang_mid(&mut self, mid: usize, slots: &[u32; 256]) {
        let node = &self.mids[mid];
        let mut groups = 0;
        for group in 0..15 {
            groups |= u32::from(group_needed(node, group, |slot| slots[slot])) << group;
        }
        self.root[usize::from(self.mid_root_slots[mid])] = CHILD | groups << GROUPS_SHIFT | mid as u32;
    }

    /// Paints the leaf again from its side (not while painting is deferred).
    fn repaint_leaf(&mut self, leaf: usize) {
        if self.deferred {
            return;
        }
        let slots = self.leaves.sides[leaf].slots();
        self.leaves.nodes[leaf].0.paint(&slots, &mut self.overflow);
    }

    /// Paints the leaf again after its prefix of `local_len` bits `bits` changed: only its
    /// one slot for a /32 (a dense leaf has a run per slot), all of it otherwise.
    fn repaint_leaf_after(&mut self, leaf: usize, local_len: u8, bits: u8) {
        if self.deferred || u32::from(local_len) < STRIDE {
            return self.repaint_leaf(leaf);
        }
        let slot = usize::from(bits);
        let value = self.leaves.sides[leaf].slot_value(slot);
        self.leaves.nodes[leaf].0.set_slot(slot, value, &mut self.overflow);
    }

    /// The mid node under the key's root slot, made (inheriting the slot's value) if missing.
    fn mid_or_insert(&mut self, key: u32) -> usize {
        let slot = root_slot(key);
        let root = self.root[slot];
        if let Some(mid) = root_mid(root) {
            return mid;
        }
        let mid = match self.free_mids.pop() {
            Some(mid) => mid as usize,
            None => {
                push_advised(&mut self.mids, Mid::EMPTY);
                self.mid_sides.push(Side::default());
                self.mid_root_slots.push(0);
                self.mids.len() - 1
            }
        };
        assert!(mid <= MID_INDEX as usize, "at most one mid node per root slot");
        self.mids[mid] = Mid::EMPTY;
        self.mid_sides[mid] = Side::new(root.wrapping_sub(1));
        self.mid_root_slots[mid] = slot as u16;
        // Also hangs the node from the root slot.
        self.repaint_mid(mid);
        mid
    }

    /// The leaf continuing the mid node's `slot`, made (inheriting the slot's value) if
    /// missing: the node's run of leaves grows by one, the new one at its rank.
    fn leaf_or_insert(&mut self, mid: usize, slot: usize) -> usize {
        if let Some(leaf) = self.mids[mid].leaf(slot) {
            return leaf;
        }
        let node = self.mids[mid];
        let (count, at) = (node.has_leaf.count(), node.has_leaf.rank(slot));
        let first = self.leaves.grow_run(node.first_leaf as usize, count, at);
        let leaf = first + at;
        self.leaves.sides[leaf].inherited = node.painted.value(slot, &self.overflow);
        self.repaint_leaf(leaf);
        let node = &mut self.mids[mid];
        node.first_leaf = first as u32;
        node.has_leaf.set(slot, true);
        self.rehang_mid(mid, slot);
        leaf
    }

    /// Drops the (empty) leaf of the mid node's `slot`: the others move to a run one shorter.
    fn remove_leaf(&mut self, mid: usize, slot: usize) {
        let node = self.mids[mid];
        let (count, at) = (node.has_leaf.count(), node.has_leaf.rank(slot));
        let old_first = node.first_leaf as usize;
        self.leaves.nodes[old_first + at].0.release(&mut self.overflow);
        let first = self.leaves.shrink_run(old_first, count, at);
        let node = &mut self.mids[mid];
        node.first_leaf = first as u32;
        node.has_leaf.set(slot, false);
        self.rehang_mid(mid, slot);
    }

    /// Frees the mid node if nothing is left in it: the root slot holds its value again.
    fn prune_mid(&mut self, mid: usize, slot: usize) {
        if !self.mid_sides[mid].locals.is_empty() || !self.mids[mid].has_leaf.is_empty() {
            return;
        }
        self.mids[mid].painted.release(&mut self.overflow);
        self.mids[mid] = Mid::EMPTY;
        let inherited = std::mem::take(&mut self.mid_sides[mid]).inherited;
        self.root[slot] = inherited.wrapping_add(1);
        self.free_mids.push(mid as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use super::node::Leaf;

    /// The longest matching prefix by brute force.
    fn reference(prefixes: &HashMap<(u32, u8), u32>, key: u32) -> Option<u32> {
        (0..=32u8)
            .rev()
            .find_map(|len| prefixes.get(&(masked(key, len), len)).copied())
    }

    fn random_prefix(rng: &mut fastrand::Rng) -> (u32, u8) {
        // A narrow key space so that prefixes nest, share nodes and cross every level.
        // Short ones repaint up to 2^16 root slots: rare, or a debug-build test takes long.
        let len = match rng.u16(..200) {
            0 => [0, 3, 8, 12][rng.usize(..4)],
            _ => [15, 16, 17, 20, 23, 24, 25, 28, 31, 32][rng.usize(..10)],
        };
        let key = 0x0a00_0000 | (rng.u32(..) & 0x00ff_ffff & rng.u32(..));
        (masked(key, len), len)
    }

    #[test]
    fn matches_brute_force_through_inserts_and_removes() {
        let mut rng = fastrand::Rng::with_seed(42);
        let mut table = Lpm::default();
        let mut reference_set = HashMap::new();
        // Per /24: how many prefixes longer than /24 lie in it (a leaf is read there).
        let mut longer_in = HashMap::<u32, usize>::new();
        for round in 0..20_000u32 {
            let (key, len) = random_prefix(&mut rng);
            let longer = longer_in.entry(masked(key, 24)).or_default();
            if rng.u8(..3) == 0 {
                let removed = reference_set.remove(&(key, len));
                *longer -= usize::from(len > 24 && removed.is_some());
                assert_eq!(table.remove(key, len), removed);
            } else {
                let replaced = reference_set.insert((key, len), round);
                *longer += usize::from(len > 24 && replaced.is_none());
                assert_eq!(table.insert(key, len, round), replaced);
            }
            assert_eq!(table.len(), reference_set.len());
            let probe = if rng.bool() {
                random_prefix(&mut rng).0 | rng.u32(..256)
            } else {
                rng.u32(..)
            };
            assert_eq!(
                table.longest_match(probe),
                reference(&reference_set, probe),
                "probe {probe:#x}"
            );
            let mut told = None;
            let found = table.longest_match_with_cover(probe, |cover| told = Some(cover));
            assert_eq!(found, reference(&reference_set, probe), "probe {probe:#x}");
            let in_a_leaf = longer_in.get(&masked(probe, 24)).is_some_and(|&longer| longer > 0);
            let cover = (0..=24u8)
                .rev()
                .find_map(|len| reference_set.get(&(masked(probe, len), len)).copied());
            assert_eq!(told, in_a_leaf.then(|| cover.unwrap_or(NONE)), "probe {probe:#x}");
            assert_eq!(table.get(key, len), reference_set.get(&(key, len)).copied());
            if round % 1000 == 0 {
                let probes: Vec<u32> = (0..37).map(|_| random_prefix(&mut rng).0 | rng.u32(..256)).collect();
                let one_by_one: Vec<_> = probes.iter().map(|&probe| reference(&reference_set, probe)).collect();
                assert_eq!(table.longest_matches(&probes), one_by_one);
            }
        }
        for (&(key, len), _) in reference_set.clone().iter() {
            table.remove(key, len);
        }
        assert!(table.is_empty());
        assert_eq!(table.longest_match(0x0a00_0001), None);
        assert_eq!(table.mids.len(), table.free_mids.len(), "every mid node is freed");
        assert_eq!(table.leaves.len(), table.leaves.free(), "every leaf is freed");
        assert_eq!(table.overflow.in_use(), 0, "every spilled run is freed");
    }

    #[test]
    fn a_load_with_painting_deferred_answers_like_inserts_one_by_one() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut table = Lpm::default();
        let mut reference_set = HashMap::new();
        table.defer_painting();
        // In random order (short prefixes after the nodes under them, leaves before and
        // after their node's prefixes), some twice, so that every deferred path is taken; few
        // up to /16, so that many leaves inherit nothing.
        for value in 0..6_000u32 {
            let (key, len) = loop {
                let (key, len) = random_prefix(&mut rng);
                if len > 16 || rng.u8(..100) == 0 {
                    break (key, len);
                }
            };
            assert_eq!(table.insert(key, len, value), reference_set.insert((key, len), value));
        }
        table.paint_deferred();
        let probe = |rng: &mut fastrand::Rng| match rng.bool() {
            true => random_prefix(rng).0 | rng.u32(..256),
            false => rng.u32(..),
        };
        for _ in 0..20_000 {
            let key = probe(&mut rng);
            assert_eq!(
                table.longest_match(key),
                reference(&reference_set, key),
                "probe {key:#x}"
            );
        }
        // Painted as if loaded one by one: later changes keep it right.
        for value in 0..2_000u32 {
            let (key, len) = random_prefix(&mut rng);
            match rng.bool() {
                true => assert_eq!(table.remove(key, len), reference_set.remove(&(key, len))),
                false => assert_eq!(table.insert(key, len, value), reference_set.insert((key, len), value)),
            }
            let key = probe(&mut rng);
            assert_eq!(
                table.longest_match(key),
                reference(&reference_set, key),
                "probe {key:#x}"
            );
        }
    }

    #[test]
    fn dense_nodes_spill_their_runs_and_keep_every_prefix() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut table = Lpm::default();
        let mut reference_set = HashMap::new();
        // Every other /32 of one /24 (a leaf of 128 runs and more), every other /24 of one /16
        // (a mid node likewise, with a leaf under many of its slots), in random order.
        let mut prefixes: Vec<(u32, u8)> = (0..128u32)
            .map(|i| (0xc000_0200 + 2 * i, 32))
            .chain((0..128u32).map(|i| (0xc600_0000 + ((2 * i) << 8), 24)))
            .chain((0..128u32).map(|i| (0xc600_0000 + ((2 * i) << 8) + 9, 32)))
            .chain([(0xc000_0200, 24), (0xc600_0000, 16)])
            .collect();
        rng.shuffle(&mut prefixes);
        let probe_all = |table: &Lpm, reference_set: &HashMap<(u32, u8), u32>| {
            for probe in (0xc000_0200..0xc000_0300).chain((0..1 << 16).map(|i| 0xc600_0000 + i * 7 % (1 << 16))) {
                assert_eq!(
                    table.longest_match(probe),
                    reference(reference_set, probe),
                    "{probe:#x}"
                );
            }
        };
        for (value, &(key, len)) in prefixes.iter().enumerate() {
            table.insert(key, len, value as u32);
            reference_set.insert((key, len), value as u32);
        }
        assert!(table.overflow.in_use() >= 2, "both dense nodes spilled");
        probe_all(&table, &reference_set);
        rng.shuffle(&mut prefixes);
        for (key, len) in prefixes.drain(..) {
            assert_eq!(table.remove(key, len), reference_set.remove(&(key, len)));
            if reference_set.len() % 64 == 0 {
                probe_all(&table, &reference_set);
            }
        }
        assert!(table.is_empty());
        assert_eq!(table.overflow.in_use(), 0, "every spilled run is freed");
    }

    /// Whether every node in use holds exactly the runs that painting it whole gives, and its
    /// root slot marks exactly the groups a lookup must read it for.
    fn painted_whole(table: &Lpm) -> bool {
        let mids = (0..table.mids.len()).filter(|mid| !table.free_mids.contains(&(*mid as u32)));
        mids.into_iter().all(|mid| {
            let (node, mut overflow) = (&table.mids[mid], Overflow::default());
            let slots = table.mid_sides[mid].slots();
            let mut whole = Mid::EMPTY;
            whole.painted.paint(&slots, &mut overflow);
            let groups = (0..15).filter(|group| {
                (group * 16..group * 16 + 16).any(|slot| slots[slot] != NONE || node.has_leaf.get(slot))
            });
            let root = CHILD | groups.map(|group| 1 << (GROUPS_SHIFT + group as u32)).sum::<u32>() | mid as u32;
            let leaves = (0..256).filter_map(|slot| Some((slot, node.leaf(slot)?)));
            node.painted.runs(&table.overflow) == whole.painted.runs(&overflow)
                && table.root[usize::from(table.mid_root_slots[mid])] == root
                && leaves.into_iter().all(|(slot, leaf)| {
                    let mut whole = Leaf::EMPTY;
                    assert_eq!(
                        table.leaves.sides[leaf].inherited, slots[slot],
                        "slot {slot}'s leaf inherits it"
                    );
                    whole.0.paint(&table.leaves.sides[leaf].slots(), &mut overflow);
                    table.leaves.nodes[leaf].0.runs(&table.overflow) == whole.0.runs(&overflow)
                })
        })
    }

    #[test]
    fn a_slot_set_alone_leaves_the_runs_a_whole_painting_gives() {
        let mut rng = fastrand::Rng::with_seed(19);
        let mut table = Lpm::default();
        let mut reference_set = HashMap::new();
        // One /16: /32s in two of its /24s (alone, side by side, at both ends, with equal
        // values that merge runs), /24s all over it, and now and then a prefix of another
        // length over or under them.
        for round in 0..6_000u32 {
            let (key, len) = match rng.u8(..20) {
                0..=11 => (0xc000_0200 + rng.u32(..512), 32),
                12..=15 => (0xc000_0000 + rng.u32(..1 << 16), 24),
                16 | 17 => (0xc000_0200 + rng.u32(..512), 24),
                _ => (
                    0xc000_0200 + rng.u32(..512),
                    [16, 17, 20, 23, 25, 28, 31][rng.usize(..7)],
                ),
            };
            let key = masked(key, len);
            let value = [round, 1, 2][rng.usize(..3)];
            if rng.u8(..3) == 0 {
                assert_eq!(table.remove(key, len), reference_set.remove(&(key, len)));
            } else {
                assert_eq!(table.insert(key, len, value), reference_set.insert((key, len), value));
            }
            assert!(painted_whole(&table), "round {round}: ({key:#x}, {len})");
            for probe in [0xc000_0200 + rng.u32(..512), 0xc000_0000 + rng.u32(..1 << 16)] {
                assert_eq!(
                    table.longest_match(probe),
                    reference(&reference_set, probe),
                    "{probe:#x}"
                );
            }
        }
        assert!(table.overflow.in_use() >= 2, "a leaf and the mid node spilled");
    }

    #[test]
    fn a_node_under_a_short_prefix_answers_it_where_it_holds_nothing() {
        let mut table = Lpm::default();
        // A /24 and a /32 make the /16's node and a leaf; the /8 is inserted before, the /16
        // after: each must answer in the node's empty groups (past the first 16 slots).
        table.insert(0x0a00_0000, 8, 1);
        table.insert(0x0a01_0000, 24, 2);
        table.insert(0x0a01_0107, 32, 3);
        for (probe, expected) in [(0x0a01_0001, 2), (0x0a01_0107, 3), (0x0a01_0108, 1), (0x0a01_a001, 1)] {
            assert_eq!(table.longest_match(probe), Some(expected), "{probe:#x}");
        }
        table.insert(0x0a01_0000, 16, 4);
        assert_eq!(table.longest_match(0x0a01_a001), Some(4));
        assert_eq!(table.longest_match(0x0a01_0108), Some(4));
        table.remove(0x0a01_0000, 16);
        table.remove(0x0a00_0000, 8);
        assert_eq!(table.longest_match(0x0a01_a001), None);
        assert_eq!(table.longest_match(0x0a01_0001), Some(2));
        assert_eq!(table.longest_matches(&[0x0a01_a001, 0x0a01_0107]), [None, Some(3)]);
    }

    #[test]
    fn nodes_growing_side_by_side_leave_few_leaves_free() {
        let mut table = Lpm::default();
        // 64 /16s each get a /32 in 200 of their /24s, one node after the other round by round
        // (so that every node outgrows its run while the others hold theirs).
        let key = |node: u32, slot: u32| (0x2000 + node) << 16 | slot << 8 | 5;
        for slot in 0..200 {
            for node in 0..64 {
                table.insert(key(node, slot), 32, node << 8 | slot);
            }
            let live = 64 * (slot as usize + 1);
            assert!(
                table.leaves.len() <= live + 1024.max(table.leaves.len() / 4),
                "{} leaves for {live}",
                table.leaves.len()
            );
        }
        for node in 0..64 {
            for slot in 0..200 {
                assert_eq!(table.longest_match(key(node, slot)), Some(node << 8 | slot));
                assert_eq!(table.longest_match(key(node, slot) + 1), None);
            }
        }
        for slot in 0..200 {
            for node in 0..64 {
                assert_eq!(table.remove(key(node, slot), 32), Some(node << 8 | slot));
            }
        }
        assert!(table.is_empty());
        assert!(table.leaves.len() <= 1024, "{} leaves left", table.leaves.len());
    }

    #[test]
    fn a_large_table_keeps_every_prefix() {
        let mut table = Lpm::default();
        // /24s from 32.0.0.0 on, every other one with a /32 inside.
        let prefixes: Vec<(u32, u8)> = (0..200_000u32)
            .map(|i| match i % 2 {
                0 => ((32 << 24) + (i << 8), 24),
                _ => ((32 << 24) + ((i - 1) << 8) + 7, 32),
            })
            .collect();
        for (value, &(key, len)) in prefixes.iter().enumerate() {
            table.insert(key, len, value as u32);
        }
        for (value, &(key, len)) in prefixes.iter().enumerate() {
            assert_eq!(table.longest_match(key), Some(value as u32), "{key:#x}/{len}");
            assert_eq!(table.get(key, len), Some(value as u32));
        }
        let first = 32 << 24;
        assert_eq!(
            table.longest_match(first + 5),
            Some(0),
            "inside the first /24, not its /32"
        );
        assert_eq!(table.longest_match(first - 1), None);
        assert_eq!(table.longest_match(u32::MAX), None);
    }
}
