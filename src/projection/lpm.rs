//! A longest-prefix-match table over fixed-width keys (used for IPv4: `u32`) with `u32` values:
//! a multibit trie with a root array (24 bits for IPv4) and 8-bit nodes compressed by bitmaps
//! (in the spirit of Poptrie and Tree Bitmap).
//!
//! Why not the prefix-trie crate: it is a binary trie, so a lookup follows one pointer per
//! branching bit (about 20 dependent cache misses at a million prefixes); this table follows at
//! most one per 8 bits (IPv4: the root slot and at most one node). `benches/lookup.rs`
//! measures both side by side; the numbers are in docs/benchmarks.md.
//!
//! Not used for IPv6: 8-bit strides without path compression walk up to 14 nodes to a /128,
//! and measured slower than prefix-trie's path-compressed trie on IPv6 hits; IPv6 uses
//! [`by_length`](super::by_length) (a hash map per prefix length).
//!
//! Layout. A prefix no longer than the root's bits (`R`) lives in the root: it is painted onto
//! the `2^(R-len)` root slots it covers, then the longer such prefixes inside it are painted
//! again over it (found in an ordered map of them), so that each slot holds its longest prefix's
//! value. (A byte per slot remembering the length that painted it did the same with 16 MiB more
//! for IPv4.) A longer prefix lives in the node
//! whose 8 bits contain its last bit. A node's own prefixes live apart (`Lpm::locals`, needed by
//! updates only); from them the node derives the value of each of its 256 slots, run-length
//! encoded: `run_starts` marks where the value changes and `runs` holds one value per run
//! (inline when few), so a node with a few prefixes costs one 128-byte block. `has_child` marks
//! the slots that continue into a child node, whose index is the rank of the slot there.
//! A root slot is 4 bytes and holds either its value or its child node: the child inherits
//! the slot's value and paints it under its own prefixes (so the root costs 64 MiB for IPv4,
//! not 128 with both in every slot, and a lookup still reads one slot and one node).
//!
//! A lookup walks root → nodes and keeps the last value it met: a deeper node's prefixes are
//! longer than any above it, and within a node the painting already chose the longest. On the
//! last level it does not read `has_child` (no children there), so it touches one cache line.
//! `longest_matches` does the same for many keys, prefetching a group's root slots and nodes
//! first so that their cache misses overlap. Updates repaint one node (256 slots) or the root
//! slots a short prefix covers.

use std::collections::BTreeMap;

mod node;
use node::{Local, NONE, Node, STRIDE};

use crate::prefetch::prefetch;

/// A fixed-width key, most significant bit first.
pub trait Key: Copy + Ord {
    const BITS: u32;
    /// How many top bits index the root array.
    const ROOT_BITS: u32;
    /// `len` (1..=16) bits starting `start` bits from the top, as an index.
    fn chunk(self, start: u32, len: u32) -> usize;
    /// The key with all but its top `len` bits cleared.
    fn masked(self, len: u32) -> Self;
    /// The key with all but its top `len` bits set: the last key of the prefix.
    fn last_in(self, len: u32) -> Self;
}

impl Key for u32 {
    const BITS: u32 = 32;
    const ROOT_BITS: u32 = 24;

    #[inline]
    fn chunk(self, start: u32, len: u32) -> usize {
        ((self << start) >> (Self::BITS - len)) as usize
    }

    fn masked(self, len: u32) -> Self {
        self & u32::MAX.checked_shl(Self::BITS - len).unwrap_or(0)
    }

    fn last_in(self, len: u32) -> Self {
        self | u32::MAX.checked_shr(len).unwrap_or(0)
    }
}

/// The table. Keys are given with their prefix length; bits past it are ignored.
pub struct Lpm<K: Key> {
    /// Per root slot: 0 when empty, [`CHILD`] | node when a node hangs there (the slot's own
    /// value is then the node's `inherited`, painted into it), value + 1 otherwise. One load
    /// answers both, 4 bytes a slot, and an empty table is untouched zeroed memory (no RSS).
    root: Box<[u32]>,
    /// One bit per 4 KiB page of `root`: written since the table was made. Moving the root to
    /// huge pages copies only these: reading the whole 64 MiB root instead (page faults on
    /// its untouched pages included) stalled that one insert for 35-45 ms.
    root_pages_written: Box<[u64]>,
    /// Prefixes of length 0..=ROOT_BITS, which live in the root, by length then key (so the
    /// longer ones inside a prefix are ranges).
    short: BTreeMap<(u8, K), u32>,
    nodes: Vec<Node>,
    /// Per node, the prefixes that end in it, sorted by length (so painting in order lets
    /// longer prefixes win).
    locals: Vec<Vec<Local>>,
    free_nodes: Vec<u32>,
    len: usize,
}

impl<K: Key> Default for Lpm<K> {
    fn default() -> Self {
        let root = 1usize << K::ROOT_BITS;
        Lpm {
            root: vec![0u32; root].into_boxed_slice(),
            root_pages_written: vec![0; root.div_ceil(ROOT_SLOTS_PER_PAGE * 64)].into_boxed_slice(),
            short: BTreeMap::new(),
            nodes: Vec::new(),
            locals: Vec::new(),
            free_nodes: Vec::new(),
            len: 0,
        }
    }
}

impl<K: Key> Lpm<K> {
    /// How many prefixes the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of the longest prefix containing `key`.
    #[inline]
    pub fn longest_match(&self, key: K) -> Option<u32> {
        self.walk(key, self.root[key.chunk(0, K::ROOT_BITS)])
    }

    /// The longest matches of many keys, in order: each step of a group of keys is started for
    /// all of them before any is finished (prefetching the root slots, then the nodes), so
    /// their cache misses overlap instead of following each other.
    pub fn longest_matches(&self, keys: &[K]) -> Vec<Option<u32>> {
        const GROUP: usize = 16;
        let mut matches = Vec::with_capacity(keys.len());
        for group in keys.chunks(GROUP) {
            for key in group {
                prefetch(&self.root[key.chunk(0, K::ROOT_BITS)]);
            }
            let mut roots = [0u32; GROUP];
            for (root, key) in roots.iter_mut().zip(group) {
                *root = self.root[key.chunk(0, K::ROOT_BITS)];
                if *root & CHILD != 0 {
                    prefetch(&self.nodes[(*root & !CHILD) as usize]);
                }
            }
            matches.extend(group.iter().zip(roots).map(|(key, root)| self.walk(*key, root)));
        }
        matches
    }

    /// The rest of a lookup, given the key's root entry.
    #[inline]
    fn walk(&self, key: K, root: u32) -> Option<u32> {
        let (mut best, mut next) = match root & CHILD {
            0 => (root.wrapping_sub(1), NONE),
            // The node holds the slot's value where none of its own prefixes cover.
            _ => (NONE, root & !CHILD),
        };
        let mut start = K::ROOT_BITS;
        while next != NONE {
            let node = &self.nodes[next as usize];
            let slot = key.chunk(start, STRIDE);
            let value = node.value(slot);
            if value != NONE {
                best = value;
            }
            // The last level has no children: do not touch the node's second cache line.
            if start + STRIDE == K::BITS || !node.has_child.get(slot) {
                break;
            }
            next = node.children[node.has_child.rank(slot)];
            start += STRIDE;
        }
        (best != NONE).then_some(best)
    }

    /// The value stored for exactly this prefix.
    pub fn get(&self, key: K, len: u8) -> Option<u32> {
        let key = key.masked(u32::from(len));
        if u32::from(len) <= K::ROOT_BITS {
            return self.short.get(&(len, key)).copied();
        }
        let (node, local) = self.find_node(key, len)?;
        self.locals[node as usize]
            .iter()
            .find(|l| (l.len, l.bits) == local)
            .map(|l| l.value)
    }

    /// Stores `value` for the prefix; returns the value it replaces.
    pub fn insert(&mut self, key: K, len: u8, value: u32) -> Option<u32> {
        assert!(
            u32::from(len) <= K::BITS && value < CHILD - 1,
            "prefix length or value out of range"
        );
        let key = key.masked(u32::from(len));
        let replaced = if u32::from(len) <= K::ROOT_BITS {
            let replaced = self.short.insert((len, key), value);
            self.paint_root(key, len, value);
            replaced
        } else {
            let mut node = self.child_or_insert(None, key.chunk(0, K::ROOT_BITS));
            let mut start = K::ROOT_BITS;
            while u32::from(len) > start + STRIDE {
                node = self.child_or_insert(Some(node), key.chunk(start, STRIDE));
                start += STRIDE;
            }
            let (local_len, bits) = Self::local_part(key, len, start);
            let locals = &mut self.locals[node as usize];
            let position = locals.iter().position(|l| (l.len, l.bits) == (local_len, bits));
            let replaced = match position {
                Some(position) => Some(std::mem::replace(&mut locals[position].value, value)),
                None => {
                    let at = locals.partition_point(|l| l.len <= local_len);
                    locals.insert(
                        at,
                        Local {
                            len: local_len,
                            bits,
                            value,
                        },
                    );
                    None
                }
            };
            self.nodes[node as usize].repaint(locals);
            replaced
        };
        if replaced.is_none() {
            self.len += 1;
            if self.len == HUGE_PAGES_FROM {
                self.move_to_huge_pages();
            }
        }
        replaced
    }

    /// Removes the prefix; returns its value.
    pub fn remove(&mut self, key: K, len: u8) -> Option<u32> {
        let key = key.masked(u32::from(len));
        let removed = if u32::from(len) <= K::ROOT_BITS {
            let removed = self.short.remove(&(len, key))?;
            let fallback = (0..len)
                .rev()
                .find_map(|shorter| self.short.get(&(shorter, key.masked(u32::from(shorter)))).copied())
                .unwrap_or(NONE);
            self.paint_root(key, len, fallback);
            removed
        } else {
            let path = self.path(key, len)?;
            let (node, local) = (
                *path.last()?,
                Self::local_part(key, len, K::ROOT_BITS + STRIDE * (path.len() as u32 - 1)),
            );
            let locals = &mut self.locals[node as usize];
            let position = locals.iter().position(|l| (l.len, l.bits) == local)?;
            let removed = locals.remove(position).value;
            self.nodes[node as usize].repaint(locals);
            self.prune(key, &path);
            removed
        };
        self.len -= 1;
        Some(removed)
    }

    /// Paints `value` on the root slots of the short prefix `key`/`len`, then the longer short
    /// prefixes inside it with their own values, shortest first: each slot ends with the value
    /// of the longest prefix covering it. A /24 (IPv4) paints one slot and looks for nothing.
    fn paint_root(&mut self, key: K, len: u8, value: u32) {
        for slot in Self::root_slots(key, len) {
            self.set_root_value(slot, value);
        }
        let last = key.last_in(u32::from(len));
        for longer in len + 1..=K::ROOT_BITS as u8 {
            let inside: Vec<(K, u32)> = (self.short.range((longer, key)..=(longer, last)))
                .map(|(&(_, key), &value)| (key, value))
                .collect();
            for (key, value) in inside {
                for slot in Self::root_slots(key, longer) {
                    self.set_root_value(slot, value);
                }
            }
        }
    }

    /// Copies the root and the nodes into memory advised for huge pages before it is touched
    /// (the kernel only merges pages already touched slowly, in the background).
    fn move_to_huge_pages(&mut self) {
        let mut root = vec![0u32; self.root.len()].into_boxed_slice();
        advise_huge_pages(&root);
        // Only the pages ever written: copying the zeros too would make every page resident.
        for (word_index, &word) in self.root_pages_written.iter().enumerate() {
            let written = (0..64).filter(|bit| word & (1u64 << bit) != 0);
            for page in written.map(|bit| word_index * 64 + bit) {
                let slots = page * ROOT_SLOTS_PER_PAGE..((page + 1) * ROOT_SLOTS_PER_PAGE).min(root.len());
                root[slots.clone()].copy_from_slice(&self.root[slots]);
            }
        }
        self.root = root;
        let mut nodes = Vec::with_capacity(self.nodes.capacity());
        advise_huge_pages(nodes.spare_capacity_mut());
        nodes.append(&mut self.nodes);
        self.nodes = nodes;
    }

    fn note_root_write(&mut self, slot: usize) {
        let page = slot / ROOT_SLOTS_PER_PAGE;
        self.root_pages_written[page / 64] |= 1 << (page % 64);
    }

    fn root_value(&self, slot: usize) -> u32 {
        match self.root_child(slot) {
            NONE => self.root[slot].wrapping_sub(1),
            child => self.nodes[child as usize].inherited,
        }
    }

    fn root_child(&self, slot: usize) -> u32 {
        match self.root[slot] & CHILD {
            0 => NONE,
            _ => self.root[slot] & !CHILD,
        }
    }

    fn set_root_value(&mut self, slot: usize, value: u32) {
        match self.root_child(slot) {
            NONE => {
                self.note_root_write(slot);
                self.root[slot] = value.wrapping_add(1);
            }
            child => {
                let node = &mut self.nodes[child as usize];
                node.inherited = value;
                node.repaint(&self.locals[child as usize]);
            }
        }
    }

    /// Hangs the new node `child` from the root slot, which hands it its value.
    fn set_root_child(&mut self, slot: usize, child: u32) {
        assert!(child < CHILD, "fewer than 2^31 nodes");
        let value = self.root_value(slot);
        let node = &mut self.nodes[child as usize];
        node.inherited = value;
        node.repaint(&self.locals[child as usize]);
        self.note_root_write(slot);
        self.root[slot] = CHILD | child;
    }

    fn root_slots(key: K, len: u8) -> std::ops::Range<usize> {
        let first = key.chunk(0, K::ROOT_BITS);
        first..first + (1usize << (K::ROOT_BITS - u32::from(len)))
    }

    /// The (length, bits) of a prefix within the node that starts `start` bits from the top.
    fn local_part(key: K, len: u8, start: u32) -> (u8, u8) {
        let local_len = u32::from(len) - start;
        (local_len as u8, key.chunk(start, local_len) as u8)
    }

    /// The nodes from the root's child down to the node a prefix longer than the root's
    /// `ROOT_BITS` ends in.
    fn path(&self, key: K, len: u8) -> Option<Vec<u32>> {
        let mut node = self.root_child(key.chunk(0, K::ROOT_BITS));
        let mut path = Vec::new();
        let mut start = K::ROOT_BITS;
        loop {
            if node == NONE {
                return None;
            }
            path.push(node);
            if u32::from(len) <= start + STRIDE {
                return Some(path);
            }
            node = self.nodes[node as usize]
                .child(key.chunk(start, STRIDE))
                .unwrap_or(NONE);
            start += STRIDE;
        }
    }

    fn find_node(&self, key: K, len: u8) -> Option<(u32, (u8, u8))> {
        let path = self.path(key, len)?;
        let start = K::ROOT_BITS + STRIDE * (path.len() as u32 - 1);
        Some((*path.last()?, Self::local_part(key, len, start)))
    }

    /// The child at `slot` of `parent` (the root when `None`), created if missing.
    fn child_or_insert(&mut self, parent: Option<u32>, slot: usize) -> u32 {
        let existing = match parent {
            None => Some(self.root_child(slot)).filter(|&child| child != NONE),
            Some(parent) => self.nodes[parent as usize].child(slot),
        };
        if let Some(child) = existing {
            return child;
        }
        let child = self.allocate();
        match parent {
            None => self.set_root_child(slot, child),
            Some(parent) => {
                let parent = &mut self.nodes[parent as usize];
                let mut children = std::mem::take(&mut parent.children).into_vec();
                children.insert(parent.has_child.rank(slot), child);
                parent.children = children.into_boxed_slice();
                parent.has_child.set(slot, true);
            }
        }
        child
    }

    fn allocate(&mut self) -> u32 {
        let mut node = Node::default();
        node.repaint(&[]);
        match self.free_nodes.pop() {
            Some(index) => {
                self.nodes[index as usize] = node;
                self.locals[index as usize] = Vec::new();
                index
            }
            None => {
                let capacity = self.nodes.capacity();
                self.nodes.push(node);
                self.locals.push(Vec::new());
                if self.nodes.capacity() != capacity && self.len >= HUGE_PAGES_FROM {
                    advise_huge_pages(self.nodes.spare_capacity_mut());
                }
                u32::try_from(self.nodes.len() - 1).expect("fewer than 2^32 nodes")
            }
        }
    }

    /// Frees the empty nodes at the end of `path`, bottom up.
    fn prune(&mut self, key: K, path: &[u32]) {
        for depth in (0..path.len()).rev() {
            let node = path[depth];
            if !self.locals[node as usize].is_empty() || !self.nodes[node as usize].has_child.is_empty() {
                return;
            }
            let inherited = std::mem::take(&mut self.nodes[node as usize]).inherited;
            self.locals[node as usize] = Vec::new();
            self.free_nodes.push(node);
            if depth == 0 {
                // The root slot holds its value again.
                let slot = key.chunk(0, K::ROOT_BITS);
                self.note_root_write(slot);
                self.root[slot] = inherited.wrapping_add(1);
            } else {
                let slot = key.chunk(K::ROOT_BITS + STRIDE * (depth as u32 - 1), STRIDE);
                let parent = &mut self.nodes[path[depth - 1] as usize];
                let mut children = std::mem::take(&mut parent.children).into_vec();
                children.remove(parent.has_child.rank(slot));
                parent.children = children.into_boxed_slice();
                parent.has_child.set(slot, false);
            }
        }
    }
}

/// From this many prefixes on, a table asks for huge pages (below it, a 2 MiB page per touched
/// region of the mostly empty root would cost more memory than the TLB misses cost time).
pub(super) const HUGE_PAGES_FROM: usize = 65_536;
/// Root slots in a 4 KiB page.
const ROOT_SLOTS_PER_PAGE: usize = 4096 / std::mem::size_of::<u32>();
/// Marks a root slot that holds a child node rather than a value.
const CHILD: u32 = 1 << 31;

/// Asks the kernel to back `memory` with transparent huge pages: the IPv4 root is 64 MiB and
/// the nodes tens of MiB, read at random, and with 4 KiB pages nearly every lookup also missed
/// the TLB (docs/benchmarks.md, in-process lookups). Pages already touched are merged later by
/// the kernel's khugepaged. A refusal (THP off) is harmless.
pub(super) fn advise_huge_pages<T>(memory: &[T]) {
    #[cfg(target_os = "linux")]
    {
        // madvise wants a page-aligned start; malloc's large blocks start just past a header.
        const PAGE: usize = 4096;
        let start = memory.as_ptr() as usize;
        let end = start + std::mem::size_of_val(memory);
        let aligned = start.next_multiple_of(PAGE);
        if end >= aligned + 2 * 1024 * 1024 {
            // SAFETY: the range lies inside `memory`'s allocation; MADV_HUGEPAGE changes how
            // the kernel backs it, never its contents.
            unsafe {
                libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The longest matching prefix by brute force.
    fn reference(prefixes: &HashMap<(u32, u8), u32>, key: u32) -> Option<u32> {
        (0..=32u8)
            .rev()
            .find_map(|len| prefixes.get(&(key.masked(u32::from(len)), len)).copied())
    }

    fn random_prefix(rng: &mut fastrand::Rng) -> (u32, u8) {
        // A narrow key space so that prefixes nest, share nodes and cross every level.
        // Short ones repaint up to 2^24 root slots: rare, or a debug-build test takes minutes.
        let len = match rng.u16(..1000) {
            0 => [0, 3, 8, 12][rng.usize(..4)],
            _ => [15, 16, 17, 20, 23, 24, 25, 28, 31, 32][rng.usize(..10)],
        };
        let key = 0x0a00_0000 | (rng.u32(..) & 0x00ff_ffff & rng.u32(..));
        (key.masked(u32::from(len)), len)
    }

    #[test]
    fn matches_brute_force_through_inserts_and_removes() {
        let mut rng = fastrand::Rng::with_seed(42);
        let mut table = Lpm::<u32>::default();
        let mut reference_set = HashMap::new();
        for round in 0..20_000u32 {
            let (key, len) = random_prefix(&mut rng);
            if rng.u8(..3) == 0 {
                assert_eq!(table.remove(key, len), reference_set.remove(&(key, len)));
            } else {
                assert_eq!(table.insert(key, len, round), reference_set.insert((key, len), round));
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
        assert_eq!(table.nodes.len(), table.free_nodes.len(), "every node is freed");
    }

    #[test]
    fn moving_to_huge_pages_keeps_every_prefix() {
        let mut table = Lpm::<u32>::default();
        // /24s from 32.0.0.0 on, every other one with a /32 inside.
        let prefixes: Vec<(u32, u8)> = (0..HUGE_PAGES_FROM as u32 + 1000)
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
