//! Scenario tests of the BUILT native module (`libwaypoint_native.so`) in the mocked
//! dynamic-module host: the scenarios of `wasm-tests/tests/waypoint/` on the other engine.
//! `harness.rs` offers the wasm harness's surface (`Waypoint::start`, `client_connect`,
//! `answer_client`, `established_tunnel`, `serve`, the series as Envoy holds them), so
//! `story.rs`, `peers.rs`, `tunnels.rs`, `hostile.rs` and `cardinality.rs` are the wasm
//! suite's files themselves, compiled here too: each scenario is written once.
//!
//! The module is found through `WAYPOINT_NATIVE_SO`, else
//! `<workspace>/target/release/libwaypoint_native.so`; when it is missing every test fails
//! and says how to build it.
//!
//! - `story` (shared): the seed's five steps, one test each; `story_native` the duration.
//! - `peers` (shared): every baggage form, the legacy header, the switch, hostile input, gRPC.
//! - `cardinality` (shared): one series per label set, `max_label_sets`.
//! - `robustness`: bad configuration refused; the module misusing the ABI fails a test.
//! - `hostile` (shared): forged namespaces, floods, bleeding channels.
//! - `tunnels` (shared): which tunnel's peer a response is labelled with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod harness;
#[path = "../../../wasm-tests/tests/waypoint/legacy_header.rs"]
mod legacy_header;

#[path = "../../../wasm-tests/tests/waypoint/cardinality.rs"]
mod cardinality;
#[path = "../../../wasm-tests/tests/waypoint/hostile.rs"]
mod hostile;
#[path = "../../../wasm-tests/tests/waypoint/peers.rs"]
mod peers;
mod robustness;
#[path = "../../../wasm-tests/tests/waypoint/story.rs"]
mod story;
mod story_native;
#[path = "../../../wasm-tests/tests/waypoint/tunnels.rs"]
mod tunnels;
