//! host-shim: a stand-in for Istio ztunnel's HBONE endpoints, speaking its wire
//! format (PROTOCOL.md §1–2) so a real ztunnel, waypoint or east-west gateway
//! can sit on the other end. The mesh file and the CA are the `mesh` crate's; the
//! Envoy configs are rendered by `envoy-config` (the binary's `*-config` commands).
//!
//! - [`tls`]: mTLS with SPIFFE identities;
//! - [`http2`]: HTTP/2 with ztunnel's settings and keepalive;
//! - [`tunnel`]: a stream as bytes, the splice, and how a tunnel ended;
//! - [`pool`]: pooled outbound HBONE connections;
//! - [`inbound`], [`outbound`], [`double_hbone`]: the two sides of a tunnel;
//! - [`metrics`]: `istio_tcp_*`, `istio_build`, refusal and identity-mismatch
//!   counters, and the per-connection record; [`admin`] serves them;
//! - [`shim`]: one node's shim, started and drained as a unit;
//! - [`tuning`]: every tuning value, with its reason; [`drain`]: graceful shutdown,
//!   then a forced close at the deadline.

pub mod admin;
pub mod double_hbone;
pub mod drain;
pub mod http2;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod shim;
pub mod tls;
pub mod tuning;
pub mod tunnel;

pub use shim::{Shim, ShimOptions};
