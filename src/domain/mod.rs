//! The domain: resources, commands, events, rules and errors, in plain Rust. Nothing here
//! knows about gRPC, sled or tokio; the writer ([`crate::engine`]) feeds commands in and the
//! edge ([`crate::api`]) turns requests into commands and errors into statuses.

pub mod actor;
mod address;
pub mod command;
pub mod error;
pub mod event;
pub mod fields;
#[cfg(test)]
pub mod fixtures;
pub mod ids;
pub mod model;
pub mod network;
pub mod routes;
pub mod service;
pub mod state;

pub use actor::Actor;
pub use command::{Command, Outcome};
pub use error::{Error, ErrorKind, Reason};
pub use event::{Change, Event};
pub use ids::{AccountId, BindingId, PrefixId, ServiceId};
pub use model::{Binding, Micros, Prefix, ProvisioningState};
pub use service::Service;
pub use state::{IdMap, State};
