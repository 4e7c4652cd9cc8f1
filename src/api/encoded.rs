//! Messages that many streams send alike, each encoded once and shared: a thousand watchers of
//! one event used to convert it (ids, CIDRs, addresses and timestamps as text) and encode it a
//! thousand times. WatchServiceBindings keeps its events here by revision, WatchRoutes its
//! deltas by revision and table. The wire forms are kept by key in a fixed ring of slots, so
//! memory stays bounded whatever the streams' length; a key whose slot another one took
//! meanwhile (a group larger than the ring, or a catch-up far behind the head) is simply
//! encoded again. What a committed revision sends never changes, so a kept form is never stale.

use std::sync::{Mutex, PoisonError};

use prost::bytes::Bytes;

/// Slots in the ring: four times the commands a write group holds at most (1,024, most of
/// one event each), so that every watcher of a group finds each message its first watcher
/// encoded; a group with more than that only costs some of them a second encoding.
const SLOTS: usize = 4096;

/// A key and its message encoded.
type Kept = Option<(u64, Bytes)>;

/// The encoded messages of the most recent keys asked for, one slot per key modulo [`SLOTS`].
pub struct EncodedMessages {
    slots: Box<[Mutex<Kept>]>,
}

impl Default for EncodedMessages {
    fn default() -> EncodedMessages {
        EncodedMessages {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl EncodedMessages {
    /// The message kept under `key`, or the one `encode` makes, then kept. `None` when `encode`
    /// makes none (nothing is sent for this key); that is not kept.
    pub fn get_or_encode(&self, key: u64, encode: impl FnOnce() -> Option<Bytes>) -> Option<Bytes> {
        let slot = &self.slots[(key % SLOTS as u64) as usize];
        // Held while encoding: a second worker asking for the same key waits for this one's
        // bytes rather than encoding them too.
        let mut kept = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((kept_key, encoded)) = kept.as_ref()
            && *kept_key == key
        {
            return Some(encoded.clone());
        }
        let encoded = encode()?;
        *kept = Some((key, encoded.clone()));
        Some(encoded)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_message_is_encoded_once_per_key_until_its_slot_is_taken() {
        let messages = EncodedMessages::default();
        let made = Cell::new(0);
        let encode = |text: &'static str| {
            || {
                made.set(made.get() + 1);
                Some(Bytes::from_static(text.as_bytes()))
            }
        };
        for _ in 0..3 {
            assert_eq!(messages.get_or_encode(7, encode("seven")).unwrap(), "seven");
        }
        assert_eq!(made.get(), 1);
        // A key sharing the slot replaces it; the first one is then made again.
        assert_eq!(
            messages.get_or_encode(7 + SLOTS as u64, encode("other")).unwrap(),
            "other"
        );
        assert_eq!(messages.get_or_encode(7, encode("seven")).unwrap(), "seven");
        assert_eq!(made.get(), 3);
        // Keys with nothing to send are not kept.
        assert!(messages.get_or_encode(8, || None).is_none());
        assert!(messages.slots[8].lock().unwrap().is_none());
    }
}
