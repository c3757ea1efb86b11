//! An HBONE client: one mTLS + HTTP/2 connection to a peer's :15008, CONNECT
//! streams on it carrying exactly the headers the caller wrote.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use tokio::net::TcpStream;

use crate::stream::TunnelStream;
use crate::tls::{self, TlsError, TlsFiles};
use crate::window;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Response headers of a CONNECT are small; more is the peer misbehaving.
const MAX_HEADER_LIST: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("TCP connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS handshake with {0}: {1}")]
    Handshake(SocketAddr, std::io::Error),
    #[error("the server chose ALPN {0:?}, not h2")]
    Alpn(Option<String>),
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("header {0:?} is not a valid HTTP/2 header name or value")]
    Header(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// The answer to a CONNECT and, when it was 200, the tunnel's bytes.
pub struct Tunnel {
    pub status: u16,
    /// Response headers in arrival order (names lower case, values raw bytes).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The stream; after a non-200 answer it is already ended by the server.
    pub stream: TunnelStream,
}

impl Tunnel {
    /// The first value of response header `name`, lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// One mTLS + HTTP/2 connection; each [`HboneClient::connect`] is a new stream on it.
/// The connection closes (GOAWAY) once the client and every tunnel are dropped.
pub struct HboneClient {
    sender: h2::client::SendRequest<Bytes>,
    server_identities: Vec<String>,
}

impl HboneClient {
    /// Dials `addr` with the client identity in `files`; checks the server's URI SAN
    /// against `server_identity` when given (the chain is always checked against the root).
    pub async fn dial(addr: SocketAddr, files: &TlsFiles, server_identity: Option<&str>) -> Result<Self, ClientError> {
        let config = tls::client_config(files, server_identity)?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(CONNECT_TIMEOUT))?
            .map_err(|e| ClientError::Connect(addr, e))?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(tls::unused_server_name(), tcp))
            .await
            .map_err(|_| ClientError::Timeout(CONNECT_TIMEOUT))?
            .map_err(|e| ClientError::Handshake(addr, e))?;
        let session = tls.get_ref().1;
        if session.alpn_protocol() != Some(b"h2") {
            return Err(ClientError::Alpn(session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())));
        }
        let server_identities = tls::peer_uris(session);
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(window::STREAM)
            .initial_connection_window_size(window::CONNECTION)
            .max_frame_size(window::MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender, server_identities })
    }

    /// The URI SANs the server presented.
    pub fn server_identities(&self) -> &[String] {
        &self.server_identities
    }

    /// Sends `CONNECT authority` with exactly `headers`, in that order, and waits for the answer.
    pub async fn connect(&self, authority: &str, headers: &[(&str, &str)]) -> Result<Tunnel, ClientError> {
        let mut request = Request::builder().method(Method::CONNECT).uri(authority);
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| ClientError::Header((*name).to_owned()))?;
            let value = HeaderValue::from_str(value).map_err(|_| ClientError::Header(name.to_string()))?;
            request = request.header(name, value);
        }
        let request = request.body(())?;
        let (response, send) = self.sender.clone().ready().await?.send_request(request, false)?;
        let response = tokio::time::timeout(CONNECT_TIMEOUT, response)
            .await
            .map_err(|_| ClientError::Timeout(CONNECT_TIMEOUT))??;
        let (parts, recv) = response.into_parts();
        let headers =
            parts.headers.iter().map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec())).collect();
        Ok(Tunnel { status: parts.status.as_u16(), headers, stream: TunnelStream::new(send, recv) })
    }
}
