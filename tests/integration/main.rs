//! Integration tests: the real server, in-process, on an ephemeral loopback port with a
//! temporary data directory, spoken to through the generated gRPC clients.

mod common;

mod bindings;
mod cli;
mod crash;
mod mesh;
mod operator;
mod prefixes;
mod routing;
mod server;
mod storage;
mod watch;
