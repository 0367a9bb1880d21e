//! Session recording at the gateway: the data path hands every chunk to a [`Tap`] before forwarding
//! it; a per-session recorder task encodes chunks with `ward_recording::Encoder` (hash chain, signed
//! checkpoints) and writes them to a [`Sink`] (local files today; S3-compatible object storage later).
//!
//! Fail closed: if the sink cannot be opened there is no session; if a write or fsync fails the
//! recorder reports it on [`SessionRecorder::failed`] and stops taking chunks, so the session ends
//! (within one second) and no further byte is forwarded unrecorded. Memory is bounded: the channel
//! holds at most [`CHANNEL_CHUNKS`] chunks, after which the data path waits (backpressure).
//! Durability lags by at most [`SYNC_EVERY`]: fsync is batched off the data path.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use ward_recording::{CheckpointPolicy, Direction, Encoder, EndInfo, SessionMeta, Signer};

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
}

/// Makes a recording durable from another thread.
pub type Syncer = Box<dyn FnMut() -> io::Result<()> + Send>;

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
}

/// The data path's handle: record a chunk before forwarding it.
#[derive(Clone)]
pub struct Tap {
    tx: mpsc::Sender<Chunk>,
    start: Instant,
}

impl Tap {
    /// Hand `bytes` to the recorder; waits when the recorder is behind; fails once the recording
    /// has failed (the caller must then stop forwarding).
    pub async fn record(&self, dir: Direction, bytes: &[u8]) -> io::Result<()> {
        let t_ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.tx
            .send(Chunk {
                dir,
                t_ns,
                bytes: Bytes::copy_from_slice(bytes),
            })
            .await
            .map_err(|_| {
                io::Error::other(
                    "recording failed: session ended to keep it recorded (fail closed)",
                )
            })
    }
}

/// A session's recorder.
pub struct SessionRecorder {
    tap: Tap,
    failed: watch::Receiver<Option<String>>,
    done: tokio::task::JoinHandle<Result<(), String>>,
    end_tx: tokio::sync::oneshot::Sender<EndInfo>,
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
        // Created and its header written before the session may start (fail closed); made
        // durable by the first batched fsync, at most SYNC_EVERY later.
        let file = tokio::task::spawn_blocking(move || -> io::Result<Box<dyn SinkFile>> {
            let mut f = sink.create(&id)?;
            f.write_all(&out)?;
            Ok(f)
        })
        .await
        .map_err(io::Error::other)??;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let (failed_tx, failed) = watch::channel(None);
        let (end_tx, end_rx) = tokio::sync::oneshot::channel();
        let start = Instant::now();
        let done = tokio::spawn(run(encoder, file, rx, end_rx, failed_tx, start));
        Ok(SessionRecorder {
            tap: Tap { tx, start },
            failed,
            done,
            end_tx,
        })
    }

    /// The data path's tap.
    pub fn tap(&self) -> Tap {
        self.tap.clone()
    }

    /// Resolves with the error once the recording has failed.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.clone()
    }

    /// Write the end record and final checkpoint, fsync, and close.
    pub async fn finish(self, end: EndInfo) -> Result<(), String> {
        let SessionRecorder {
            tap, done, end_tx, ..
        } = self;
        drop(tap);
        let _ = end_tx.send(end);
        done.await.map_err(|e| format!("recorder task: {e}"))?
    }
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

async fn run(
    mut enc: Encoder,
    mut file: Box<dyn SinkFile>,
    mut rx: mpsc::Receiver<Chunk>,
    end_rx: tokio::sync::oneshot::Receiver<EndInfo>,
    failed: watch::Sender<Option<String>>,
    start: Instant,
) -> Result<(), String> {
    let fail = |what: String, failed: &watch::Sender<Option<String>>| {
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
                enc.data(c.dir, c.t_ns, &c.bytes, &mut out);
                // Batch whatever else is already queued into one write.
                while out.len() < 1 << 20 {
                    match rx.try_recv() {
                        Ok(c) => enc.data(c.dir, c.t_ns, &c.bytes, &mut out),
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
    enc.finish(t, &end, &mut out);
    let (_f, r) = blocking_write(file, out, true).await;
    r.map_err(|e| fail(format!("recording close failed: {e}"), &failed))
}
