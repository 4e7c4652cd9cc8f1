//! The idempotency keys: each (account, request id) remembered with the binding it created,
//! kept for as long as the log exists. A key is only ever added (its first use wins), or taken
//! back out right after it was added (a decision undone), so the keys are held in the order
//! they were added: a snapshot copies them by position, a chunk at a time, with no lookup.
//!
//! The index holds each key's SipHash (keyed per process: callers choose request ids, so their
//! hashes must not be predictable) in a map that grows incrementally (griddle), so that neither
//! a growth step nor the copy hashes or compares a key's text again. Keys whose hashes collide
//! are chained through the entries.
//!
//! The entries lie in chunks of a fixed size, so that adding one never moves the others: a
//! single vector of them doubled by copying every key (~17 MB at 131,072 keys, more past it)
//! inside the apply that crossed its capacity, under the projections' write lock, stalling
//! the write and every read for ~11 ms (docs/benchmarks.md, the stalls bench).

use std::hash::{BuildHasher, RandomState};

use super::IdMap;
use crate::domain::ids::AccountId;
use crate::domain::model::Binding;

/// No next entry in a chain.
const END: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Remembered {
    account_id: AccountId,
    request_id: Box<str>,
    /// The binding as the key's first use created it.
    binding: Binding,
    /// The entry added before this one whose key has the same hash, or [`END`].
    same_hash_before: u32,
}

/// Entries per chunk of [`Chunks`] (~0.5 MB of them).
const CHUNK: usize = 4096;

/// A vector that grows a chunk at a time and never moves what it holds.
#[derive(Clone, Debug)]
struct Chunks<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Chunks {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunks<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, position: usize) -> Option<&T> {
        self.chunks.get(position / CHUNK)?.get(position % CHUNK)
    }

    fn last(&self) -> Option<&T> {
        self.get(self.len.checked_sub(1)?)
    }

    fn push(&mut self, value: T) {
        // A chunk emptied by `pop` stays, for the next push.
        if self.len / CHUNK == self.chunks.len() {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks[self.len / CHUNK].push(value);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<T> {
        let last = self.chunks.get_mut(self.len.checked_sub(1)? / CHUNK)?.pop()?;
        self.len -= 1;
        Some(last)
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> std::ops::Index<usize> for Chunks<T> {
    type Output = T;

    fn index(&self, position: usize) -> &T {
        self.get(position).expect("a position below the length")
    }
}

/// `S` hashes the keys: std's SipHash with per-process keys but in tests.
#[derive(Clone, Debug, Default)]
pub struct Requests<S = RandomState> {
    entries: Chunks<Remembered>,
    /// A key's hash -> its last entry with that hash.
    index: IdMap<u64, u32>,
    hasher: S,
}

impl<S: BuildHasher> Requests<S> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The binding `request_id` created in `account_id`, if it was used.
    pub fn get(&self, account_id: AccountId, request_id: &str) -> Option<&Binding> {
        let hash = self.hash(account_id, request_id);
        self.find(hash, account_id, request_id)
            .map(|position| &self.entries[position].binding)
    }

    /// Remembers `binding` as what `request_id` created, unless the key is known already;
    /// returns whether it was added.
    pub fn insert(&mut self, account_id: AccountId, request_id: &str, binding: Binding) -> bool {
        let hash = self.hash(account_id, request_id);
        if self.find(hash, account_id, request_id).is_some() {
            return false;
        }
        let position = u32::try_from(self.entries.len()).expect("fewer than 2^32 request ids");
        let same_hash_before = self.index.insert(hash, position).unwrap_or(END);
        self.entries.push(Remembered {
            account_id,
            request_id: request_id.into(),
            binding,
            same_hash_before,
        });
        true
    }

    /// Takes back the last key added, if it is this one (a decision undone).
    pub fn remove_last(&mut self, account_id: AccountId, request_id: &str) {
        let Some(last) = self.entries.last() else { return };
        if last.account_id != account_id || *last.request_id != *request_id {
            debug_assert!(false, "undos come in the reverse order of their events");
            return;
        }
        let hash = self.hash(account_id, request_id);
        match last.same_hash_before {
            END => self.index.remove(&hash),
            before => self.index.insert(hash, before),
        };
        self.entries.pop();
    }

    /// Every key with the binding it created, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (AccountId, &str, &Binding)> {
        (self.entries.iter()).map(|entry| (entry.account_id, &*entry.request_id, &entry.binding))
    }

    /// The key at `position` (in the order they were added), owned: what a snapshot copies.
    pub fn owned_at(&self, position: usize) -> Option<(AccountId, String, Binding)> {
        (self.entries.get(position))
            .map(|entry| (entry.account_id, entry.request_id.to_string(), entry.binding.clone()))
    }

    fn hash(&self, account_id: AccountId, request_id: &str) -> u64 {
        self.hasher.hash_one((account_id, request_id))
    }

    fn find(&self, hash: u64, account_id: AccountId, request_id: &str) -> Option<usize> {
        let mut position = *self.index.get(&hash)?;
        while position != END {
            let entry = &self.entries[position as usize];
            if entry.account_id == account_id && *entry.request_id == *request_id {
                return Some(position as usize);
            }
            position = entry.same_hash_before;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures;
    use crate::domain::{ProvisioningState, Service};

    fn binding(cidr: &str) -> Binding {
        let prefix = fixtures::prefix("192.0.2.0/24");
        fixtures::binding(&prefix, cidr, Service::Cdn, ProvisioningState::Provisioning)
    }

    #[test]
    fn chunks_keep_their_order_across_chunk_ends_and_pops() {
        let mut chunks = Chunks::default();
        for n in 0..CHUNK * 2 + 3 {
            chunks.push(n);
        }
        assert_eq!(
            (chunks.len(), chunks[CHUNK], chunks.last()),
            (CHUNK * 2 + 3, CHUNK, Some(&(CHUNK * 2 + 2)))
        );
        for _ in 0..4 {
            chunks.pop();
        }
        assert_eq!(
            (chunks.len(), chunks.last(), chunks.get(CHUNK * 2 - 1)),
            (CHUNK * 2 - 1, Some(&(CHUNK * 2 - 2)), None)
        );
        chunks.push(7);
        chunks.push(8);
        assert_eq!((chunks[CHUNK * 2 - 1], chunks[CHUNK * 2]), (7, 8));
        assert!(chunks.iter().copied().eq((0..CHUNK * 2 - 1).chain([7, 8])));
    }

    #[test]
    fn keys_are_found_kept_first_and_the_last_one_taken_back() {
        let account = AccountId::generate();
        let (first, second) = (binding("192.0.2.0/24"), binding("192.0.2.1/32"));
        let mut requests: Requests = Requests::default();
        assert!(requests.insert(account, "retry-1", first.clone()));
        assert!(
            !requests.insert(account, "retry-1", second.clone()),
            "the first use wins"
        );
        assert!(requests.insert(account, "retry-2", second.clone()));
        assert_eq!(requests.get(account, "retry-1"), Some(&first));
        assert_eq!(requests.get(account, "retry-2"), Some(&second));
        assert_eq!(
            requests.get(AccountId::generate(), "retry-1"),
            None,
            "keys are per account"
        );

        requests.remove_last(account, "retry-2");
        assert_eq!((requests.len(), requests.get(account, "retry-2")), (1, None));
        assert_eq!(requests.owned_at(0), Some((account, "retry-1".to_string(), first)));
    }

    /// Every key hashes alike.
    #[derive(Default)]
    struct Colliding;

    impl std::hash::Hasher for Colliding {
        fn finish(&self) -> u64 {
            7
        }

        fn write(&mut self, _: &[u8]) {}
    }

    #[test]
    fn keys_whose_hashes_collide_are_all_found_and_taken_back() {
        let account = AccountId::generate();
        let mut requests: Requests<std::hash::BuildHasherDefault<Colliding>> = Requests::default();
        let keys = ["a", "b", "c"];
        for (n, key) in keys.into_iter().enumerate() {
            assert!(requests.insert(account, key, binding(&format!("192.0.2.{n}/32"))));
        }
        assert!(!requests.insert(account, "b", binding("192.0.2.9/32")));
        for (n, key) in keys.into_iter().enumerate() {
            let found = requests.get(account, key).map(|binding| binding.cidr.to_string());
            assert_eq!(found, Some(format!("192.0.2.{n}/32")));
        }
        requests.remove_last(account, "c");
        assert_eq!(requests.get(account, "c"), None);
        assert!(requests.get(account, "a").is_some() && requests.get(account, "b").is_some());
        requests.remove_last(account, "b");
        requests.remove_last(account, "a");
        assert_eq!((requests.len(), requests.index.len()), (0, 0));
    }
}
