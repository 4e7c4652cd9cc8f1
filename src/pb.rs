//! Code generated from proto/ by build.rs: the public API (`addressing.v1`), the stored event
//! schema (`addressing.events.v1`), the replicas' forwarded writes (`addressing.replica.v1`) and the descriptor set that reflection serves.

#![allow(clippy::all, missing_docs)]

pub mod addressing {
    pub mod v1 {
        tonic::include_proto!("addressing.v1");
        pub use crate::api::wire::{
            LookupAddressResponse, LookupAddressesRequest, LookupAddressesResponse, RouteDelta, ServiceBindingEvent,
        };
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("addressing.events.v1");
        }
    }
    pub mod replica {
        pub mod v1 {
            tonic::include_proto!("addressing.replica.v1");
        }
    }
}

pub use addressing::events::v1 as events;
pub use addressing::replica::v1 as forward;
pub use addressing::v1 as api;

/// Descriptors of every file in proto/ and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("addressing_descriptor");
