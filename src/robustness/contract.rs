//! Messages of the contract that the server writes or reads by hand (`api::wire`), as prost
//! generates them from the .proto: what those are held to.

use crate::pb::api;

/// The unary lookup's answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LookupAddressResponse {
    #[prost(string, tag = "1")]
    pub address: String,
    #[prost(string, tag = "2")]
    pub prefix_id: String,
    #[prost(string, tag = "3")]
    pub account_id: String,
    #[prost(message, optional, tag = "4")]
    pub binding: Option<api::ServiceBinding>,
}

/// The batch lookup's request (the name matters: it is in the errors' field paths).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LookupAddressesRequest {
    #[prost(string, repeated, tag = "1")]
    pub addresses: Vec<String>,
    #[prost(bool, tag = "2")]
    pub active_only: bool,
    #[prost(int32, tag = "3")]
    pub view: i32,
}

/// One event of a watch stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceBindingEvent {
    #[prost(uint64, tag = "1")]
    pub revision: u64,
    #[prost(enumeration = "api::ServiceBindingEventKind", tag = "2")]
    pub kind: i32,
    #[prost(message, optional, tag = "3")]
    pub binding: Option<api::ServiceBinding>,
    #[prost(message, optional, tag = "4")]
    pub time: Option<prost_types::Timestamp>,
    #[prost(string, tag = "5")]
    pub actor: String,
}

/// One delta of a WatchRoutes stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteDelta {
    #[prost(int64, tag = "1")]
    pub revision: i64,
    #[prost(message, repeated, tag = "2")]
    pub removed: Vec<api::Route>,
    #[prost(message, repeated, tag = "3")]
    pub added: Vec<api::Route>,
}
