//! The waypoint as a native Envoy dynamic module (`libwaypoint_native.so`): the same
//! `waypoint-core` roles as the proxy-wasm module, over Envoy 1.40's dynamic-module
//! ABI instead of proxy-wasm host calls.
//!
//! | `filter_name` | where                                                    | role                  |
//! |---------------|----------------------------------------------------------|-----------------------|
//! | `downstream`  | HTTP filter on connect_terminate (the HBONE CONNECT)     | `roles::Downstream`   |
//! | `upstream`    | upstream HTTP filter on the tunnel clusters              | `roles::Upstream`     |
//! | `stats`       | HTTP filter on main_internal (the inner requests)        | `roles::Stats`        |
//! | `noop`        | anywhere: does nothing (the benchmark's floor)           | —                     |
//!
//! `filter_config` is the plugin configuration JSON the wasm module takes.
//!
//! - [`abi`]: the ABI's declarations and exported hooks, the only module allowed raw pointers;
//! - [`module`]: roles, per-worker state, the start-up self-check;
//! - [`envoy`]: `waypoint_core::host` over the ABI, labelled metrics.

mod abi;
mod envoy;
mod module;
