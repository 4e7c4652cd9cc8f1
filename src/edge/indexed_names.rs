//! Which of the edge's reply headers have had their name put in a connection's HPACK table.
//!
//! The edge sends `x-request-id` and `x-ipam-revision` as literals never indexed, since their
//! values change with every reply ([`super::date`] says why that matters). h2 (0.4) then refers
//! to the name by its index only if the connection's table already holds an entry of that
//! name; otherwise it spells the name out too, Huffman-coded, in every reply. Neither name is
//! in HPACK's static table, so both were spelled out on every call: ~27 more characters to
//! encode per reply and to decode per answer (docs/benchmarks.md: the reply headers' names
//! sent by index).
//!
//! So the first reply on a connection to carry each header sends it as a value HPACK may
//! index: its one entry goes in the table, and every later reply names it by index while its
//! value stays a literal never indexed. One entry per name: h2 walks a name's entries before
//! it looks at a value's flag, and this keeps that walk one entry long. The connection
//! (`server/connection.rs`) holds the record and hands it to each call with tonic's connect
//! info ([`super::ConnectInfo`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// A reply header whose name the edge puts in a connection's table once.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub enum ReplyName {
    RequestId = 1,
    Revision = 2,
}

/// One connection's record, shared by its calls.
#[derive(Clone, Debug, Default)]
pub struct IndexedNames(Arc<AtomicU8>);

impl IndexedNames {
    /// True for exactly one call per name and connection: the one whose reply sends the
    /// header as a value HPACK may index. Once every name is claimed, a call only reads.
    pub fn claim(&self, name: ReplyName) -> bool {
        let bit = name as u8;
        self.0.load(Ordering::Relaxed) & bit == 0 && self.0.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    /// Whether a call has claimed `name` on this connection.
    pub fn claimed(&self, name: ReplyName) -> bool {
        self.0.load(Ordering::Relaxed) & name as u8 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_is_claimed_once_per_connection() {
        let connection = IndexedNames::default();
        let shared = connection.clone();
        assert!(!shared.claimed(ReplyName::Revision));
        assert!(connection.claim(ReplyName::Revision));
        assert!(shared.claimed(ReplyName::Revision));
        assert!(!shared.claim(ReplyName::Revision));
        assert!(shared.claim(ReplyName::RequestId));
        assert!(!connection.claim(ReplyName::RequestId));
        assert!(!connection.claim(ReplyName::Revision));
        assert!(IndexedNames::default().claim(ReplyName::Revision));
    }
}
