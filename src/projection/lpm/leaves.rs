//! The leaf array of the [`Lpm`](super::Lpm): each mid node's leaves lie in one run of
//! consecutive leaves (so a node finds a leaf by rank, with no pointer), a run moves to one a
//! leaf longer or shorter as its node gains or loses a leaf, freed runs are reused by length,
//! and the whole array is laid out again once a quarter of it is free.

use super::node::{Leaf, Mid, Side};
use crate::huge_pages::push_advised;

/// The leaves (what lookups read) and their sides (what updates read), index for index.
#[derive(Default)]
pub(super) struct Leaves {
    pub(super) nodes: Vec<Leaf>,
    pub(super) sides: Vec<Side>,
    /// Freed runs of consecutive leaves, by length: where each starts.
    free_runs: Vec<Vec<u32>>,
    /// How many leaves the freed runs hold.
    free: usize,
}

impl Leaves {
    /// How many leaves the array holds, in use or free.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// How many of them are free.
    #[cfg(test)]
    pub(super) fn free(&self) -> usize {
        self.free
    }

    /// Makes room for a new leaf at rank `at` in the run of `count` leaves from `first`: the
    /// run moves to a free one a leaf longer, or grows where it is when it ends the array
    /// (what a load in address order does, node after node: `RoutingTable::of` inserts in
    /// that order). Returns where the run starts now; the new leaf is empty.
    pub(super) fn grow_run(&mut self, first: usize, count: usize, at: usize) -> usize {
        let grown = if count > 0 && first + count == self.nodes.len() {
            push_advised(&mut self.nodes, Leaf::EMPTY);
            self.sides.push(Side::default());
            self.nodes.copy_within(first + at..first + count, first + at + 1);
            self.sides[first + at..].rotate_right(1);
            first
        } else {
            let grown = self.take_run(count + 1);
            for i in 0..count {
                self.move_leaf(first + i, grown + i + usize::from(i >= at));
            }
            self.free_run(first, count);
            grown
        };
        self.nodes[grown + at] = Leaf::EMPTY;
        self.sides[grown + at] = Side::default();
        grown
    }

    /// Drops the leaf at rank `at` (its runs released already) from the run of `count` leaves
    /// from `first`: the others move to a run one shorter. Returns where that run starts.
    pub(super) fn shrink_run(&mut self, first: usize, count: usize, at: usize) -> usize {
        let shrunk = self.take_run(count - 1);
        for i in (0..count).filter(|&i| i != at) {
            self.move_leaf(first + i, shrunk + i - usize::from(i > at));
        }
        self.free_run(first, count);
        shrunk
    }

    fn move_leaf(&mut self, from: usize, to: usize) {
        self.nodes[to] = std::mem::replace(&mut self.nodes[from], Leaf::EMPTY);
        self.sides[to] = std::mem::take(&mut self.sides[from]);
    }

    /// A run of `len` unused leaves: a freed one of that length, or new ones at the end.
    /// (Taking the start of a longer freed run instead left more leaves free, not fewer, when
    /// a million bindings were loaded: 60,600 against 43,900 of 292,000.)
    fn take_run(&mut self, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        if let Some(first) = self.free_runs.get_mut(len).and_then(Vec::pop) {
            self.free -= len;
            return first as usize;
        }
        let first = self.nodes.len();
        assert!(first + len <= u32::MAX as usize, "fewer than 2^32 leaves");
        for _ in 0..len {
            push_advised(&mut self.nodes, Leaf::EMPTY);
            self.sides.push(Side::default());
        }
        first
    }

    /// Returns a run of leaves (already moved out or released) for reuse.
    fn free_run(&mut self, first: usize, len: usize) {
        if len == 0 {
            return;
        }
        self.nodes[first..first + len].fill(Leaf::EMPTY);
        self.sides[first..first + len].fill(Side::default());
        if self.free_runs.len() <= len {
            self.free_runs.resize_with(len + 1, Vec::new);
        }
        self.free_runs[len].push(first as u32);
        self.free += len;
    }

    /// Lays the leaves out again, each mid node's run after the previous one's (`mids`' first
    /// leaves follow), once more than a quarter of the array is free. A freed run is reused
    /// only by a node growing to exactly its length, and nodes that grow side by side
    /// (bindings loaded in any order into /16s with hundreds of /24s each) free runs no other
    /// node wants: without this, 75,000 /24s with a binding each left 2 million leaves
    /// behind. Each compaction moves every live leaf once, after at least a quarter as many
    /// were freed.
    pub(super) fn compact_if_sparse(&mut self, mids: &mut [Mid]) {
        if self.free <= 1024.max(self.nodes.len() / 4) {
            return;
        }
        let (mut nodes, mut sides) = (Vec::new(), Vec::new());
        for mid in mids {
            let first = mid.first_leaf as usize;
            let run = first..first + mid.has_leaf.count();
            mid.first_leaf = u32::try_from(nodes.len()).expect("fewer than 2^32 leaves");
            for leaf in run {
                push_advised(&mut nodes, self.nodes[leaf]);
                sides.push(std::mem::take(&mut self.sides[leaf]));
            }
        }
        (self.nodes, self.sides) = (nodes, sides);
        self.free_runs.clear();
        self.free = 0;
    }
}
