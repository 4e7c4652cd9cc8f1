//! Compiles proto/ with tonic-prost-build, using the protoc binary vendored in the
//! protoc-bin-vendored crate so that no system protoc is needed, and writes the descriptor set
//! that the reflection service serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("addressing_descriptor.bin"))
        // Undecodable requests are the caller's fault: INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::api::codec::AddressingCodec")
        // Written by hand so that a batch lookup decodes its addresses into one buffer and
        // encodes each result once, and a unary lookup reuses those results, and so that a
        // watch event or a route delta is encoded once for all its watchers (src/api/wire/).
        .extern_path(
            ".addressing.v1.LookupAddressesRequest",
            "crate::api::wire::LookupAddressesRequest",
        )
        .extern_path(
            ".addressing.v1.LookupAddressesResponse",
            "crate::api::wire::LookupAddressesResponse",
        )
        .extern_path(
            ".addressing.v1.LookupAddressResponse",
            "crate::api::wire::LookupAddressResponse",
        )
        .extern_path(
            ".addressing.v1.ServiceBindingEvent",
            "crate::api::wire::ServiceBindingEvent",
        )
        .extern_path(".addressing.v1.RouteDelta", "crate::api::wire::RouteDelta")
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/addressing/v1/resources.proto",
                "proto/addressing/v1/prefixes.proto",
                "proto/addressing/v1/service_bindings.proto",
                "proto/addressing/v1/services.proto",
                "proto/addressing/v1/routing.proto",
                "proto/addressing/v1/rollout.proto",
                "proto/addressing/events/v1/events.proto",
                "proto/addressing/replica/v1/forward.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
