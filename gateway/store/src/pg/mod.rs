//! The PostgreSQL store: the same traits as SQLite over a pool of tokio-postgres connections
//! (docs/deployment.md).
//!
//! Several gateways share one database. [`PgStore::connect`] reads the password from a file (never
//! from the URL), connects with or without TLS ([`PgTls`]), runs the versioned migrations under an
//! advisory lock (one gateway migrates, the others wait and then see it done; [`schema`]) and
//! starts the change feed ([`notify`]): triggers on locks, grants, access requests and users
//! `NOTIFY ward_changes`, one dedicated connection `LISTEN`s, and [`PgStore::changes`] bumps on
//! every notification and on every reconnect of that listener.
//!
//! The store traits are blocking (SQLite answers in microseconds). `PgStore` owns a small tokio
//! runtime on its own thread and runs each statement there, waiting on a std channel
//! ([`PgStore::block`]), so it works from async workers, from `spawn_blocking` and from plain
//! threads alike, and dropping it inside an async context does not panic.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use ward_core::secret::Secret;

use crate::keywrap::{KeyHandle, KeySource};
use crate::store::StoreError;

pub mod access;
pub mod gateways;
pub mod import;
pub mod index;
pub mod locks;
pub mod notify;
pub mod pins;
pub mod query;
pub mod schema;
pub mod secrets;
pub mod users;
pub mod vault;

pub use notify::ChangeFeed;

/// Whether (and how) the connection to the database is encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PgTls {
    /// Plain TCP (a database on loopback or a private network the operator trusts).
    #[default]
    Disable,
    /// TLS required; the server's certificate must chain to `ca_file` (PEM), or to the system's
    /// roots (`/etc/ssl/certs/ca-certificates.crt`) without one, and name the host in the URL.
    Require {
        /// The CA that signed the database server's certificate.
        ca_file: Option<PathBuf>,
    },
}

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/dbname` (a password in it is refused: use `password_file`).
    pub url: String,
    /// A file holding the password (0600; trailing newline ignored). Without one, `PGPASSWORD`
    /// is used when set.
    pub password_file: Option<PathBuf>,
    /// TLS to the database.
    pub tls: PgTls,
    /// Connections in the pool (besides the listener's and the migration's own).
    pub pool_size: usize,
    /// Bound on connecting, and on waiting for a pooled connection.
    pub connect_timeout: Duration,
    /// Where the key-encryption key is (the gateway's `[vault]` key: every gateway sharing the
    /// database needs the same key); sealed values (TOTP seeds, vault) open with it.
    pub keys: KeySource,
}

impl PgOptions {
    /// Options for `url` with the defaults: no password file, no TLS, 8 connections, 10 s, the
    /// key at `keys`.
    pub fn new(url: impl Into<String>, keys: KeySource) -> PgOptions {
        PgOptions {
            url: url.into(),
            password_file: None,
            tls: PgTls::Disable,
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
            keys,
        }
    }
}

/// How long one store operation may take (a statement, or waiting for the advisory lock while
/// another gateway migrates) before it fails.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The pool and the text naming the database in errors (never the password).
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    describe: Arc<str>,
}

impl Db {
    /// A pooled connection.
    pub async fn get(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Remote(format!("{}: {}", self.describe, pool_error(&e))))
    }

    /// The database as errors name it (`postgres://user@host:port/db`).
    pub fn describe(&self) -> &str {
        &self.describe
    }
}

fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_text(e),
        deadpool_postgres::PoolError::Timeout(_) => {
            "no connection to the database within the connect timeout".into()
        }
        other => other.to_string(),
    }
}

/// A statement's error as text: the server's severity, code and message, never its `DETAIL`
/// (which can quote the row, password hash included).
fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => {
            // The client side: I/O, TLS, a closed connection. The text holds no parameters.
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(cause) = src {
                let c = cause.to_string();
                if !s.contains(&c) {
                    s.push_str(": ");
                    s.push_str(&c);
                }
                src = cause.source();
            }
            s
        }
    }
}

/// A tokio-postgres error as a store error.
pub fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Remote(pg_text(&e))
}

/// The runtime the store's futures run on, on a thread of its own. Dropping the last handle
/// ends the thread, which shuts the runtime down there (never inside the caller's runtime).
struct Bridge {
    handle: tokio::runtime::Handle,
    _stop: std::sync::mpsc::Sender<()>,
}

impl Bridge {
    fn start() -> Result<Bridge, StoreError> {
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("ward-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("ward-pg-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                // Until every sender is gone (the store dropped).
                let _ = stop_rx.recv();
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(|e| StoreError::Io(format!("starting the database thread: {e}")))?;
        let handle = handle_rx
            .recv()
            .map_err(|_| StoreError::Io("the database thread ended at start".into()))?
            .map_err(|e| StoreError::Io(format!("the database runtime: {e}")))?;
        Ok(Bridge {
            handle,
            _stop: stop_tx,
        })
    }
}

/// The TLS connector the pool and the listener use.
#[derive(Clone)]
pub(crate) enum Tls {
    Plain(NoTls),
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// The PostgreSQL store (see the module docs).
pub struct PgStore {
    db: Db,
    keys: KeyHandle,
    changes: tokio::sync::watch::Receiver<u64>,
    // Last: the runtime stops once the pool and the feed are gone.
    bridge: Bridge,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("db", &&*self.db.describe)
            .finish()
    }
}

/// The password: from the file, else `PGPASSWORD`, else none (trust or certificate auth).
fn read_password(file: Option<&Path>) -> Result<Option<Secret<String>>, StoreError> {
    match file {
        Some(path) => {
            let text = Secret::new(std::fs::read_to_string(path).map_err(|e| {
                StoreError::Io(format!(
                    "the database password file {}: {e}",
                    path.display()
                ))
            })?);
            let pw = text.expose().trim_end_matches(['\r', '\n']);
            if pw.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "database password file {} is empty",
                    path.display()
                )));
            }
            Ok(Some(Secret::new(pw.to_owned())))
        }
        None => Ok(std::env::var("PGPASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .map(Secret::new)),
    }
}

/// `postgres://user@host:port/db` for errors and `ward gateways` (the URL holds no password).
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{}:{}/{}",
        config.get_user().unwrap_or(""),
        host,
        port,
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or_default()
    )
}

/// The rustls client config: roots from `ca_file`, or the system bundle.
fn rustls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, StoreError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let path = ca_file.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let bad = |e: String| StoreError::Invalid(format!("database CA file {}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Invalid(format!("database TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl PgStore {
    /// Connects, migrates (under the advisory lock) and starts the change feed. Fails with a
    /// clear error when the database is unreachable, refuses the password, or holds a schema
    /// newer than this binary.
    pub fn connect(opts: &PgOptions) -> Result<Arc<PgStore>, StoreError> {
        let mut config: tokio_postgres::Config = opts
            .url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("database URL: {e}")))?;
        if config.get_password().is_some() {
            return Err(StoreError::Invalid(
                "database URL holds a password: put it in [store] password_file instead".into(),
            ));
        }
        let describe: Arc<str> = describe(&config).into();
        if let Some(pw) = read_password(opts.password_file.as_deref())? {
            config.password(pw.expose().as_bytes());
        }
        config
            .connect_timeout(opts.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(15))
            .application_name("ward-gateway");
        let require = match (&opts.tls, config.get_ssl_mode()) {
            (PgTls::Require { ca_file }, _) => Some(ca_file.clone()),
            // `sslmode=require` in the URL asks for TLS too (with the system roots).
            (PgTls::Disable, SslMode::Require) => Some(None),
            (PgTls::Disable, _) => None,
        };
        let tls = match require {
            Some(ca) => {
                config.ssl_mode(SslMode::Require);
                Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(
                    rustls_config(ca.as_deref())?,
                ))
            }
            None => {
                config.ssl_mode(SslMode::Disable);
                Tls::Plain(NoTls)
            }
        };
        let bridge = Bridge::start()?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::Plain(t) => Manager::from_config(config.clone(), *t, manager_config),
            Tls::Rustls(t) => Manager::from_config(config.clone(), t.clone(), manager_config),
        };
        let pool = {
            // The pool's timers run on the store's runtime.
            let _enter = bridge.handle.enter();
            Pool::builder(manager)
                .max_size(opts.pool_size.max(1))
                .wait_timeout(Some(opts.connect_timeout))
                .create_timeout(Some(opts.connect_timeout))
                .recycle_timeout(Some(opts.connect_timeout))
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Invalid(format!("database pool: {e}")))?
        };
        let db = Db {
            pool,
            describe: describe.clone(),
        };
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let store = PgStore {
            db,
            keys: KeyHandle::lazy(opts.keys.clone()),
            changes: rx,
            bridge,
        };
        // Migrate on a connection of its own: the advisory lock is the session's, released when
        // it closes whatever happens.
        {
            let (config, tls, describe) = (config.clone(), tls.clone(), describe.clone());
            store.block(async move { schema::migrate(&config, &tls, &describe).await })?;
        }
        store
            .bridge
            .handle
            .spawn(notify::listen(config, tls, describe, tx));
        Ok(Arc::new(store))
    }

    /// Runs `fut` on the store's runtime and waits for it (bounded by the operation timeout).
    /// Works from an async worker, from `spawn_blocking` and from a plain thread; a panic in
    /// `fut` is an error, not a crash.
    pub fn block<T, E, F>(&self, fut: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.bridge.handle.spawn(async move {
            let out = match tokio::time::timeout(OPERATION_TIMEOUT, fut).await {
                Ok(out) => out,
                Err(_) => Err(E::from(StoreError::Remote(format!(
                    "the database did not answer within {} s",
                    OPERATION_TIMEOUT.as_secs()
                )))),
            };
            let _ = tx.send(out);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(E::from(StoreError::Remote(
                "the database operation ended without an answer (an internal error)".into(),
            )))
        })
    }

    /// Runs `fut` on the calling thread (it may borrow, and need not be `Send`: an approval's
    /// decision runs inside the transaction this way), with the store's runtime entered so the
    /// pool's timers and connection tasks live there, bounded by the operation timeout. Blocks
    /// the calling thread like [`PgStore::block`].
    pub fn block_here<T, E, F>(&self, fut: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<StoreError>,
    {
        let _runtime = self.bridge.handle.enter();
        let deadline = tokio::time::sleep(OPERATION_TIMEOUT);
        futures::executor::block_on(async move {
            tokio::select! {
                biased;
                out = fut => out,
                _ = deadline => Err(E::from(StoreError::Remote(format!(
                    "the database did not answer within {} s",
                    OPERATION_TIMEOUT.as_secs()
                )))),
            }
        })
    }

    /// The pool (clone it into the future given to [`PgStore::block`]).
    pub fn db(&self) -> Db {
        self.db.clone()
    }

    /// The database as errors and `ward gateways` name it (`postgres://user@host:port/db`).
    pub fn describe(&self) -> &str {
        &self.db.describe
    }

    /// The key ring sealed values use (shared: setting a ring on a clone sets it here).
    pub fn keys(&self) -> &KeyHandle {
        &self.keys
    }

    /// The change feed: bumps on every change to locks, grants, access requests or users made
    /// through any gateway, and on every reconnect of the listener (notifications may have been
    /// missed while it was away).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }

    /// [`PgStore::changes`] as the backend carries it.
    pub fn change_feed(&self) -> ChangeFeed {
        ChangeFeed(self.changes())
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        let db = self.db();
        self.block(async move {
            let c = db.get().await?;
            let row = c
                .query_one("SELECT COALESCE(MAX(version), 0) FROM ward_schema", &[])
                .await
                .map_err(pg_err)?;
            row.try_get::<_, i32>(0).map_err(pg_err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_url_is_refused_and_never_echoed() {
        let opts = PgOptions::new(
            "postgres://ward:hunter2-secret@127.0.0.1:1/ward",
            KeySource::Env("UNUSED".into()),
        );
        let err = PgStore::connect(&opts).unwrap_err().to_string();
        assert!(err.contains("password_file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn an_unreachable_database_fails_in_time_naming_it_without_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret-pw\n").unwrap();
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut opts = PgOptions::new(
            format!("postgres://ward@127.0.0.1:{port}/ward"),
            KeySource::Env("UNUSED".into()),
        );
        opts.password_file = Some(pw);
        opts.connect_timeout = Duration::from_secs(2);
        let started = std::time::Instant::now();
        let err = PgStore::connect(&opts).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn an_empty_password_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "\n").unwrap();
        let mut opts = PgOptions::new(
            "postgres://ward@127.0.0.1:1/ward",
            KeySource::Env("UNUSED".into()),
        );
        opts.password_file = Some(pw);
        let err = PgStore::connect(&opts).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn the_description_names_user_host_port_and_database() {
        let c: tokio_postgres::Config = "postgres://ward@db.example:6543/wardprod".parse().unwrap();
        assert_eq!(describe(&c), "postgres://ward@db.example:6543/wardprod");
    }
}
