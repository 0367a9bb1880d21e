//! Session recording at the gateway: the data path hands every chunk to a [`Tap`] before forwarding
//! it; a per-session recorder task encodes chunks with `ward_recording::Encoder` (hash chain, signed
//! checkpoints) and writes them to a [`Sink`] (local files today; S3-compatible object storage later).
//!
//! Fail closed: if the sink cannot be opened there is no session; if a write or fsync fails the
//! recorder reports it on [`SessionRecorder::failed`] and stops taking chunks, so the session ends
//! (within one second) and no further byte is forwarded unrecorded. Memory is bounded: the channel
//! holds at most [`CHANNEL_CHUNKS`] chunks, after which the data path waits (backpressure).
//! Durability lags by at most [`SYNC_EVERY`]: fsync is batched off the data path.
//!
//! A chunk is forwarded only once its record is sure to be written: the tap claims the room its
//! record takes from space reserved ahead in the file ([`space`]), so a full disk stops the chunk
//! before it is forwarded, not a batch later. Where the sink cannot reserve, each chunk waits for
//! its write instead (correct, slower).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use ward_recording::{CheckpointPolicy, Direction, Encoder, EndInfo, SessionMeta, Signer};

pub mod space;

use space::{Ledger, Space};

/// Chunks buffered between the data path and the recorder task (≤ 64 KiB each).
pub const CHANNEL_CHUNKS: usize = 16;
/// fsync at least this often while there are unsynced bytes.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);
/// Recording file extension.
pub const EXT: &str = "wrec";

/// One open recording file (or object).
pub trait SinkFile: Send + 'static {
    /// Append bytes.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Make everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// An independent handle that makes the file durable, so the batched fsync can run while
    /// writes go on (fsync then never stalls the data path). Sinks without one are synced in line.
    fn syncer(&self) -> io::Result<Syncer> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// An independent handle that reserves room in the file ahead of the writes, so the data path
    /// can claim room for a chunk's record before forwarding it while writes go on. Sinks that
    /// cannot reserve say `Unsupported`: each chunk then waits for its write before it is forwarded.
    fn reserver(&self) -> io::Result<Reserver> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Give back room reserved beyond what was written (once, after the last write).
    fn release(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Makes a recording durable from another thread.
pub type Syncer = Box<dyn FnMut() -> io::Result<()> + Send>;

/// Reserves `len` bytes of a recording from file offset `offset`, from another thread, so later
/// writes there cannot fail for lack of space; `StorageFull` when the disk has no room, and
/// `Unsupported` when the filesystem cannot reserve.
pub type Reserver = Arc<dyn Fn(u64, u64) -> io::Result<()> + Send + Sync>;

/// Where recordings go.
pub trait Sink: Send + Sync + 'static {
    /// Create the recording for `session_id`; fails if it cannot be opened (the session is refused).
    fn create(&self, session_id: &str) -> io::Result<Box<dyn SinkFile>>;
}

/// Recordings as files in `<state_dir>/recordings/<session_id>.wrec`.
#[derive(Debug, Clone)]
pub struct FileSink {
    dir: PathBuf,
}

impl FileSink {
    /// A sink writing into `dir` (created if missing).
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }
}

/// One descriptor per recording, shared by the writer and the background fsync (no dup: at
/// 10,000 sessions descriptors, not memory, are the limit).
struct File(Arc<std::fs::File>);

impl SinkFile for File {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        (&*self.0).write_all(bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn syncer(&self) -> io::Result<Syncer> {
        let f = self.0.clone();
        Ok(Box::new(move || f.sync_data()))
    }
    fn reserver(&self) -> io::Result<Reserver> {
        let f = self.0.clone();
        Ok(Arc::new(move |offset, len| {
            fallocate_keep_size(&f, offset, len)
        }))
    }
    fn release(&mut self) -> io::Result<()> {
        // Truncating to the current length frees the blocks reserved past it.
        let len = self.0.metadata()?.len();
        self.0.set_len(len)
    }
}

/// Allocate `len` bytes from `offset` without changing the file's size.
fn fallocate_keep_size(f: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    use rustix::io::Errno;
    match fallocate(f, FallocateFlags::KEEP_SIZE, offset, len) {
        Err(e) if e == Errno::OPNOTSUPP || e == Errno::NOSYS => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("fallocate: {e}"),
        )),
        r => r.map_err(io::Error::from),
    }
}

impl Sink for FileSink {
    fn create(&self, session_id: &str) -> io::Result<Box<dyn SinkFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(format!("{session_id}.{EXT}"));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(File(Arc::new(f))))
    }
}

struct Chunk {
    dir: Direction,
    t_ns: u64,
    bytes: Bytes,
    /// Where the sink cannot reserve: told once the chunk's record is written.
    written: Option<oneshot::Sender<()>>,
}

/// The data path's handle: record a chunk before forwarding it.
#[derive(Clone)]
pub struct Tap {
    tx: mpsc::Sender<Chunk>,
    start: Instant,
    /// Room reserved in the file, `None` where the sink cannot reserve.
    space: Option<Arc<Space>>,
    failed: Arc<watch::Sender<Option<String>>>,
}

impl Tap {
    /// Hand `bytes` to the recorder once its record is sure to be written: room claimed from the
    /// reservation (one atomic subtract, usually) or, where the sink cannot reserve, the record
    /// written. Waits when the recorder is behind. Fails when the recording has failed or the disk
    /// has no room for the record: the caller must then not forward `bytes`.
    pub async fn record(&self, dir: Direction, bytes: &[u8]) -> io::Result<()> {
        let t_ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let Some(space) = &self.space else {
            let (written, done) = oneshot::channel();
            self.send(dir, t_ns, bytes, Some(written)).await?;
            return done.await.map_err(|_| self.stopped());
        };
        if let Err(e) = space.claim(bytes.len()).await {
            return Err(self.no_room(bytes.len(), &e));
        }
        self.send(dir, t_ns, bytes, None).await
    }

    async fn send(
        &self,
        dir: Direction,
        t_ns: u64,
        bytes: &[u8],
        written: Option<oneshot::Sender<()>>,
    ) -> io::Result<()> {
        let bytes = Bytes::copy_from_slice(bytes);
        let chunk = Chunk {
            dir,
            t_ns,
            bytes,
            written,
        };
        self.tx.send(chunk).await.map_err(|_| self.stopped())
    }

    /// The recorder stopped taking chunks (it reported why on `failed`).
    fn stopped(&self) -> io::Error {
        let why = self.failed.borrow().clone();
        recording_failure(why.unwrap_or_else(|| "the recorder stopped".into()))
    }

    /// No room for the next record: the recording has failed (it can still be sealed).
    fn no_room(&self, len: usize, e: &io::Error) -> io::Error {
        let why = format!("no room on the recording disk to record the next {len} bytes ({e})");
        self.failed.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(why.clone());
            }
            first
        });
        recording_failure(why)
    }
}

/// A chunk the recording cannot take (failed, or no room): it must not be forwarded.
#[derive(Debug)]
struct RecordingFailure(String);

impl std::fmt::Display for RecordingFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RecordingFailure {}

fn recording_failure(why: String) -> io::Error {
    io::Error::other(RecordingFailure(why))
}

/// True when `e` is a [`Tap`]'s refusal: the recording failed or has no room, so the session
/// ends (fail closed).
pub fn is_recording_failure(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<RecordingFailure>())
}

/// A session's recorder.
pub struct SessionRecorder {
    tap: Tap,
    failed: watch::Receiver<Option<String>>,
    done: tokio::task::JoinHandle<Result<(), String>>,
    end_tx: oneshot::Sender<EndInfo>,
    /// Keeps the session index's row current.
    index: Option<crate::session_index::IndexHook>,
}

impl SessionRecorder {
    /// Open the recording (header, metadata, first checkpoint written and synced) and start its task.
    pub async fn start(
        sink: &Arc<dyn Sink>,
        signer: Arc<Signer>,
        meta: &SessionMeta,
    ) -> io::Result<SessionRecorder> {
        let mut out = Vec::with_capacity(4096);
        let encoder = Encoder::start(meta, signer, CheckpointPolicy::default(), &mut out)
            .map_err(|e| io::Error::other(format!("recording header: {e}")))?;
        let sink = sink.clone();
        let id = meta.session_id.clone();
        // Created, its room reserved and its header written before the session may start (fail
        // closed); made durable by the first batched fsync, at most SYNC_EVERY later.
        let (file, space) = tokio::task::spawn_blocking(move || open_file(&*sink, &id, &out))
            .await
            .map_err(io::Error::other)??;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let (failed_tx, failed) = watch::channel(None);
        let failed_tx = Arc::new(failed_tx);
        let (end_tx, end_rx) = oneshot::channel();
        let start = Instant::now();
        let space = space.map(Arc::new);
        let task = Task {
            space: space.clone(),
            failed: failed_tx.clone(),
            start,
        };
        let done = tokio::spawn(run(encoder, file, rx, end_rx, task));
        let tap = Tap {
            tx,
            start,
            space,
            failed: failed_tx,
        };
        Ok(SessionRecorder {
            tap,
            failed,
            done,
            end_tx,
            index: None,
        })
    }

    /// Keep `hook`'s session index row current: the row is closed when the recording is.
    pub fn indexed(mut self, hook: crate::session_index::IndexHook) -> Self {
        self.index = Some(hook);
        self
    }

    /// The data path's tap.
    pub fn tap(&self) -> Tap {
        self.tap.clone()
    }

    /// Resolves with the error once the recording has failed.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.clone()
    }

    /// Write the end record and final checkpoint, fsync, give back unused reserved room, and
    /// close. An error if the recording failed, also when it ended for want of room (it is then
    /// sealed and holds every byte forwarded).
    pub async fn finish(self, end: EndInfo) -> Result<(), String> {
        let SessionRecorder {
            tap,
            done,
            end_tx,
            failed,
            index,
        } = self;
        drop(tap);
        let _ = end_tx.send(end.clone());
        let outcome = match done.await {
            Err(e) => Err(format!("recorder task: {e}")),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => match failed.borrow().clone() {
                Some(e) => Err(format!(
                    "{e}: session ended; its recording holds every byte forwarded and is sealed"
                )),
                None => Ok(()),
            },
        };
        if let Some(index) = index {
            index.close(end, outcome.clone()).await;
        }
        outcome
    }
}

/// Create the recording, reserve its room where the sink can, and write its header (blocking).
fn open_file(
    sink: &dyn Sink,
    id: &str,
    header: &[u8],
) -> io::Result<(Box<dyn SinkFile>, Option<Space>)> {
    let mut file = sink.create(id)?;
    let space = match file
        .reserver()
        .and_then(|r| Space::open(r, header.len() as u64))
    {
        Ok(space) => Some(space),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            warn_unreserved(&e);
            None
        }
        Err(e) => return Err(e),
    };
    file.write_all(header)?;
    Ok((file, space))
}

fn warn_unreserved(e: &io::Error) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!(event = "recording_unreserved", reason = %e,
            "the recording sink cannot reserve space: each chunk now waits for its record to be written before it is forwarded (correct, slower)");
    });
}

/// Cut an end reason to [`space::END_REASON_MAX`] bytes, so the end record fits its margin.
fn fit_reason(mut reason: String) -> String {
    if reason.len() > space::END_REASON_MAX {
        let mut at = space::END_REASON_MAX - '…'.len_utf8();
        while !reason.is_char_boundary(at) {
            at -= 1;
        }
        reason.truncate(at);
        reason.push('…');
    }
    reason
}

async fn blocking_write(
    mut file: Box<dyn SinkFile>,
    buf: Vec<u8>,
    sync: bool,
) -> (Box<dyn SinkFile>, io::Result<()>) {
    match tokio::task::spawn_blocking(move || {
        let r = file
            .write_all(&buf)
            .and_then(|()| if sync { file.sync() } else { Ok(()) });
        (file, r)
    })
    .await
    {
        Ok(x) => x,
        Err(e) => (Box::new(Broken), Err(io::Error::other(e))),
    }
}

struct Broken;
impl SinkFile for Broken {
    fn write_all(&mut self, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("recording file lost"))
    }
    fn sync(&mut self) -> io::Result<()> {
        Err(io::Error::other("recording file lost"))
    }
}

/// What the recorder task shares with the taps.
struct Task {
    /// The reservation the taps claim from (`None` where the sink cannot reserve).
    space: Option<Arc<Space>>,
    failed: Arc<watch::Sender<Option<String>>>,
    start: Instant,
}

async fn run(
    mut enc: Encoder,
    mut file: Box<dyn SinkFile>,
    mut rx: mpsc::Receiver<Chunk>,
    end_rx: oneshot::Receiver<EndInfo>,
    task: Task,
) -> Result<(), String> {
    let Task {
        space,
        failed,
        start,
    } = task;
    let fail = |what: String, failed: &Arc<watch::Sender<Option<String>>>| {
        failed.send_replace(Some(what.clone()));
        what
    };
    // fsync runs beside the writes when the sink allows it; one at a time.
    let mut syncer = file.syncer().ok();
    let mut sync_job: Option<tokio::task::JoinHandle<(Syncer, io::Result<()>)>> = None;
    let mut last_sync = Instant::now();
    let mut unsynced = true;
    // Sized by what each batch holds (the encoder reserves per record): a keystroke is a small
    // allocation, a bulk chunk one of its own size. A fixed 256 KiB buffer per batch was a fresh
    // mmap/munmap per write under glibc's fixed mmap threshold, most of the gateway's kernel time
    // under load (docs/benchmarks.md).
    let mut out: Vec<u8> = Vec::new();
    // Taps waiting for their chunk's record to be written (sinks that cannot reserve).
    let mut written: Vec<oneshot::Sender<()>> = Vec::new();
    let mut ledger = Ledger::default();
    // Room claimed by the chunks in this batch.
    let mut claimed = 0u64;
    loop {
        let next = tokio::select! {
            m = tokio::time::timeout(SYNC_EVERY, rx.recv()) => Some(m),
            r = async {
                match sync_job.as_mut() {
                    Some(job) => job.await,
                    None => std::future::pending().await,
                }
            }, if sync_job.is_some() => {
                sync_job = None;
                match r {
                    Ok((s, Ok(()))) => syncer = Some(s),
                    Ok((_, Err(e))) => {
                        // Fatal for this file: no retry-and-carry-on (an fsync error may have lost pages).
                        rx.close();
                        return Err(fail(format!("recording fsync failed: {e}"), &failed));
                    }
                    Err(e) => {
                        rx.close();
                        return Err(fail(format!("recording fsync task: {e}"), &failed));
                    }
                }
                None
            }
        };
        // Nothing arrived for SYNC_EVERY: sign and sync the tail now, so an idle session's
        // recording verifies up to its last byte within that interval.
        let idle = matches!(next, Some(Err(_)));
        let closed = match next {
            Some(Ok(Some(c))) => {
                claimed += encode(&mut enc, c, &mut out, &mut written);
                // Batch whatever else is already queued into one write.
                while out.len() < 1 << 20 {
                    match rx.try_recv() {
                        Ok(c) => claimed += encode(&mut enc, c, &mut out, &mut written),
                        Err(_) => break,
                    }
                }
                false
            }
            Some(Ok(None)) => true,
            Some(Err(_)) | None => false,
        };
        let t = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if !closed && (idle || enc.checkpoint_due(t)) {
            // Nothing is written when no record came since the last checkpoint.
            enc.checkpoint(t, &mut out);
        }
        if closed {
            break;
        }
        if let Some(space) = &space {
            ledger.settle(space, std::mem::take(&mut claimed), out.len() as u64);
        }
        let sync_due = (unsynced || !out.is_empty()) && (idle || last_sync.elapsed() >= SYNC_EVERY);
        // In-line sync only for sinks without a separate syncer.
        let inline_sync = sync_due && syncer.is_none() && sync_job.is_none();
        if !out.is_empty() || inline_sync {
            let buf = std::mem::take(&mut out);
            let (f, r) = blocking_write(file, buf, inline_sync).await;
            file = f;
            if let Err(e) = r {
                // Fatal for this file: no retry-and-carry-on (an fsync error may have lost pages).
                rx.close();
                return Err(fail(format!("recording write failed: {e}"), &failed));
            }
            unsynced = true;
            if inline_sync {
                last_sync = Instant::now();
                unsynced = false;
            }
        }
        for w in written.drain(..) {
            let _ = w.send(());
        }
        if sync_due && sync_job.is_none() {
            if let Some(mut s) = syncer.take() {
                last_sync = Instant::now();
                unsynced = false;
                sync_job = Some(tokio::task::spawn_blocking(move || {
                    let r = s();
                    (s, r)
                }));
            }
        }
    }
    if let Some(job) = sync_job.take() {
        if let Ok((_, Err(e))) = job.await {
            return Err(fail(format!("recording fsync failed: {e}"), &failed));
        }
    }
    let end = match end_rx.await {
        Ok(e) => e,
        Err(_) => return Err(fail("recorder dropped without an end".into(), &failed)),
    };
    let t = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let end = EndInfo {
        reason: fit_reason(end.reason),
        ..end
    };
    enc.finish(t, &end, &mut out);
    blocking_close(file, out)
        .await
        .map_err(|e| fail(format!("recording close failed: {e}"), &failed))
}

/// Encode one chunk into `out`; returns the room its tap claimed for it.
fn encode(
    enc: &mut Encoder,
    c: Chunk,
    out: &mut Vec<u8>,
    written: &mut Vec<oneshot::Sender<()>>,
) -> u64 {
    enc.data(c.dir, c.t_ns, &c.bytes, out);
    written.extend(c.written);
    space::claim_for(c.bytes.len())
}

/// The last write (end record, final checkpoint) and fsync, then give back unused reserved room.
async fn blocking_close(mut file: Box<dyn SinkFile>, buf: Vec<u8>) -> io::Result<()> {
    tokio::task::spawn_blocking(move || {
        file.write_all(&buf)?;
        file.sync()?;
        if let Err(e) = file.release() {
            tracing::warn!(event = "recording_release_failed", reason = %e,
                "could not give back the space reserved for a finished recording");
        }
        Ok(())
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A pretend disk holding one recording: `free` bytes left; the file holds `allocated` bytes
    /// of space (its length, or more when reserved).
    struct Disk {
        file: Vec<u8>,
        allocated: u64,
        free: u64,
        reserves: bool,
        /// Writes that went past the reserved room.
        beyond: usize,
    }

    #[derive(Clone)]
    struct Mem(Arc<Mutex<Disk>>);

    impl Mem {
        fn new(free: u64, reserves: bool) -> Self {
            let disk = Disk {
                file: Vec::new(),
                allocated: 0,
                free,
                reserves,
                beyond: 0,
            };
            Mem(Arc::new(Mutex::new(disk)))
        }

        /// Hold space up to `end`; `StorageFull` when the disk has not got it.
        fn hold(&self, end: u64) -> io::Result<()> {
            let mut d = self.0.lock().unwrap();
            let extra = end.saturating_sub(d.allocated);
            if extra > d.free {
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            d.free -= extra;
            d.allocated += extra;
            Ok(())
        }
    }

    impl Sink for Mem {
        fn create(&self, _: &str) -> io::Result<Box<dyn SinkFile>> {
            Ok(Box::new(self.clone()))
        }
    }

    impl SinkFile for Mem {
        fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
            let len = (self.0.lock().unwrap().file.len() + bytes.len()) as u64;
            if len > self.0.lock().unwrap().allocated {
                self.0.lock().unwrap().beyond += 1;
            }
            self.hold(len)?;
            self.0.lock().unwrap().file.extend_from_slice(bytes);
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn reserver(&self) -> io::Result<Reserver> {
            if !self.0.lock().unwrap().reserves {
                return Err(io::Error::from(io::ErrorKind::Unsupported));
            }
            let me = self.clone();
            Ok(Arc::new(move |at, len| me.hold(at + len)))
        }
        fn release(&mut self) -> io::Result<()> {
            let mut d = self.0.lock().unwrap();
            let spare = d.allocated - d.file.len() as u64;
            d.free += spare;
            d.allocated -= spare;
            Ok(())
        }
    }

    fn meta() -> SessionMeta {
        SessionMeta {
            session_id: "0123456789abcdef".into(),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: Some("acme".into()),
            cert_serial: "01".into(),
            source: "127.0.0.1:5000".into(),
            device: "pump-12".into(),
            device_addr: "127.0.0.1:2323".into(),
            protocol: "raw".into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: false,
            started_unix_ms: 0,
        }
    }

    /// Record chunks (keystrokes and larger ones, so checkpoints come on their own) until the tap
    /// refuses one; returns what it accepted (what the data path would have forwarded), the
    /// refusal, and the recorder.
    async fn record_until_refused(
        disk: &Mem,
        signer: &Arc<Signer>,
    ) -> (Vec<u8>, io::Error, SessionRecorder) {
        let sink: Arc<dyn Sink> = Arc::new(disk.clone());
        let rec = SessionRecorder::start(&sink, signer.clone(), &meta())
            .await
            .unwrap();
        let tap = rec.tap();
        let mut forwarded = Vec::new();
        let mut seed = 0u8;
        loop {
            let chunk = vec![seed; [1, 3, 1, 500, 1, 2000][usize::from(seed) % 6]];
            if let Err(e) = tap.record(Direction::Down, &chunk).await {
                return (forwarded, e, rec);
            }
            forwarded.extend_from_slice(&chunk);
            seed = seed.wrapping_add(1);
        }
    }

    fn end() -> EndInfo {
        EndInfo {
            ended_unix_ms: 1,
            reason: "x".repeat(5000),
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    fn recorded_down(bytes: &[u8]) -> Vec<u8> {
        let (records, _) = ward_recording::read_prefix(bytes);
        let mut down = Vec::new();
        for r in records {
            if let ward_recording::Record::Data { payload, .. } = r {
                down.extend_from_slice(&payload);
            }
        }
        down
    }

    #[tokio::test]
    async fn without_room_a_chunk_is_refused_and_the_recording_still_seals() {
        let disk = Mem::new(1 << 20, true);
        let signer = Arc::new(Signer::generate().unwrap().0);
        let (forwarded, refusal, rec) = record_until_refused(&disk, &signer).await;
        assert!(is_recording_failure(&refusal), "{refusal}");
        assert!(refusal.to_string().contains("no room"), "{refusal}");
        assert!(rec.failed().borrow().is_some(), "the session must be told");
        let err = rec.finish(end()).await.unwrap_err();
        assert!(err.contains("sealed"), "{err}");
        let d = disk.0.lock().unwrap();
        // Every byte forwarded is recorded, the recording is sealed (the long end reason was
        // cut to fit the margin), and the room reserved past its end was given back.
        assert_eq!(recorded_down(&d.file), forwarded);
        let report = ward_recording::verify(&d.file, &signer.public_key());
        assert!(report.ok, "{:?}", report.first_error);
        assert!(
            report.records > 2048,
            "checkpoints came on their own: {}",
            report.records
        );
        assert!(report.end.unwrap().reason.ends_with('…'));
        assert_eq!(d.beyond, 0, "every write landed in reserved room");
        assert_eq!(d.allocated, d.file.len() as u64);
    }

    #[tokio::test]
    async fn without_reservation_a_chunk_waits_for_its_write() {
        let disk = Mem::new(64 * 1024, false);
        let signer = Arc::new(Signer::generate().unwrap().0);
        let (forwarded, refusal, rec) = record_until_refused(&disk, &signer).await;
        assert!(is_recording_failure(&refusal), "{refusal}");
        assert!(refusal.to_string().contains("write failed"), "{refusal}");
        assert!(rec.finish(end()).await.is_err());
        // The refused chunk's write failed; everything forwarded before it is on disk.
        let d = disk.0.lock().unwrap();
        assert_eq!(recorded_down(&d.file), forwarded);
        assert!(forwarded.len() >= 40_000, "{}", forwarded.len());
    }
}
