//! Scenario tests of the BUILT native module (`libwaypoint_native.so`) in the mocked
//! dynamic-module host: the scenarios of `wasm-tests/tests/waypoint/` on the other engine,
//! ported with the same literals (`harness.rs` mirrors the wasm harness's steps).
//!
//! The module is found through `WAYPOINT_NATIVE_SO`, else
//! `<workspace>/target/release/libwaypoint_native.so`; when it is missing every test fails
//! and says how to build it.
//!
//! - `story`: the seed's five steps, one test each.
//! - `peers`: baggage forms, the legacy header, hostile input, gRPC.
//! - `tunnels`: which tunnel's peer a response is labelled with.
//! - `hostile`: forged namespaces, floods.
//! - `abi`: the mocked host itself refuses what Envoy refuses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod harness;

mod story;
