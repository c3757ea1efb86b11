//! Every tuning value of the shim, each with the reason for it. Defaults are
//! ztunnel's (src/config.rs, src/proxy/h2*.rs); tests shrink the timers.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Per-stream HTTP/2 receive window: 4 MiB keeps one tunnel at full speed on a
    /// fast path without letting one stream buffer more than that.
    pub stream_window: u32,
    /// Per-connection window, 4× the stream window: a stream whose reader stalls
    /// cannot take the whole connection window from the streams sharing it.
    pub connection_window: u32,
    /// Largest DATA frame we accept: 1 MiB frames cut per-frame overhead on bulk copies.
    pub max_frame: u32,
    /// Streams a client may open on one inbound connection (hyper's default, as ztunnel).
    pub server_max_concurrent_streams: u32,
    /// Streams the outbound pool puts on one connection before opening another
    /// (Go's and the spec's recommended minimum); spreads load over connections.
    pub pool_max_streams_per_connection: usize,
    /// Largest header block accepted by the inbound side: CONNECT headers are
    /// small, so 64 KiB is plenty and bounds what a hostile peer makes us hold.
    pub server_max_header_list: u32,
    /// Largest header block accepted on responses to our CONNECTs.
    pub client_max_header_list: u32,
    /// Data the inbound side queues per stream before making the writer wait (hyper's 400 KiB).
    pub server_max_send_buffer: usize,
    /// Data the outbound side queues per stream: one window, filled then flushed in one go.
    pub client_max_send_buffer: usize,
    /// Bytes read from a TCP socket before they are handed to the tunnel, and the largest
    /// write into an HTTP/2 stream: bounds the memory of each direction of each tunnel.
    /// 256 KiB, ztunnel's largest copy buffer: a bulk copy moves in fewer, larger DATA
    /// frames and wake-ups (one tunnel went from 0.34–0.37× to 0.43–0.49× a plain TLS
    /// stream against 64 KiB, `cargo bench -p host-shim --bench tunnel`).
    pub splice_buffer: usize,
    /// A PING every 10 s finds dead peers on idle connections ...
    pub ping_interval: Duration,
    /// ... and 20 s without the PONG closes the connection.
    pub ping_timeout: Duration,
    /// A pooled connection unused for 5 min is closed: keeps idle sockets bounded.
    pub pool_idle_timeout: Duration,
    /// TCP connects to apps and HBONE peers: fail a dead destination instead of hanging
    /// (ztunnel's CONNECTION_TIMEOUT). Concurrent callers for one HBONE peer share one
    /// connect, so a dead peer costs each of them at most this (plus the TLS handshake).
    pub connect_timeout: Duration,
    /// TLS handshakes: a peer that opens a socket and says nothing is dropped.
    pub handshake_timeout: Duration,
    /// From the end of TLS to the client's HTTP/2 preface: a client that finishes TLS
    /// and then says nothing is dropped. ztunnel has none; 10 s is Go's x/net/http2
    /// `prefaceTimeout`, and a real client sends its preface in the same flight as its
    /// TLS Finished.
    pub h2_handshake_timeout: Duration,
    /// An inbound connection with no open stream for this long is closed (GOAWAY).
    /// ztunnel has none (it relies on PING and TCP keepalive, which a live but idle
    /// peer answers); twice ztunnel's 5 min pool release, so a real client always retires
    /// its idle pooled connection first and never races our close, yet a peer that opens
    /// connections and never uses them cannot hold them forever. Streams that are open
    /// keep the connection alive however quiet they are: a tunnel is never cut.
    pub idle_connection_timeout: Duration,
    /// After SIGTERM, how long open tunnels may finish before the shim closes them
    /// (ztunnel's 5 s connection termination deadline).
    pub drain_deadline: Duration,
    /// Largest request the admin endpoint reads (it serves only GET /metrics, /ready).
    pub admin_max_request: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame: 1024 * 1024,
            server_max_concurrent_streams: 200,
            pool_max_streams_per_connection: 100,
            server_max_header_list: 64 * 1024,
            client_max_header_list: 16 * 1024,
            server_max_send_buffer: 400 * 1024,
            client_max_send_buffer: 4 * 1024 * 1024,
            splice_buffer: 256 * 1024,
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(20),
            pool_idle_timeout: Duration::from_secs(5 * 60),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            h2_handshake_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(10 * 60),
            drain_deadline: Duration::from_secs(5),
            admin_max_request: 8 * 1024,
        }
    }
}
