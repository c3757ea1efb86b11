//! Double HBONE: an outer CONNECT (pooled) to the east-west gateway of the
//! destination's network, and inside that stream a second, unpooled mTLS +
//! HTTP/2 connection to the destination pod's ztunnel carrying the inner
//! CONNECT. The gateway sees only the outer headers and TLS records; the inner
//! identity is checked end to end.

use bytes::Bytes;
use http::{Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http2;
use crate::metrics::Refusal;
use crate::pool::{self, PoolError, PoolKey, Slot, Stream};
use crate::shim::Context;
use crate::tls::{self, HandshakeFailure, TlsError};
use crate::tunnel::{self, H2Io};

#[derive(Debug, thiserror::Error)]
pub enum DoubleHboneError {
    #[error("outer CONNECT to the east-west gateway: {0}")]
    Outer(#[from] PoolError),
    #[error("east-west gateway answered {0}")]
    GatewayStatus(StatusCode),
    #[error("inner TLS handshake with the destination: {0}")]
    InnerHandshake(std::io::Error),
    #[error("inner HTTP/2 with the destination: {0}")]
    InnerHttp2(#[from] h2::Error),
    #[error("inner credentials: {0}")]
    Credentials(#[from] TlsError),
}

impl DoubleHboneError {
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Outer(e) => e.refusal(),
            Self::GatewayStatus(_) => Refusal::UpstreamStatus,
            Self::InnerHandshake(e) => Refusal::Handshake(HandshakeFailure::classify(e)),
            Self::InnerHttp2(_) => Refusal::UpstreamHttp2,
            Self::Credentials(_) => Refusal::UpstreamUnreachable,
        }
    }
}

/// Opens both tunnels and returns the inner CONNECT's response (any status).
pub(crate) async fn open(
    ctx: &Context,
    gateway: &PoolKey,
    outer_request: Request<()>,
    inner_expected: &[String],
    inner_request: Request<()>,
) -> Result<Stream, DoubleHboneError> {
    let tuning = &ctx.tuning;
    let outer = ctx.pool.send(gateway, outer_request).await?;
    if outer.response.status() != StatusCode::OK {
        return Err(DoubleHboneError::GatewayStatus(outer.response.status()));
    }
    let (reader, writer) = tunnel::h2_stream(outer.send, outer.response.into_body(), tuning.splice_buffer);
    let config = ctx.credentials.client_config(&gateway.source, inner_expected)?;
    let tls =
        pool::tls_connect(config, H2Io { reader, writer }, tuning).await.map_err(DoubleHboneError::InnerHandshake)?;
    let peer_identity = tls::peer_identity(tls.get_ref().1).unwrap_or_default();
    let (sender, connection) = http2::client_handshake(tls, tuning).await?;
    tokio::spawn(drive_inner(connection, outer.slot, *tuning));
    let (response, send) = sender.ready().await?.send_request(inner_request, false)?;
    let response = response.await?;
    Ok(Stream { response, send, peer_identity, slot: None })
}

/// Polls the inner connection until its one stream is done; the outer stream's
/// pool slot is held until then.
async fn drive_inner<T>(
    mut connection: h2::client::Connection<T, Bytes>,
    outer: Option<Slot>,
    tuning: crate::tuning::Tuning,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let keepalive = http2::keepalive(connection.ping_pong(), tuning);
    tokio::select! {
        result = &mut connection => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "inner HBONE connection failed");
            }
        }
        () = keepalive => tracing::debug!("inner HBONE keepalive failed"),
    }
    drop(outer);
}
