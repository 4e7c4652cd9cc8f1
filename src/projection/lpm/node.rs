//! The nodes of the [`Lpm`](super::Lpm) trie: 256 slots (8 bits of the key) each, their values
//! run-length encoded (`Painted`) in one cache line for a leaf and two for a mid node, which
//! also ranks its children by a bitmap; what updates alone need (the prefixes that end in a
//! node and the value it inherits) lives apart, in `Side`.

/// Bits of the key a node consumes.
pub(super) const STRIDE: u32 = 8;
const SLOTS: usize = 1 << STRIDE;
/// No value.
pub(super) const NONE: u32 = u32::MAX;
/// In a node's last run slot: its runs are too many to hold inline and live in [`Overflow`],
/// at the index in its first run slot. Never a value (values stay below 2^31).
const SPILLED: u32 = u32::MAX - 1;

/// 256 bits, one per node slot, and how many are set before each 64-bit word, so that a rank
/// reads one word (a masked count and an add) instead of counting every word before the
/// slot's in a loop as long as the key says. With the mid node's leaf found from its first
/// line alone (below), it made the LPM's IPv4 hits ~1.4-2x as fast (docs/benchmarks.md).
///
/// Packed to 4-byte alignment, 36 bytes, so that a leaf holds seven runs in its line and a
/// mid node thirteen in its two. Its words are read unaligned, one at a time, never borrowed.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
pub(super) struct SlotBits {
    words: [u64; 4],
    /// Per word, the set bits in the words before it.
    before: [u8; 4],
}

impl SlotBits {
    pub(super) const EMPTY: SlotBits = SlotBits {
        words: [0; 4],
        before: [0; 4],
    };

    /// Only `slot` set.
    pub(super) const fn only(slot: usize) -> SlotBits {
        let mut bits = SlotBits::EMPTY;
        let word = slot >> 6;
        bits.words[word] = 1 << (slot & 63);
        let mut after = word + 1;
        while after < 4 {
            bits.before[after] = 1;
            after += 1;
        }
        bits
    }

    #[inline(always)]
    pub(super) fn get(&self, slot: usize) -> bool {
        self.word(slot >> 6) >> (slot & 63) & 1 == 1
    }

    pub(super) fn set(&mut self, slot: usize, on: bool) {
        if self.get(slot) == on {
            return;
        }
        let (word, bit) = (slot >> 6, 1u64 << (slot & 63));
        let (mut words, mut before) = (self.words, self.before);
        words[word] ^= bit;
        for count in &mut before[word + 1..] {
            *count = if on { *count + 1 } else { *count - 1 };
        }
        (self.words, self.before) = (words, before);
    }

    /// How many set bits come before `slot` (0..=256). Always inlined, as the node reads
    /// below are: in the routing table's search built for `popcnt` (`routing.rs`), the count
    /// becomes that instruction.
    #[inline(always)]
    pub(super) fn rank(&self, slot: usize) -> usize {
        if slot == SLOTS {
            return self.count();
        }
        let word = slot >> 6;
        self.before(word) + (self.word(word) & ((1u64 << (slot & 63)) - 1)).count_ones() as usize
    }

    /// How many set bits come up to `slot` (< 256), itself included.
    #[inline(always)]
    pub(super) fn rank_through(&self, slot: usize) -> usize {
        let word = (slot >> 6) & 3;
        let through = (2u64 << (slot & 63)).wrapping_sub(1);
        self.before(word) + (self.word(word) & through).count_ones() as usize
    }

    /// One word of the bits, read where it lies (copying the packed array out, as a read of
    /// a packed field does, wrote it to the stack and read it back in every rank).
    #[inline(always)]
    fn word(&self, word: usize) -> u64 {
        assert!(word < 4);
        // SAFETY: `word` is in bounds of `words`, which lives as long as `self`; the read is
        // unaligned, as the packed field may be.
        unsafe { (&raw const self.words).cast::<u64>().add(word).read_unaligned() }
    }

    #[inline(always)]
    fn before(&self, word: usize) -> usize {
        usize::from(self.before[word])
    }

    pub(super) fn count(&self) -> usize {
        self.before(3) + self.word(3).count_ones() as usize
    }

    pub(super) fn is_empty(&self) -> bool {
        let words = self.words;
        words == [0; 4]
    }

    /// The set slots, in order.
    pub(super) fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..SLOTS).filter(|&slot| self.get(slot))
    }

    /// The bits, as words.
    #[cfg(test)]
    pub(super) fn words(&self) -> [u64; 4] {
        self.words
    }
}

/// A prefix that ends inside a node: its last `len` (1..=8) bits, as an index.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Local {
    pub(super) len: u8,
    pub(super) bits: u8,
    pub(super) value: u32,
}

impl Local {
    /// Where it sorts among a node's prefixes: by length, then by bits.
    fn order(&self) -> (u8, u8) {
        (self.len, self.bits)
    }

    fn slots(&self) -> std::ops::Range<usize> {
        let width = 1usize << (STRIDE - u32::from(self.len));
        let first = usize::from(self.bits) * width;
        first..first + width
    }
}

/// What updates need of a node and lookups never read.
#[derive(Clone, Default)]
pub(super) struct Side {
    /// The value of the slot above the node hangs from (the slot holds the node instead),
    /// painted under the node's own prefixes.
    pub(super) inherited: u32,
    /// The prefixes that end in the node, sorted by length and then by bits (painted in
    /// order, so longer ones win; found by binary search). A boxed slice, exactly as long as
    /// it must be: a leaf has a handful, and a `Vec` of them with its spare room cost ~24
    /// bytes more per leaf.
    pub(super) locals: Box<[Local]>,
}

impl Side {
    pub(super) fn new(inherited: u32) -> Side {
        Side {
            inherited,
            locals: Box::default(),
        }
    }

    /// Each slot's value: the longest of the node's prefixes covering it, or the inherited one.
    pub(super) fn slots(&self) -> [u32; SLOTS] {
        let mut slots = [self.inherited; SLOTS];
        for local in &self.locals {
            slots[local.slots()].fill(local.value);
        }
        slots
    }

    /// The value the node paints on one slot: its longest prefix covering it, or the
    /// inherited one.
    pub(super) fn slot_value(&self, slot: usize) -> u32 {
        (1..=STRIDE as u8)
            .rev()
            .find_map(|len| {
                let bits = (slot >> (STRIDE - u32::from(len))) as u8;
                self.position(len, bits).map(|at| self.locals[at].value)
            })
            .unwrap_or(self.inherited)
    }

    pub(super) fn position(&self, local_len: u8, bits: u8) -> Option<usize> {
        self.locals.binary_search_by_key(&(local_len, bits), Local::order).ok()
    }

    /// Stores the prefix's value; returns the value it replaces.
    pub(super) fn upsert(&mut self, len: u8, bits: u8, value: u32) -> Option<u32> {
        if let Some(position) = self.position(len, bits) {
            return Some(std::mem::replace(&mut self.locals[position].value, value));
        }
        let at = self.locals.partition_point(|l| l.order() < (len, bits));
        // Made at its exact length in one allocation (a `Vec` grown and shrunk back cost two).
        let (before, after) = self.locals.split_at(at);
        let added = std::iter::once(Local { len, bits, value });
        self.locals = before
            .iter()
            .copied()
            .chain(added)
            .chain(after.iter().copied())
            .collect();
        None
    }

    /// Removes the prefix; returns its value.
    pub(super) fn remove(&mut self, len: u8, bits: u8) -> Option<u32> {
        let at = self.position(len, bits)?;
        let removed = self.locals[at];
        let (before, after) = self.locals.split_at(at);
        self.locals = before.iter().chain(&after[1..]).copied().collect();
        Some(removed.value)
    }
}

/// Run values that did not fit in their node, each node's in one boxed slice; freed ones are
/// reused.
#[derive(Default)]
pub(super) struct Overflow {
    runs: Vec<Box<[u32]>>,
    free: Vec<u32>,
}

impl Overflow {
    fn store(&mut self, runs: &[u32]) -> u32 {
        let runs = Box::from(runs);
        match self.free.pop() {
            Some(index) => {
                self.runs[index as usize] = runs;
                index
            }
            None => {
                self.runs.push(runs);
                u32::try_from(self.runs.len() - 1).expect("fewer than 2^32 spilled nodes")
            }
        }
    }

    fn release(&mut self, index: u32) {
        self.runs[index as usize] = Box::default();
        self.free.push(index);
    }

    /// How many nodes' runs it holds.
    #[cfg(test)]
    pub(super) fn in_use(&self) -> usize {
        self.runs.len() - self.free.len()
    }
}

/// A node's 256 slot values, run-length encoded: `run_starts` marks where the value changes
/// and `runs` holds one value per run, inline when at most `N` (the common case: a handful of
/// prefixes per node), else in [`Overflow`].
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct Painted<const N: usize> {
    run_starts: SlotBits,
    runs: [u32; N],
}

impl<const N: usize> Painted<N> {
    /// Every slot empty.
    pub(super) const EMPTY: Self = Painted {
        run_starts: SlotBits::only(0),
        runs: [NONE; N],
    };

    #[inline(always)]
    pub(super) fn value(&self, slot: usize, overflow: &Overflow) -> u32 {
        let run = self.run_starts.rank_through(slot) - 1;
        match self.runs[N - 1] {
            SPILLED => overflow.runs[self.runs[0] as usize][run],
            _ => self.runs[run],
        }
    }

    /// Encodes `slots`, replacing what the node held.
    ///
    /// The runs are gathered on the stack: every write repaints a node or two, and a `Vec`
    /// growing here was a tenth of a replica's writer thread in glibc's `malloc` (a profile of
    /// creates); only a node whose runs spill allocates, exactly once.
    pub(super) fn paint(&mut self, slots: &[u32; SLOTS], overflow: &mut Overflow) {
        self.release(overflow);
        let (mut runs, mut n_runs) = ([NONE; SLOTS], 0);
        self.run_starts = SlotBits::EMPTY;
        for (slot, &value) in slots.iter().enumerate() {
            if slot == 0 || slots[slot - 1] != value {
                self.run_starts.set(slot, true);
                runs[n_runs] = value;
                n_runs += 1;
            }
        }
        self.store(&runs[..n_runs], overflow);
    }

    /// Sets one slot's value: the runs around it split or merge, as painting all 256 slots
    /// again would leave them, but only the boundaries at the slot and after it can change,
    /// so this reads no other slot. (A /24 filled with /32s has a run per slot, and painting
    /// it whole for each insert was a tenth of the writer's time in a profile of creates.)
    pub(super) fn set_slot(&mut self, slot: usize, value: u32, overflow: &mut Overflow) {
        let run = self.run_starts.rank_through(slot) - 1;
        let (mut runs, stored) = ([NONE; SLOTS], self.stored(overflow));
        let n_runs = stored.len();
        runs[..n_runs].copy_from_slice(stored);
        let old = runs[run];
        if old == value {
            return;
        }
        let starts_here = self.run_starts.get(slot);
        let next = slot + 1;
        let next_starts_run = next < SLOTS && self.run_starts.get(next);
        // Each slot's neighbour keeps its value: a boundary lies where two values differ.
        let value_before = if starts_here {
            runs.get(run.wrapping_sub(1))
        } else {
            Some(&old)
        };
        let value_after = if next_starts_run { runs.get(run + 1) } else { Some(&old) };
        let starts_new = value_before != Some(&value);
        let next_starts_new = next < SLOTS && value_after != Some(&value);
        // The run holding the slot gives way to its part before the slot (if any), the slot's
        // own run (unless the slot joins the run before it) and its part after the slot (if
        // any); when the slot joins the run after it, that run starts at the slot instead.
        let mut middle = [NONE; 3];
        let mut n_middle = 0;
        let mut push = |value: u32| {
            middle[n_middle] = value;
            n_middle += 1;
        };
        if !starts_here {
            push(old);
        }
        if starts_new {
            push(value);
        }
        if !next_starts_run && next_starts_new {
            push(old);
        }
        // The first run kept as it was: the one after the slot's, unless the slot joined it.
        let after = if next_starts_run && !next_starts_new {
            run + 2
        } else {
            run + 1
        };
        let tail = n_runs - after;
        runs.copy_within(after..n_runs, run + n_middle);
        runs[run..run + n_middle].copy_from_slice(&middle[..n_middle]);
        let n_runs = run + n_middle + tail;
        if slot > 0 {
            self.run_starts.set(slot, starts_new);
        }
        if next < SLOTS {
            self.run_starts.set(next, next_starts_new);
        }
        self.release(overflow);
        self.store(&runs[..n_runs], overflow);
    }

    /// Where its runs start, and their values.
    #[cfg(test)]
    pub(super) fn runs(&self, overflow: &Overflow) -> ([u64; 4], Vec<u32>) {
        (self.run_starts.words(), self.stored(overflow).to_vec())
    }

    /// Its runs' values, inline or in `overflow`.
    fn stored<'a>(&'a self, overflow: &'a Overflow) -> &'a [u32] {
        match self.runs[N - 1] {
            SPILLED => &overflow.runs[self.runs[0] as usize],
            _ => &self.runs[..self.run_starts.count()],
        }
    }

    /// Keeps `runs` inline, or in `overflow` when they are too many.
    fn store(&mut self, runs: &[u32], overflow: &mut Overflow) {
        if runs.len() <= N {
            self.runs = [NONE; N];
            self.runs[..runs.len()].copy_from_slice(runs);
        } else {
            self.runs[0] = overflow.store(runs);
            self.runs[N - 1] = SPILLED;
        }
    }

    /// Frees the node's spilled runs, if any (before it is dropped or painted again).
    pub(super) fn release(&mut self, overflow: &mut Overflow) {
        if self.runs[N - 1] == SPILLED {
            overflow.release(self.runs[0]);
            self.runs[N - 1] = NONE;
        }
    }
}

/// A node whose slots end at a key's last bit (IPv4 /25../32): one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Leaf(pub(super) Painted<7>);

impl Leaf {
    pub(super) const EMPTY: Leaf = Leaf(Painted::EMPTY);
}

/// A node with children (IPv4 /17../24): its slots' values and, per slot, whether a leaf
/// continues it. A node's leaves are consecutive in the table's leaf array, so the leaf of a
/// slot is `first_leaf` + the slot's rank among `has_leaf`: no load to find it. Two cache
/// lines; the first holds all that finds a slot's leaf, so a lookup going on into a leaf
/// waits for that line alone (the LPM alone reads no other), and the second holds most of
/// the runs.
#[derive(Clone, Copy)]
#[repr(C, align(128))]
pub(super) struct Mid {
    pub(super) has_leaf: SlotBits,
    /// In the first line, with `has_leaf`.
    pub(super) first_leaf: u32,
    /// At 40 bytes in: its run starts' last word begins the second line, not across two.
    pub(super) painted: Painted<13>,
}

impl Mid {
    pub(super) const EMPTY: Mid = Mid {
        has_leaf: SlotBits::EMPTY,
        painted: Painted::EMPTY,
        first_leaf: 0,
    };

    /// Starts loading both of the node's cache lines.
    pub(super) fn prefetch(&self) {
        crate::prefetch::prefetch(&self.has_leaf);
        self.prefetch_second_line();
    }

    /// Starts loading the node's second line (most of its runs), which a slot's value needs
    /// and its leaf does not: without it, the line is asked for only once a rank over the
    /// first line says which run to read, one miss after the other.
    #[inline(always)]
    pub(super) fn prefetch_second_line(&self) {
        crate::prefetch::prefetch(&self.painted.runs[12]);
    }

    /// The leaf continuing `slot`, if any.
    #[inline(always)]
    pub(super) fn leaf(&self, slot: usize) -> Option<usize> {
        self.has_leaf
            .get(slot)
            .then(|| self.first_leaf as usize + self.has_leaf.rank_through(slot) - 1)
    }
}

const _: () = assert!(std::mem::size_of::<Leaf>() == 64 && std::mem::size_of::<Mid>() == 128);
const _: () = assert!(std::mem::offset_of!(Mid, painted) == 40);

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts kept per word follow every bit set and cleared: each rank equals a count of
    /// the bits themselves.
    #[test]
    fn slot_bit_ranks_match_a_count_of_the_bits() {
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut bits, mut naive) = (SlotBits::EMPTY, [false; SLOTS]);
        for step in 0..4_000 {
            let (slot, on) = (rng.usize(..SLOTS), !rng.u8(..).is_multiple_of(3) || step > 3_000);
            bits.set(slot, on);
            naive[slot] = on;
            let probe = rng.usize(..SLOTS);
            let before = naive[..probe].iter().filter(|&&set| set).count();
            assert_eq!(bits.rank(probe), before);
            assert_eq!(bits.rank_through(probe), before + usize::from(naive[probe]));
            assert_eq!(bits.get(probe), naive[probe]);
            assert_eq!(bits.count(), naive.iter().filter(|&&set| set).count());
            assert_eq!(bits.rank(SLOTS), bits.count());
        }
        assert_eq!(bits.ones().count(), bits.count());
        assert_eq!(SlotBits::only(200).rank_through(255), 1);
        assert_eq!(SlotBits::only(200).rank(200), 0);
    }
}
