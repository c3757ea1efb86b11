//! HTTP/2 connections with ztunnel's settings, and the PING keepalive both
//! sides run.

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::tuning::Tuning;

pub async fn server_handshake<T>(io: T, tuning: &Tuning) -> Result<h2::server::Connection<T, Bytes>, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    h2::server::Builder::new()
        .initial_window_size(tuning.stream_window)
        .initial_connection_window_size(tuning.connection_window)
        .max_frame_size(tuning.max_frame)
        .max_concurrent_streams(tuning.server_max_concurrent_streams)
        .max_header_list_size(tuning.server_max_header_list)
        .max_send_buffer_size(tuning.server_max_send_buffer)
        .handshake(io)
        .await
}

pub async fn client_handshake<T>(
    io: T,
    tuning: &Tuning,
) -> Result<(SendRequest<Bytes>, h2::client::Connection<T, Bytes>), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    h2::client::Builder::new()
        .initial_window_size(tuning.stream_window)
        .initial_connection_window_size(tuning.connection_window)
        .max_frame_size(tuning.max_frame)
        .max_header_list_size(tuning.client_max_header_list)
        .max_send_buffer_size(tuning.client_max_send_buffer)
        .enable_push(false)
        .handshake(io)
        .await
}

/// Pings the peer every `ping_interval`; returns once a PONG is late by more
/// than `ping_timeout` or the ping fails. The connection must be polled
/// concurrently. Without a ping handle (already taken) it never returns.
pub async fn keepalive(ping_pong: Option<h2::PingPong>, tuning: Tuning) {
    let Some(mut ping_pong) = ping_pong else { return std::future::pending().await };
    loop {
        tokio::time::sleep(tuning.ping_interval).await;
        match tokio::time::timeout(tuning.ping_timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HBONE ping failed");
                return;
            }
            Err(_) => {
                tracing::debug!("HBONE ping timed out");
                return;
            }
        }
    }
}
