//! The `Date` header every gRPC response carries, sent so that HPACK never indexes it.
//!
//! hyper adds `date` to a response that has none, and h2's HPACK encoder adds each new value
//! to the connection's table. Its table finds an entry by name and then walks every entry of
//! that name from the oldest, comparing values, so a connection kept open for a minute held
//! ~60 stale dates and each response compared its date with all of them
//! (docs/benchmarks.md: reply headers that change, sent as literals never indexed). Set here
//! first, as a literal never indexed, the header costs its 29 bytes and no search; hyper
//! leaves a `date` it finds. (A reply the edge never sees, one shed by tonic's per-connection
//! call limit, still gets hyper's.)

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

thread_local! {
    /// This thread's date and the second it names.
    static CURRENT: RefCell<(u64, HeaderValue)> = const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
}

/// Now as an HTTP date (`Mon, 07 Dec 2026 22:51:29 GMT`), made once a second per thread;
/// cloning it shares its bytes.
pub(super) fn now() -> HeaderValue {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    CURRENT.with(|current| {
        let mut current = current.borrow_mut();
        if current.0 != second {
            let text = httpdate::fmt_http_date(now);
            let mut value = HeaderValue::from_str(&text).expect("an HTTP date is a valid header value");
            value.set_sensitive(true);
            *current = (second, value);
        }
        current.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_an_http_date_never_indexed() {
        let value = now();
        assert!(value.is_sensitive(), "HPACK must not index it");
        let text = value.to_str().expect("ASCII");
        let parsed = httpdate::parse_http_date(text).expect("an HTTP date");
        let age = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(age.as_secs() <= 2, "{text} is now");
        assert!(text.ends_with(" GMT") && text.len() == 29, "{text}");
    }
}
