//! The waypoint module: one VM per Envoy worker, one root context per role.
//!
//! | root_id      | where                                                 | role                    |
//! |--------------|-------------------------------------------------------|-------------------------|
//! | `downstream` | HTTP filter on connect_terminate (the HBONE CONNECT)  | `roles::Downstream`       |
//! | `upstream`   | upstream HTTP filter on the tunnel cluster            | `roles::Upstream`         |
//! | `stats`      | HTTP filter on main_internal (the inner requests)     | `roles::Stats`            |
//!
//! Every role is written against `waypoint_core::host`; this crate only maps
//! those traits onto proxy-wasm host calls and keeps the per-worker state.
//! The host calls exist for wasm only; natively only [`wire`], the proxy-wasm
//! value formats, is built (for its tests and the fuzz targets). The logic is
//! tested in waypoint-core, the module in wasm-tests.

pub mod wire;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod envoy;
#[cfg(target_arch = "wasm32")]
mod module;
