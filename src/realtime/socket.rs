//! The server side of a WebSocket on a connection that actix-http handed over after the upgrade
//! (`HttpService::build().upgrade`): the connection's task reads the socket (`Reader`), and it and
//! its worker's hub write it (`Wire`), with no HTTP dispatcher or channel between. Its buffers exist
//! only while bytes are in flight: an idle connection holds none.

use std::cell::RefCell;
use std::io;
use std::time::Duration;

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame};
use actix_ws::{CloseCode, CloseReason, Item, Message, ProtocolError};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Bytes taken from the socket per read.
const READ_CHUNK: usize = 4096;

/// A message from the client. Continuation frames are gathered into one message first.
pub enum Incoming {
    Text(ByteString),
    Binary,
    Ping(Bytes),
    Pong,
    Close,
    /// Not a message: every queued frame has now been written (after the socket had been full).
    Written,
}

/// Why reading stopped short of a message.
#[derive(Debug)]
pub enum ReadError {
    /// A frame, or a fragmented message, larger than the limit.
    TooBig,
    /// Not a valid WebSocket frame (the text names the fault).
    Invalid(String),
}

/// The write side of a connection, and its socket: shared by the connection's task and its
/// worker's hub (same thread), which both queue frames and write what the socket takes.
pub struct Wire {
    io: TcpStream,
    /// Encoded frames not yet taken by the socket; unallocated when empty. Borrowed only within
    /// a call, never across an await.
    write: RefCell<BytesMut>,
}

/// The read side of a connection: owned by the connection's task.
pub struct Reader {
    codec: Codec,
    max: usize,
    /// Bytes read and not yet decoded; unallocated when empty.
    read: BytesMut,
    /// A fragmented message being gathered: its bytes so far, and whether it is text.
    partial: Option<(BytesMut, bool)>,
    /// The peer closed its side (or the socket failed): nothing more will be read.
    ended: bool,
}

/// A connection's two sides: for `io`, whose first bytes (read with the upgrade request) are
/// `early`; messages over `max` bytes are refused.
pub fn split(io: TcpStream, early: BytesMut, max: usize) -> (Wire, Reader) {
    let wire = Wire {
        io,
        write: RefCell::new(BytesMut::new()),
    };
    let reader = Reader {
        codec: Codec::new().max_size(max),
        max,
        read: early,
        partial: None,
        ended: false,
    };
    (wire, reader)
}

impl Reader {
    /// The next message, `None` once the peer has closed the connection (or it failed). While
    /// frames wait to be written on `wire`, it writes them as the socket takes them. Cancel safe:
    /// what it read stays in the reader's buffer.
    pub async fn next(&mut self, wire: &Wire) -> Option<Result<Incoming, ReadError>> {
        loop {
            match self.decode() {
                Ok(Some(m)) => return Some(Ok(m)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.ended {
                return None;
            }
            let readable = if wire.backlog() == 0 {
                wire.io.readable().await.map(|()| true)
            } else {
                tokio::select! {
                    r = wire.io.readable() => r.map(|()| true),
                    w = wire.io.writable() => w.map(|()| false),
                }
            };
            match readable {
                Ok(true) => match self.try_read(wire) {
                    Ok(0) => self.ended = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => self.ended = true,
                },
                Ok(false) => match wire.try_flush() {
                    Ok(()) if wire.backlog() == 0 => return Some(Ok(Incoming::Written)),
                    Ok(()) => {}
                    Err(_) => self.ended = true,
                },
                Err(_) => self.ended = true,
            }
        }
    }

    /// One read into the buffer, without waiting. A plain function: its stack chunk is not kept
    /// in the connection's task between wake-ups.
    fn try_read(&mut self, wire: &Wire) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = wire.io.try_read(&mut chunk)?;
        self.read.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next whole message in what was read, if there is one.
    fn decode(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let frame = match self.codec.decode(&mut self.read) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    if self.read.is_empty() {
                        self.read = BytesMut::new();
                    }
                    return Ok(None);
                }
                Err(ProtocolError::Overflow) => return Err(ReadError::TooBig),
                Err(e) => return Err(ReadError::Invalid(e.to_string())),
            };
            let whole = match frame {
                Frame::Text(bytes) if self.partial.is_none() => (bytes, true),
                Frame::Binary(_) if self.partial.is_none() => return Ok(Some(Incoming::Binary)),
                Frame::Text(_) | Frame::Binary(_) => {
                    return Err(ReadError::Invalid(
                        "a new message inside a fragmented one".into(),
                    ));
                }
                Frame::Ping(bytes) => return Ok(Some(Incoming::Ping(bytes))),
                Frame::Pong(_) => return Ok(Some(Incoming::Pong)),
                Frame::Close(_) => return Ok(Some(Incoming::Close)),
                Frame::Continuation(item) => match self.gather(item)? {
                    Some(whole) => whole,
                    None => continue,
                },
            };
            let (bytes, text) = whole;
            if !text {
                return Ok(Some(Incoming::Binary));
            }
            return ByteString::try_from(bytes)
                .map(|s| Some(Incoming::Text(s)))
                .map_err(|_| ReadError::Invalid("a text message that is not UTF-8".into()));
        }
    }

    /// Adds one fragment; the whole message (and whether it is text) once its last one came.
    fn gather(&mut self, item: Item) -> Result<Option<(Bytes, bool)>, ReadError> {
        let (bytes, first, last) = match item {
            Item::FirstText(b) => (b, Some(true), false),
            Item::FirstBinary(b) => (b, Some(false), false),
            Item::Continue(b) => (b, None, false),
            Item::Last(b) => (b, None, true),
        };
        match (first, &mut self.partial) {
            (Some(text), None) => self.partial = Some((BytesMut::new(), text)),
            (None, Some(_)) => {}
            _ => {
                return Err(ReadError::Invalid(
                    "a continuation frame out of place".into(),
                ));
            }
        }
        let Some((buf, text)) = self.partial.as_mut() else {
            return Ok(None);
        };
        if buf.len() + bytes.len() > self.max {
            return Err(ReadError::TooBig);
        }
        buf.extend_from_slice(&bytes);
        if !last {
            return Ok(None);
        }
        let text = *text;
        let whole = self
            .partial
            .take()
            .map(|(b, _)| b.freeze())
            .unwrap_or_default();
        Ok(Some((whole, text)))
    }
}

impl Wire {
    fn queue(&self, message: Message) {
        // A server frame (unmasked, no size limit on output) always encodes; the codec keeps no
        // state between frames on this side.
        let _ = Codec::new().encode(message, &mut self.write.borrow_mut());
    }

    /// Queues a text frame.
    pub fn text(&self, text: impl Into<ByteString>) {
        self.queue(Message::Text(text.into()));
    }

    /// Queues one text frame whose text is `parts` one after the other, written straight into the
    /// write buffer (no string of the whole text is made first).
    pub fn text_parts(&self, parts: &[&str]) {
        put_text_frame(&mut self.write.borrow_mut(), parts);
    }

    pub fn ping(&self, bytes: &[u8]) {
        self.queue(Message::Ping(Bytes::copy_from_slice(bytes)));
    }

    pub fn pong(&self, bytes: &[u8]) {
        self.queue(Message::Pong(Bytes::copy_from_slice(bytes)));
    }

    /// Bytes queued that the socket has not taken yet.
    pub fn backlog(&self) -> usize {
        self.write.borrow().len()
    }

    /// Writes what the socket takes now, without waiting; an error when the connection is gone.
    pub fn try_flush(&self) -> io::Result<()> {
        let mut write = self.write.borrow_mut();
        while !write.is_empty() {
            match self.io.try_write(&write) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => write.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        *write = BytesMut::new();
        Ok(())
    }

    /// Writes everything queued, waiting for the socket as long as it takes.
    async fn flush(&self) -> io::Result<()> {
        loop {
            self.try_flush()?;
            if self.backlog() == 0 {
                return Ok(());
            }
            self.io.writable().await?;
        }
    }

    /// Ends the connection: a close frame with `reason` after what is queued, all of it written
    /// within `linger`, the write side shut, then whatever the peer still sends read and dropped
    /// until it closes too (within `linger` again), so that unread input does not turn the close
    /// into a reset that could destroy the close frame on its way.
    ///
    /// Without a `reason` the peer is gone (its stream ended or failed, or a write failed): the
    /// socket is closed at once, with nothing to send and nobody to wait for. A mass disconnect
    /// then costs each socket one `close`, not a shutdown, a wait and a read besides.
    pub async fn close(self, reason: Option<(u16, String)>, linger: Duration) {
        let Some((code, description)) = reason else {
            return;
        };
        self.queue(Message::Close(Some(CloseReason {
            code: CloseCode::Other(code),
            description: Some(description),
        })));
        if tokio::time::timeout(linger, self.flush()).await.is_err() {
            return;
        }
        finish(self.io, linger).await;
    }
}

/// Appends a server text frame (unmasked) whose text is `parts` one after the other: FIN and the
/// text opcode, the length in 7, 16 or 64 bits, then the text.
fn put_text_frame(buf: &mut BytesMut, parts: &[&str]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    buf.reserve(len + 10);
    buf.put_u8(0x81);
    match len {
        0..=125 => buf.put_u8(len as u8),
        126..=0xffff => {
            buf.put_u8(126);
            buf.put_u16(len as u16);
        }
        _ => {
            buf.put_u8(127);
            buf.put_u64(len as u64);
        }
    }
    for p in parts {
        buf.put_slice(p.as_bytes());
    }
}

/// Answers a request that is not taken as a WebSocket with an HTTP `status` and a problem body,
/// then ends the connection.
pub async fn refuse(mut io: TcpStream, status: u16, reason: &str, problem: &str, linger: Duration) {
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        problem.len()
    );
    let written = tokio::time::timeout(linger, async {
        io.write_all(head.as_bytes()).await?;
        io.write_all(problem.as_bytes()).await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        finish(io, linger).await;
    }
}

/// Shuts the write side, then reads and drops what the peer still sends until it closes too
/// (within `linger`): closing with unread input would send a reset, which can destroy the last
/// bytes written before the peer reads them.
async fn finish(mut io: TcpStream, linger: Duration) {
    let _ = io.shutdown().await;
    let _ = tokio::time::timeout(linger, async {
        loop {
            if io.readable().await.is_err() {
                return;
            }
            let mut chunk = [0u8; READ_CHUNK];
            match io.try_read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_frame_from_parts_decodes_whole_at_every_length_encoding() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let text = "x".repeat(len);
            let (a, b) = text.split_at(len / 2);
            let mut buf = BytesMut::new();
            put_text_frame(&mut buf, &[a, "", b]);
            let mut client = Codec::new().client_mode().max_size(1 << 20);
            match client.decode(&mut buf) {
                Ok(Some(Frame::Text(got))) => assert_eq!(got.len(), len),
                other => panic!("length {len}: {other:?}"),
            }
            assert!(buf.is_empty(), "length {len}: bytes left over");
        }
    }
}
