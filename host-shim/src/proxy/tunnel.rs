//! The halves of one HTTP/2 stream as bytes (joined, they are
//! [`HboneStream`](super::HboneStream)), and the splice that joins two byte
//! streams with backpressure and half-close, counting bytes as they move.
//!
//! How a tunnel ends is what ztunnel records: END_STREAM both ways (or a reset
//! with NO_ERROR) is a clean close; a RST_STREAM with an error code, or a broken
//! HTTP/2 connection, is a failed one ([`Ending::Failed`], `response_flags="CONNECT"`).
//!
//! Memory per tunnel is bounded: the h2 side holds at most one stream window of
//! received data, released to the sender only as those bytes are written out
//! (the reader is an `AsyncBufRead` whose `consume` releases capacity); the TCP
//! side reads into one buffer per direction whose filled part goes to h2 as is,
//! without a copy, and h2 holds at most one write's worth of it at a time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};

use crate::metrics::ConnectionRecord;

/// Why the HTTP/2 side of a tunnel stopped; carried inside the `io::Error`s of
/// [`H2Reader`] and [`H2Writer`] so the splice's result tells which side failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("HBONE stream reset by the peer ({0:?})")]
    Reset(Reason),
    #[error("HBONE connection failed: {0}")]
    Connection(h2::Error),
}

impl StreamError {
    fn into_io(self) -> io::Error {
        let kind = match self {
            Self::Reset(_) => io::ErrorKind::ConnectionReset,
            Self::Connection(_) => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, self)
    }

    fn from_h2(err: h2::Error) -> Self {
        match err.reason() {
            Some(reason) if !err.is_go_away() && !err.is_io() => Self::Reset(reason),
            _ => Self::Connection(err),
        }
    }
}

/// The receiving half of a tunnel stream.
pub struct H2Reader {
    recv: RecvStream,
    chunk: Bytes,
}

/// The sending half of a tunnel stream; shutting it down sends END_STREAM.
pub struct H2Writer {
    send: SendStream<Bytes>,
    /// Largest slice offered to h2 at once, so one write never waits for more window than exists.
    max_write: usize,
}

impl H2Reader {
    pub fn new(recv: RecvStream) -> Self {
        Self { recv, chunk: Bytes::new() }
    }
}

impl H2Writer {
    pub fn new(send: SendStream<Bytes>, max_write: usize) -> Self {
        Self { send, max_write }
    }
}

impl AsyncBufRead for H2Reader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.chunk.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.chunk = data,
                None => break,
                // RST_STREAM(NO_ERROR): the peer is done, gracefully (RFC 9113 §8.1).
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) && !e.is_go_away() => break,
                // Any other code (CANCEL included) aborts the tunnel, as ztunnel counts it.
                Some(Err(e)) => return Poll::Ready(Err(StreamError::from_h2(e).into_io())),
            }
        }
        Poll::Ready(Ok(&this.chunk))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let amt = amt.min(this.chunk.len());
        this.chunk.advance(amt);
        // Flow control: the sender may send more only once we passed these bytes on.
        let _ = this.recv.flow_control().release_capacity(amt);
    }
}

impl AsyncRead for H2Reader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(available.get(..n).unwrap_or_default());
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl H2Writer {
    /// Why the stream no longer takes data: the peer's reset code, or the connection's error.
    fn reset_error(&mut self, cx: &mut Context<'_>) -> Poll<StreamError> {
        Poll::Ready(match ready!(self.send.poll_reset(cx)) {
            Ok(reason) => StreamError::Reset(reason),
            Err(e) => StreamError::from_h2(e),
        })
    }

    /// Waits for window to send up to `len` (> 0) bytes; how many it may send now.
    fn poll_send_capacity(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        let wanted = len.min(self.max_write);
        self.send.reserve_capacity(wanted);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                // Capacity went up and back down before we looked: wait for more.
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => return Poll::Ready(Ok(granted.min(wanted))),
                Some(Err(_)) | None => break,
            }
        }
        self.reset_error(cx).map(|e| Err(e.into_io()))
    }

    /// Hands `data` to h2 (the stream's window has room for it).
    fn poll_send(&mut self, cx: &mut Context<'_>, data: Bytes) -> Poll<io::Result<()>> {
        if self.send.send_data(data, false).is_ok() {
            return Poll::Ready(Ok(()));
        }
        self.reset_error(cx).map(|e| Err(e.into_io()))
    }

    /// Sends all of `chunk` without copying it, in pieces as the window allows,
    /// counting each piece once h2 has it.
    async fn send_all(&mut self, mut chunk: Bytes, count: &impl Fn(u64)) -> io::Result<()> {
        while !chunk.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_send_capacity(cx, chunk.len())).await?;
            let piece = chunk.split_to(n);
            std::future::poll_fn(|cx| self.poll_send(cx, piece.clone())).await?;
            count(n as u64);
        }
        Ok(())
    }
}

impl AsyncWrite for H2Writer {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_send_capacity(cx, buf.len()))?;
        // A borrowed slice must be copied for h2; the splice hands over owned chunks instead.
        let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        self.poll_send(cx, data).map_ok(|()| n)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 queues frames for its connection task, which writes them out.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.send.send_data(Bytes::new(), true).is_ok() {
            return Poll::Ready(Ok(()));
        }
        self.reset_error(cx).map(|e| match e {
            // The peer closed with "no error": our end is over too, cleanly.
            StreamError::Reset(Reason::NO_ERROR) => Ok(()),
            e => Err(e.into_io()),
        })
    }
}

/// How a splice ended, as the L4 metrics record it.
#[derive(Debug)]
pub enum Ending {
    /// Both directions ended with end of stream (FIN / END_STREAM).
    Clean,
    /// The app's TCP connection was reset or cut: the tunnel was fine (ztunnel ignores these).
    AppClosedAbruptly(io::Error),
    /// The HBONE stream was reset with an error code or its connection broke, or
    /// another I/O error: ztunnel's failed connection, `response_flags="CONNECT"`.
    Failed(io::Error),
}

impl Ending {
    pub fn of(result: io::Result<()>) -> Self {
        let Err(e) = result else { return Self::Clean };
        match e.get_ref().and_then(|inner| inner.downcast_ref::<StreamError>()) {
            Some(StreamError::Reset(Reason::NO_ERROR)) => Self::Clean,
            Some(_) => Self::Failed(e),
            None if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::UnexpectedEof
            ) =>
            {
                Self::AppClosedAbruptly(e)
            }
            None => Self::Failed(e),
        }
    }

    pub fn error(&self) -> Option<&io::Error> {
        match self {
            Self::Clean => None,
            Self::AppClosedAbruptly(e) | Self::Failed(e) => Some(e),
        }
    }
}

/// Copies both ways until both sides have closed, counting each chunk in
/// `record` as it is written (so a tunnel cut short still reports its bytes).
/// Downstream is the client's side: what it sends is client → server. When one
/// side ends its writes, the other side's writes are ended too and the opposite
/// direction keeps flowing (half-close). An error in either direction aborts
/// both, so the peers see a reset rather than a silent truncation.
pub async fn splice<DR, DW, UR, UW>(
    downstream: (DR, DW),
    upstream: (UR, UW),
    record: &ConnectionRecord,
) -> io::Result<()>
where
    (DR, UW): Carry,
    (UR, DW): Carry,
{
    let (down_read, down_write) = downstream;
    let (up_read, up_write) = upstream;
    tokio::try_join!(
        (down_read, up_write).carry(|n| record.client_to_server(n)),
        (up_read, down_write).carry(|n| record.server_to_client(n))
    )?;
    Ok(())
}

/// One direction of a splice, a (from, to) pair: copies until `from` ends, then
/// ends `to`'s writes, calling `count` with each run of bytes written.
pub trait Carry {
    fn carry(self, count: impl Fn(u64) + Send + Sync) -> impl Future<Output = io::Result<()>> + Send;
}

/// HBONE stream → app: h2's received chunks are written out as they are.
impl<W: AsyncWrite + Unpin + Send> Carry for (H2Reader, W) {
    async fn carry(self, count: impl Fn(u64) + Send + Sync) -> io::Result<()> {
        let (mut from, mut to) = self;
        loop {
            let chunk = from.fill_buf().await?;
            if chunk.is_empty() {
                break;
            }
            let n = to.write(chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            from.consume(n);
            count(n as u64);
        }
        to.shutdown().await
    }
}

/// App → HBONE stream: reads into a buffer of the largest h2 write and hands
/// each filled part to h2 without a copy, then reads on into what is left of it.
impl<R: AsyncRead + Unpin + Send> Carry for (BufReader<R>, H2Writer) {
    async fn carry(self, count: impl Fn(u64) + Send + Sync) -> io::Result<()> {
        let (from, mut to) = self;
        let capacity = to.max_write;
        let mut buf = BytesMut::with_capacity(capacity);
        buf.extend_from_slice(from.buffer());
        let mut from = from.into_inner();
        loop {
            if buf.is_empty() {
                // A fresh buffer only once this one is nearly used up: each one that
                // chunks still in h2 keep alive is mostly theirs, so memory stays
                // about the window h2 may hold, not a buffer per tiny read.
                if buf.capacity() < capacity / 8 {
                    buf.reserve(capacity);
                }
                if from.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            to.send_all(buf.split().freeze(), &count).await?;
        }
        to.shutdown().await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn reset(reason: Reason) -> io::Result<()> {
        Err(StreamError::Reset(reason).into_io())
    }

    #[test]
    fn end_of_stream_both_ways_and_a_no_error_reset_are_clean() {
        assert!(matches!(Ending::of(Ok(())), Ending::Clean));
        assert!(matches!(Ending::of(reset(Reason::NO_ERROR)), Ending::Clean));
    }

    #[test]
    fn a_reset_with_an_error_code_is_a_failed_tunnel() {
        for reason in [Reason::CANCEL, Reason::INTERNAL_ERROR, Reason::REFUSED_STREAM, Reason::PROTOCOL_ERROR] {
            assert!(matches!(Ending::of(reset(reason)), Ending::Failed(_)), "{reason:?}");
        }
    }

    #[test]
    fn an_app_that_resets_its_tcp_connection_does_not_fail_the_tunnel() {
        let app_reset = Err(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(matches!(Ending::of(app_reset), Ending::AppClosedAbruptly(_)));
        let other = Err(io::Error::from(io::ErrorKind::WriteZero));
        assert!(matches!(Ending::of(other), Ending::Failed(_)));
    }
}
