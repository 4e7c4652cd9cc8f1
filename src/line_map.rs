//! A hash map whose records each fill one cache line, for maps read far more than written and
//! larger than the CPU's cache: the IPv6 routing maps (`projection::by_length`) and the
//! lookups' cache of encoded routes (`api::lookup`).
//!
//! A map of `(K, V)` pairs lays its records out one after the other at the pair's alignment
//! (8 or 16 bytes), so records of 64 bytes straddle two cache lines three times in four, and a
//! hit on a map that is not in the cache then misses twice. Here each record is the map's key,
//! aligned to 64 bytes (which makes it the whole table's alignment), hashed and compared by its
//! key alone, which it lends to lookups (`Borrow<K>`); values change in place through the raw
//! entry API, which never touches the key, so a record's hash and place stay valid.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};

use griddle::hash_map::RawEntryMut;

/// `K` -> `V`, each record (key and value) one 64-byte cache line, or more when the two are
/// larger ([`LineMap::RECORD_BYTES`]).
pub struct LineMap<K, V, S> {
    records: griddle::HashMap<Record<K, V>, (), S>,
}

#[repr(C, align(64))]
struct Record<K, V> {
    key: K,
    value: V,
}

impl<K: Hash, V> Hash for Record<K, V> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl<K: PartialEq, V> PartialEq for Record<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<K: Eq, V> Eq for Record<K, V> {}

impl<K, V> Borrow<K> for Record<K, V> {
    fn borrow(&self) -> &K {
        &self.key
    }
}

impl<K, V, S> LineMap<K, V, S> {
    /// The bytes each record takes: 64 while the key and the value fit in one line.
    pub const RECORD_BYTES: usize = std::mem::size_of::<Record<K, V>>();

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn clear(&mut self) {
        self.records.clear();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.records.keys().map(|record| (&record.key, &record.value))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.records.keys().map(|record| &record.key)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.records.keys().map(|record| &record.value)
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> LineMap<K, V, S> {
    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        let (record, ()) = self.records.get_key_value(key)?;
        Some(&record.value)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self.records.raw_entry_mut().from_key(key) {
            RawEntryMut::Occupied(occupied) => Some(&mut occupied.into_key_value().0.value),
            RawEntryMut::Vacant(_) => None,
        }
    }

    /// Stores `value` for `key` (one probe); returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.records.raw_entry_mut().from_key(&key) {
            RawEntryMut::Occupied(occupied) => Some(std::mem::replace(&mut occupied.into_key_value().0.value, value)),
            RawEntryMut::Vacant(vacant) => {
                vacant.insert(Record { key, value }, ());
                None
            }
        }
    }

    /// The value for `key`, made by `make` and stored first if there is none (one probe).
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        match self.records.raw_entry_mut().from_key(&key) {
            RawEntryMut::Occupied(occupied) => &mut occupied.into_key_value().0.value,
            RawEntryMut::Vacant(vacant) => {
                let value = make();
                &mut vacant.insert(Record { key, value }, ()).0.value
            }
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (record, ()) = self.records.remove_entry(key)?;
        Some(record.value)
    }
}

impl<K, V, S: Default> Default for LineMap<K, V, S> {
    fn default() -> Self {
        LineMap {
            records: griddle::HashMap::default(),
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug, S> fmt::Debug for LineMap<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> Extend<(K, V)> for LineMap<K, V, S> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, records: I) {
        for (key, value) in records {
            self.insert(key, value);
        }
    }
}

impl<K: Hash + Eq, V, S: BuildHasher + Default> FromIterator<(K, V)> for LineMap<K, V, S> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(records: I) -> Self {
        let mut map = LineMap::default();
        map.extend(records);
        map
    }
}

impl<K, V, S> IntoIterator for LineMap<K, V, S> {
    type Item = (K, V);
    type IntoIter = IntoIter<K, V>;

    fn into_iter(self) -> IntoIter<K, V> {
        IntoIter(self.records.into_iter())
    }
}

/// A map's records, taken out of it.
pub struct IntoIter<K, V>(griddle::hash_map::IntoIter<Record<K, V>, ()>);

impl<K, V> Iterator for IntoIter<K, V> {
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        let (record, ()) = self.0.next()?;
        Some((record.key, record.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Map = LineMap<u128, [u8; 34], foldhash::fast::FixedState>;

    #[test]
    fn each_record_is_one_cache_line_on_a_line_boundary() {
        assert_eq!(Map::RECORD_BYTES, 64);
        let map: Map = (0..1000u128).map(|key| (key << 64, [key as u8; 34])).collect();
        assert_eq!(map.len(), 1000);
        assert!(
            map.keys()
                .all(|key| (std::ptr::from_ref(key) as usize).is_multiple_of(64))
        );
    }

    #[test]
    fn behaves_as_a_map() {
        let mut map = Map::default();
        assert_eq!(map.insert(1, [1; 34]), None);
        assert_eq!(map.insert(1, [2; 34]), Some([1; 34]));
        assert_eq!(map.get(&1), Some(&[2; 34]));
        *map.get_mut(&1).unwrap() = [3; 34];
        assert_eq!(*map.get_or_insert_with(1, || [9; 34]), [3; 34]);
        assert_eq!(*map.get_or_insert_with(2, || [4; 34]), [4; 34]);
        assert_eq!(map.len(), 2);
        assert_eq!(map.remove(&1), Some([3; 34]));
        assert_eq!(map.get(&1), None);
        assert_eq!(map.get_mut(&1), None);
        assert_eq!(map.remove(&1), None);
        let mut records: Vec<(u128, [u8; 34])> = map.into_iter().collect();
        records.sort();
        assert_eq!(records, [(2, [4; 34])]);
    }
}
