//! Host-agnostic waypoint logic: no proxy-wasm, no I/O.
//!
//! - [`peer`]: the peer model and SPIFFE identities;
//! - [`baggage`]: the HBONE `baggage` header, every form ztunnel and Envoy write;
//! - [`legacy`]: the sidecar-era `x-envoy-peer-metadata` header;
//! - [`endpoint`]: Istio's endpoint metadata, the destination's last discovery method;
//! - [`labels`]: Istio's waypoint metric labels and their stat-name encoding;
//! - [`response_flags`]: Envoy's response flag bits as short strings;
//! - [`config`]: the plugin configuration;
//! - [`discovery`]: who the two peers are, an ordered list of methods per side;
//! - [`propagation`]: our own `baggage` on the upstream CONNECT and the CONNECT 200;
//! - [`stats`]: the facts of one request, recorded with both peers;
//! - [`contract`]: every name and format shared with the Envoy configs;
//! - [`host`]: the small traits the roles need from the proxy;
//! - [`roles`]: what each of the module's three filters does, composed of the above;
//! - [`worker`]: per-worker state: tunnel table, interned peers, metric ids;
//! - [`value`]: what a label value taken from the network may contain.

pub mod baggage;
pub mod config;
pub mod contract;
pub mod discovery;
pub mod endpoint;
pub mod host;
pub mod labels;
pub mod legacy;
pub mod peer;
pub mod propagation;
pub mod response_flags;
pub mod roles;
pub mod stats;
pub mod value;
pub mod worker;

pub use config::{Limits, PluginConfig};
pub use labels::{Labels, RequestFacts, RoutedService};
pub use peer::{Decoded, Peer, SpiffeId, WorkloadType};
