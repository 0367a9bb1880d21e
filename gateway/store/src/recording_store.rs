//! The one recording store: where recording bytes live and how they are read back (issue 13 item 3).
//!
//! The recorder creates and appends through it, review lists and opens through it, crash recovery
//! reads and seals through it, the disk watch asks it where it writes. Only this file knows the
//! layout: a recording is the blob `<session_id>.wrec`, and on local disk ([`LocalFiles`]) the
//! blobs are files in `<state_dir>/recordings/`. Another place for the bytes (object storage,
//! issue 19) is another [`BlobBackend`]; no caller inspects the backend.
//!
//! The recording *format* (records, hash chain, signatures, sealing) stays in `ward_recording`,
//! which is pure: this store moves bytes, it never decides what they mean.

use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ward_recording::SessionMeta;

use crate::session_index::{FileStamp, IndexHook, SessionIndex};

/// The recordings directory inside a state dir (local files).
pub const RECORDINGS_DIR: &str = "recordings";
/// A recording blob's extension.
pub const EXT: &str = "wrec";

/// One blob open for writing: appended to, made durable, and, where the backend can, with its
/// room reserved ahead of the writes.
pub trait BlobWriter: Send + 'static {
    /// Append bytes.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Make everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// An independent handle that makes the blob durable, so the batched fsync can run while
    /// writes go on (fsync then never stalls the data path). Blobs without one are synced in line.
    fn syncer(&self) -> io::Result<Syncer> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// An independent handle that reserves room ahead of the writes, so the data path can claim
    /// room for a chunk's record before forwarding it while writes go on. Backends that cannot
    /// reserve say `Unsupported`: each chunk then waits for its write before it is forwarded.
    fn reserver(&self) -> io::Result<Reserver> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Give back room reserved beyond what was written (once, after the last write).
    fn release(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Makes a blob durable from another thread.
pub type Syncer = Box<dyn FnMut() -> io::Result<()> + Send>;

/// Reserves `len` bytes of a blob from offset `offset`, from another thread, so later writes there
/// cannot fail for lack of space; `StorageFull` when there is no room, and `Unsupported` when the
/// backend cannot reserve.
pub type Reserver = Arc<dyn Fn(u64, u64) -> io::Result<()> + Send + Sync>;

/// A blob open for reading.
pub trait BlobRead: Read + Seek + Send {}
impl<T: Read + Seek + Send> BlobRead for T {}

/// A blob opened for reading, with its length when opened: what a reader is given, even if the
/// blob grows meanwhile (a live recording).
pub struct Snapshot {
    /// The blob's bytes; read at most `len` of them.
    pub reader: Box<dyn BlobRead>,
    /// Its length when opened.
    pub len: u64,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("len", &self.len).finish()
    }
}

impl Snapshot {
    /// The first `len` bytes, read whole (small recordings, and what replay and export hold).
    pub fn read_all(mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0).min(1 << 20));
        self.reader.as_mut().take(self.len).read_to_end(&mut out)?;
        Ok(out)
    }
}

/// Where blobs live. Keys are plain names (`[0-9a-f]+.wrec`); the store checks them.
pub trait BlobBackend: Send + Sync + 'static {
    /// Create a new blob (never over an existing one), readable only by the gateway.
    fn create(&self, key: &str) -> io::Result<Box<dyn BlobWriter>>;
    /// Open an existing blob to append to it.
    fn append(&self, key: &str) -> io::Result<Box<dyn BlobWriter>>;
    /// Open a blob for reading; `NotFound` if there is none.
    fn read(&self, key: &str) -> io::Result<Snapshot>;
    /// Its length and modification time, without reading it.
    fn stat(&self, key: &str) -> io::Result<FileStamp>;
    /// Every key; an empty list when there is nothing stored yet.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Keep the first `keep` bytes, append `tail`, and make it durable (crash recovery's seal).
    fn replace_tail(&self, key: &str, keep: u64, tail: &[u8]) -> io::Result<()>;
    /// Delete a blob.
    fn remove(&self, key: &str) -> io::Result<()>;
    /// The local directory the blobs are in, for the disk watch (`None`: not on a local disk).
    fn local_dir(&self) -> Option<&Path> {
        None
    }
    /// Where the blobs are, for people (events, errors).
    fn describe(&self) -> String;
    /// The keys on this host only (a spool's), which crash recovery may have to seal: every key
    /// for local files.
    fn list_local(&self) -> io::Result<Vec<String>> {
        self.list()
    }
    /// Start background work (a spool's uploader): called once crash recovery has run.
    fn start_background(&self) {}
    /// The spool, when blobs go elsewhere through one (the disk watch admits sessions on it).
    fn spool(&self) -> Option<crate::s3::SpoolInfo> {
        None
    }
    /// Move what is ready to its final place and wait up to `within`; true when nothing is left
    /// to move (local files: always).
    fn drain(&self, within: std::time::Duration) -> bool {
        let _ = within;
        true
    }
    /// The object store and key prefix the blobs end up in, if any (for other shared files in
    /// the same bucket, e.g. audit mirrors: never for recordings, which go through the store).
    fn object_store(
        &self,
    ) -> Option<(Arc<dyn object_store::ObjectStore>, object_store::path::Path)> {
        None
    }
}

/// Blobs as files in one directory.
#[derive(Debug, Clone)]
pub struct LocalFiles {
    dir: PathBuf,
}

impl LocalFiles {
    /// Files in `dir` (not created: [`LocalFiles::create_dir`] does, before the first write).
    pub fn new(dir: &Path) -> Self {
        LocalFiles {
            dir: dir.to_path_buf(),
        }
    }

    /// Create the directory if it is missing.
    pub fn create_dir(self) -> io::Result<Self> {
        std::fs::create_dir_all(&self.dir)?;
        Ok(self)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }
}

/// One descriptor per recording, shared by the writer and the background fsync (no dup: at
/// 10,000 sessions descriptors, not memory, are the limit).
struct LocalFile(Arc<std::fs::File>);

impl BlobWriter for LocalFile {
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

impl BlobBackend for LocalFiles {
    fn create(&self, key: &str) -> io::Result<Box<dyn BlobWriter>> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path(key))?;
        Ok(Box::new(LocalFile(Arc::new(f))))
    }

    fn append(&self, key: &str) -> io::Result<Box<dyn BlobWriter>> {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path(key))?;
        Ok(Box::new(LocalFile(Arc::new(f))))
    }

    fn read(&self, key: &str) -> io::Result<Snapshot> {
        let file = std::fs::File::open(self.path(key))?;
        let len = file.metadata()?.len();
        Ok(Snapshot {
            reader: Box::new(file),
            len,
        })
    }

    fn stat(&self, key: &str) -> io::Result<FileStamp> {
        FileStamp::of(&self.path(key))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    fn replace_tail(&self, key: &str, keep: u64, tail: &[u8]) -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path(key))?;
        f.set_len(keep)?;
        f.seek(io::SeekFrom::Start(keep))?;
        f.write_all(tail)?;
        f.sync_all()
    }

    fn remove(&self, key: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(key))
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// The recordings: one blob per session, `<session_id>.wrec`, over a [`BlobBackend`], and the
/// session index that lists them without reading them (kept current at open and close).
#[derive(Clone)]
pub struct RecordingStore {
    blobs: Arc<dyn BlobBackend>,
    index: Option<Arc<dyn SessionIndex>>,
}

impl std::fmt::Debug for RecordingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingStore")
            .field("at", &self.blobs.describe())
            .finish()
    }
}

/// Session ids are hex digits (16 from the gateway; at most 64): anything else is refused before
/// it reaches a backend, so no id names a path outside the store.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_hexdigit())
}

fn key_of(id: &str) -> io::Result<String> {
    if !valid_id(id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{id:?} is not a session id"),
        ));
    }
    Ok(format!("{id}.{EXT}"))
}

impl RecordingStore {
    /// The recordings over `blobs`.
    pub fn new(blobs: Arc<dyn BlobBackend>) -> Self {
        RecordingStore { blobs, index: None }
    }

    /// The same recordings, indexed in `index` (the gateway's): sessions opened through
    /// [`RecordingStore::index_open`] get a row at open and at close, and crash recovery backfills.
    pub fn with_index(mut self, index: Arc<dyn SessionIndex>) -> Self {
        self.index = Some(index);
        self
    }

    /// The session index, if this store keeps one.
    pub fn index(&self) -> Option<&dyn SessionIndex> {
        self.index.as_deref()
    }

    /// Index the session `meta` as open (on a blocking thread); the hook closes its row with the
    /// recording's stamp when the recorder seals it. `None` without an index.
    pub fn index_open(&self, meta: &SessionMeta) -> Option<IndexHook> {
        let index = self.index.clone()?;
        Some(IndexHook::open(index, self.clone(), meta))
    }

    /// A state dir's recordings on local disk, for reading (the directory is not created).
    pub fn local(state_dir: &Path) -> Self {
        Self::new(Arc::new(LocalFiles::new(&state_dir.join(RECORDINGS_DIR))))
    }

    /// A state dir's recordings on local disk, for the gateway (the directory is created).
    pub fn local_for_writing(state_dir: &Path) -> io::Result<Self> {
        let files = LocalFiles::new(&state_dir.join(RECORDINGS_DIR)).create_dir()?;
        Ok(Self::new(Arc::new(files)))
    }

    /// Recordings in S3-compatible object storage through the spool `spool_dir` (created).
    pub fn spooled(
        bucket: crate::s3::BucketSettings,
        spool_dir: &Path,
        spool_limit: u64,
    ) -> io::Result<Self> {
        Ok(Self::new(crate::s3::Spooled::open(
            bucket,
            spool_dir,
            spool_limit,
        )?))
    }

    /// The ids of the recordings on this host (a spool's), the ones crash recovery may seal.
    pub fn list_local(&self) -> io::Result<Vec<String>> {
        Ok(self.ids_of(self.blobs.list_local()?))
    }

    /// Start background work (uploads from a spool): after crash recovery.
    pub fn start_background(&self) {
        self.blobs.start_background();
    }

    /// The spool, if recordings go through one.
    pub fn spool(&self) -> Option<crate::s3::SpoolInfo> {
        self.blobs.spool()
    }

    /// The bucket (and key prefix) recordings go to, if they go to object storage: for other
    /// shared files kept next to them (audit mirrors). Recordings themselves go through this store.
    pub fn object_store(
        &self,
    ) -> Option<(Arc<dyn object_store::ObjectStore>, object_store::path::Path)> {
        self.blobs.object_store()
    }

    /// Move every ready recording to its final place, waiting up to `within`; true when done.
    pub fn drain(&self, within: std::time::Duration) -> bool {
        self.blobs.drain(within)
    }

    /// Create the recording of a new session (never over an existing one).
    pub fn create(&self, id: &str) -> io::Result<Box<dyn BlobWriter>> {
        self.blobs.create(&key_of(id)?)
    }

    /// Open a session's recording to append to it.
    pub fn append(&self, id: &str) -> io::Result<Box<dyn BlobWriter>> {
        self.blobs.append(&key_of(id)?)
    }

    /// Write a finished recording's last bytes (end record, final checkpoint), make it durable and
    /// give back the room reserved past its end. What the recorder does when a session ends.
    pub fn seal(writer: &mut dyn BlobWriter, last: &[u8]) -> io::Result<()> {
        writer.write_all(last)?;
        writer.sync()?;
        if let Err(e) = writer.release() {
            tracing::warn!(event = "recording_release_failed", reason = %e,
                "could not give back the space reserved for a finished recording");
        }
        Ok(())
    }

    /// Open a session's recording for reading, with its length now.
    pub fn open(&self, id: &str) -> io::Result<Snapshot> {
        self.blobs.read(&key_of(id)?)
    }

    /// A session's recording, read whole.
    pub fn read_all(&self, id: &str) -> io::Result<Vec<u8>> {
        self.open(id)?.read_all()
    }

    /// A recording's length and modification time (what the session index vouches for).
    pub fn stamp(&self, id: &str) -> io::Result<FileStamp> {
        self.blobs.stat(&key_of(id)?)
    }

    /// The ids of every recording stored (unsorted); other blobs are ignored.
    pub fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.ids_of(self.blobs.list()?))
    }

    fn ids_of(&self, keys: Vec<String>) -> Vec<String> {
        let suffix = format!(".{EXT}");
        let mut ids = Vec::new();
        for key in keys {
            let Some(id) = key.strip_suffix(&suffix) else {
                continue;
            };
            if valid_id(id) {
                ids.push(id.to_owned());
            } else {
                // Not a name the gateway writes: someone put it there (or renamed a recording).
                tracing::warn!(event = "recording_misnamed", blob = %ward_core::Escaped(&key), at = %self.blobs.describe(),
                    "a blob in the recordings is not named after a session id: not listed");
            }
        }
        ids
    }

    /// Crash recovery's seal: keep the first `keep` bytes (the verified prefix), append `tail`
    /// (the interrupted end and its checkpoint), durable before it returns.
    pub fn recover(&self, id: &str, keep: u64, tail: &[u8]) -> io::Result<()> {
        self.blobs.replace_tail(&key_of(id)?, keep, tail)
    }

    /// Delete a session's recording.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        self.blobs.remove(&key_of(id)?)
    }

    /// The local directory the recordings are in (the disk watch measures it), if local.
    pub fn local_dir(&self) -> Option<&Path> {
        self.blobs.local_dir()
    }

    /// Where the recordings are, for people.
    pub fn describe(&self) -> String {
        self.blobs.describe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use ward_recording::{CheckpointPolicy, Direction, Encoder, EndInfo, SealStatus, SessionMeta};

    fn meta(id: &str) -> SessionMeta {
        SessionMeta {
            session_id: id.into(),
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

    fn store() -> (tempfile::TempDir, RecordingStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordingStore::local_for_writing(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn create_append_seal_then_list_and_read_back() {
        let (dir, store) = store();
        let signer = Arc::new(ward_recording::Signer::generate().unwrap().0);
        let id = "00112233aabbccdd";
        let mut out = Vec::new();
        let mut enc = Encoder::start(
            &meta(id),
            signer.clone(),
            CheckpointPolicy::default(),
            &mut out,
        )
        .unwrap();
        let mut w = store.create(id).unwrap();
        w.write_all(&out).unwrap();
        drop(w);
        // A second writer appends after the first (reopened, as a resumed writer would).
        let mut out = Vec::new();
        enc.data(Direction::Down, 1, b"hello", &mut out);
        let mut w = store.append(id).unwrap();
        w.write_all(&out).unwrap();
        let mut last = Vec::new();
        let end = EndInfo {
            ended_unix_ms: 1,
            reason: "done".into(),
            bytes_up: 0,
            bytes_down: 5,
        };
        enc.finish(2, &end, &mut last);
        RecordingStore::seal(w.as_mut(), &last).unwrap();
        assert_eq!(store.list().unwrap(), vec![id.to_string()]);
        let bytes = store.read_all(id).unwrap();
        let report = ward_recording::verify(&bytes, &signer.public_key());
        assert!(report.ok, "{:?}", report.first_error);
        assert_eq!(report.status, SealStatus::Sealed);
        assert_eq!(store.stamp(id).unwrap().len, bytes.len() as u64);
        // The layout: one file per session in <state_dir>/recordings, 0600.
        let path = dir.path().join(RECORDINGS_DIR).join(format!("{id}.{EXT}"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never over an existing recording.
        assert_eq!(
            store.create(id).err().unwrap().kind(),
            io::ErrorKind::AlreadyExists
        );
    }

    #[test]
    fn a_snapshot_is_the_length_when_opened() {
        let (_dir, store) = store();
        let id = "ab";
        store.create(id).unwrap().write_all(b"0123").unwrap();
        let snap = store.open(id).unwrap();
        store.append(id).unwrap().write_all(b"4567").unwrap();
        assert_eq!(snap.len, 4);
        assert_eq!(snap.read_all().unwrap(), b"0123");
        assert_eq!(store.read_all(id).unwrap(), b"01234567");
    }

    #[test]
    fn crash_recovery_keeps_the_prefix_and_appends_the_tail() {
        let (_dir, store) = store();
        let signer = ward_recording::Signer::generate().unwrap().0;
        let id = "0a0b";
        let mut out = Vec::new();
        let signer = Arc::new(signer);
        let mut enc = Encoder::start(
            &meta(id),
            signer.clone(),
            CheckpointPolicy::default(),
            &mut out,
        )
        .unwrap();
        enc.data(Direction::Up, 1, b"typed", &mut out);
        enc.checkpoint(2, &mut out);
        // A torn write after the last checkpoint.
        out.extend_from_slice(b"\x01\x02garbage");
        store.create(id).unwrap().write_all(&out).unwrap();
        let bytes = store.read_all(id).unwrap();
        assert_eq!(
            ward_recording::verify(&bytes, &signer.public_key()).status,
            SealStatus::Unsealed
        );
        let mut tail = Vec::new();
        let keep =
            ward_recording::seal_interrupted(&bytes, &signer, "crash", 0, &mut tail).unwrap();
        store.recover(id, keep, &tail).unwrap();
        let report = ward_recording::verify(&store.read_all(id).unwrap(), &signer.public_key());
        assert_eq!(
            report.status,
            SealStatus::Interrupted,
            "{:?}",
            report.first_error
        );
        assert!(
            report.ok || report.first_error.is_none(),
            "{:?}",
            report.first_error
        );
    }

    #[test]
    fn ids_that_are_not_hex_never_reach_the_backend() {
        let (dir, store) = store();
        std::fs::write(dir.path().join("secret.wrec"), b"x").unwrap();
        for bad in ["../secret", "", "x", "../../etc/passwd", &"a".repeat(65)] {
            assert_eq!(
                store.open(bad).err().unwrap().kind(),
                io::ErrorKind::InvalidInput,
                "{bad}"
            );
            assert!(store.create(bad).is_err(), "{bad}");
        }
        // Listing skips what is not a recording (other files, names that are not ids).
        std::fs::write(dir.path().join(RECORDINGS_DIR).join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join(RECORDINGS_DIR).join("zz.wrec"), b"x").unwrap();
        store.create("cafe").unwrap();
        assert_eq!(store.list().unwrap(), vec!["cafe".to_string()]);
        store.remove("cafe").unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_missing_directory_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordingStore::local(&dir.path().join("nowhere"));
        assert!(store.list().unwrap().is_empty());
        assert_eq!(
            store.open("ab").err().unwrap().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn the_index_row_opens_with_the_session_and_closes_with_the_blobs_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(crate::store::SqliteStore::open(dir.path()).unwrap());
        let store = RecordingStore::local_for_writing(dir.path())
            .unwrap()
            .with_index(db.clone());
        let id = "00000000000000cc";
        store.create(id).unwrap().write_all(b"header").unwrap();
        // A start with milliseconds: the duration is measured from it, as the recording's is.
        let started = SessionMeta {
            started_unix_ms: 1_250,
            recipients: Vec::new(),
            age_header: None,
            ..meta(id)
        };
        let hook = store.index_open(&started).unwrap();
        let end = EndInfo {
            ended_unix_ms: 3_000,
            reason: "client closed".into(),
            bytes_up: 1,
            bytes_down: 2,
        };
        store.append(id).unwrap().write_all(b"+end").unwrap();
        hook.close(end, Ok(()), Default::default()).await;
        let rows = store.index().unwrap().all().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].summary.id, id);
        assert_eq!(rows[0].summary.verification, "ok");
        assert_eq!(rows[0].summary.bytes_down, 2);
        assert_eq!(rows[0].summary.duration_s, 1.75);
        // The stamp is the blob's as sealed: a listing trusts the row until the blob changes.
        assert_eq!(rows[0].stamp, Some(store.stamp(id).unwrap()));
        assert_eq!(rows[0].stamp.unwrap().len, 10);
        // Without an index there is no hook.
        assert!(RecordingStore::local(dir.path())
            .index_open(&meta(id))
            .is_none());
    }
}
