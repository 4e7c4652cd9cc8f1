//! The stream's message format: one message per group of events. The payload is the group as
//! one run record of the log's codec (format byte, CRC-32, the events); the headers carry the
//! group's first and last revision (checked for continuity when applied), the message id
//! (dedupe of resends) and the expected last sequence (the compare-and-set).

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage as Publish;
use bytes::Bytes;

use crate::domain::Event;
use crate::log::{StreamPosition, codec};

const FIRST_REVISION: &str = "Ipam-First-Revision";
const LAST_REVISION: &str = "Ipam-Last-Revision";
const MSG_ID: &str = "Nats-Msg-Id";

/// A group of decided events on its way to the stream.
#[derive(Clone, Debug)]
pub struct Append {
    pub msg_id: String,
    /// The stream's last sequence when the group was decided (0: an empty stream).
    pub expected_sequence: u64,
    pub first_revision: u64,
    pub last_revision: u64,
    pub payload: Bytes,
}

impl Append {
    pub(super) fn new(msg_id: String, expected_sequence: u64, events: &[Event]) -> Append {
        Append {
            msg_id,
            expected_sequence,
            first_revision: events.first().map_or(0, |event| event.revision),
            last_revision: events.last().map_or(0, |event| event.revision),
            payload: Bytes::from(codec::encode_group(events)),
        }
    }

    /// Where the message sits in the stream once it landed at `sequence`.
    pub fn position(&self, sequence: u64) -> StreamPosition {
        StreamPosition {
            sequence,
            last_revision: self.last_revision,
            checksum: codec::checksum(&self.payload).unwrap_or_default(),
        }
    }

    /// The payload cut into the local log's records ([`codec::split_group`]).
    pub fn records(&self) -> Option<Vec<(u64, Vec<u8>)>> {
        codec::split_group(self.last_revision, &self.payload)
    }

    pub(super) fn publish(&self) -> Publish {
        Publish::build()
            .payload(self.payload.clone())
            .message_id(&self.msg_id)
            .expected_last_sequence(self.expected_sequence)
            .header(FIRST_REVISION, self.first_revision.to_string().as_str())
            .header(LAST_REVISION, self.last_revision.to_string().as_str())
    }
}

/// A group read back from the stream.
#[derive(Clone, Debug)]
pub struct StreamGroup {
    pub position: StreamPosition,
    pub first_revision: u64,
    pub msg_id: String,
    pub events: Vec<Event>,
    /// The payload cut into the local log's records ([`codec::split_group`]), made here on
    /// the tail's task rather than on the writer; `None` when it cannot be (the writer then
    /// encodes the events). Owned copies: the message's bytes, a slice of the NATS client's
    /// read buffer, are not held while the group waits for the writer.
    pub records: Option<Vec<(u64, Vec<u8>)>>,
    /// When the stream took it (Unix nanoseconds), for the replica's lag.
    pub published_unix_nanos: i128,
}

impl StreamGroup {
    /// Decodes and checks a message: its revisions, its payload's checksum and format, and
    /// that it holds exactly the events its headers announce.
    pub fn decode(
        sequence: u64,
        headers: &HeaderMap,
        payload: &[u8],
        published: async_nats::datetime::DateTime,
    ) -> Result<StreamGroup, String> {
        Announced::read(headers)?.decode(sequence, payload, published.unix_timestamp_nanos())
    }
}

/// What a message's headers say of it: its revisions and its id.
pub struct Announced {
    first_revision: u64,
    last_revision: u64,
    msg_id: String,
}

impl Announced {
    fn read(headers: &HeaderMap) -> Result<Announced, String> {
        let revision = |name: &str| -> Result<u64, String> {
            headers
                .get(name)
                .and_then(|value| value.as_str().parse().ok())
                .ok_or_else(|| format!("no valid {name} header"))
        };
        let (first_revision, last_revision) = (revision(FIRST_REVISION)?, revision(LAST_REVISION)?);
        if first_revision == 0 || first_revision > last_revision {
            return Err(format!("revisions {first_revision}-{last_revision}"));
        }
        Ok(Announced {
            first_revision,
            last_revision,
            msg_id: (headers.get(MSG_ID))
                .map(|id| id.as_str().to_string())
                .unwrap_or_default(),
        })
    }

    fn decode(self, sequence: u64, payload: &[u8], published_unix_nanos: i128) -> Result<StreamGroup, String> {
        let Announced {
            first_revision,
            last_revision,
            msg_id,
        } = self;
        let events = codec::decode_run(last_revision, payload).map_err(|error| error.to_string())?;
        if events.first().map(|event| event.revision) != Some(first_revision) {
            return Err(format!(
                "{} events where revisions {first_revision}-{last_revision} were announced",
                events.len()
            ));
        }
        Ok(StreamGroup {
            position: StreamPosition {
                sequence,
                last_revision,
                checksum: codec::checksum(payload).unwrap_or_default(),
            },
            first_revision,
            msg_id,
            events,
            records: codec::split_group(last_revision, payload),
            published_unix_nanos,
        })
    }
}

/// A message as the tail hands it over: decoded, or, when this replica appended it, kept as
/// its bytes. A replica's own append is usually applied by the time it comes back (its
/// acknowledgement arrives with it), so it is decoded only if the writer still needs it: an
/// append whose acknowledgement was lost, or that the local log failed to store.
pub enum Arrival {
    Decoded(StreamGroup),
    Own {
        sequence: u64,
        announced: Announced,
        payload: Bytes,
        published_unix_nanos: i128,
    },
}

impl Arrival {
    /// Reads message `sequence`; decoded unless its id starts with `own_prefix`. Refused with
    /// why it cannot be decoded, naming the message.
    pub fn read(
        sequence: u64,
        headers: &HeaderMap,
        payload: &[u8],
        published: async_nats::datetime::DateTime,
        own_prefix: &str,
    ) -> Result<Arrival, String> {
        let announced = Announced::read(headers).map_err(|why| undecodable(sequence, &why))?;
        let published_unix_nanos = published.unix_timestamp_nanos();
        if announced.msg_id.starts_with(own_prefix) {
            return Ok(Arrival::Own {
                sequence,
                announced,
                // A copy: the message's bytes are a slice of the NATS client's read buffer.
                payload: Bytes::copy_from_slice(payload),
                published_unix_nanos,
            });
        }
        (announced.decode(sequence, payload, published_unix_nanos))
            .map(Arrival::Decoded)
            .map_err(|why| undecodable(sequence, &why))
    }

    pub fn sequence(&self) -> u64 {
        match self {
            Arrival::Decoded(group) => group.position.sequence,
            Arrival::Own { sequence, .. } => *sequence,
        }
    }

    /// The group, decoded now if it was not yet.
    pub fn into_group(self) -> Result<StreamGroup, String> {
        match self {
            Arrival::Decoded(group) => Ok(group),
            Arrival::Own {
                sequence,
                announced,
                payload,
                published_unix_nanos,
            } => {
                (announced.decode(sequence, &payload, published_unix_nanos)).map_err(|why| undecodable(sequence, &why))
            }
        }
    }
}

/// Why message `sequence` is refused, in the words the writer stops serving with.
fn undecodable(sequence: u64, why: &str) -> String {
    format!("message {sequence} of the stream cannot be decoded: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::prefix_event;

    fn headers_of(publish: Publish) -> HeaderMap {
        let message = publish.outbound_message("IPAM_EVENTS.events");
        message.headers.unwrap()
    }

    #[test]
    fn a_group_reads_back_as_it_was_sent_and_damage_is_refused() {
        let events: Vec<Event> = (41..=43)
            .map(|revision| prefix_event(revision, &format!("10.0.{revision}.0/24")))
            .collect();
        let append = Append::new("writer-7".into(), 12, &events);
        let headers = headers_of(append.publish());
        let now = async_nats::datetime::DateTime::now_utc();
        let group = StreamGroup::decode(13, &headers, &append.payload, now).unwrap();
        assert_eq!(group.events, events);
        assert_eq!(group.position, append.position(13));
        assert_eq!(group.msg_id, "writer-7");
        assert_eq!(headers.get("Nats-Expected-Last-Sequence").unwrap().as_str(), "12");

        assert_eq!(group.records, Some(codec::encode_runs(&events)));

        // Read back by the replica that appended it: kept as bytes, the same group once decoded.
        let own = Arrival::read(13, &headers, &append.payload, now, "writer-").unwrap();
        assert!(matches!(own, Arrival::Own { .. }));
        assert_eq!(own.sequence(), 13);
        let decoded_later = own.into_group().unwrap();
        assert_eq!(
            (&decoded_later.events, decoded_later.position),
            (&events, append.position(13))
        );
        let other = Arrival::read(13, &headers, &append.payload, now, "writer-8-").unwrap();
        assert!(matches!(other, Arrival::Decoded(group) if group.events == events));

        let mut damaged = append.payload.to_vec();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(StreamGroup::decode(13, &headers, &damaged, now).is_err());
        let own_damaged = Arrival::read(13, &headers, &damaged, now, "writer-").unwrap();
        assert!(own_damaged.into_group().is_err());
        let mut lying = headers.clone();
        lying.insert(FIRST_REVISION, "40");
        assert!(StreamGroup::decode(13, &lying, &append.payload, now).is_err());
    }
}
