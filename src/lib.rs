//! ipam-bindings decides which network service handles each IP address of a customer's own
//! (BYOIP) prefixes. Crate map, in reading order:
//!
//! - [`domain`]: resources, commands, events, rules and errors in plain Rust (no I/O).
//! - [`log`]: the durable, append-only event log in sled, with checksummed records.
//! - [`projection`]: the in-memory read models folded from the log (lists, ids, LPM table).
//! - [`engine`]: the single writer: decide -> append + group fsync -> apply -> publish -> reply.
//! - [`rollout`]: turns bindings ACTIVE once the provisioning delay has passed.
//! - [`operations`]: what both surfaces offer: fields checked, then a command or a query.
//! - [`api`]: the gRPC surface (messages in and out of operations, domain error -> status).
//! - [`rest`]: the v4 JSON API (Cloudflare's routes) over the same operations.
//! - [`auth`]: access control: credentials, the policy, permissions, the audit of refusals.
//! - [`edge`]: the tower layer in front of the services (global call cap, x-request-id).
//! - [`server`]: wires health, reflection and the services onto a listener; graceful shutdown.
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`telemetry`]: OpenTelemetry traces over OTLP (off unless `--otlp-endpoint`).
//! - [`config`]: flags and environment.
//! - [`pb`]: generated protobuf code; [`hex`]: the hex encoding of tokens and exports;
//!   [`prefetch`]: cache-line prefetch hints for the lookup paths.

pub mod allocator;
pub mod api;
pub mod auth;
pub mod config;
pub mod domain;
pub mod edge;
pub mod engine;
pub mod hex;
mod huge_pages;
pub mod line_map;
pub mod log;
pub mod metrics;
pub mod operations;
pub mod pb;
pub mod prefetch;
pub mod projection;
pub mod replica;
pub mod rest;
pub mod robustness;
pub mod rollout;
pub mod server;
pub mod telemetry;
