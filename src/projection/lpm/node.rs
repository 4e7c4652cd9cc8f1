//! A node of the [`Lpm`](super::Lpm) trie: 256 slots (8 bits of the key), their values
//! run-length encoded and their children ranked by a bitmap, in one 128-byte block (what a
//! lookup reads); the prefixes that end in it live apart, with the table.

/// Bits of the key a node consumes.
pub(super) const STRIDE: u32 = 8;
const SLOTS: usize = 1 << STRIDE;
/// No value (and no node).
pub(super) const NONE: u32 = u32::MAX;

/// 256 bits, one per node slot.
#[derive(Clone, Copy, Default)]
pub(super) struct SlotBits([u64; 4]);

impl SlotBits {
    #[inline]
    pub(super) fn get(&self, slot: usize) -> bool {
        self.0[slot >> 6] >> (slot & 63) & 1 == 1
    }

    pub(super) fn set(&mut self, slot: usize, on: bool) {
        let bit = 1u64 << (slot & 63);
        if on {
            self.0[slot >> 6] |= bit;
        } else {
            self.0[slot >> 6] &= !bit;
        }
    }

    /// How many set bits come before `slot`.
    #[inline]
    pub(super) fn rank(&self, slot: usize) -> usize {
        let word = slot >> 6;
        let whole: u32 = self.0[..word].iter().map(|bits| bits.count_ones()).sum();
        let partial = if word < 4 {
            (self.0[word] & ((1u64 << (slot & 63)) - 1)).count_ones()
        } else {
            0
        };
        (whole + partial) as usize
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0 == [0; 4]
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
    fn slots(&self) -> std::ops::Range<usize> {
        let width = 1usize << (STRIDE - u32::from(self.len));
        let first = usize::from(self.bits) * width;
        first..first + width
    }
}

/// The values of a node's runs: inline when few (the common case: a handful of prefixes per
/// node), so that reading one costs no extra cache miss.
#[derive(Clone)]
enum Runs {
    Inline([u32; 6]),
    Heap(Box<[u32]>),
}

impl Runs {
    fn new(values: &[u32]) -> Runs {
        match values.len() {
            len @ 0..=6 => {
                let mut inline = [NONE; 6];
                inline[..len].copy_from_slice(values);
                Runs::Inline(inline)
            }
            _ => Runs::Heap(values.into()),
        }
    }

    #[inline]
    fn get(&self, index: usize) -> u32 {
        match self {
            Runs::Inline(values) => values[index],
            Runs::Heap(values) => values[index],
        }
    }
}

impl Default for Runs {
    fn default() -> Self {
        Runs::new(&[])
    }
}

/// What a lookup reads, in one 128-byte block (two cache lines the CPU fetches as a pair).
/// The node's own prefixes, needed only by updates, live apart in `Lpm::locals`.
#[derive(Clone)]
#[repr(C, align(128))]
pub(super) struct Node {
    run_starts: SlotBits,
    runs: Runs,
    pub(super) has_child: SlotBits,
    pub(super) children: Box<[u32]>,
    /// For a child of the root: the value of the root slot it hangs from (the root slot holds
    /// the child instead), painted under the node's own prefixes. NONE below the root.
    pub(super) inherited: u32,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            run_starts: SlotBits::default(),
            runs: Runs::default(),
            has_child: SlotBits::default(),
            children: Box::default(),
            inherited: NONE,
        }
    }
}

impl Node {
    pub(super) fn child(&self, slot: usize) -> Option<u32> {
        self.has_child
            .get(slot)
            .then(|| self.children[self.has_child.rank(slot)])
    }

    #[inline]
    pub(super) fn value(&self, slot: usize) -> u32 {
        self.runs.get(self.run_starts.rank(slot + 1) - 1)
    }

    /// Rebuilds the slot values from the node's prefixes (sorted by length).
    pub(super) fn repaint(&mut self, locals: &[Local]) {
        let mut slots = [self.inherited; SLOTS];
        for local in locals {
            slots[local.slots()].fill(local.value);
        }
        let mut runs = Vec::new();
        self.run_starts = SlotBits::default();
        for (slot, &value) in slots.iter().enumerate() {
            if slot == 0 || slots[slot - 1] != value {
                self.run_starts.set(slot, true);
                runs.push(value);
            }
        }
        self.runs = Runs::new(&runs);
    }
}
