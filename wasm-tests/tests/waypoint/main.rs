//! Scenario tests of the BUILT waypoint module (`dist/waypoint.wasm`) in the mocked Envoy host.
//!
//! Everything goes through the real wasm binary and the real proxy-wasm SDK: one VM per
//! worker (`vm_id` "waypoint") with the three roots Envoy configures (`downstream` on
//! connect_terminate, `upstream` on the tunnel cluster, `stats` on main_internal), driven in
//! Envoy's callback order with Envoy 1.40's property formats. See `harness.rs` for how each
//! Envoy step is mirrored.
//!
//! The module is found through `WAYPOINT_WASM` (the Makefile points it at `dist/waypoint.wasm`),
//! else `<workspace>/target/wasm32-wasip1/release/waypoint.wasm`. When it is missing every
//! test fails and says how to build it.
//!
//! - `story`: the seed's five steps, one test each (shared with native-tests); `story_wasm`
//!   what of them only the proxy-wasm boundary shows.
//! - `peers`: every baggage form, the legacy header, the switch, hostile input, gRPC.
//! - `tunnels`: which tunnel's peer a response is labelled with.
//! - `robustness`: failing host calls, bad configuration.
//! - `cardinality`: one definition per label set, `max_label_sets`.
//! - `hostile`: what an attacker tried: forged namespaces, floods, bleeding channels.
//! - `cost`: host calls and VM entries per request and per CONNECT (a budget, not a timing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod harness;
mod legacy_header;

mod cardinality;
mod cost;
mod hostile;
mod peers;
mod robustness;
mod story;
mod story_wasm;
mod tunnels;
