//! The embedded store: locks, users, access requests and grants, the session index.
//!
//! Kept behind one narrow trait per aggregate so that a hospital group running several gateways can
//! put a shared PostgreSQL in its place. The SQLite implementation (rusqlite, bundled) lives in the
//! state dir; its tables and migrations are in [`crate::schema`].

use std::path::Path;
use std::sync::Mutex;

use time::OffsetDateTime;
use ward_core::frame::LockTarget;
use ward_core::policy::Lock;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("store: {0}")]
    Db(#[from] rusqlite::Error),
    /// A row held a value Ward does not understand (a corrupted or newer database).
    #[error("store holds an unreadable row: {0}")]
    Corrupt(String),
    /// The database file could not be created or protected.
    #[error("store file: {0}")]
    Io(String),
    /// The store's lock was poisoned by a panic elsewhere.
    #[error("store is unavailable after an internal error")]
    Poisoned,
    /// A networked database (PostgreSQL) could not be reached, or refused a statement. The text
    /// names the server and what failed; the password is never in it.
    #[error("database: {0}")]
    Remote(String),
    /// A record with that key already exists (a user name, …).
    #[error("{0} already exists")]
    Exists(String),
    /// A value refused before it reached the database (a malformed user name, …).
    #[error("invalid {0}")]
    Invalid(String),
    /// A secret could not be sealed or opened: the key-encryption key it needs is missing, or the
    /// value was altered (the text names the key's fingerprint and what to do).
    #[error(transparent)]
    Key(#[from] crate::keywrap::KeyError),
}

/// Locks on principals, devices and orgs in persistent state.
///
/// The store is one trait per aggregate: [`LockStore`], [`crate::users::UserStore`],
/// [`crate::access_store::AccessStore`] and [`crate::session_index::SessionIndex`]. Services take
/// them as `Arc<dyn …>`; `SqliteStore` implements them all. They are synchronous (SQLite answers
/// in microseconds; login already runs on a blocking thread) and object-safe, so another backend
/// implements the same traits.
pub trait LockStore: Send + Sync {
    /// Add (or replace) the lock on a target.
    fn put_lock(&self, lock: &Lock) -> Result<(), StoreError>;
    /// Remove the lock on a target; returns whether one existed.
    fn remove_lock(&self, target: &LockTarget) -> Result<bool, StoreError>;
    /// Locks that have not ended at `now`.
    fn active_locks(&self, now: OffsetDateTime) -> Result<Vec<Lock>, StoreError>;
}

/// The former name of [`LockStore`].
pub use self::LockStore as Store;

/// SQLite-backed store in `<state_dir>/ward.db`.
pub struct SqliteStore {
    conn: Mutex<rusqlite::Connection>,
    keys: crate::keywrap::KeyHandle,
}

fn target_parts(t: &LockTarget) -> (&'static str, &str) {
    match t {
        LockTarget::Principal(v) => ("principal", v.as_str()),
        LockTarget::Device(v) => ("device", v.as_str()),
        LockTarget::Org(v) => ("org", v.as_str()),
    }
}

impl SqliteStore {
    /// Open (creating if needed) the store in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        // ward.db holds password hashes and TOTP secrets: owner-only, whatever the umask. SQLite
        // creates its -wal/-shm files with the database file's mode.
        let path = state_dir.join("ward.db");
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        }
        let conn = rusqlite::Connection::open(&path)?;
        crate::schema::migrate(&conn)?;
        // The key-encryption key: the default key file, looked for when a secret is first
        // needed. The gateway sets the ring its config names (`keywrap::open_store_keys`).
        let keys = crate::keywrap::KeyHandle::lazy(crate::keywrap::KeySource::File(
            state_dir.join(crate::keywrap::DEFAULT_KEY_FILE),
        ));
        Ok(Self {
            conn: Mutex::new(conn),
            keys,
        })
    }

    /// The key ring the store seals its secrets with (shared: setting a ring on a clone sets it
    /// here).
    pub fn keys(&self) -> &crate::keywrap::KeyHandle {
        &self.keys
    }

    /// The connection, for the other tables' modules (`users`, `access_store`).
    pub(crate) fn conn(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, rusqlite::Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }
}

impl LockStore for SqliteStore {
    fn put_lock(&self, lock: &Lock) -> Result<(), StoreError> {
        let (kind, value) = target_parts(&lock.target);
        let until = lock.until.map(|t| t.unix_timestamp());
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        conn.execute(
            "INSERT OR REPLACE INTO locks (kind, value, until, reason, by) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![kind, value, until, lock.reason, lock.by],
        )?;
        Ok(())
    }

    fn remove_lock(&self, target: &LockTarget) -> Result<bool, StoreError> {
        let (kind, value) = target_parts(target);
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let n = conn.execute(
            "DELETE FROM locks WHERE kind = ?1 AND value = ?2",
            rusqlite::params![kind, value],
        )?;
        Ok(n > 0)
    }

    fn active_locks(&self, now: OffsetDateTime) -> Result<Vec<Lock>, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let mut stmt = conn.prepare(
            "SELECT kind, value, until, reason, by FROM locks WHERE until IS NULL OR until > ?1",
        )?;
        let rows = stmt.query_map([now.unix_timestamp()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<i64>>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, value, until, reason, by) = row?;
            let target = match kind.as_str() {
                "principal" => LockTarget::Principal(value),
                "device" => LockTarget::Device(value),
                "org" => LockTarget::Org(value),
                other => return Err(StoreError::Corrupt(format!("lock kind {other:?}"))),
            };
            let until = match until {
                Some(t) => Some(
                    OffsetDateTime::from_unix_timestamp(t)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                ),
                None => None,
            };
            out.push(Lock {
                target,
                until,
                reason,
                by,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ward.db");
        // An existing file with a lax mode is tightened too.
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _s = SqliteStore::open(dir.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn locks_survive_reopen_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            s.put_lock(&Lock {
                target: LockTarget::Org("acme".into()),
                until: None,
                reason: "incident 42".into(),
                by: "security sam".into(),
            })
            .unwrap();
            s.put_lock(&Lock {
                target: LockTarget::Device("pump-12".into()),
                until: Some(now + time::Duration::hours(1)),
                reason: "recall".into(),
                by: "security sam".into(),
            })
            .unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(s.active_locks(now).unwrap().len(), 2);
        assert_eq!(
            s.active_locks(now + time::Duration::hours(2))
                .unwrap()
                .len(),
            1
        );
        assert!(s.remove_lock(&LockTarget::Org("acme".into())).unwrap());
        assert!(!s.remove_lock(&LockTarget::Org("acme".into())).unwrap());
        assert_eq!(s.active_locks(now).unwrap().len(), 1);
    }
}
