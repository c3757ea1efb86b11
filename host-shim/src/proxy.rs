//! The proxy: ztunnel's two sides of a tunnel and what they share. The children
//! import this parent (the context, the error, the stream), never each other in a
//! circle: inbound and outbound use the pool, the tunnel and HTTP/2 below them.
//!
//! - [`inbound`]: `<pod ip>:15008`, each CONNECT checked, answered and spliced to the app;
//! - [`outbound`]: an app connection becomes a CONNECT to the next hop, double HBONE included;
//! - [`pool`]: pooled outbound HBONE connections;
//! - [`tunnel`]: the halves of an HTTP/2 stream as bytes, the splice, how a tunnel ended;
//! - [`http2`]: HTTP/2 with ztunnel's settings, and the PING keepalive.

pub mod http2;
pub mod inbound;
pub mod outbound;
pub mod pool;
pub mod tunnel;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::StatusCode;
use mesh::Mesh;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use waypoint_core::Limits;

use crate::identity::Identity;
use crate::metrics::{Metrics, Refusal};
use crate::tls::{Credentials, HandshakeFailure, TlsError};
use crate::tuning::Tuning;
use pool::{Pool, Slot};
use tunnel::{H2Reader, H2Writer};

/// What every listener and connection task shares.
pub(crate) struct Context {
    pub mesh: Arc<Mesh>,
    pub credentials: Arc<Credentials>,
    pub metrics: Arc<Metrics>,
    pub pool: Pool,
    pub tuning: Tuning,
    pub limits: Limits,
}

/// Why a connection, a CONNECT or a tunnel failed, on either side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
    #[error("connecting to the app at {0}: {1}")]
    App(SocketAddr, io::Error),
    #[error("response: {0}")]
    Response(http::Error),
    #[error("no route: {0}")]
    NoRoute(&'static str),
    #[error("building the CONNECT request: {0}")]
    Request(http::Error),
    #[error("CONNECT answered {0}")]
    Status(StatusCode),
    #[error("TCP connect to {0} failed: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Handshake(SocketAddr, io::Error),
    #[error("HTTP/2 with {0} failed: {1}")]
    PeerHttp2(SocketAddr, h2::Error),
    #[error("no client credentials: {0}")]
    Credentials(#[from] TlsError),
    /// The connect this caller waited for, shared with the other callers, failed.
    #[error("{0}")]
    Shared(Arc<Error>),
    #[error("the connect to {0} was abandoned")]
    Abandoned(SocketAddr),
    #[error("outer CONNECT to the east-west gateway: {0}")]
    Outer(Box<Error>),
    #[error("east-west gateway answered {0}")]
    GatewayStatus(StatusCode),
    #[error("inner TLS handshake with the destination: {0}")]
    InnerHandshake(io::Error),
    #[error("inner HTTP/2 with the destination: {0}")]
    InnerHttp2(h2::Error),
    #[error("closed at the drain deadline")]
    Drained,
}

impl Error {
    /// The refusal counter this failure counts in; `None` for one that is no refusal
    /// (the tunnel was up, or the drain closed it).
    pub fn refusal(&self) -> Option<Refusal> {
        Some(match self {
            Self::NoRoute(_) | Self::Request(_) => Refusal::NoRoute,
            Self::App(..) => Refusal::AppUnreachable,
            Self::Status(_) | Self::GatewayStatus(_) => Refusal::UpstreamStatus,
            Self::Connect(..) | Self::Credentials(_) | Self::Abandoned(_) => Refusal::UpstreamUnreachable,
            Self::Handshake(_, e) | Self::InnerHandshake(e) => Refusal::Handshake(HandshakeFailure::classify(e)),
            Self::PeerHttp2(..) | Self::InnerHttp2(_) => Refusal::UpstreamHttp2,
            Self::Shared(e) => return e.refusal(),
            Self::Outer(e) => return e.refusal(),
            Self::Http2(_) | Self::Response(_) | Self::Drained => return None,
        })
    }
}

/// An open HBONE stream: one HTTP/2 stream as a duplex byte stream, the identity
/// its peer's certificate verified, and, outbound on a pooled connection, the slot
/// it occupies there until dropped. The one stream type of the proxy: both sides
/// splice it, and double HBONE runs its inner TLS connection over it.
pub struct HboneStream {
    reader: H2Reader,
    writer: H2Writer,
    peer_identity: Option<Identity>,
    slot: Option<Slot>,
}

impl HboneStream {
    /// `max_write` bounds one write, so it never waits for more window than exists.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream, max_write: usize) -> Self {
        Self { reader: H2Reader::new(recv), writer: H2Writer::new(send, max_write), peer_identity: None, slot: None }
    }

    /// Halves split off another stream, joined again (double HBONE's inner transport).
    pub fn from_halves(reader: H2Reader, writer: H2Writer) -> Self {
        Self { reader, writer, peer_identity: None, slot: None }
    }

    pub(crate) fn with_peer(mut self, peer_identity: Option<Identity>, slot: Option<Slot>) -> Self {
        self.peer_identity = peer_identity;
        self.slot = slot;
        self
    }

    /// The peer's verified SPIFFE identity (the inner one, for double HBONE).
    pub fn peer_identity(&self) -> Option<&Identity> {
        self.peer_identity.as_ref()
    }

    /// The halves to splice, and the pool slot to hold until the splice ends.
    pub fn into_split(self) -> (H2Reader, H2Writer, Option<Slot>) {
        (self.reader, self.writer, self.slot)
    }
}

impl AsyncRead for HboneStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for HboneStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}
