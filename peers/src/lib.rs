//! Independent HBONE peers for the end-to-end tests: an HBONE client and an HBONE
//! destination written directly against `h2` and `rustls`. They share no code, codec
//! or constant with the product (no waypoint-core, no host-shim): every header they
//! send is a literal the caller wrote, and what they receive is recorded raw, so a
//! test checks the waypoint against a peer nobody here derived from it.
//!
//! - [`HboneClient`]: mTLS to a peer's :15008, `CONNECT` with exactly the caller's
//!   headers, the answer and a byte stream the caller ends cleanly or resets.
//! - [`HboneDestination`]: a pod's :15008; answers with a literal `baggage` or none
//!   (or 503), splices to the app, and records how every stream ended.

pub mod client;
pub mod destination;
pub mod stream;
pub mod tls;

pub use client::{ClientError, HboneClient, Tunnel};
pub use destination::{Answer, DestinationConfig, DestinationError, Handshakes, HboneDestination, StreamRecord};
pub use stream::{End, TunnelStream};
pub use tls::{TlsError, TlsFiles};

/// ztunnel's HTTP/2 flow-control settings (PROTOCOL.md §1), so the peers pace data as it does.
mod window {
    /// 4 MiB per stream.
    pub const STREAM: u32 = 4 * 1024 * 1024;
    /// 16 MiB per connection.
    pub const CONNECTION: u32 = 16 * 1024 * 1024;
    /// 1 MiB frames.
    pub const MAX_FRAME: u32 = 1024 * 1024;
}
