//! One HTTP/2 stream as a byte stream, and the splice that joins two byte
//! streams with backpressure and half-close.
//!
//! Memory per tunnel is bounded: the h2 side holds at most one stream window of
//! received data, released to the sender only as those bytes are written out
//! (the reader is an `AsyncBufRead` whose `consume` releases capacity); the TCP
//! side reads into one fixed buffer per direction.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

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

pub fn h2_stream(send: SendStream<Bytes>, recv: RecvStream, max_write: usize) -> (H2Reader, H2Writer) {
    (H2Reader { recv, chunk: Bytes::new() }, H2Writer { send, max_write })
}

fn h2_to_io(err: h2::Error) -> io::Error {
    if err.is_io() { err.into_io().unwrap_or_else(|| io::ErrorKind::Other.into()) } else { io::Error::other(err) }
}

impl AsyncBufRead for H2Reader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.chunk.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.chunk = data,
                None => break,
                // A peer that cancels or says "no error" has closed its side (ztunnel reads it so).
                Some(Err(e)) if matches!(e.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) => break,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
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
    fn reset_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        Poll::Ready(match ready!(self.send.poll_reset(cx)) {
            Ok(Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED) => io::ErrorKind::BrokenPipe.into(),
            Ok(reason) => io::Error::other(h2::Error::from(reason)),
            Err(e) => h2_to_io(e),
        })
    }
}

impl AsyncWrite for H2Writer {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let wanted = buf.len().min(self.max_write);
        self.send.reserve_capacity(wanted);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                // Capacity went up and back down before we looked: wait for more.
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let n = granted.min(wanted);
                    let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                    if self.send.send_data(data, false).is_ok() {
                        return Poll::Ready(Ok(n));
                    }
                    break;
                }
                Some(Err(_)) | None => break,
            }
        }
        self.reset_error(cx).map(Err)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 queues frames for its connection task, which writes them out.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.send.send_data(Bytes::new(), true).is_ok() {
            return Poll::Ready(Ok(()));
        }
        self.reset_error(cx).map(Err)
    }
}

/// Both halves of a stream as one duplex byte stream: the transport of the inner
/// TLS connection of double HBONE.
pub struct H2Io {
    pub reader: H2Reader,
    pub writer: H2Writer,
}

impl AsyncRead for H2Io {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// Bytes moved by a finished splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// From the downstream (the side that opened the connection) to the upstream.
    pub sent: u64,
    /// From the upstream back to the downstream.
    pub received: u64,
}

/// Copies both ways until both sides have closed. When one side ends its
/// writes, the other side's writes are ended too and the opposite direction
/// keeps flowing (half-close). An error in either direction aborts both, so the
/// peers see a reset rather than a silent truncation.
pub async fn splice<DR, DW, UR, UW>(
    downstream: (DR, DW),
    upstream: (UR, UW),
    sent: &Counter,
    received: &Counter,
) -> io::Result<Moved>
where
    DR: AsyncBufRead + Unpin,
    DW: AsyncWrite + Unpin,
    UR: AsyncBufRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let (down_read, down_write) = downstream;
    let (up_read, up_write) = upstream;
    let (sent, received) = tokio::try_join!(pump(down_read, up_write, sent), pump(up_read, down_write, received))?;
    Ok(Moved { sent, received })
}

async fn pump<R, W>(mut from: R, mut to: W, counter: &Counter) -> io::Result<u64>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
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
        counter.inc_by(n as u64);
        total += n as u64;
    }
    to.shutdown().await?;
    Ok(total)
}
