//! The data phase of a session: framed bytes between client and gateway, raw bytes to the device.
//!
//! After the gateway answers `Opened`, both directions carry frames with the same 5-byte header as
//! control frames (`[type u8][len u32 BE]`): `DATA` (raw payload, up to [`MAX_DATA`] bytes) and `EOF`
//! (this direction is finished: half-close). The gateway may send one control frame, `Closed`, to
//! say why it ended a session (lock, certificate expiry, shutdown…). Framing is what lets a half-close
//! and a close reason travel over both QUIC streams and TLS-over-TCP; it costs 5 bytes per chunk of up
//! to 64 KiB. See docs/protocol.md.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use ward_recording::Direction;

/// Frame type of a data chunk (the wire's, defined once in the core).
pub const DATA: u8 = ward_core::frame::frame_type::DATA;
/// Frame type of an end-of-direction marker.
pub const EOF: u8 = ward_core::frame::frame_type::EOF;
/// Header length shared by every frame.
pub const HEADER: usize = ward_core::frame::HEADER_LEN;
/// Largest data frame accepted.
pub const MAX_DATA: usize = 256 * 1024;
/// Copy buffer size: 64–256 KiB moves bulk transfers at line rate; tokio's 8 KiB default is slow
/// (docs/benchmarks.md).
pub const CHUNK: usize = 64 * 1024;
/// Buffers start this small and grow to [`CHUNK`] the first time a read fills them, so an idle or
/// interactive session costs kilobytes, a bulk one gets full-size copies.
pub const FIRST_CHUNK: usize = 4 * 1024;

/// What one read of a framed stream produced.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// Payload bytes (a whole data frame or part of one).
    Data(&'a [u8]),
    /// The peer finished this direction.
    Eof,
    /// A control frame (type byte, header and payload), for `ward_core::frame::decode`.
    Control(Vec<u8>),
}

/// Reads frames off a client↔gateway stream.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    remaining: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wrap a stream positioned at a frame boundary.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0; FIRST_CHUNK],
            remaining: 0,
        }
    }

    /// Next piece of input; `Ok(None)` when the stream ended at a frame boundary without `EOF`.
    pub async fn next(&mut self) -> io::Result<Option<Inbound<'_>>> {
        if self.remaining == 0 {
            let mut hdr = [0u8; HEADER];
            if !read_exact_or_eof(&mut self.inner, &mut hdr).await? {
                return Ok(None);
            }
            let [ty, a, b, c, d] = hdr;
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            match ty {
                DATA => {
                    if len > MAX_DATA {
                        return Err(invalid(format!(
                            "data frame of {len} bytes exceeds {MAX_DATA}"
                        )));
                    }
                    if len == 0 {
                        return Ok(Some(Inbound::Data(&[])));
                    }
                    self.remaining = len;
                }
                EOF => return Ok(Some(Inbound::Eof)),
                _ => {
                    if len > ward_core::frame::MAX_PAYLOAD {
                        return Err(invalid(format!(
                            "control frame of {len} bytes is too large"
                        )));
                    }
                    let mut frame = Vec::with_capacity(HEADER + len);
                    frame.extend_from_slice(&hdr);
                    frame.resize(HEADER + len, 0);
                    let body = frame.get_mut(HEADER..).unwrap_or_default();
                    self.inner.read_exact(body).await?;
                    return Ok(Some(Inbound::Control(frame)));
                }
            }
        }
        if self.buf.len() < CHUNK && self.remaining > self.buf.len() {
            self.buf.resize(CHUNK, 0);
        }
        let want = self.remaining.min(self.buf.len());
        let slot = self.buf.get_mut(..want).unwrap_or_default();
        let got = self.inner.read(slot).await?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended inside a data frame",
            ));
        }
        self.remaining -= got;
        Ok(Some(Inbound::Data(self.buf.get(..got).unwrap_or_default())))
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// `read_exact` that returns `Ok(false)` on a clean end of stream before the first byte.
async fn read_exact_or_eof<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let slot = buf.get_mut(filled..).unwrap_or_default();
        let n = r.read(slot).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended inside a frame header",
            ));
        }
        filled += n;
    }
    Ok(true)
}

/// Writes frames onto a client↔gateway stream, remembering whether a frame was cut half-way (so a
/// close reason is only written at a frame boundary).
pub struct FrameWriter<W> {
    inner: W,
    in_frame: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wrap the write half of a stream.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            in_frame: false,
        }
    }

    /// Write an already-encoded frame whole.
    pub async fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.in_frame = true;
        self.inner.write_all(frame).await?;
        self.in_frame = false;
        Ok(())
    }

    /// Write `bytes` as data frames of at most [`CHUNK`] bytes each; nothing when `bytes` is empty.
    pub async fn write_data(&mut self, bytes: &[u8]) -> io::Result<()> {
        for chunk in bytes.chunks(CHUNK) {
            let len = u32::try_from(chunk.len())
                .map_err(|_| invalid("chunk too large".into()))?
                .to_be_bytes();
            self.in_frame = true;
            self.inner
                .write_all(&[DATA, len[0], len[1], len[2], len[3]])
                .await?;
            self.inner.write_all(chunk).await?;
            self.in_frame = false;
        }
        Ok(())
    }

    /// Encode and write a response. An answer too large to encode becomes an `Internal` error frame.
    pub async fn write_response(&mut self, r: &ward_core::frame::Response) -> io::Result<()> {
        use ward_core::frame::{encode_response, ErrorCode, Response};
        let bytes = encode_response(r)
            .or_else(|e| {
                encode_response(&Response::Error {
                    code: ErrorCode::Internal,
                    message: format!("answer could not be encoded: {e}"),
                })
            })
            .map_err(|e| invalid(e.to_string()))?;
        self.write_frame(&bytes).await
    }

    /// Encode and write a request.
    pub async fn write_request(&mut self, r: &ward_core::frame::Request) -> io::Result<()> {
        let bytes = ward_core::frame::encode_request(r).map_err(|e| invalid(e.to_string()))?;
        self.write_frame(&bytes).await
    }

    /// Write the `EOF` marker and flush.
    pub async fn write_eof(&mut self) -> io::Result<()> {
        self.write_frame(&[EOF, 0, 0, 0, 0]).await?;
        self.inner.flush().await
    }

    /// True when the last frame write was interrupted before it finished.
    pub fn torn(&self) -> bool {
        self.in_frame
    }

    /// Finish the stream (QUIC FIN / TLS close_notify + TCP FIN).
    pub async fn finish(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }

    /// The wrapped writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

/// Session activity counters, shared by both pump directions and the idle watcher.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// Bytes from the client to the device.
    pub up: AtomicU64,
    /// Bytes from the device to the client.
    pub down: AtomicU64,
}

impl Activity {
    /// Fresh counters starting now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the last byte moved, in either direction.
    pub fn last(&self) -> Instant {
        self.start + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// What a tap decided about a chunk: forward it as it came, or forward what the tap wrote to its
/// `out` (the core's [`ward_core::stage::Forward`]).
pub use ward_core::stage::Forward;

/// What the pump hands each chunk to before forwarding it: the server's session pipeline (the
/// device's stages, then the recorder: decode → decide → record → forward). The client passes
/// [`NO_TAP`].
///
/// A tap either lets the chunk through as it came ([`Forward::AsIs`]) or hands the pump other bytes
/// to forward in its place ([`Forward::Replaced`], in `out`: rewritten bytes, held bytes released
/// with this chunk, or nothing yet). The pump owns `out` and reuses it from chunk to chunk; a tap
/// that never replaces never touches it, so it never allocates.
pub trait ChunkTap: Sync {
    /// Take `bytes` travelling in `dir` and say what to forward; an error stops the pump before
    /// anything of `bytes` is forwarded.
    fn take(
        &self,
        dir: Direction,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> impl std::future::Future<Output = io::Result<Forward>> + Send;

    /// The direction `dir` ended: put in `out` what the tap still holds (forwarded before the
    /// `EOF`); an error stops the pump instead. The default holds nothing.
    fn finish(
        &self,
        dir: Direction,
        out: &mut Vec<u8>,
    ) -> impl std::future::Future<Output = io::Result<()>> + Send {
        let _ = dir;
        out.clear();
        std::future::ready(Ok(()))
    }

    /// Whether the tap may have bytes of its own to send in `dir` (a stage's answer to the side
    /// that sent a refused operation): only then does the pump wait on [`ChunkTap::injected`]
    /// besides its reads. The default has none.
    fn injects(&self, dir: Direction) -> bool {
        let _ = dir;
        false
    }

    /// Resolves once the tap has bytes of its own to send in `dir`; cancel-safe (it takes
    /// nothing). The default never resolves.
    fn injected(&self, dir: Direction) -> impl std::future::Future<Output = ()> + Send {
        let _ = dir;
        std::future::pending()
    }

    /// Move the tap's own bytes for `dir` into `out` (recorded before they are returned, like
    /// any chunk); `Ok(false)` when there are none.
    fn take_injected(
        &self,
        dir: Direction,
        out: &mut Vec<u8>,
    ) -> impl std::future::Future<Output = io::Result<bool>> + Send {
        let _ = dir;
        out.clear();
        std::future::ready(Ok(false))
    }
}

/// A tap that takes nothing (the client's side of the pump).
#[derive(Debug, Clone, Copy)]
pub struct NoTap;

impl ChunkTap for NoTap {
    async fn take(
        &self,
        _dir: Direction,
        _bytes: &[u8],
        _out: &mut Vec<u8>,
    ) -> io::Result<Forward> {
        Ok(Forward::AsIs)
    }
}

/// No tap, typed for [`raw_to_framed`] and [`framed_to_raw`].
pub const NO_TAP: Option<(&NoTap, Direction)> = None;

/// Copy raw bytes from `r` into data frames on `w` until `r` ends, then send `EOF`.
/// Memory is one buffer; a slow reader on the far side of `w` pushes back on `r`.
pub async fn raw_to_framed<R, W, T>(
    r: &mut R,
    w: &mut FrameWriter<W>,
    activity: &Activity,
    counter: &AtomicU64,
    tap: Option<(&T, Direction)>,
) -> io::Result<()>
where
    T: ChunkTap,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; HEADER + FIRST_CHUNK];
    // A tap's replacement bytes; stays unallocated unless a tap replaces a chunk.
    let mut out = Vec::new();
    // A tap with answers of its own for this direction (a decoder refusing an operation): the
    // pump waits on them besides its reads, and sends them between chunks.
    let injecting = tap.filter(|(t, d)| t.injects(*d));
    loop {
        let (n, full) = {
            let slot = buf.get_mut(HEADER..).unwrap_or_default();
            let cap = slot.len();
            let n = match injecting {
                None => r.read(slot).await?,
                Some((tap, dir)) => {
                    let read = tokio::select! {
                        biased;
                        () = tap.injected(dir) => None,
                        n = r.read(slot) => Some(n?),
                    };
                    match read {
                        Some(n) => n,
                        None => {
                            send_injected(tap, dir, w, counter, &mut out).await?;
                            continue;
                        }
                    }
                }
            };
            (n, n == cap)
        };
        if n == 0 {
            if let Some((tap, dir)) = injecting {
                send_injected(tap, dir, w, counter, &mut out).await?;
            }
            if let Some((tap, dir)) = tap {
                tap.finish(dir, &mut out).await?;
                counter.fetch_add(out.len() as u64, Ordering::Relaxed);
                w.write_data(&out).await?;
            }
            return w.write_eof().await;
        }
        activity.touch();
        let forward = match tap {
            // Recorded (and decided on) before it is forwarded (fail closed).
            Some((tap, dir)) => {
                let chunk = buf.get(HEADER..HEADER + n).unwrap_or_default();
                tap.take(dir, chunk, &mut out).await?
            }
            None => Forward::AsIs,
        };
        match forward {
            Forward::AsIs => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                let len = u32::try_from(n)
                    .map_err(|_| invalid("chunk too large".into()))?
                    .to_be_bytes();
                if let Some(h) = buf.get_mut(..HEADER) {
                    h.copy_from_slice(&[DATA, len[0], len[1], len[2], len[3]]);
                }
                w.write_frame(buf.get(..HEADER + n).unwrap_or_default())
                    .await?;
            }
            Forward::Replaced => {
                counter.fetch_add(out.len() as u64, Ordering::Relaxed);
                w.write_data(&out).await?;
            }
        }
        if full && buf.len() < HEADER + CHUNK {
            buf.resize(HEADER + CHUNK, 0);
        }
    }
}

/// Send what the tap has of its own for `dir` (already recorded by the tap).
async fn send_injected<W, T>(
    tap: &T,
    dir: Direction,
    w: &mut FrameWriter<W>,
    counter: &AtomicU64,
    out: &mut Vec<u8>,
) -> io::Result<()>
where
    T: ChunkTap,
    W: AsyncWrite + Unpin,
{
    while tap.take_injected(dir, out).await? {
        if !out.is_empty() {
            counter.fetch_add(out.len() as u64, Ordering::Relaxed);
            w.write_data(out).await?;
        }
    }
    Ok(())
}

/// Send `bytes` as data frames followed by `EOF` (a review answer's body).
pub async fn write_stream<W: AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    bytes: &[u8],
) -> io::Result<()> {
    w.write_data(bytes).await?;
    w.write_eof().await
}

/// Read data frames until `EOF`, at most `limit` bytes (a review answer's body).
pub async fn read_stream<R: AsyncRead + Unpin>(
    r: &mut FrameReader<R>,
    limit: usize,
) -> io::Result<Vec<u8>> {
    read_stream_with(r, limit, &|_| ()).await
}

/// [`read_stream`], telling `progress` the bytes received so far after each chunk.
pub async fn read_stream_with<R: AsyncRead + Unpin>(
    r: &mut FrameReader<R>,
    limit: usize,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        match r.next().await? {
            Some(Inbound::Data(b)) => {
                if out.len() + b.len() > limit {
                    return Err(invalid(format!("answer larger than {limit} bytes")));
                }
                out.extend_from_slice(b);
                progress(out.len() as u64);
            }
            Some(Inbound::Eof) => return Ok(out),
            Some(Inbound::Control(_)) => {
                return Err(invalid("unexpected control frame in a stream".into()))
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended before EOF",
                ))
            }
        }
    }
}

/// How a framed → raw copy ended.
#[derive(Debug)]
pub enum FramedEnd {
    /// The peer sent `EOF`; the raw side was shut down for writing.
    Eof,
    /// The stream ended with no `EOF` (peer vanished or reset).
    Abrupt,
    /// A control frame arrived (e.g. the gateway's `Closed`).
    Control(Vec<u8>),
}

/// Copy data frames from `r` to the raw writer `w` until `EOF`, a control frame, or the end.
pub async fn framed_to_raw<R, W, T>(
    r: &mut FrameReader<R>,
    w: &mut W,
    activity: &Activity,
    counter: &AtomicU64,
    tap: Option<(&T, Direction)>,
) -> io::Result<FramedEnd>
where
    T: ChunkTap,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // A tap's replacement bytes; stays unallocated unless a tap replaces a chunk.
    let mut out = Vec::new();
    loop {
        match r.next().await? {
            None => return Ok(FramedEnd::Abrupt),
            Some(Inbound::Eof) => {
                if let Some((tap, dir)) = tap {
                    tap.finish(dir, &mut out).await?;
                    counter.fetch_add(out.len() as u64, Ordering::Relaxed);
                    w.write_all(&out).await?;
                }
                w.flush().await?;
                w.shutdown().await?;
                return Ok(FramedEnd::Eof);
            }
            Some(Inbound::Control(frame)) => return Ok(FramedEnd::Control(frame)),
            Some(Inbound::Data(bytes)) => {
                if bytes.is_empty() {
                    continue;
                }
                activity.touch();
                let forward = match tap {
                    // Recorded (and decided on) before it is forwarded (fail closed).
                    Some((tap, dir)) => tap.take(dir, bytes, &mut out).await?,
                    None => Forward::AsIs,
                };
                let forwarded = match forward {
                    Forward::AsIs => bytes,
                    Forward::Replaced => out.as_slice(),
                };
                if forwarded.is_empty() {
                    continue;
                }
                counter.fetch_add(forwarded.len() as u64, Ordering::Relaxed);
                w.write_all(forwarded).await?;
                // Interactive output must not wait for more: a prompt without a newline
                // ("login: ") would sit in a line-buffered writer (`ward connect` on stdio).
                // A no-op for sockets.
                w.flush().await?;
            }
        }
    }
}

/// The device side of a session, its I/O errors tagged (see [`is_device_error`]) so a session's end
/// can name who failed: a device that closed or reset its connection, or the client.
#[derive(Debug)]
pub struct DeviceIo<T>(pub T);

/// An I/O error of the device connection.
#[derive(Debug)]
struct DeviceError(io::Error);

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device connection: {}", self.0)
    }
}

impl std::error::Error for DeviceError {}

fn tag(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), DeviceError(e))
}

/// True when `e` came from a [`DeviceIo`].
pub fn is_device_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<DeviceError>())
}

impl<T: AsyncRead + Unpin> AsyncRead for DeviceIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0)
            .poll_read(cx, buf)
            .map_err(tag)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeviceIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0)
            .poll_write(cx, buf)
            .map_err(tag)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx).map_err(tag)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0)
            .poll_shutdown(cx)
            .map_err(tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn framed_round_trip_with_half_close() {
        let (a, b) = tokio::io::duplex(1024);
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let act = Activity::new();
        let sent = payload.clone();
        let act2 = act.clone();
        let writer = tokio::spawn(async move {
            let mut w = FrameWriter::new(a);
            let mut src = &sent[..];
            raw_to_framed(&mut src, &mut w, &act2, &act2.up, NO_TAP)
                .await
                .unwrap();
        });
        let mut r = FrameReader::new(b);
        let mut out = Vec::new();
        let end = framed_to_raw(&mut r, &mut out, &act, &act.down, NO_TAP)
            .await
            .unwrap();
        writer.await.unwrap();
        assert!(matches!(end, FramedEnd::Eof));
        assert_eq!(out, payload);
        assert_eq!(act.up.load(Ordering::Relaxed), payload.len() as u64);
    }

    /// Uppercases what it is given, holds chunks starting with `#` until the direction ends, and
    /// ends with `<end>`.
    struct Upper {
        held: std::sync::Mutex<Vec<u8>>,
    }

    impl ChunkTap for Upper {
        async fn take(&self, _: Direction, bytes: &[u8], out: &mut Vec<u8>) -> io::Result<Forward> {
            out.clear();
            if bytes.starts_with(b"#") {
                self.held.lock().unwrap().extend_from_slice(bytes);
            } else {
                out.extend(bytes.iter().map(u8::to_ascii_uppercase));
            }
            Ok(Forward::Replaced)
        }

        async fn finish(&self, _: Direction, out: &mut Vec<u8>) -> io::Result<()> {
            out.clear();
            out.append(&mut self.held.lock().unwrap());
            out.extend_from_slice(b"<end>");
            Ok(())
        }
    }

    /// Send `chunks` (one read each) through a pump with `tap` on the raw → framed side or the
    /// framed → raw side; what came out, and the two byte counters.
    async fn through(chunks: &[&[u8]], tap_on_raw_side: bool) -> (Vec<u8>, u64, u64) {
        let tap = Upper {
            held: std::sync::Mutex::default(),
        };
        let (a, b) = tokio::io::duplex(1024);
        let act = Activity::new();
        let mut src = chunked_reader(chunks);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b);
        let mut out = Vec::new();
        let (up_tap, down_tap) = if tap_on_raw_side {
            (Some((&tap, Direction::Up)), None)
        } else {
            (None, Some((&tap, Direction::Down)))
        };
        let (sent, end) = tokio::join!(
            async {
                let done = raw_to_framed(&mut src, &mut w, &act, &act.up, up_tap).await;
                drop(w);
                done
            },
            framed_to_raw(&mut r, &mut out, &act, &act.down, down_tap)
        );
        sent.unwrap();
        assert!(matches!(end.unwrap(), FramedEnd::Eof));
        let (up, down) = (
            act.up.load(Ordering::Relaxed),
            act.down.load(Ordering::Relaxed),
        );
        (out, up, down)
    }

    /// A reader that returns `chunks` one read at a time.
    fn chunked_reader(chunks: &[&[u8]]) -> Chunks {
        Chunks(chunks.iter().map(|c| c.to_vec()).collect())
    }

    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if let Some(c) = self.0.pop_front() {
                buf.put_slice(&c);
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_tap_replaces_holds_and_releases_chunks_on_either_side() {
        for raw_side in [true, false] {
            let (out, up, down) = through(&[b"abc", b"#held ", b"def"], raw_side).await;
            assert_eq!(out, b"ABCDEF#held <end>", "tap on the raw side: {raw_side}");
            // The counters count what was forwarded.
            let forwarded = out.len() as u64;
            if raw_side {
                assert_eq!(up, forwarded);
            } else {
                assert_eq!(down, forwarded);
            }
        }
    }

    /// Has bytes of its own for the framed side once `ready` is set (a stage's answer to the
    /// client), and remembers what it sent.
    struct Answers {
        queue: std::sync::Mutex<Vec<Vec<u8>>>,
        ready: tokio::sync::Notify,
    }

    impl ChunkTap for Answers {
        async fn take(&self, _: Direction, _: &[u8], _: &mut Vec<u8>) -> io::Result<Forward> {
            Ok(Forward::AsIs)
        }
        fn injects(&self, _: Direction) -> bool {
            true
        }
        async fn injected(&self, _: Direction) {
            loop {
                if !self.queue.lock().unwrap().is_empty() {
                    return;
                }
                self.ready.notified().await;
            }
        }
        async fn take_injected(&self, _: Direction, out: &mut Vec<u8>) -> io::Result<bool> {
            out.clear();
            let mut q = self.queue.lock().unwrap();
            if q.is_empty() {
                return Ok(false);
            }
            *out = q.remove(0);
            Ok(true)
        }
    }

    #[tokio::test]
    async fn a_taps_own_bytes_reach_the_framed_side_while_the_raw_side_is_silent() {
        let tap = Answers {
            queue: std::sync::Mutex::default(),
            ready: tokio::sync::Notify::new(),
        };
        // The raw side (a device) sends one chunk and then nothing until the test says so.
        let (mut device, raw) = tokio::io::duplex(1024);
        let mut raw = raw;
        let (a, b) = tokio::io::duplex(1024);
        let act = Activity::new();
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b);
        let pump = raw_to_framed(
            &mut raw,
            &mut w,
            &act,
            &act.down,
            Some((&tap, Direction::Down)),
        );
        let script = async {
            device.write_all(b"banner ").await.unwrap();
            let first = r.next().await.unwrap();
            assert!(matches!(first, Some(Inbound::Data(b)) if b == b"banner "));
            // The device is silent; the tap's answer goes out anyway, at once.
            tap.queue.lock().unwrap().push(b"403 refused".to_vec());
            tap.ready.notify_one();
            let answer = tokio::time::timeout(std::time::Duration::from_secs(5), r.next())
                .await
                .expect("the answer is sent without waiting for the device")
                .unwrap();
            assert!(matches!(answer, Some(Inbound::Data(b)) if b == b"403 refused"));
            // An answer queued just before the device ends is still sent, before the EOF.
            device.write_all(b"bye").await.unwrap();
            tap.queue.lock().unwrap().push(b"last".to_vec());
            tap.ready.notify_one();
            drop(device);
            let mut rest = Vec::new();
            loop {
                match r.next().await.unwrap() {
                    Some(Inbound::Data(b)) => rest.extend_from_slice(b),
                    Some(Inbound::Eof) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            rest
        };
        let (pumped, rest) = tokio::join!(pump, script);
        pumped.unwrap();
        // Both orders are right (the answer was queued while `bye` was in flight); both arrive.
        assert!(rest == b"byelast" || rest == b"lastbye", "{rest:?}");
        assert_eq!(act.down.load(Ordering::Relaxed), (7 + 11 + 3 + 4) as u64);
    }

    #[tokio::test]
    async fn no_tap_forwards_every_chunk_as_it_came() {
        let (a, b) = tokio::io::duplex(1024);
        let act = Activity::new();
        let mut src = chunked_reader(&[b"abc", b"#x"]);
        let mut w = FrameWriter::new(a);
        let mut r = FrameReader::new(b);
        let mut out = Vec::new();
        let (sent, end) = tokio::join!(
            async {
                let done = raw_to_framed(&mut src, &mut w, &act, &act.up, NO_TAP).await;
                drop(w);
                done
            },
            framed_to_raw(&mut r, &mut out, &act, &act.down, NO_TAP)
        );
        sent.unwrap();
        assert!(matches!(end.unwrap(), FramedEnd::Eof));
        assert_eq!(out, b"abc#x");
    }

    #[tokio::test]
    async fn oversized_data_frame_is_an_error() {
        let mut bytes = vec![DATA];
        bytes.extend_from_slice(&((MAX_DATA as u32) + 1).to_be_bytes());
        let mut r = FrameReader::new(&bytes[..]);
        let err = r.next().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn device_errors_are_tagged_and_others_are_not() {
        let (a, b) = tokio::io::duplex(16);
        drop(b);
        let mut dev = DeviceIo(a);
        let err = dev.write_all(b"x").await.unwrap_err();
        assert!(is_device_error(&err), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(err.to_string().contains("device connection"), "{err}");
        let mut r = FrameReader::new(&[DATA, 0, 0][..]);
        assert!(!is_device_error(&r.next().await.unwrap_err()));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error_not_a_panic() {
        let bytes = [DATA, 0, 0, 0, 10, 1, 2];
        let mut r = FrameReader::new(&bytes[..]);
        assert!(matches!(r.next().await, Ok(Some(Inbound::Data(_)))));
        assert!(r.next().await.is_err());
        let hdr = [DATA, 0, 0];
        let mut r = FrameReader::new(&hdr[..]);
        assert!(r.next().await.is_err());
    }
}
