//! Integration tests: the real server, in-process, on an ephemeral loopback port with a
//! temporary data directory, spoken to through the generated gRPC clients.

mod common;

mod access;
mod bindings;
mod cli;
mod cluster;
mod crash;
mod edge;
mod fuzz_corpus;
mod lifecycle;
mod metrics;
mod model;
mod operator;
mod prefixes;
mod rest;
mod rollout;
mod routes;
mod routing;
mod server;
mod storage;
mod tls;
mod tracing;
mod watch;
