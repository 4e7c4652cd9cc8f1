//! Each watch event's wire form, made once and shared by every watcher that sends it: a
//! thousand watchers of one event used to convert the binding (ids, CIDR, timestamps) and
//! encode it a thousand times. The forms are kept by revision in a fixed ring of slots, so
//! memory stays bounded whatever the stream's length; a revision whose slot another one took
//! meanwhile (a group larger than the ring, or a catch-up far behind the head) is simply
//! encoded again. A committed revision's event never changes, so a kept form is never stale.

use std::sync::{Mutex, PoisonError};

use prost::Message;
use prost::bytes::Bytes;

use crate::domain::Event;
use crate::pb::api;

/// Slots in the ring: four times the commands a write group holds at most (1,024, most of
/// one event each), so that every watcher of a group finds each event its first watcher
/// encoded; a group with more events than slots only costs some of them a second encoding.
const SLOTS: usize = 4096;

/// A revision and its event's encoded message.
type Kept = Option<(u64, Bytes)>;

/// The encoded events of the most recent revisions asked for, one slot per revision modulo
/// [`SLOTS`].
pub struct EncodedEvents {
    slots: Box<[Mutex<Kept>]>,
}

impl Default for EncodedEvents {
    fn default() -> EncodedEvents {
        EncodedEvents {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl EncodedEvents {
    /// The message for `event`, whose wire form `message` makes: from its slot when it is
    /// there, otherwise made, encoded and kept. `None` when `message` gives none (the event is
    /// not one watchers see).
    pub fn message(
        &self,
        event: &Event,
        message: impl FnOnce(&Event) -> Option<api::ServiceBindingEvent>,
    ) -> Option<api::ServiceBindingEvent> {
        let slot = &self.slots[(event.revision % SLOTS as u64) as usize];
        // Held while encoding: a second worker asking for the same revision waits for this
        // one's bytes rather than encoding them too.
        let mut kept = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((revision, encoded)) = kept.as_ref()
            && *revision == event.revision
        {
            return Some(api::ServiceBindingEvent::encoded(encoded.clone()));
        }
        let encoded = Bytes::from(message(event)?.encode_to_vec());
        *kept = Some((event.revision, encoded.clone()));
        Some(api::ServiceBindingEvent::encoded(encoded))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::domain::fixtures;

    #[test]
    fn an_event_is_encoded_once_per_revision_until_its_slot_is_taken() {
        let events = EncodedEvents::default();
        let made = Cell::new(0);
        let message = |event: &Event| {
            made.set(made.get() + 1);
            Some(api::ServiceBindingEvent::new(
                event.revision,
                api::ServiceBindingEventKind::Created,
                api::ServiceBinding::default(),
                prost_types::Timestamp::default(),
                String::new(),
            ))
        };
        let first = fixtures::prefix_event(7, "192.0.2.0/24");
        let by_fields = message(&first).unwrap().encode_to_vec();
        made.set(0);
        for _ in 0..3 {
            let sent = events.message(&first, message).unwrap();
            assert_eq!(sent.encode_to_vec(), by_fields);
        }
        assert_eq!(made.get(), 1);
        // A revision sharing the slot replaces it; the first one is then made again.
        let same_slot = fixtures::prefix_event(7 + SLOTS as u64, "192.0.2.0/24");
        events.message(&same_slot, message).unwrap();
        events.message(&first, message).unwrap();
        assert_eq!(made.get(), 3);
        // Events watchers do not see are not kept.
        assert!(
            events
                .message(&fixtures::prefix_event(8, "192.0.2.0/24"), |_| None)
                .is_none()
        );
        assert!(events.slots[8].lock().unwrap().is_none());
    }
}
