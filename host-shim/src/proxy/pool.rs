//! The outbound connection pool: mTLS + HTTP/2 connections to HBONE peers,
//! shared by up to `pool_max_streams_per_connection` CONNECT streams each, per
//! (source identity, destination, expected identities) — ztunnel's WorkloadKey.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use parking_lot::{Mutex, MutexGuard};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use super::{Error, HboneStream, http2};
use crate::drain;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::tls::{self, Credentials};
use crate::tuning::Tuning;

/// Which connections may carry a stream: ztunnel's WorkloadKey.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The client workload's identity, presented as our certificate.
    pub source: Identity,
    /// The client workload's address, bound as the connection's source (its pod IP).
    pub source_address: IpAddr,
    /// The HBONE endpoint: a pod's ztunnel, a waypoint or an east-west gateway.
    pub destination: SocketAddr,
    /// The identities the destination may present.
    pub expected: Vec<Identity>,
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

/// The outcome of a connect in flight, once known; every waiting caller reads it.
type Pending = watch::Receiver<Option<Result<(), Arc<Error>>>>;

/// The connections of one key, and the connect in flight for it (at most one).
#[derive(Default)]
struct Entry {
    connections: Vec<Arc<Connection>>,
    connecting: Option<Pending>,
}

struct PoolInner {
    credentials: Arc<Credentials>,
    metrics: Arc<Metrics>,
    tuning: Tuning,
    drain: drain::Watcher,
    /// Never held across an await: a slow connect blocks no other key, and no caller.
    entries: Mutex<HashMap<PoolKey, Entry>>,
    next_id: AtomicU64,
}

impl PoolInner {
    fn entries(&self) -> MutexGuard<'_, HashMap<PoolKey, Entry>> {
        // The map stays consistent even if a holder panicked: every update is one step.
        self.entries.lock()
    }
}

struct Connection {
    id: u64,
    sender: SendRequest<Bytes>,
    peer_identity: Option<Identity>,
    max_streams: usize,
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
    closed: AtomicBool,
}

impl Connection {
    fn try_reserve(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self
                .active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_streams).then_some(n + 1))
                .is_ok()
    }

    /// When this connection, idle now, becomes idle for too long.
    fn idle_deadline(&self, timeout: std::time::Duration) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(*self.idle_since.lock() + timeout)
    }
}

/// One stream's place on a pooled connection; freed on drop.
pub struct Slot(Arc<Connection>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock() = Instant::now();
        }
    }
}

impl Pool {
    pub fn new(credentials: Arc<Credentials>, metrics: Arc<Metrics>, tuning: Tuning, drain: drain::Watcher) -> Self {
        let inner =
            PoolInner { credentials, metrics, tuning, drain, entries: Mutex::default(), next_id: AtomicU64::new(0) };
        Self { inner: Arc::new(inner) }
    }

    /// Sends a CONNECT on a pooled connection to `key.destination`, opening one if
    /// every connection is at its stream limit. Returns once the response headers
    /// arrived: the response (any status) and the stream, holding its slot.
    pub async fn send(
        &self,
        key: &PoolKey,
        request: http::Request<()>,
    ) -> Result<(http::response::Parts, HboneStream), Error> {
        let slot = self.checkout(key).await?;
        let connection = slot.0.clone();
        let fail = |e: h2::Error| {
            if e.is_go_away() || e.is_io() {
                connection.closed.store(true, Ordering::Release);
            }
            Error::PeerHttp2(key.destination, e)
        };
        let mut sender = connection.sender.clone().ready().await.map_err(fail)?;
        let (response, send) = sender.send_request(request, false).map_err(fail)?;
        let response = response.await.map_err(fail)?;
        self.inner.metrics.pool_streams_opened.inc();
        let (response, recv) = response.into_parts();
        let stream = HboneStream::new(send, recv, self.inner.tuning.splice_buffer)
            .with_peer(connection.peer_identity.clone(), Some(slot));
        Ok((response, stream))
    }

    /// A slot on a connection with room, joining (or starting) the one connect in
    /// flight for this key when there is none: N callers to a dead peer wait for one
    /// connect, not N in a row.
    async fn checkout(&self, key: &PoolKey) -> Result<Slot, Error> {
        loop {
            let mut pending = {
                let mut entries = self.inner.entries();
                let entry = entries.entry(key.clone()).or_default();
                entry.connections.retain(|c| !c.closed.load(Ordering::Acquire));
                if let Some(connection) = entry.connections.iter().find(|c| c.try_reserve()) {
                    return Ok(Slot(connection.clone()));
                }
                match &entry.connecting {
                    Some(pending) => pending.clone(),
                    None => {
                        let pending = self.start_connect(key.clone());
                        entry.connecting = Some(pending.clone());
                        pending
                    }
                }
            };
            let outcome = match pending.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone(),
                Err(_) => return Err(Error::Abandoned(key.destination)),
            };
            match outcome {
                // A new connection is in the pool: race for its slots.
                Some(Ok(())) => continue,
                Some(Err(e)) => return Err(Error::Shared(e)),
                None => return Err(Error::Abandoned(key.destination)),
            }
        }
    }

    /// Connects in a task of its own, so a caller that gives up does not cancel the
    /// connect the others wait for; the result lands in the pool before they hear of it.
    fn start_connect(&self, key: PoolKey) -> Pending {
        let (done, pending) = watch::channel(None);
        let pool = self.clone();
        tokio::spawn(async move {
            let result = pool.connect(&key).await;
            let outcome = {
                let mut entries = pool.inner.entries();
                let entry = entries.entry(key).or_default();
                entry.connecting = None;
                match result {
                    Ok(connection) => {
                        entry.connections.push(connection);
                        Ok(())
                    }
                    Err(e) => Err(Arc::new(e)),
                }
            };
            let _ = done.send(Some(outcome));
        });
        pending
    }

    async fn connect(&self, key: &PoolKey) -> Result<Arc<Connection>, Error> {
        let tuning = &self.inner.tuning;
        self.inner.metrics.pool_connect_attempts.inc();
        let tcp = connect_from(key.source_address, key.destination, tuning).await?;
        let config = self.inner.credentials.client_config(key.source.as_str(), &key.expected)?;
        let tls = tls_connect(config, tcp, tuning).await.map_err(|e| Error::Handshake(key.destination, e))?;
        let peer_identity = tls::peer_identity(tls.get_ref().1);
        let (sender, connection) =
            http2::client_handshake(tls, tuning).await.map_err(|e| Error::PeerHttp2(key.destination, e))?;
        let max_streams = tuning.pool_max_streams_per_connection.min(connection.max_concurrent_send_streams()).max(1);
        let pooled = Arc::new(Connection {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            sender,
            peer_identity,
            max_streams,
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
        });
        self.inner.metrics.pool_connections.inc();
        self.inner.metrics.pool_connections_opened.inc();
        tracing::debug!(destination = %key.destination, id = pooled.id, "pooled HBONE connection opened");
        tokio::spawn(drive(connection, Arc::downgrade(&pooled), key.clone(), self.clone()));
        Ok(pooled)
    }

    /// Stops handing out a connection; it closes once its last stream ends. Never
    /// waits, so the caller keeps driving the connection.
    fn release(&self, key: &PoolKey, id: u64) {
        let mut entries = self.inner.entries();
        if let Some(entry) = entries.get_mut(key) {
            entry.connections.retain(|c| c.id != id);
            if entry.connections.is_empty() && entry.connecting.is_none() {
                entries.remove(key);
            }
        }
    }
}

/// Polls a pooled connection until it ends; releases it from the pool when
/// idle too long, on drain, or when its keepalive fails. Closes it at the drain deadline.
async fn drive<T>(mut connection: h2::client::Connection<T, Bytes>, pooled: Weak<Connection>, key: PoolKey, pool: Pool)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let tuning = pool.inner.tuning;
    let drain = pool.inner.drain.clone();
    let keepalive = http2::keepalive(connection.ping_pong(), tuning);
    tokio::pin!(keepalive);
    let id = pooled.upgrade().map(|c| c.id).unwrap_or_default();
    let mut released = false;
    loop {
        let idle_deadline = pooled.upgrade().and_then(|c| c.idle_deadline(tuning.pool_idle_timeout));
        let wake = idle_deadline.unwrap_or_else(|| Instant::now() + tuning.pool_idle_timeout);
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    tracing::debug!(destination = %key.destination, error = %e, "pooled HBONE connection failed");
                }
                break;
            }
            () = &mut keepalive => break,
            () = drain.draining(), if !released => {
                released = true;
                pool.release(&key, id);
            }
            () = drain.forced() => break,
            () = tokio::time::sleep_until(wake.into()), if !released => {
                if idle_deadline.is_some_and(|deadline| deadline <= Instant::now()) {
                    tracing::debug!(destination = %key.destination, id, "idle pooled HBONE connection dropped");
                    released = true;
                    pool.release(&key, id);
                }
            }
        }
    }
    if let Some(c) = pooled.upgrade() {
        c.closed.store(true, Ordering::Release);
    }
    pool.release(&key, id);
    pool.inner.metrics.pool_connections.dec();
}

/// A TCP connection from `source` (the client's pod IP) with the connect timeout.
pub async fn connect_from(source: IpAddr, destination: SocketAddr, tuning: &Tuning) -> Result<TcpStream, Error> {
    let fail = |e| Error::Connect(destination, e);
    let socket = if destination.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(fail)?;
    if source.is_ipv4() == destination.is_ipv4() {
        socket.bind(SocketAddr::new(source, 0)).map_err(fail)?;
    }
    let stream = tokio::time::timeout(tuning.connect_timeout, socket.connect(destination))
        .await
        .map_err(|_| fail(std::io::ErrorKind::TimedOut.into()))?
        .map_err(fail)?;
    stream.set_nodelay(true).map_err(fail)?;
    Ok(stream)
}

/// The client side of an HBONE TLS handshake, with the handshake timeout.
pub async fn tls_connect<T>(
    config: Arc<rustls::ClientConfig>,
    io: T,
    tuning: &Tuning,
) -> std::io::Result<tokio_rustls::client::TlsStream<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::time::timeout(tuning.handshake_timeout, connector.connect(tls::unused_server_name(), io))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}
