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

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use ward_core::stage::RecordedEvent;
use ward_decode::summary::OpsSummary;
use ward_recording::{CheckpointPolicy, Direction, Encoder, EndInfo, SessionMeta, Signer};

pub mod space;

use space::{Ledger, Space};

/// Chunks buffered between the data path and the recorder task (≤ 64 KiB each).
pub const CHANNEL_CHUNKS: usize = 16;
/// fsync at least this often while there are unsynced bytes.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);
/// Recording file extension (the layout is the recording store's: [`crate::recording_store`]).
pub use crate::recording_store::EXT;
/// What the recorder writes to, and its handles (defined by the recording store).
pub use crate::recording_store::{BlobWriter as SinkFile, Reserver, Syncer};

/// Where recordings go.
pub trait Sink: Send + Sync + 'static {
    /// Create the recording for `session_id`; fails if it cannot be opened (the session is refused).
    fn create(&self, session_id: &str) -> io::Result<Box<dyn SinkFile>>;
}

/// The gateway's recordings: the recording store (local files today).
impl Sink for crate::recording_store::RecordingStore {
    fn create(&self, session_id: &str) -> io::Result<Box<dyn SinkFile>> {
        crate::recording_store::RecordingStore::create(self, session_id)
    }
}

struct Chunk {
    dir: Direction,
    t_ns: u64,
    /// The bytes, or (when `event` is set) nothing.
    bytes: Bytes,
    /// An event recorded at this point instead of bytes ([`Tap::record_event`]).
    event: Option<RecordedEvent>,
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
            event: None,
            written,
        };
        self.tx.send(chunk).await.map_err(|_| self.stopped())
    }

    /// Record `event` at this point of the session (hash-chained like the bytes): an injected
    /// credential in place of its bytes, a rejected credential. Like [`Tap::record`], it fails
    /// when the recording has failed or has no room, and the caller must then stop the session.
    pub async fn record_event(&self, dir: Direction, event: RecordedEvent) -> io::Result<()> {
        let t_ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let size = event_size(&event);
        let written = match &self.space {
            Some(space) => {
                if let Err(e) = space.claim(size).await {
                    return Err(self.no_room(size, &e));
                }
                None
            }
            None => Some(oneshot::channel()),
        };
        let (tx, rx) = match written {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        let chunk = Chunk {
            dir,
            t_ns,
            bytes: Bytes::new(),
            event: Some(event),
            written: tx,
        };
        self.tx.send(chunk).await.map_err(|_| self.stopped())?;
        match rx {
            Some(rx) => rx.await.map_err(|_| self.stopped()),
            None => Ok(()),
        }
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
    /// The recorder task: what the recorded events say the session did, once sealed.
    done: tokio::task::JoinHandle<Result<OpsSummary, String>>,
    end_tx: oneshot::Sender<EndInfo>,
    /// Keeps the session index's row current.
    index: Option<crate::session_index::IndexHook>,
}

impl SessionRecorder {
    /// Open the recording (header, metadata, first checkpoint written and synced) and start its
    /// task. With `recipients` (`[recording] recipients`), every data and event record is
    /// encrypted to them (sealed records, docs/recording-format.md): the task seals what each
    /// batch holds before writing it, so no plaintext reaches the file.
    pub async fn start(
        sink: &Arc<dyn Sink>,
        signer: Arc<Signer>,
        meta: &SessionMeta,
        recipients: &[age::x25519::Recipient],
    ) -> io::Result<SessionRecorder> {
        let mut out = Vec::with_capacity(4096);
        let policy = CheckpointPolicy::default();
        let encoder = if recipients.is_empty() {
            Encoder::start(meta, signer, policy, &mut out)
        } else {
            Encoder::start_sealed(meta, signer, policy, recipients, &mut out)
        }
        .map_err(|e| io::Error::other(format!("recording header: {e}")))?;
        let sealed = encoder.is_sealed();
        let sink = sink.clone();
        let id = meta.session_id.clone();
        // Created, its room reserved and its header written before the session may start (fail
        // closed); made durable by the first batched fsync, at most SYNC_EVERY later.
        let (file, space) =
            tokio::task::spawn_blocking(move || open_file(&*sink, &id, &out, sealed))
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
        let mut ops = OpsSummary::default();
        let outcome = match done.await {
            Err(e) => Err(format!("recorder task: {e}")),
            Ok(Err(e)) => Err(e),
            Ok(Ok(summary)) => {
                ops = summary;
                match failed.borrow().clone() {
                    Some(e) => Err(format!(
                        "{e}: session ended; its recording holds every byte forwarded and is sealed"
                    )),
                    None => Ok(()),
                }
            }
        };
        if let Some(index) = index {
            let ops = crate::session_index::SessionOps {
                ops: ops.ops.into_iter().collect(),
                undecodable: ops.undecodable,
                denied_ops: ops.denied,
                truncated: ops.truncated,
            };
            index.close(end, outcome.clone(), ops).await;
        }
        outcome
    }
}

/// Read `[recording] recipients_file` (already resolved against the config's directory) into
/// `recording`'s recipients; errors name the file, line and field. Runs at every load and reload.
pub fn read_recipients_file(
    recording: &mut ward_core::config::RecordingConfig,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let Some(path) = recording.recipients_file.clone() else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading [recording] recipients_file {} (one age1… recipient per line)",
            path.display()
        )
    })?;
    recording.add_recipients_file(&text, &path.display().to_string())?;
    Ok(())
}

/// At start: say loudly when recordings will be stored in plain text.
pub fn warn_if_plain(recording: &ward_core::config::RecordingConfig, recording_on: bool) {
    if recording_on && !recording.encrypts() {
        tracing::warn!(
            event = "recordings_unencrypted",
            "recordings are not encrypted at rest: set [recording] recipients (the security team's age public keys; docs/config.md)"
        );
    } else if recording.encrypts() {
        tracing::info!(
            event = "recordings_encrypted",
            recipients = recording.recipients.len(),
            "recordings are encrypted at rest to the [recording] recipients"
        );
    }
}

/// Create the recording, reserve its room where the sink can, and write its header (blocking).
fn open_file(
    sink: &dyn Sink,
    id: &str,
    header: &[u8],
    sealed: bool,
) -> io::Result<(Box<dyn SinkFile>, Option<Space>)> {
    let mut file = sink.create(id)?;
    let space = match file
        .reserver()
        .and_then(|r| Space::open(r, header.len() as u64, sealed))
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
    enc: Encoder,
    file: Box<dyn SinkFile>,
    rx: mpsc::Receiver<Chunk>,
    end_rx: oneshot::Receiver<EndInfo>,
    task: Task,
) -> Result<OpsSummary, String> {
    let mut w = Writer::new(enc, file, rx, task);
    loop {
        let next = w.next().await?;
        // Nothing arrived for SYNC_EVERY: sign and sync the tail now, so an idle session's
        // recording verifies up to its last byte within that interval.
        let idle = matches!(next, Next::Idle);
        match next {
            Next::Chunk(c) => w.take_queued(c),
            Next::Closed => break,
            Next::Idle | Next::Synced => {}
        }
        let t = w.elapsed_ns();
        // Encrypted recordings: what this batch holds is sealed before it is written, so
        // plaintext never outlives a batch (nothing when not encrypted).
        if let Err(e) = w.enc.flush(t, &mut w.out) {
            return Err(w.fail(format!("recording encryption failed: {e}")));
        }
        if idle || w.enc.checkpoint_due(t) {
            // Nothing is written when no record came since the last checkpoint.
            w.enc.checkpoint(t, &mut w.out);
        }
        w.write_batch(idle).await?;
    }
    w.finish(end_rx).await
}

/// What woke the recorder task.
enum Next {
    /// A chunk to record.
    Chunk(Chunk),
    /// Nothing for [`SYNC_EVERY`].
    Idle,
    /// The background fsync finished.
    Synced,
    /// Every tap is gone: the session ended.
    Closed,
}

/// The recorder task's state between batches: the encoder, the file, the batch being built and
/// the fsync running beside the writes.
struct Writer {
    enc: Encoder,
    file: Box<dyn SinkFile>,
    rx: mpsc::Receiver<Chunk>,
    task: Task,
    /// fsync runs beside the writes when the sink allows it; one at a time.
    syncer: Option<Syncer>,
    sync_job: Option<tokio::task::JoinHandle<(Syncer, io::Result<()>)>>,
    last_sync: Instant,
    unsynced: bool,
    /// Sized by what each batch holds (the encoder reserves per record): a keystroke is a small
    /// allocation, a bulk chunk one of its own size. A fixed 256 KiB buffer per batch was a fresh
    /// mmap/munmap per write under glibc's fixed mmap threshold, most of the gateway's kernel
    /// time under load (docs/benchmarks.md).
    out: Vec<u8>,
    /// Taps waiting for their chunk's record to be written (sinks that cannot reserve).
    written: Vec<oneshot::Sender<()>>,
    ledger: Ledger,
    /// Room claimed by the chunks in this batch.
    claimed: u64,
    /// The session's operations, from every event recorded (for its index row).
    ops: OpsSummary,
}

impl Writer {
    fn new(enc: Encoder, file: Box<dyn SinkFile>, rx: mpsc::Receiver<Chunk>, task: Task) -> Self {
        let syncer = file.syncer().ok();
        Writer {
            enc,
            file,
            rx,
            task,
            syncer,
            sync_job: None,
            last_sync: Instant::now(),
            unsynced: true,
            out: Vec::new(),
            written: Vec::new(),
            ledger: Ledger::default(),
            claimed: 0,
            ops: OpsSummary::default(),
        }
    }

    /// Fatal for this file: no retry-and-carry-on (an fsync error may have lost pages). The taps
    /// see it at once and stop forwarding.
    fn fail(&mut self, what: String) -> String {
        self.rx.close();
        self.task.failed.send_replace(Some(what.clone()));
        what
    }

    fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.task.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The next chunk, an idle interval, or the background fsync's end.
    async fn next(&mut self) -> Result<Next, String> {
        let sync_done = tokio::select! {
            m = tokio::time::timeout(SYNC_EVERY, self.rx.recv()) => {
                return Ok(match m {
                    Ok(Some(c)) => Next::Chunk(c),
                    Ok(None) => Next::Closed,
                    Err(_) => Next::Idle,
                });
            }
            r = async {
                match self.sync_job.as_mut() {
                    Some(job) => job.await,
                    None => std::future::pending().await,
                }
            }, if self.sync_job.is_some() => r,
        };
        self.sync_job = None;
        match sync_done {
            Ok((s, Ok(()))) => {
                self.syncer = Some(s);
                Ok(Next::Synced)
            }
            Ok((_, Err(e))) => Err(self.fail(format!("recording fsync failed: {e}"))),
            Err(e) => Err(self.fail(format!("recording fsync task: {e}"))),
        }
    }

    /// Encode `first` and whatever else is already queued into one batch.
    fn take_queued(&mut self, first: Chunk) {
        self.take(first);
        while self.out.len() < 1 << 20 {
            match self.rx.try_recv() {
                Ok(c) => self.take(c),
                Err(_) => break,
            }
        }
    }

    /// Encode one chunk; an event is also summarised for the session's index row.
    fn take(&mut self, c: Chunk) {
        if let Some(ev) = &c.event {
            self.ops.note(ev);
        }
        let sealed = self.enc.is_sealed();
        self.claimed += encode(&mut self.enc, c, &mut self.out, &mut self.written, sealed);
    }

    /// Write the batch (syncing in line for sinks without a separate syncer), release the taps
    /// waiting for it, and start a background fsync when one is due.
    async fn write_batch(&mut self, idle: bool) -> Result<(), String> {
        if let Some(space) = &self.task.space {
            let claimed = std::mem::take(&mut self.claimed);
            self.ledger.settle(space, claimed, self.out.len() as u64);
        }
        let sync_due = (self.unsynced || !self.out.is_empty())
            && (idle || self.last_sync.elapsed() >= SYNC_EVERY);
        let inline_sync = sync_due && self.syncer.is_none() && self.sync_job.is_none();
        if !self.out.is_empty() || inline_sync {
            let buf = std::mem::take(&mut self.out);
            let file = std::mem::replace(&mut self.file, Box::new(Broken));
            let (file, r) = blocking_write(file, buf, inline_sync).await;
            self.file = file;
            if let Err(e) = r {
                return Err(self.fail(format!("recording write failed: {e}")));
            }
            self.unsynced = true;
            if inline_sync {
                self.last_sync = Instant::now();
                self.unsynced = false;
            }
        }
        for w in self.written.drain(..) {
            let _ = w.send(());
        }
        if sync_due && self.sync_job.is_none() {
            if let Some(mut s) = self.syncer.take() {
                self.last_sync = Instant::now();
                self.unsynced = false;
                self.sync_job = Some(tokio::task::spawn_blocking(move || {
                    let r = s();
                    (s, r)
                }));
            }
        }
        Ok(())
    }

    /// After the last chunk: wait for the fsync in flight, then write the End record and the
    /// final checkpoint, fsync and close.
    async fn finish(mut self, end_rx: oneshot::Receiver<EndInfo>) -> Result<OpsSummary, String> {
        if let Some(job) = self.sync_job.take() {
            if let Ok((_, Err(e))) = job.await {
                return Err(self.fail(format!("recording fsync failed: {e}")));
            }
        }
        let end = match end_rx.await {
            Ok(e) => e,
            Err(_) => return Err(self.fail("recorder dropped without an end".into())),
        };
        let t = self.elapsed_ns();
        let end = EndInfo {
            reason: fit_reason(end.reason),
            ..end
        };
        let Writer {
            enc,
            file,
            mut out,
            task,
            ops,
            ..
        } = self;
        enc.finish(t, &end, &mut out);
        blocking_close(file, out)
            .await
            .map_err(|e| {
                let what = format!("recording close failed: {e}");
                task.failed.send_replace(Some(what.clone()));
                what
            })
            .map(|()| ops)
    }
}

/// Encode one chunk into `out`; returns the room its tap claimed for it.
fn encode(
    enc: &mut Encoder,
    c: Chunk,
    out: &mut Vec<u8>,
    written: &mut Vec<oneshot::Sender<()>>,
    sealed: bool,
) -> u64 {
    written.extend(c.written);
    match c.event {
        Some(ev) => {
            let size = event_size(&ev);
            enc.event(c.dir, c.t_ns, &ev.kind, &ev.fields, out);
            space::claim_for(size, sealed)
        }
        None => {
            enc.data(c.dir, c.t_ns, &c.bytes, out);
            space::claim_for(c.bytes.len(), sealed)
        }
    }
}

/// Room an event's record takes, at most (its JSON, escaped, with room to spare).
fn event_size(ev: &RecordedEvent) -> usize {
    let text: usize = ev
        .fields
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + ev.kind.len();
    // JSON escaping at most sextuples a byte (`\u00XX`); punctuation per field; the direction.
    text * 6 + ev.fields.len() * 8 + 64
}

/// The last write (end record, final checkpoint) and fsync, then give back unused reserved room.
async fn blocking_close(mut file: Box<dyn SinkFile>, buf: Vec<u8>) -> io::Result<()> {
    tokio::task::spawn_blocking(move || {
        crate::recording_store::RecordingStore::seal(file.as_mut(), &buf)
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
            recipients: Vec::new(),
            age_header: None,
        }
    }

    /// Record chunks (keystrokes and larger ones, so checkpoints come on their own) until the tap
    /// refuses one; returns what it accepted (what the data path would have forwarded), the
    /// refusal, and the recorder.
    async fn record_until_refused(
        disk: &Mem,
        signer: &Arc<Signer>,
    ) -> (Vec<u8>, io::Error, SessionRecorder) {
        record_until_refused_to(disk, signer, &[]).await
    }

    async fn record_until_refused_to(
        disk: &Mem,
        signer: &Arc<Signer>,
        recipients: &[age::x25519::Recipient],
    ) -> (Vec<u8>, io::Error, SessionRecorder) {
        let sink: Arc<dyn Sink> = Arc::new(disk.clone());
        let rec = SessionRecorder::start(&sink, signer.clone(), &meta(), recipients)
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

    #[tokio::test]
    async fn an_encrypted_recording_fits_its_claims_and_holds_no_plaintext() {
        let disk = Mem::new(1 << 20, true);
        let signer = Arc::new(Signer::generate().unwrap().0);
        let id = age::x25519::Identity::generate();
        let (forwarded, refusal, rec) =
            record_until_refused_to(&disk, &signer, &[id.to_public()]).await;
        assert!(refusal.to_string().contains("no room"), "{refusal}");
        assert!(rec.finish(end()).await.unwrap_err().contains("sealed"));
        let d = disk.0.lock().unwrap();
        assert_eq!(d.beyond, 0, "every write landed in reserved room");
        let report = ward_recording::verify(&d.file, &signer.public_key());
        assert!(report.ok, "{:?}", report.first_error);
        // No data record in plain text; a 2000-byte run of one byte value would show.
        let (records, _) = ward_recording::read_prefix(&d.file);
        assert!(!records
            .iter()
            .any(|r| matches!(r, ward_recording::Record::Data { .. })));
        assert!(recorded_down(&d.file).is_empty());
        let run = vec![5u8; 2000];
        assert!(!d.file.windows(run.len()).any(|w| w == run.as_slice()));
        // The reviewer's identity opens exactly what was forwarded.
        let meta = report.meta.unwrap();
        let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
        let u = ward_recording::sealed::Unsealer::new(&meta, &ids).unwrap();
        let opened = ward_recording::sealed::open_records(records, Some(&u)).unwrap();
        let mut down = Vec::new();
        for r in opened {
            if let ward_recording::Record::Data { payload, .. } = r {
                down.extend_from_slice(&payload);
            }
        }
        assert_eq!(down, forwarded);
    }
}
