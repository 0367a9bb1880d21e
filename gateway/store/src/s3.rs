//! Recordings in S3-compatible object storage, through a local spool (issue 19 item 3).
//!
//! [`Spooled`] is a [`BlobBackend`]: the recorder writes and fsyncs to the spool exactly as it does
//! to local files (the fail-closed guarantees and the reserved room are the spool's), and an
//! uploader task moves every *sealed* recording to the bucket:
//!
//! 1. the recording is ready once its writer gave back its reserved room ([`BlobWriter::release`],
//!    which the recording store's seal does after the end record is durable) and closed — or, for a
//!    recording found in the spool at start, once crash recovery ran ([`BlobBackend::start_background`]
//!    is called after it);
//! 2. it is hashed (SHA-256) and uploaded, in one PUT up to [`MULTIPART_ABOVE`] and in parts of
//!    [`PART_SIZE`] above, with its hash and modification time as object metadata;
//! 3. the upload is verified by **reading the object back** whole and comparing its length and
//!    SHA-256 with the spool file's (not the ETag: a multipart ETag is not a hash of the bytes);
//! 4. only then, and only if the spool file did not change meanwhile, the spool file is deleted.
//!
//! An object already in the bucket under the same key is taken as this upload's (a crash between
//! verifying and deleting) only if its metadata carries the same SHA-256 and it verifies; any
//! other object there is never overwritten: the recording stays in the spool and the conflict is
//! reported ([`RemoteStatus::conflicts`]).
//!
//! Reads see the union, spool first: `read`, `stat` and `list` never depend on where a recording is.
//! A read from the bucket downloads it into an unlinked file in the spool (bounded memory).
//!
//! The object store's client is async; the blob traits are blocking. A small runtime of our own
//! runs on its own thread ([`Bridge`]), so blocking calls work from a tokio worker, from
//! `spawn_blocking` and from plain threads alike, and dropping the backend never panics.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientOptions, GetOptions, HeaderMap,
    HeaderValue, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};
use tokio::sync::{watch, Notify};
use ward_core::secret::Secret;

use crate::recording_store::{
    valid_id, BlobBackend, BlobWriter, LocalFiles, Reserver, Snapshot, Syncer, EXT,
};
use crate::session_index::FileStamp;

/// Recordings up to this size are uploaded in one PUT; larger ones in parts.
pub const MULTIPART_ABOVE: u64 = 16 << 20;
/// The part size of a multipart upload (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// Uploads running at once.
pub const CONCURRENT_UPLOADS: usize = 4;
/// Parts of one multipart upload in flight at once.
const CONCURRENT_PARTS: usize = 2;
/// How often the uploader looks again when nothing woke it (a missed wake, a probe while down).
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// The longest wait between retries while the object store fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The directory inside the spool that downloads go through (unlinked files).
const FETCH_DIR: &str = ".fetch";
/// Object metadata: the recording's SHA-256 (hex).
const META_SHA256: &str = "ward-sha256";
/// Object metadata: the spool file's modification time (ns), so the session index's stamp still
/// matches after the upload.
const META_MTIME: &str = "ward-mtime-ns";

/// Where the bucket is and how to reach it.
#[derive(Debug, Clone)]
pub struct BucketSettings {
    /// The bucket.
    pub bucket: String,
    /// Key prefix (no leading or trailing `/`; empty: the bucket's root).
    pub prefix: String,
    /// Endpoint URL; `None`: AWS.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// The credentials.
    pub credentials: Credentials,
    /// Whether `http://` is allowed.
    pub allow_http: bool,
    /// Object lock on each upload: mode (`COMPLIANCE`/`GOVERNANCE`) and days.
    pub retention: Option<(String, u32)>,
    /// Timeout of one request (connecting is bounded at a few seconds whatever this is).
    pub request_timeout: Duration,
}

/// An access key.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Arc<Secret<String>>,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<Arc<Secret<String>>>,
}

impl Credentials {
    /// Read `KEY=value` lines (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optionally
    /// `AWS_SESSION_TOKEN`; `#` comments, optional quotes, an `export ` prefix) — the shape of a
    /// systemd `EnvironmentFile`. Errors never contain a value.
    pub fn parse(text: &str, file_name: &str) -> Result<Credentials, String> {
        let mut id = None;
        let mut secret = None;
        let mut token = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!(
                    "{file_name}:{}: expected KEY=value (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
                    n + 1
                ));
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v)
                .to_owned();
            match k.trim() {
                "AWS_ACCESS_KEY_ID" => id = Some(v),
                "AWS_SECRET_ACCESS_KEY" => secret = Some(Secret::new(v)),
                "AWS_SESSION_TOKEN" => token = Some(Secret::new(v)),
                other => {
                    return Err(format!(
                        "{file_name}:{}: unknown key {:?} (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)",
                        n + 1,
                        ward_core::Escaped(other)
                    ))
                }
            }
        }
        match (id, secret) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.expose().is_empty() => {
                Ok(Credentials {
                    access_key_id: id,
                    secret_access_key: Arc::new(secret),
                    session_token: token.map(Arc::new),
                })
            }
            _ => Err(format!(
                "{file_name}: needs both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )),
        }
    }

    /// From the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    pub fn from_env() -> Option<Credentials> {
        let id = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok()?;
        if id.is_empty() || secret.is_empty() {
            return None;
        }
        Some(Credentials {
            access_key_id: id,
            secret_access_key: Arc::new(Secret::new(secret)),
            session_token: std::env::var("AWS_SESSION_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(|t| Arc::new(Secret::new(t))),
        })
    }
}

/// How the object store is doing, as the uploader last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStatus {
    /// Whether the last request reached the store and succeeded.
    pub reachable: bool,
    /// Why the last attempt failed (`None` after a success).
    pub last_error: Option<String>,
    /// Recordings uploaded, verified and freed from the spool since start.
    pub uploaded: u64,
    /// Sealed recordings in the spool waiting for upload, at the last pass.
    pub pending: usize,
    /// Recordings that stay in the spool because the bucket holds a different object under their key.
    pub conflicts: Vec<String>,
}

/// What the disk watch needs to know of a spool.
#[derive(Debug, Clone)]
pub struct SpoolInfo {
    /// The spool directory.
    pub dir: PathBuf,
    /// Bytes it may hold before new sessions are refused.
    pub limit: u64,
    /// Where the recordings go, for people.
    pub remote: String,
    /// The uploader's view of the object store.
    pub status: watch::Receiver<RemoteStatus>,
}

/// Bytes held by the recordings in `dir` (the spool's usage).
pub fn spool_bytes(dir: &Path) -> io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0u64;
    for e in entries.flatten() {
        if let Ok(m) = e.metadata() {
            if m.is_file() {
                total = total.saturating_add(m.len());
            }
        }
    }
    Ok(total)
}

/// A runtime of our own on its own thread: blocking calls run futures there and wait.
struct Bridge {
    handle: tokio::runtime::Handle,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Bridge {
    fn new() -> io::Result<Bridge> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ward-s3")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ward-s3-rt".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Bridge {
            handle,
            stop: Mutex::new(Some(stop)),
        })
    }

    /// Run `fut` on the bridge's runtime and wait for it (never call from inside that runtime).
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| io::Error::other("the object store's runtime has stopped"))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Ok(mut stop) = self.stop.lock() {
            if let Some(s) = stop.take() {
                let _ = s.send(());
            }
        }
    }
}

/// The spool and the bucket, shared with the uploader.
struct Inner {
    spool: LocalFiles,
    spool_dir: PathBuf,
    limit: u64,
    store: Arc<dyn ObjectStore>,
    settings: BucketSettings,
    describe: String,
    /// Keys with a writer open (count), or closed without a seal: not uploaded this run.
    holding: Mutex<Holding>,
    kick: Notify,
    status: watch::Sender<RemoteStatus>,
}

#[derive(Default)]
struct Holding {
    open: HashMap<String, u32>,
    unsealed: HashSet<String>,
}

/// Recordings in a bucket, written through a local spool. See the module docs.
pub struct Spooled {
    inner: Arc<Inner>,
    bridge: Bridge,
    started: AtomicBool,
}

impl std::fmt::Debug for Spooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spooled")
            .field("at", &self.inner.describe)
            .finish_non_exhaustive()
    }
}

fn client(
    s: &BucketSettings,
    extra_headers: Option<HeaderMap>,
) -> io::Result<Arc<dyn ObjectStore>> {
    let mut options = ClientOptions::new()
        .with_allow_http(s.allow_http)
        .with_timeout(s.request_timeout)
        .with_connect_timeout(Duration::from_secs(3));
    if let Some(h) = extra_headers {
        options = options.with_default_headers(h);
    }
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&s.bucket)
        .with_region(&s.region)
        .with_allow_http(s.allow_http)
        .with_access_key_id(&s.credentials.access_key_id)
        .with_secret_access_key(s.credentials.secret_access_key.expose())
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
        })
        .with_client_options(options);
    if let Some(t) = &s.credentials.session_token {
        b = b.with_token(t.expose());
    }
    if let Some(e) = &s.endpoint {
        b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
    }
    if s.retention.is_some() {
        // S3 wants a checksum on a PUT with an object lock.
        b = b.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
    }
    // The error names the setting, never a credential.
    let store = b.build().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("object store settings: {e}"),
        )
    })?;
    Ok(Arc::new(store))
}

impl Spooled {
    /// Recordings in `bucket` through the spool `spool_dir` (created, 0700), which may hold
    /// `limit` bytes before the disk watch refuses new sessions. Nothing is uploaded before
    /// [`BlobBackend::start_background`].
    pub fn open(bucket: BucketSettings, spool_dir: &Path, limit: u64) -> io::Result<Arc<Spooled>> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(spool_dir.join(FETCH_DIR))?;
        std::fs::set_permissions(spool_dir, std::fs::Permissions::from_mode(0o700))?;
        // Downloads a crash left behind (normally unlinked at once).
        if let Ok(entries) = std::fs::read_dir(spool_dir.join(FETCH_DIR)) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let store = client(&bucket, None)?;
        let url = if bucket.prefix.is_empty() {
            format!("s3://{}", bucket.bucket)
        } else {
            format!("s3://{}/{}", bucket.bucket, bucket.prefix)
        };
        let describe = match &bucket.endpoint {
            Some(e) => format!("{url} at {e} (spool {})", spool_dir.display()),
            None => format!("{url} (spool {})", spool_dir.display()),
        };
        let (status, _) = watch::channel(RemoteStatus {
            reachable: true,
            last_error: None,
            uploaded: 0,
            pending: 0,
            conflicts: Vec::new(),
        });
        Ok(Arc::new(Spooled {
            inner: Arc::new(Inner {
                spool: LocalFiles::new(spool_dir),
                spool_dir: spool_dir.to_path_buf(),
                limit,
                store,
                settings: bucket,
                describe,
                holding: Mutex::new(Holding::default()),
                kick: Notify::new(),
                status,
            }),
            bridge: Bridge::new()?,
            started: AtomicBool::new(false),
        }))
    }

    /// Upload every ready recording now and wait until the spool holds no more of them or `within`
    /// passed; true when drained. For tests and a clean shutdown; the uploader does it anyway.
    pub fn drain(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            self.inner.kick.notify_one();
            if self
                .inner
                .ready_keys()
                .map(|k| k.is_empty())
                .unwrap_or(false)
            {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn location(&self, key: &str) -> ObjPath {
        self.inner.location(key)
    }
}

fn remote_err(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            io::Error::new(io::ErrorKind::NotFound, e.to_string())
        }
        e => io::Error::other(e.to_string()),
    }
}

impl Inner {
    fn location(&self, key: &str) -> ObjPath {
        if self.settings.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.settings.prefix))
        }
    }

    /// Recording keys in the spool that may be uploaded now: sealed, no writer open.
    fn ready_keys(&self) -> io::Result<Vec<String>> {
        let suffix = format!(".{EXT}");
        let keys = self.spool.list()?;
        let holding = self
            .holding
            .lock()
            .map_err(|_| io::Error::other("spool state poisoned"))?;
        Ok(keys
            .into_iter()
            .filter(|k| k.strip_suffix(&suffix).is_some_and(valid_id))
            .filter(|k| !holding.open.contains_key(k) && !holding.unsealed.contains(k))
            .collect())
    }

    fn hold(&self, key: &str) {
        if let Ok(mut h) = self.holding.lock() {
            *h.open.entry(key.to_owned()).or_insert(0) += 1;
        }
    }

    /// Undo a [`Inner::hold`] whose writer never came to be.
    fn unhold(&self, key: &str) {
        if let Ok(mut h) = self.holding.lock() {
            if let Some(n) = h.open.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    h.open.remove(key);
                }
            }
        }
    }

    fn closed(&self, key: &str, sealed: bool) {
        if let Ok(mut h) = self.holding.lock() {
            let last = match h.open.get_mut(key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => true,
            };
            if last {
                h.open.remove(key);
                if sealed {
                    h.unsealed.remove(key);
                } else {
                    h.unsealed.insert(key.to_owned());
                }
            }
        }
        if sealed {
            self.kick.notify_one();
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut RemoteStatus)) {
        self.status.send_modify(f);
    }
}

/// The uploader: wakes on a sealed recording (or every [`RESCAN_EVERY`]), uploads what is ready.
async fn run(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(250);
    let mut reported_down = false;
    loop {
        let keys = {
            let inner = inner.clone();
            tokio::task::spawn_blocking(move || inner.ready_keys())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
        };
        let keys = match keys {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(event = "spool_unreadable", reason = %e, "cannot list the recording spool");
                Vec::new()
            }
        };
        let conflicts: HashSet<String> = inner.status.borrow().conflicts.iter().cloned().collect();
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|k| !conflicts.contains(k))
            .collect();
        inner.set_status(|s| s.pending = keys.len());
        let mut failure: Option<String> = None;
        let mut reached = false;
        if keys.is_empty() {
            // Nothing to move: while the store is down, probe it so "restored" is noticed.
            if !inner.status.borrow().reachable {
                match inner.store.head(&inner.location("probe-0.wrec")).await {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => reached = true,
                    Err(e) => failure = Some(e.to_string()),
                }
            }
        } else {
            let results: Vec<(String, Result<Outcome, UploadError>)> =
                futures::stream::iter(keys.into_iter().map(|k| {
                    let inner = inner.clone();
                    async move {
                        let r = upload_one(&inner, &k).await;
                        (k, r)
                    }
                }))
                .buffer_unordered(CONCURRENT_UPLOADS)
                .collect()
                .await;
            for (key, r) in results {
                match r {
                    Ok(Outcome::Uploaded) => {
                        reached = true;
                        inner.set_status(|s| {
                            s.uploaded += 1;
                            s.pending = s.pending.saturating_sub(1);
                        });
                    }
                    Ok(Outcome::Skipped) => reached = true,
                    Err(UploadError::Conflict(why)) => {
                        reached = true;
                        tracing::error!(event = "recording_upload_conflict", key = %key, remote = %inner.describe, reason = %why,
                            "a different object is in the bucket under this recording's key: not overwritten; the recording stays in the spool");
                        inner.set_status(|s| s.conflicts.push(key.clone()));
                    }
                    Err(UploadError::Local(e)) => {
                        tracing::warn!(event = "recording_upload_failed", key = %key, reason = %e,
                            "could not read a spooled recording for upload; it stays in the spool");
                    }
                    Err(UploadError::Remote(e)) => {
                        tracing::debug!(key = %key, reason = %e, "upload failed");
                        failure = Some(e);
                    }
                }
            }
        }
        match failure {
            Some(why) => {
                if !reported_down {
                    tracing::warn!(event = "object_store_down", remote = %inner.describe, reason = %why,
                        "the object store does not take recordings: they stay in the spool");
                    reported_down = true;
                }
                inner.set_status(|s| {
                    s.reachable = false;
                    s.last_error = Some(why);
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            None => {
                if reached || reported_down {
                    if reported_down {
                        tracing::info!(event = "object_store_restored", remote = %inner.describe, "the object store takes recordings again");
                    }
                    reported_down = false;
                    inner.set_status(|s| {
                        s.reachable = true;
                        s.last_error = None;
                    });
                }
                backoff = Duration::from_millis(250);
                let idle = inner.status.borrow().pending == 0;
                if idle {
                    let _ = tokio::time::timeout(RESCAN_EVERY, inner.kick.notified()).await;
                }
            }
        }
    }
}

enum Outcome {
    /// Uploaded (or found uploaded), verified, freed.
    Uploaded,
    /// Nothing done (gone meanwhile, reopened, changed while uploading: next pass).
    Skipped,
}

enum UploadError {
    /// The spool file could not be read.
    Local(io::Error),
    /// The object store failed (unreachable, refused, or the read-back did not match).
    Remote(String),
    /// A different object holds the key.
    Conflict(String),
}

/// Hash a spool file: its length, SHA-256 and stamp (taken before reading: a change after it
/// shows at the re-check before the file is freed).
fn hash_file(path: &Path) -> io::Result<(u64, [u8; 32], FileStamp)> {
    let stamp = FileStamp::of(path)?;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or_default());
        len += n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((len, out, stamp))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
}

/// Upload one sealed recording, verify it by reading it back, and free its spool file.
async fn upload_one(inner: &Arc<Inner>, key: &str) -> Result<Outcome, UploadError> {
    let path = inner.spool_dir.join(key);
    let hashed = {
        let path = path.clone();
        blocking(move || hash_file(&path)).await
    };
    let (len, sha, stamp) = match hashed {
        Ok(h) => h,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Outcome::Skipped),
        Err(e) => return Err(UploadError::Local(e)),
    };
    let sha_hex = hex::encode(sha);
    let loc = inner.location(key);
    let remote = |e: object_store::Error| UploadError::Remote(e.to_string());
    // Already there (a crash between verifying and freeing, or someone else's object)?
    let head = inner
        .store
        .get_opts(
            &loc,
            GetOptions {
                head: true,
                ..GetOptions::default()
            },
        )
        .await;
    let present = match head {
        Ok(r) => Some(
            r.attributes
                .get(&Attribute::Metadata(META_SHA256.into()))
                .map(|v| v.to_string()),
        ),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(remote(e)),
    };
    let needs_upload = match present {
        None => true,
        Some(Some(theirs)) if theirs == sha_hex => !verify(inner, &loc, len, &sha).await?,
        Some(theirs) => {
            return Err(UploadError::Conflict(format!(
                "{loc} exists with SHA-256 {} where the spooled recording's is {sha_hex}",
                theirs.as_deref().unwrap_or("unknown")
            )))
        }
    };
    if needs_upload {
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(META_SHA256.into()),
            AttributeValue::from(sha_hex.clone()),
        );
        attributes.insert(
            Attribute::Metadata(META_MTIME.into()),
            AttributeValue::from(stamp.mtime_ns.to_string()),
        );
        attributes.insert(
            Attribute::ContentType,
            AttributeValue::from("application/octet-stream"),
        );
        let store = match &inner.settings.retention {
            None => inner.store.clone(),
            Some((mode, days)) => {
                // Object lock headers on this upload's requests (signed with them).
                let until = ward_ca::Clock::now(&ward_ca::SystemClock)
                    + time::Duration::days(i64::from(*days));
                let until = until
                    .format(&time::format_description::well_known::Rfc3339)
                    .map_err(|e| UploadError::Local(io::Error::other(e.to_string())))?;
                let mut h = HeaderMap::new();
                let value = |v: &str| {
                    HeaderValue::from_str(v)
                        .map_err(|e| UploadError::Local(io::Error::other(e.to_string())))
                };
                h.insert("x-amz-object-lock-mode", value(mode)?);
                h.insert("x-amz-object-lock-retain-until-date", value(&until)?);
                // S3 refuses a PUT with object lock headers without Content-MD5 or this header
                // naming the checksum sent (`x-amz-checksum-sha256`, see `client`): "Content-MD5
                // or x-amz-sdk-checksum-algorithm header is required" (moto checks it too).
                h.insert(
                    "x-amz-sdk-checksum-algorithm",
                    HeaderValue::from_static("SHA256"),
                );
                client(&inner.settings, Some(h)).map_err(UploadError::Local)?
            }
        };
        if len <= MULTIPART_ABOVE {
            let bytes = {
                let path = path.clone();
                blocking(move || std::fs::read(path))
                    .await
                    .map_err(UploadError::Local)?
            };
            if bytes.len() as u64 != len {
                return Ok(Outcome::Skipped); // changed meanwhile: next pass
            }
            store
                .put_opts(
                    &loc,
                    PutPayload::from(bytes),
                    PutOptions {
                        attributes,
                        ..PutOptions::default()
                    },
                )
                .await
                .map_err(remote)?;
        } else {
            let upload = store
                .put_multipart_opts(
                    &loc,
                    PutMultipartOptions {
                        attributes,
                        ..PutMultipartOptions::default()
                    },
                )
                .await
                .map_err(remote)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(UploadError::Local)?;
            let mut file = tokio::io::BufReader::with_capacity(1 << 20, file);
            let mut buf = vec![0u8; 1 << 20];
            let mut sent = 0u64;
            let result: Result<(), UploadError> = async {
                loop {
                    use tokio::io::AsyncReadExt;
                    let n = file.read(&mut buf).await.map_err(UploadError::Local)?;
                    if n == 0 {
                        break;
                    }
                    w.wait_for_capacity(CONCURRENT_PARTS)
                        .await
                        .map_err(remote)?;
                    w.write(buf.get(..n).unwrap_or_default());
                    sent += n as u64;
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) if sent == len => {
                    w.finish().await.map_err(remote)?;
                }
                Ok(()) => {
                    let _ = w.abort().await;
                    return Ok(Outcome::Skipped);
                }
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(e);
                }
            }
        }
        if !verify(inner, &loc, len, &sha).await? {
            return Err(UploadError::Remote(format!(
                "{loc}: the object read back does not match the spooled recording (length or SHA-256)"
            )));
        }
    }
    // Verified. Free the spool file, unless it changed or was reopened meanwhile.
    let inner2 = inner.clone();
    let key2 = key.to_owned();
    let freed = blocking(move || {
        let held = inner2
            .holding
            .lock()
            .map(|h| h.open.contains_key(&key2) || h.unsealed.contains(&key2))
            .unwrap_or(true);
        if held || FileStamp::of(&path)? != stamp {
            return Ok(false);
        }
        std::fs::remove_file(&path)?;
        Ok(true)
    })
    .await
    .map_err(UploadError::Local)?;
    if !freed {
        return Ok(Outcome::Skipped);
    }
    tracing::debug!(event = "recording_uploaded", key = %key, bytes = len, sha256 = %sha_hex, "recording uploaded, verified and freed from the spool");
    Ok(Outcome::Uploaded)
}

/// Read the object back whole: true when its length and SHA-256 are the spooled recording's.
async fn verify(
    inner: &Inner,
    loc: &ObjPath,
    len: u64,
    sha: &[u8; 32],
) -> Result<bool, UploadError> {
    let remote = |e: object_store::Error| UploadError::Remote(e.to_string());
    let got = inner.store.get(loc).await.map_err(remote)?;
    if got.meta.size != len {
        return Ok(false);
    }
    let mut stream = got.into_stream();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut n = 0u64;
    while let Some(chunk) = stream.try_next().await.map_err(remote)? {
        n += chunk.len() as u64;
        ctx.update(&chunk);
    }
    Ok(n == len && ctx.finish().as_ref() == sha.as_slice())
}

/// A spool writer: tells the uploader when its recording is sealed and closed.
struct SpoolWriter {
    inner: Box<dyn BlobWriter>,
    key: String,
    shared: Arc<Inner>,
    sealed: bool,
}

impl BlobWriter for SpoolWriter {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sealed = false;
        self.inner.write_all(bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
    fn syncer(&self) -> io::Result<Syncer> {
        self.inner.syncer()
    }
    fn reserver(&self) -> io::Result<Reserver> {
        self.inner.reserver()
    }
    fn release(&mut self) -> io::Result<()> {
        // Called once, after the seal is durable (RecordingStore::seal): from now on the
        // recording may be uploaded once this writer closes.
        self.sealed = true;
        self.inner.release()
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        self.shared.closed(&self.key, self.sealed);
    }
}

impl BlobBackend for Spooled {
    fn create(&self, key: &str) -> io::Result<Box<dyn BlobWriter>> {
        self.inner.hold(key);
        match self.inner.spool.create(key) {
            Ok(w) => Ok(Box::new(SpoolWriter {
                inner: w,
                key: key.to_owned(),
                shared: self.inner.clone(),
                sealed: false,
            })),
            Err(e) => {
                self.inner.unhold(key);
                Err(e)
            }
        }
    }

    fn append(&self, key: &str) -> io::Result<Box<dyn BlobWriter>> {
        self.inner.hold(key);
        match self.inner.spool.append(key) {
            Ok(w) => Ok(Box::new(SpoolWriter {
                inner: w,
                key: key.to_owned(),
                shared: self.inner.clone(),
                sealed: false,
            })),
            Err(e) => {
                self.inner.unhold(key);
                Err(e)
            }
        }
    }

    fn read(&self, key: &str) -> io::Result<Snapshot> {
        match self.inner.spool.read(key) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let store = self.inner.store.clone();
        let loc = self.location(key);
        let fetch_dir = self.inner.spool_dir.join(FETCH_DIR);
        self.bridge.block(async move {
            let got = store.get(&loc).await.map_err(remote_err)?;
            let len = got.meta.size;
            // An unlinked file in the spool: bounded memory, and nothing left behind.
            let file = {
                let fetch_dir = fetch_dir.clone();
                blocking(move || {
                    use std::os::unix::fs::OpenOptionsExt;
                    let name = fetch_dir.join(format!("{:016x}", rand_u64()));
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&name)?;
                    std::fs::remove_file(&name)?;
                    Ok(f)
                })
                .await?
            };
            let mut file = tokio::fs::File::from_std(file);
            let mut stream = got.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.try_next().await.map_err(remote_err)? {
                use tokio::io::AsyncWriteExt;
                n += chunk.len() as u64;
                file.write_all(&chunk).await?;
            }
            if n != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{loc}: {n} of {len} bytes read"),
                ));
            }
            let mut file = file.into_std().await;
            file.seek(io::SeekFrom::Start(0))?;
            Ok(Snapshot {
                reader: Box::new(file),
                len,
            })
        })?
    }

    fn stat(&self, key: &str) -> io::Result<FileStamp> {
        match self.inner.spool.stat(key) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let store = self.inner.store.clone();
        let loc = self.location(key);
        self.bridge.block(async move {
            let r = store
                .get_opts(
                    &loc,
                    GetOptions {
                        head: true,
                        ..GetOptions::default()
                    },
                )
                .await
                .map_err(remote_err)?;
            // The spool file's mtime, carried as metadata: the index's stamp stays valid.
            let mtime_ns = r
                .attributes
                .get(&Attribute::Metadata(META_MTIME.into()))
                .and_then(|v| v.parse::<i64>().ok())
                .or_else(|| r.meta.last_modified.timestamp_nanos_opt())
                .unwrap_or(0);
            Ok(FileStamp {
                len: r.meta.size,
                mtime_ns,
            })
        })?
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut keys: Vec<String> = self.inner.spool.list()?;
        let store = self.inner.store.clone();
        let prefix = self.inner.settings.prefix.clone();
        let remote: Vec<String> = self.bridge.block(async move {
            let p = (!prefix.is_empty()).then(|| ObjPath::from(prefix.as_str()));
            let metas: Vec<object_store::ObjectMeta> = store
                .list(p.as_ref())
                .try_collect()
                .await
                .map_err(remote_err)?;
            let strip = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            };
            Ok::<_, io::Error>(
                metas
                    .into_iter()
                    .filter_map(|m| {
                        let s = m.location.to_string();
                        let name = s.strip_prefix(&strip)?;
                        (!name.contains('/')).then(|| name.to_owned())
                    })
                    .collect(),
            )
        })??;
        let seen: HashSet<String> = keys.iter().cloned().collect();
        keys.extend(remote.into_iter().filter(|k| !seen.contains(k)));
        Ok(keys)
    }

    fn list_local(&self) -> io::Result<Vec<String>> {
        self.inner.spool.list()
    }

    fn replace_tail(&self, key: &str, keep: u64, tail: &[u8]) -> io::Result<()> {
        // Only a spooled recording can be left open by a crash: uploads are of sealed ones.
        match self.inner.spool.stat(key) {
            Ok(_) => self.inner.spool.replace_tail(key, keep, tail),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{key} is in object storage: recordings there are never rewritten"),
            )),
            Err(e) => Err(e),
        }
    }

    fn remove(&self, key: &str) -> io::Result<()> {
        let local = self.inner.spool.remove(key);
        let store = self.inner.store.clone();
        let loc = self.location(key);
        let remote = self
            .bridge
            .block(async move { store.delete(&loc).await.map_err(remote_err) })?;
        match (local, remote) {
            (Ok(()), _) | (_, Ok(())) => Ok(()),
            (Err(e), _) => Err(e),
        }
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.inner.spool_dir)
    }

    fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    fn start_background(&self) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        self.bridge.handle.spawn(run(self.inner.clone()));
    }

    fn spool(&self) -> Option<SpoolInfo> {
        Some(SpoolInfo {
            dir: self.inner.spool_dir.clone(),
            limit: self.inner.limit,
            remote: self.inner.describe.clone(),
            status: self.inner.status.subscribe(),
        })
    }

    fn drain(&self, within: Duration) -> bool {
        Spooled::drain(self, within)
    }

    fn object_store(&self) -> Option<(Arc<dyn ObjectStore>, ObjPath)> {
        Some((
            self.inner.store.clone(),
            ObjPath::from(self.inner.settings.prefix.as_str()),
        ))
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // Uniqueness only (create_new refuses a clash): the time will do.
        return ward_ca::Clock::now(&ward_ca::SystemClock).unix_timestamp_nanos() as u64;
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn credentials_files_parse_and_errors_never_show_a_value() {
        let c = Credentials::parse(
            "# ward's bucket\nexport AWS_ACCESS_KEY_ID=AKIA1\nAWS_SECRET_ACCESS_KEY=\"s3cr3t-value\"\n\nAWS_SESSION_TOKEN='tok'\n",
            "s3.env",
        )
        .unwrap();
        assert_eq!(c.access_key_id, "AKIA1");
        assert_eq!(c.secret_access_key.expose(), "s3cr3t-value");
        assert_eq!(c.session_token.as_ref().unwrap().expose(), "tok");
        assert!(!format!("{c:?}").contains("s3cr3t"), "{c:?}");
        for (text, says) in [
            ("AWS_ACCESS_KEY_ID=AKIA1\n", "needs both"),
            ("AWS_SECRET_ACCESS_KEY=s3cr3t-value\n", "needs both"),
            (
                "AWS_ACCESS_KEY_ID=\nAWS_SECRET_ACCESS_KEY=s3cr3t-value\n",
                "needs both",
            ),
            (
                "AWS_SECRET_ACCESS_KEY s3cr3t-value\n",
                "s3.env:1: expected KEY=value",
            ),
            (
                "AWS_ACCESS_KEY_ID=a\nSECRET=s3cr3t-value\n",
                "s3.env:2: unknown key",
            ),
        ] {
            let e = Credentials::parse(text, "s3.env").unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
            assert!(!e.contains("s3cr3t"), "{text}: {e}");
        }
    }

    #[test]
    fn spool_bytes_sums_the_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(spool_bytes(&dir.path().join("missing")).unwrap(), 0);
        std::fs::write(dir.path().join("a.wrec"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("b.wrec"), [0u8; 23]).unwrap();
        std::fs::create_dir(dir.path().join(FETCH_DIR)).unwrap();
        assert_eq!(spool_bytes(dir.path()).unwrap(), 123);
    }

    #[test]
    fn the_bridge_runs_from_plain_threads_workers_and_blocking_threads() {
        let bridge = Arc::new(Bridge::new().unwrap());
        assert_eq!(bridge.block(async { 1 + 1 }).unwrap(), 2);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let b = bridge.clone();
        let on_worker = rt.block_on(async move {
            tokio::spawn(async move { b.block(async { 3 }).unwrap() })
                .await
                .unwrap()
        });
        assert_eq!(on_worker, 3);
        let b = bridge.clone();
        let on_blocking = rt.block_on(async move {
            tokio::task::spawn_blocking(move || b.block(async { 4 }).unwrap())
                .await
                .unwrap()
        });
        assert_eq!(on_blocking, 4);
        // Dropped inside an async context: no panic.
        rt.block_on(async move { drop(bridge) });
    }
}
