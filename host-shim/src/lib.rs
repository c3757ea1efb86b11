//! host-shim: a stand-in for Istio ztunnel's HBONE endpoints, speaking its wire
//! format (PROTOCOL.md §1–2) so a real ztunnel, waypoint or east-west gateway
//! can sit on the other end. The mesh file and the CA are the `mesh` crate's; the
//! Envoy configs are rendered by `envoy-config` (the binary's `*-config` commands).
//!
//! - [`proxy`]: the two sides of a tunnel (inbound, outbound with double HBONE), the
//!   pool, the stream as bytes and the splice, and what they share;
//! - [`tls`]: mTLS with SPIFFE identities; [`identity`]: identities and authorities as types;
//! - [`metrics`]: `istio_tcp_*`, `istio_build`, refusal and identity-mismatch
//!   counters, and the per-connection record; [`admin`] serves them;
//! - [`shim`]: one node's shim, started and drained as a unit;
//! - [`tuning`]: every tuning value, with its reason; [`drain`]: graceful shutdown,
//!   then a forced close at the deadline.

pub mod admin;
pub mod drain;
pub mod identity;
pub mod metrics;
pub mod proxy;
pub mod shim;
pub mod tls;
pub mod tuning;

pub use shim::{Shim, ShimOptions};
