//! One HBONE stream (an HTTP/2 CONNECT stream) as a byte stream, and how each
//! direction of it ended.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest slice offered to h2 at once, so one write never waits for more window than exists.
const MAX_WRITE: usize = 64 * 1024;

/// How one direction of a stream ended, as the receiving side of that direction saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Not ended yet.
    Open,
    /// END_STREAM: the sender finished cleanly.
    EndStream,
    /// RST_STREAM with this HTTP/2 error code (0 NO_ERROR, 8 CANCEL, 2 INTERNAL_ERROR, ...).
    Reset(u32),
    /// The connection went away under the stream (GOAWAY with an error, TCP closed, I/O error).
    Lost(String),
}

impl End {
    pub fn is_open(&self) -> bool {
        matches!(self, End::Open)
    }
}

/// What an `h2` error says about how the stream ended.
pub(crate) fn end_of(err: &h2::Error) -> End {
    match err.reason() {
        Some(reason) if err.is_reset() => End::Reset(u32::from(reason)),
        _ => End::Lost(err.to_string()),
    }
}

fn h2_to_io(err: h2::Error) -> io::Error {
    if err.is_io() { err.into_io().unwrap_or_else(|| io::ErrorKind::Other.into()) } else { io::Error::other(err) }
}

/// A tunnel's bytes: read what the peer sends (EOF on its END_STREAM, an error on
/// its RST_STREAM), write toward it; `shutdown` sends END_STREAM, [`TunnelStream::reset`]
/// sends RST_STREAM with a chosen code.
pub struct TunnelStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    chunk: Bytes,
    peer_end: Arc<Mutex<End>>,
    sent: u64,
    received: u64,
}

impl TunnelStream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self { send, recv, chunk: Bytes::new(), peer_end: Arc::new(Mutex::new(End::Open)), sent: 0, received: 0 }
    }

    /// Ends our direction abruptly: RST_STREAM with HTTP/2 error `code`.
    pub fn reset(&mut self, code: u32) {
        self.send.send_reset(Reason::from(code));
    }

    /// How the peer's direction ended, as far as reading has seen.
    pub fn peer_end(&self) -> End {
        self.peer_end.lock().clone()
    }

    /// Bytes written to the peer / read from the peer so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.sent, self.received)
    }

    fn set_peer_end(&self, end: End) {
        let mut slot = self.peer_end.lock();
        if slot.is_open() {
            *slot = end;
        }
    }

    fn reset_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        Poll::Ready(match ready!(self.send.poll_reset(cx)) {
            Ok(reason) => io::Error::other(format!("stream reset by the peer: {reason:?}")),
            Err(e) => h2_to_io(e),
        })
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.chunk.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.chunk = data,
                None => {
                    this.set_peer_end(End::EndStream);
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => {
                    this.set_peer_end(end_of(&e));
                    return Poll::Ready(Err(h2_to_io(e)));
                }
            }
        }
        let n = this.chunk.len().min(buf.remaining());
        buf.put_slice(this.chunk.get(..n).unwrap_or_default());
        this.chunk.advance(n);
        this.received += n as u64;
        // Flow control: the peer may send more once we have passed these bytes on.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let wanted = buf.len().min(MAX_WRITE);
        this.send.reserve_capacity(wanted);
        loop {
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let n = granted.min(wanted);
                    let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                    if this.send.send_data(data, false).is_ok() {
                        this.sent += n as u64;
                        return Poll::Ready(Ok(n));
                    }
                    break;
                }
                Some(Err(_)) | None => break,
            }
        }
        this.reset_error(cx).map(Err)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 queues frames for its connection task, which writes them out.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.send.send_data(Bytes::new(), true).is_ok() {
            return Poll::Ready(Ok(()));
        }
        this.reset_error(cx).map(Err)
    }
}
