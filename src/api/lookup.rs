//! Lookups' answers, written straight into the encoded response (`wire`): each route's fields
//! are encoded once and kept in a cache keyed by the route as the table found it, so a batch
//! (`LookupAddresses`) costs a table lookup and a copy per address, and a unary
//! `LookupAddress` one of each. FULL echoes each address with its whole binding; COMPACT lists
//! each matched binding once and points to it.

use std::net::IpAddr;

use super::convert;
use super::wire::{EncodedRoute, LookupAddressResponse, LookupAddressesResponse};
use crate::domain::{Binding, BindingId, Error, IdMap, Reason};
use crate::line_map::LineMap;
use crate::pb::api;
use crate::projection::ReadModel;
use crate::projection::routing::Route;

/// Room reserved per FULL result: an address, ids and a binding (~290 bytes on ipamctl's
/// bench fixture; at 256 a FULL answer outgrew its buffer and was copied into one twice as
/// large).
const TYPICAL_ENTRY_BYTES: usize = 320;
/// Room reserved per COMPACT result: ids and an index.
const COMPACT_ENTRY_BYTES: usize = 96;
/// Room reserved per listed binding of a COMPACT answer, for as many as it has addresses (it
/// lists at most one binding per address). Grown by doubling instead, the listed bindings
/// were copied once more (~150 KB per 1,000 addresses on ipamctl's bench fixture).
const TYPICAL_BINDING_BYTES: usize = 256;
/// Encoded routes kept for reuse: past this many, or past [`MAX_CACHED_BYTES`], the cache
/// starts over (routes of deleted bindings linger in it; encoding a route again is cheap).
pub const MAX_CACHED_ROUTES: usize = 1 << 20;
/// The memory the kept routes may hold (a route with its binding is ~300 bytes, so ~200,000
/// of them: a table of a million bindings looked up all over would otherwise hold ~300 MB).
pub const MAX_CACHED_BYTES: usize = 64 << 20;

/// Encoded routes by route. The route names the version of its binding: ids are never
/// reused, and a binding changes once, when it turns ACTIVE (`Route::binding_active`), so a
/// hit needs no look at the binding (that look was 15% of a batch's server CPU). Debug builds
/// check each hit against the binding's modification time and state. Each record (a route and
/// its encoding's handle) is one cache line: every lookup probes this map, and over a table
/// far larger than the CPU's cache a record that straddled two lines missed twice.
pub type RouteCache = LineMap<Route, CachedRoute, foldhash::fast::RandomState>;

// What the record's one line rests on, checked where it matters (tests run debug builds, whose
// records also hold the version: `a_release_record_is_one_cache_line` checks the same there).
#[cfg(not(debug_assertions))]
const _: () = assert!(RouteCache::RECORD_BYTES == 64);

/// A route's encoded fields; in debug builds also the version of the binding they were encoded
/// from (its modification time and state, `None`: no binding), which release builds do not
/// need and leave out to keep a record in one line.
#[derive(Debug)]
pub struct CachedRoute {
    encoded: EncodedRoute,
    #[cfg(debug_assertions)]
    version: Option<(crate::domain::Micros, crate::domain::ProvisioningState)>,
}

impl CachedRoute {
    fn new(encoded: EncodedRoute, binding: Option<&Binding>) -> CachedRoute {
        #[cfg(not(debug_assertions))]
        let _ = binding;
        CachedRoute {
            encoded,
            #[cfg(debug_assertions)]
            version: binding.map(|binding| (binding.modified_at, binding.state)),
        }
    }

    /// Debug builds: the binding `route` names now is the version this was encoded from.
    fn debug_check(&self, model: &ReadModel, route: &Route) {
        #[cfg(debug_assertions)]
        assert_eq!(
            self.version,
            binding_of(model, route).map(|binding| (binding.modified_at, binding.state)),
            "{route:?} changed without turning ACTIVE"
        );
        #[cfg(not(debug_assertions))]
        let _ = (model, route);
    }
}

/// The routes kept between lookups, bounded by entries and by bytes.
#[derive(Debug, Default)]
pub struct KeptRoutes {
    routes: RouteCache,
    /// What `routes` holds: its entries and their encoded bytes.
    bytes: usize,
}

impl KeptRoutes {
    pub fn routes(&self) -> &RouteCache {
        &self.routes
    }

    /// The bytes held, as counted against [`MAX_CACHED_BYTES`] (what the tests check).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds the routes a lookup encoded; past `max_entries` or `max_bytes` starts over with
    /// them alone.
    pub fn keep(&mut self, fresh: RouteCache, max_entries: usize, max_bytes: usize) {
        let fresh_bytes: usize = fresh.values().map(|cached| held_bytes(&cached.encoded)).sum();
        if self.routes.len() + fresh.len() > max_entries || self.bytes + fresh_bytes > max_bytes {
            self.routes.clear();
            self.bytes = 0;
        }
        self.bytes += fresh_bytes;
        self.routes.extend(fresh);
    }
}

/// The memory one kept route takes: its map entry (and control byte) and its encoded bytes.
fn held_bytes(encoded: &EncodedRoute) -> usize {
    RouteCache::RECORD_BYTES + 1 + encoded.len()
}

/// How a batch's results are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Full,
    Compact,
}

impl View {
    /// The request's `view`; an unknown value is refused naming the field.
    pub fn from_request(view: i32) -> Result<View, Error> {
        match api::LookupView::try_from(view) {
            Ok(api::LookupView::Unspecified | api::LookupView::Full) => Ok(View::Full),
            Ok(api::LookupView::Compact) => Ok(View::Compact),
            Err(_) => Err(Error::field(
                Reason::MalformedRequest,
                "view",
                format!("view {view} is not a LookupView: use LOOKUP_VIEW_FULL or LOOKUP_VIEW_COMPACT"),
            )),
        }
    }
}

/// The unary answer for `address` (asked as `text`), from the encoded route (`cached`, or
/// encoded here and added to `fresh` for the caller to keep): `None` when no prefix covers it.
pub fn answer_one(
    model: &ReadModel,
    text: &str,
    address: IpAddr,
    active_only: bool,
    cached: &RouteCache,
    fresh: &mut RouteCache,
) -> Option<LookupAddressResponse> {
    let route = model.routes.lookup(address, active_only)?;
    Some(LookupAddressResponse::encoded(
        text,
        encode(model, route, cached, fresh),
    ))
}

/// The answer for one address as a whole message, built field by field (what a FULL batch
/// result decodes to, and the fields of the unary answer: the properties hold the encoded
/// answers to it): `None` when no prefix covers it.
pub fn resolve(model: &ReadModel, text: &str, address: IpAddr, active_only: bool) -> Option<api::LookupAddressResult> {
    let route = model.routes.lookup(address, active_only)?;
    Some(result(model, route, binding_of(model, &route), text.to_string()))
}

fn result(model: &ReadModel, route: Route, binding: Option<&Binding>, address: String) -> api::LookupAddressResult {
    let account_id = model
        .state
        .prefix_by_id(route.prefix_id)
        .map(|prefix| prefix.account_id.to_string());
    api::LookupAddressResult {
        address,
        found: binding.is_some(),
        prefix_id: route.prefix_id.to_string(),
        account_id: account_id.unwrap_or_default(),
        binding: binding.map(convert::binding),
        binding_index: None,
    }
}

/// The batch's answer: `texts` as asked, `addresses` the same parsed. Routes found in `cached`
/// are reused; the ones encoded here are added to `fresh` (for the caller to keep).
pub fn answer(
    model: &ReadModel,
    texts: &[&str],
    addresses: &[IpAddr],
    active_only: bool,
    view: View,
    cached: &RouteCache,
    fresh: &mut RouteCache,
) -> LookupAddressesResponse {
    let mut response = match view {
        View::Full => LookupAddressesResponse::with_capacity(addresses.len(), TYPICAL_ENTRY_BYTES, 0),
        View::Compact => {
            LookupAddressesResponse::with_capacity(addresses.len(), COMPACT_ENTRY_BYTES, TYPICAL_BINDING_BYTES)
        }
    };
    // Sized for the batch up front: this map type grows incrementally (moving a few entries on
    // every insert after a resize), which suits the state's maps but made this one, rebuilt per
    // batch, the largest cost of a COMPACT answer (in process 50 -> 42 us per 1,000 addresses).
    let mut listed: IdMap<BindingId, u32> = IdMap::with_capacity_and_hasher(addresses.len(), Default::default());
    let routes = model.routes.lookup_many(addresses, active_only);
    // First the cached routes, each prefetched as it is found: the copies below then read
    // lines already on their way instead of missing the cache one route at a time.
    let hits: Vec<Option<&EncodedRoute>> = routes
        .iter()
        .map(|route| {
            let route = route.as_ref()?;
            let cached = cached.get(route)?;
            cached.debug_check(model, route);
            cached.encoded.prefetch();
            Some(&cached.encoded)
        })
        .collect();
    for ((text, route), hit) in texts.iter().zip(routes).zip(hits) {
        let found = route.map(|route| {
            let encoded = hit.unwrap_or_else(|| encode_fresh(model, route, fresh));
            (encoded, route.binding_id)
        });
        match view {
            View::Full => response.push(text, found.map(|(encoded, _)| encoded)),
            View::Compact => {
                let index = found.and_then(|(encoded, binding_id)| {
                    let body = encoded.binding()?;
                    Some(*listed.entry(binding_id?).or_insert_with(|| response.push_binding(body)))
                });
                response.push_compact(found.map(|(encoded, _)| encoded), index);
            }
        }
    }
    response
}

/// `route` encoded: from `cached` while its binding is unchanged, else from `fresh` (one batch
/// reads one state, so what it encoded stays current), else encoded now and kept in `fresh`.
fn encode<'a>(model: &ReadModel, route: Route, cached: &'a RouteCache, fresh: &'a mut RouteCache) -> &'a EncodedRoute {
    if let Some(cached) = cached.get(&route) {
        cached.debug_check(model, &route);
        return &cached.encoded;
    }
    encode_fresh(model, route, fresh)
}

/// `route` encoded from `fresh`, or encoded now and kept there (not in the cache yet).
fn encode_fresh<'a>(model: &ReadModel, route: Route, fresh: &'a mut RouteCache) -> &'a EncodedRoute {
    let cached = fresh.get_or_insert_with(route, || {
        let binding = binding_of(model, &route);
        CachedRoute::new(
            EncodedRoute::new(&result(model, route, binding, String::new())),
            binding,
        )
    });
    &cached.encoded
}

fn binding_of<'a>(model: &'a ReadModel, route: &Route) -> Option<&'a Binding> {
    route.binding_id.and_then(|id| model.state.binding_by_id(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PrefixId;

    /// `n` routes of prefixes without bindings, each encoded.
    fn fresh(n: usize) -> RouteCache {
        (0..n)
            .map(|_| {
                let prefix_id = PrefixId::generate();
                let route = Route {
                    prefix_id,
                    binding_id: None,
                    binding_active: false,
                };
                let result = api::LookupAddressResult {
                    prefix_id: prefix_id.to_string(),
                    ..Default::default()
                };
                (route, CachedRoute::new(EncodedRoute::new(&result), None))
            })
            .collect()
    }

    #[test]
    fn a_release_record_is_one_cache_line() {
        assert_eq!(
            LineMap::<Route, EncodedRoute, foldhash::fast::RandomState>::RECORD_BYTES,
            64
        );
    }

    #[test]
    fn kept_routes_start_over_past_either_bound() {
        let one = held_bytes(&fresh(1).values().next().unwrap().encoded);
        let mut kept = KeptRoutes::default();
        kept.keep(fresh(3), 4, 10 * one);
        assert_eq!((kept.routes().len(), kept.bytes()), (3, 3 * one));
        // A fourth fits, a fifth entry does not: the cache starts over with the new ones.
        kept.keep(fresh(1), 4, 10 * one);
        assert_eq!(kept.routes().len(), 4);
        kept.keep(fresh(2), 4, 10 * one);
        assert_eq!((kept.routes().len(), kept.bytes()), (2, 2 * one));
        // Past the bytes, with room for entries.
        kept.keep(fresh(2), 100, 3 * one);
        assert_eq!((kept.routes().len(), kept.bytes()), (2, 2 * one));
        kept.keep(fresh(1), 100, 3 * one);
        assert_eq!((kept.routes().len(), kept.bytes()), (3, 3 * one));
    }
}
