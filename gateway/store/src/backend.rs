//! Which store a gateway runs on: the embedded SQLite file in its state dir (the default), or a
//! PostgreSQL shared by several gateways (`[store] url`, docs/deployment.md). [`Backend`] is the
//! set of trait objects the gateway's services and sessions use, whichever it is: nothing above
//! this module knows which backend it runs on.

use std::path::Path;
use std::sync::Arc;

use ward_core::config::{Config, PostgresConfig, StoreTls};
use ward_core::inject::Credential;
use ward_core::secret::Secret;

use crate::access_store::AccessStore;
use crate::gateways::GatewayRegistry;
use crate::keywrap::{KeyCount, KeyError, KeyHandle, KeyRing, KeySource, Rewrapped, SecretStore};
use crate::pg::{PgOptions, PgStore, PgTls};
use crate::pins::PinStore;
use crate::session_index::SessionIndex;
use crate::store::{LockStore, SqliteStore, StoreError};
use crate::store_async::{OffThread, ServiceStores};
use crate::users::UserStore;
use crate::vault::{PutOutcome, VaultEntry, VaultError, VaultStore};

/// The vault's table and the secrets' key handling, one object (they share the key ring).
pub trait VaultBackend: VaultStore + SecretStore {}

impl<T: VaultStore + SecretStore + ?Sized> VaultBackend for T {}

/// The stores a gateway runs on, one trait object per aggregate.
#[derive(Clone)]
pub struct Backend {
    /// Locks.
    pub locks: Arc<dyn LockStore>,
    /// Users and their login back-off.
    pub users: Arc<dyn UserStore>,
    /// Access requests, approvals and grants.
    pub access: Arc<dyn AccessStore>,
    /// The session index.
    pub index: Arc<dyn SessionIndex>,
    /// Searches and listings of the session index (every gateway's rows on a shared store).
    pub search: Arc<dyn crate::session_query::SessionSearch>,
    /// The credential vault and the secrets' key ring ([`SharedVault`] serves it where a
    /// concrete store is expected).
    pub vault: Arc<dyn VaultBackend>,
    /// Device certificate pins.
    pub pins: Arc<dyn PinStore>,
    /// The gateways sharing this store, with their heartbeats.
    pub gateways: Arc<dyn GatewayRegistry>,
    /// Bumps when another gateway changed locks, grants, requests or users (PostgreSQL's
    /// `LISTEN/NOTIFY`; also on every reconnect of the listener, since notifications may have
    /// been missed). `None`: nobody else writes this store (SQLite), the periodic resync suffices.
    pub changes: Option<tokio::sync::watch::Receiver<u64>>,
    /// What it is, for logs and `ward gateways` (`sqlite <path>` or `postgres://user@host/db`,
    /// never a password).
    pub describe: String,
    /// Several gateways may share it.
    pub shared: bool,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("describe", &self.describe)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// The store `[store]` in `config` names: the embedded SQLite file in the state dir when it
    /// is absent, the PostgreSQL at `[store] url` otherwise (connected, migrated; its secrets
    /// sealed with the key `[vault]` names, which every gateway sharing it must hold).
    /// `gateway_id` is the gateway that writes through it (its session index rows name it);
    /// `None` for host-side commands.
    pub fn open(config: &Config, gateway_id: Option<&str>) -> Result<Backend, StoreError> {
        let state_dir = &config.gateway.state_dir;
        match &config.store.postgres {
            None => Ok(Self::sqlite(
                Arc::new(SqliteStore::open(state_dir)?),
                state_dir,
            )),
            Some(pg) => Self::postgres(pg, config, gateway_id),
        }
    }

    /// Every aggregate in one SQLite store.
    pub fn sqlite(db: Arc<SqliteStore>, state_dir: &Path) -> Backend {
        let describe = format!("sqlite {}", state_dir.join("ward.db").display());
        Backend {
            locks: db.clone(),
            users: db.clone(),
            access: db.clone(),
            index: db.clone(),
            search: Arc::new(crate::session_query::SqliteSearch::new(state_dir)),
            vault: db.clone(),
            pins: db.clone(),
            gateways: db,
            changes: None,
            describe,
            shared: false,
        }
    }

    fn postgres(
        pg: &PostgresConfig,
        config: &Config,
        gateway_id: Option<&str>,
    ) -> Result<Backend, StoreError> {
        let state_dir = &config.gateway.state_dir;
        let keys = KeySource::of(&config.inject.vault, state_dir);
        let mut opts = PgOptions::new(pg.url.clone(), keys);
        opts.password_file = pg.password_file.clone();
        opts.tls = match &pg.tls {
            StoreTls::Disable => PgTls::Disable,
            StoreTls::Require { ca_file } => PgTls::Require {
                ca_file: ca_file.clone(),
            },
        };
        opts.pool_size = pg.pool;
        opts.connect_timeout = pg.connect_timeout;
        let store = PgStore::connect(&opts)?;
        Ok(Backend {
            locks: store.clone(),
            users: store.clone(),
            access: store.clone(),
            index: Arc::new(crate::pg::index::PgIndex::new(
                store.clone(),
                gateway_id.map(str::to_owned),
            )),
            search: store.clone(),
            vault: store.clone(),
            pins: store.clone(),
            gateways: store.clone(),
            changes: Some(store.changes()),
            describe: store.describe().to_owned(),
            shared: true,
        })
    }

    /// The async stores the services run on (each blocking call off the async workers).
    pub fn services(&self) -> ServiceStores {
        ServiceStores {
            access: OffThread::new(self.access.clone()),
            users: OffThread::new(self.users.clone()),
            locks: OffThread::new(self.locks.clone()),
        }
    }

    /// The vault as a concrete store (for code generic over `VaultStore + SecretStore`).
    pub fn shared_vault(&self) -> Arc<SharedVault> {
        Arc::new(SharedVault(self.vault.clone()))
    }
}

/// A [`VaultBackend`] trait object as a sized store.
pub struct SharedVault(pub Arc<dyn VaultBackend>);

impl VaultStore for SharedVault {
    fn put_credential(
        &self,
        device: &str,
        account: &str,
        username: &str,
        secret: &Secret<String>,
        now: i64,
    ) -> Result<PutOutcome, VaultError> {
        self.0
            .put_credential(device, account, username, secret, now)
    }
    fn list_credentials(&self) -> Result<Vec<VaultEntry>, VaultError> {
        self.0.list_credentials()
    }
    fn credential_entry(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<VaultEntry>, VaultError> {
        self.0.credential_entry(device, account)
    }
    fn remove_credential(&self, device: &str, account: &str) -> Result<bool, VaultError> {
        self.0.remove_credential(device, account)
    }
    fn credential(
        &self,
        device: &str,
        account: &str,
        used_at: Option<i64>,
    ) -> Result<Credential, VaultError> {
        self.0.credential(device, account, used_at)
    }
    fn previous_credential(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<Credential>, VaultError> {
        self.0.previous_credential(device, account)
    }
    fn begin_rotation(
        &self,
        device: &str,
        account: &str,
        new: &Secret<String>,
        now: i64,
    ) -> Result<(), VaultError> {
        self.0.begin_rotation(device, account, new, now)
    }
    fn commit_rotation(&self, device: &str, account: &str, now: i64) -> Result<(), VaultError> {
        self.0.commit_rotation(device, account, now)
    }
    fn abort_rotation(&self, device: &str, account: &str, now: i64) -> Result<(), VaultError> {
        self.0.abort_rotation(device, account, now)
    }
}

impl SecretStore for SharedVault {
    fn key_handle(&self) -> KeyHandle {
        self.0.key_handle()
    }
    fn key_counts(&self) -> Result<Vec<KeyCount>, KeyError> {
        self.0.key_counts()
    }
    fn rewrap_all(&self, ring: &KeyRing) -> Result<Rewrapped, KeyError> {
        self.0.rewrap_all(ring)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn absent_store_config_is_the_state_dirs_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse(ward_core::config::SAMPLE_CONFIG, "ward.toml").unwrap();
        config.gateway.state_dir = dir.path().to_path_buf();
        let b = Backend::open(&config, None).unwrap();
        assert!(!b.shared);
        assert!(b.changes.is_none());
        assert!(b.describe.starts_with("sqlite "), "{}", b.describe);
        assert!(dir.path().join("ward.db").exists());
        // Every aggregate is the same database: a lock written through one handle is read back
        // through another opening of the state dir.
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        b.locks
            .put_lock(&ward_core::policy::Lock {
                target: ward_core::frame::LockTarget::Device("pump-1".into()),
                until: None,
                reason: "recall".into(),
                by: "sam".into(),
            })
            .unwrap();
        drop(b);
        let again = Backend::open(&config, None).unwrap();
        assert_eq!(again.locks.active_locks(now).unwrap().len(), 1);
    }
}
