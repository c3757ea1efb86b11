//! An HBONE destination: a pod's :15008 as a ztunnel serves it. mTLS with the pod's
//! certificate (client certificates from the mesh root required), CONNECT only to the
//! authorities it serves (400 otherwise), 200 with a literal `baggage` or none (or 503
//! without baggage), then the stream spliced to the app. Every stream is recorded:
//! how each direction ended (END_STREAM or RST_STREAM with its code) and its bytes.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::stream::{End, end_of};
use crate::tls::{self, TlsError, TlsFiles};
use crate::window;

/// A peer that never finishes its handshake or its CONNECT must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error answer, how long to watch the client's side end.
const ERROR_LINGER: Duration = Duration::from_secs(5);
const SPLICE_BUFFER: usize = 64 * 1024;
/// ztunnel's server limit on concurrent streams.
const MAX_CONCURRENT_STREAMS: u32 = 200;
/// A CONNECT's headers are a few hundred bytes; a peer sending more is refused by h2.
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Streams recorded at most; later ones are served but only counted in `Handshakes::unrecorded`.
const MAX_RECORDS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("listening on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// What a CONNECT to a served authority is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Connect to the app, then 200 with this literal `baggage` header (or none).
    Ok { baggage: Option<String> },
    /// 503 without baggage (ztunnel's answer when the app cannot be reached), app not dialled.
    Unavailable,
}

#[derive(Debug, Clone)]
pub struct DestinationConfig {
    /// `<pod ip>:15008`.
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    /// Accepted `:authority` values, each with the app address its streams are spliced to.
    pub routes: Vec<(String, SocketAddr)>,
    pub answer: Answer,
}

impl DestinationConfig {
    /// Serves nothing yet and answers 200 without baggage.
    pub fn new(listen: SocketAddr, tls: TlsFiles) -> Self {
        Self { listen, tls, routes: Vec::new(), answer: Answer::Ok { baggage: None } }
    }

    /// Accepts `<listen ip>:<port>` and splices it to the app at that address.
    pub fn serve_port(mut self, port: u16) -> Self {
        let app = SocketAddr::new(self.listen.ip(), port);
        self.routes.push((app.to_string(), app));
        self
    }

    /// Accepts `authority` (e.g. `<service host>:<port>`, the inner CONNECT of double HBONE)
    /// and splices it to `app`.
    pub fn serve_authority(mut self, authority: &str, app: SocketAddr) -> Self {
        self.routes.push((authority.to_owned(), app));
        self
    }

    /// Answers 200 with exactly this `baggage` value (`None`: no baggage header).
    pub fn baggage(mut self, baggage: Option<&str>) -> Self {
        self.answer = Answer::Ok { baggage: baggage.map(str::to_owned) };
        self
    }

    pub fn answer(mut self, answer: Answer) -> Self {
        self.answer = answer;
        self
    }
}

/// One CONNECT stream as the destination saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    pub method: String,
    pub authority: String,
    /// Request headers in arrival order (names lower case, values raw bytes).
    pub request_headers: Vec<(String, Vec<u8>)>,
    /// The URI SANs of the client's certificate.
    pub client_identities: Vec<String>,
    /// The answer's status (0 before it was sent).
    pub status: u16,
    /// How the client's direction ended (what a ztunnel reads as clean or an error).
    pub from_client: End,
    /// How our direction ended: END_STREAM once the app closed, or the client's reset of it.
    pub to_client: End,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    /// Both directions are over (or the stream was refused and has settled).
    pub finished: bool,
}

impl StreamRecord {
    /// Ended the way a finished client ends a tunnel: END_STREAM both ways, no reset.
    pub fn is_clean(&self) -> bool {
        self.from_client == End::EndStream && self.to_client == End::EndStream
    }

    /// The first value of request header `name`, lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.request_headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

struct Shared {
    routes: Vec<(String, SocketAddr)>,
    answer: Mutex<Answer>,
    records: Mutex<Vec<StreamRecord>>,
    handshakes: Mutex<Handshakes>,
}

/// TLS handshakes seen on the listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handshakes {
    pub accepted: u64,
    pub failed: u64,
    /// Streams past the record limit.
    pub unrecorded: u64,
}

impl Shared {
    fn push(&self, record: StreamRecord) -> usize {
        let mut records = self.records.lock();
        if records.len() >= MAX_RECORDS {
            self.handshakes.lock().unrecorded += 1;
            return usize::MAX;
        }
        records.push(record);
        records.len() - 1
    }

    fn update(&self, index: usize, change: impl FnOnce(&mut StreamRecord)) {
        if let Some(record) = self.records.lock().get_mut(index) {
            change(record);
        }
    }
}

/// A running destination; dropping it closes the listener and every connection.
pub struct HboneDestination {
    pub listen: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HboneDestination {
    pub async fn start(config: DestinationConfig) -> Result<Self, DestinationError> {
        let tls = tls::server_config(&config.tls)?;
        let listener = TcpListener::bind(config.listen).await.map_err(|e| DestinationError::Bind(config.listen, e))?;
        let shared = Arc::new(Shared {
            routes: config.routes,
            answer: Mutex::new(config.answer),
            records: Mutex::new(Vec::new()),
            handshakes: Mutex::new(Handshakes::default()),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept(listener, tokio_rustls::TlsAcceptor::from(tls), shared.clone(), stopped));
        Ok(Self { listen: config.listen, shared, stop, task })
    }

    /// Changes the answer for streams that arrive from now on.
    pub fn set_answer(&self, answer: Answer) {
        *self.shared.answer.lock() = answer;
    }

    /// Every stream so far, in arrival order.
    pub fn records(&self) -> Vec<StreamRecord> {
        self.shared.records.lock().clone()
    }

    pub fn handshakes(&self) -> Handshakes {
        *self.shared.handshakes.lock()
    }

    /// Polls [`Self::records`] until `done` holds or `timeout` passes; `Err` carries the
    /// last snapshot when it never held.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[StreamRecord]) -> bool,
    ) -> Result<Vec<StreamRecord>, Vec<StreamRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records();
            if done(&records) {
                return Ok(records);
            }
            if Instant::now() > deadline {
                return Err(records);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HboneDestination {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    stopped: watch::Receiver<bool>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        tokio::spawn(connection(tcp, acceptor.clone(), shared.clone(), stopped.clone()));
    }
}

async fn connection(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let count = |accepted: bool| {
        let mut h = shared.handshakes.lock();
        if accepted { h.accepted += 1 } else { h.failed += 1 }
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        _ => return count(false),
    };
    count(true);
    let client_identities = Arc::new(tls::peer_uris(tls.get_ref().1));
    let handshake = h2::server::Builder::new()
        .initial_window_size(window::STREAM)
        .initial_connection_window_size(window::CONNECTION)
        .max_frame_size(window::MAX_FRAME)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(tls);
    let Ok(Ok(mut h2)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await else { return };
    loop {
        tokio::select! {
            accepted = h2.accept() => match accepted {
                Some(Ok(request)) => {
                    tokio::spawn(stream(request, shared.clone(), client_identities.clone()));
                }
                Some(Err(_)) | None => break,
            },
            _ = stopped.changed() => break,
        }
    }
}

async fn stream(
    (request, mut respond): (Request<RecvStream>, SendResponse<Bytes>),
    shared: Arc<Shared>,
    client_identities: Arc<Vec<String>>,
) {
    let (parts, recv) = request.into_parts();
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    let index = shared.push(StreamRecord {
        method: parts.method.to_string(),
        authority: authority.clone(),
        request_headers: parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect(),
        client_identities: client_identities.to_vec(),
        status: 0,
        from_client: End::Open,
        to_client: End::Open,
        bytes_from_client: 0,
        bytes_to_client: 0,
        finished: false,
    });
    let route = shared.routes.iter().find(|(served, _)| *served == authority).map(|(_, app)| *app);
    let answer = shared.answer.lock().clone();
    let (app, baggage) = match (parts.method == Method::CONNECT, route, answer) {
        (false, ..) | (true, None, _) => return refuse(StatusCode::BAD_REQUEST, respond, recv, &shared, index).await,
        (true, Some(_), Answer::Unavailable) => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, respond, recv, &shared, index).await;
        }
        (true, Some(app), Answer::Ok { baggage }) => (app, baggage),
    };
    let app = match tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(app)).await {
        Ok(Ok(app)) => app,
        _ => return refuse(StatusCode::SERVICE_UNAVAILABLE, respond, recv, &shared, index).await,
    };
    let _ = app.set_nodelay(true);
    let mut ok = Response::builder().status(StatusCode::OK);
    if let Some(baggage) = &baggage {
        ok = ok.header("baggage", baggage.as_str());
    }
    let Ok(ok) = ok.body(()) else { return };
    let send = match respond.send_response(ok, false) {
        Ok(send) => send,
        Err(e) => return shared.update(index, |r| (r.to_client, r.finished) = (end_of(&e), true)),
    };
    shared.update(index, |r| r.status = 200);
    let (app_read, app_write) = app.into_split();
    let (from_client, to_client) =
        tokio::join!(client_to_app(recv, app_write, &shared, index), app_to_client(app_read, send, &shared, index));
    shared.update(index, |r| {
        r.from_client = from_client;
        r.to_client = to_client;
        r.finished = true;
    });
}

/// An error answer, without baggage and with END_STREAM; then how the client's side ends.
async fn refuse(
    status: StatusCode,
    mut respond: SendResponse<Bytes>,
    mut recv: RecvStream,
    shared: &Shared,
    index: usize,
) {
    let Ok(response) = Response::builder().status(status).body(()) else { return };
    let to_client = match respond.send_response(response, true) {
        Ok(_) => End::EndStream,
        Err(e) => end_of(&e),
    };
    shared.update(index, |r| (r.status, r.to_client) = (status.as_u16(), to_client));
    let from_client = match tokio::time::timeout(ERROR_LINGER, drain(&mut recv)).await {
        Ok(end) => end,
        Err(_) => End::Open,
    };
    shared.update(index, |r| (r.from_client, r.finished) = (from_client, true));
}

async fn drain(recv: &mut RecvStream) -> End {
    loop {
        match recv.data().await {
            Some(Ok(data)) => {
                let _ = recv.flow_control().release_capacity(data.len());
            }
            Some(Err(e)) => return end_of(&e),
            None => return End::EndStream,
        }
    }
}

/// Client bytes to the app; the client's END_STREAM half-closes the app connection.
async fn client_to_app(mut recv: RecvStream, mut app: OwnedWriteHalf, shared: &Shared, index: usize) -> End {
    loop {
        match recv.data().await {
            Some(Ok(data)) => {
                let n = data.len();
                if app.write_all(&data).await.is_err() {
                    // The app is gone: stop reading; the client learns it from our side's end.
                    return End::Lost("the app closed while the client was sending".into());
                }
                let _ = recv.flow_control().release_capacity(n);
                shared.update(index, |r| r.bytes_from_client += n as u64);
            }
            Some(Err(e)) => return end_of(&e),
            None => {
                let _ = app.shutdown().await;
                return End::EndStream;
            }
        }
    }
}

/// App bytes to the client; the app's EOF becomes END_STREAM. A reset of the stream by
/// the client (at any point before that) is what this direction records instead.
async fn app_to_client(mut app: OwnedReadHalf, mut send: SendStream<Bytes>, shared: &Shared, index: usize) -> End {
    let mut buf = vec![0u8; SPLICE_BUFFER];
    loop {
        tokio::select! {
            read = app.read(&mut buf) => match read {
                Ok(0) => {
                    return match send.send_data(Bytes::new(), true) {
                        Ok(()) => End::EndStream,
                        Err(e) => end_of(&e),
                    };
                }
                Ok(n) => {
                    let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                    if let Err(end) = send_all(&mut send, data).await {
                        return end;
                    }
                    shared.update(index, |r| r.bytes_to_client += n as u64);
                }
                Err(_) => {
                    // ztunnel resets the stream when the app connection fails.
                    send.send_reset(Reason::CANCEL);
                    return End::Lost("the app connection failed".into());
                }
            },
            reset = poll_fn(|cx| send.poll_reset(cx)) => {
                return match reset {
                    Ok(reason) => End::Reset(u32::from(reason)),
                    Err(e) => end_of(&e),
                };
            }
        }
    }
}

async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), End> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(0)) => continue,
            Some(Ok(granted)) => {
                let chunk = data.split_to(granted.min(data.len()));
                send.send_data(chunk, false).map_err(|e| end_of(&e))?;
            }
            Some(Err(e)) => return Err(end_of(&e)),
            None => {
                return Err(match poll_fn(|cx| send.poll_reset(cx)).await {
                    Ok(reason) => End::Reset(u32::from(reason)),
                    Err(e) => end_of(&e),
                });
            }
        }
    }
    Ok(())
}
