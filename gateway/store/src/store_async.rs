//! The store as the services see it: one async trait per aggregate (locks, users, access
//! requests and grants), object-safe (`#[async_trait]`), so a networked backend (PostgreSQL)
//! implements them directly and the services do not change.
//!
//! The embedded SQLite store implements the blocking traits ([`LockStore`], [`UserStore`],
//! [`AccessStore`]); [`OffThread`] serves those through the async traits with each call on
//! tokio's blocking pool, never on an async worker.

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;
use ward_core::access::{AccessRequest, Approval, Approved, DecideError, Grant};
use ward_core::frame::LockTarget;
use ward_core::policy::Lock;

use crate::access_store::{AccessStore, ApproveOutcome, DecisionError};
use crate::store::{LockStore, StoreError};
use crate::users::{User, UserStore};
use crate::vault::{PutOutcome, VaultEntry, VaultError, VaultStore};
use ward_core::inject::Credential;
use ward_core::secret::Secret;

/// The approval decision run inside the store's transaction.
pub type DecideFn =
    Box<dyn Fn(&AccessRequest, &[Approval]) -> Result<Approved, DecideError> + Send + Sync>;
/// Makes the grant when an approval completes a request.
pub type MakeGrantFn = Box<dyn Fn(&AccessRequest, &[Approval]) -> Grant + Send + Sync>;
/// The denial check run inside the store's transaction.
pub type CheckFn = Box<dyn Fn(&AccessRequest) -> Result<(), DecideError> + Send + Sync>;

/// Locks (see [`LockStore`]).
#[async_trait]
pub trait AsyncLockStore: Send + Sync {
    /// Add (or replace) the lock on a target.
    async fn put_lock(&self, lock: &Lock) -> Result<(), StoreError>;
    /// Remove the lock on a target; returns whether one existed.
    async fn remove_lock(&self, target: &LockTarget) -> Result<bool, StoreError>;
    /// Locks that have not ended at `now`.
    async fn active_locks(&self, now: OffsetDateTime) -> Result<Vec<Lock>, StoreError>;
}

/// Users (see [`UserStore`]).
#[async_trait]
pub trait AsyncUserStore: Send + Sync {
    /// Add a user; refused if the name exists.
    async fn add_user(&self, user: &User) -> Result<(), StoreError>;
    /// One user.
    async fn user(&self, name: &str) -> Result<Option<User>, StoreError>;
    /// Every user.
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Disable a user; returns whether the user exists.
    async fn disable_user(&self, name: &str, now: OffsetDateTime) -> Result<bool, StoreError>;
    /// Replace a password hash (clears the must-change flag); returns whether the user exists.
    async fn set_password(&self, name: &str, phc: &str) -> Result<bool, StoreError>;
    /// Set or clear a TOTP secret; returns whether the user exists.
    async fn set_totp(&self, name: &str, secret_base32: Option<&str>) -> Result<bool, StoreError>;
    /// Consume a TOTP step if it is newer than the last one (atomic).
    async fn record_totp_step(&self, name: &str, step: i64) -> Result<bool, StoreError>;
    /// The names of disabled users.
    async fn disabled_users(&self) -> Result<Vec<String>, StoreError>;
    /// Counts a failed login for `name` (see [`UserStore::note_login_failure`]).
    async fn note_login_failure(&self, name: &str, now: OffsetDateTime) -> Result<u32, StoreError>;
    /// `name`'s consecutive failed logins and the last one's time.
    async fn login_failures(&self, name: &str)
        -> Result<(u32, Option<OffsetDateTime>), StoreError>;
    /// Forgets `name`'s failed logins.
    async fn clear_login_failures(&self, name: &str) -> Result<(), StoreError>;
}

/// Access requests, approvals and grants (see [`AccessStore`]).
#[async_trait]
pub trait AsyncAccessStore: Send + Sync {
    /// Stores a new request.
    async fn put_request(&self, r: &AccessRequest) -> Result<(), StoreError>;
    /// All requests, newest first, with their approvals.
    async fn requests(&self) -> Result<Vec<(AccessRequest, Vec<Approval>)>, StoreError>;
    /// Approves `id` atomically (see [`AccessStore::approve`]).
    async fn approve(
        &self,
        id: &str,
        decide: DecideFn,
        make_grant: MakeGrantFn,
    ) -> Result<ApproveOutcome, DecisionError>;
    /// Denies `id` atomically after `check`.
    async fn deny(&self, id: &str, check: CheckFn) -> Result<AccessRequest, DecisionError>;
    /// Grants that have not ended by `now`, including revoked ones when `all`.
    async fn grants(&self, now: OffsetDateTime, all: bool) -> Result<Vec<Grant>, StoreError>;
    /// One grant.
    async fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError>;
    /// Marks a grant revoked (idempotent).
    async fn revoke_grant(
        &self,
        id: &str,
        at: OffsetDateTime,
        why: &str,
    ) -> Result<Option<Grant>, StoreError>;
}

/// A blocking store served through the async traits, each call on the blocking pool.
pub struct OffThread<S: ?Sized>(pub Arc<S>);

impl<S: ?Sized> OffThread<S> {
    /// Serves `store`.
    pub fn new(store: Arc<S>) -> Arc<Self> {
        Arc::new(Self(store))
    }
}

impl<S: ?Sized + Send + Sync + 'static> OffThread<S> {
    async fn run<T, E>(&self, f: impl FnOnce(&S) -> Result<T, E> + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| E::from(StoreError::Poisoned))?
    }
}

#[async_trait]
impl<S: LockStore + ?Sized + 'static> AsyncLockStore for OffThread<S> {
    async fn put_lock(&self, lock: &Lock) -> Result<(), StoreError> {
        let lock = lock.clone();
        self.run(move |s| s.put_lock(&lock)).await
    }
    async fn remove_lock(&self, target: &LockTarget) -> Result<bool, StoreError> {
        let target = target.clone();
        self.run(move |s| s.remove_lock(&target)).await
    }
    async fn active_locks(&self, now: OffsetDateTime) -> Result<Vec<Lock>, StoreError> {
        self.run(move |s| s.active_locks(now)).await
    }
}

#[async_trait]
impl<S: UserStore + ?Sized + 'static> AsyncUserStore for OffThread<S> {
    async fn add_user(&self, user: &User) -> Result<(), StoreError> {
        let user = user.clone();
        self.run(move |s| s.add_user(&user)).await
    }
    async fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let name = name.to_owned();
        self.run(move |s| s.user(&name)).await
    }
    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.run(|s| s.list_users()).await
    }
    async fn disable_user(&self, name: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.run(move |s| s.disable_user(&name, now)).await
    }
    async fn set_password(&self, name: &str, phc: &str) -> Result<bool, StoreError> {
        let (name, phc) = (name.to_owned(), phc.to_owned());
        self.run(move |s| s.set_password(&name, &phc)).await
    }
    async fn set_totp(&self, name: &str, secret_base32: Option<&str>) -> Result<bool, StoreError> {
        let (name, secret) = (name.to_owned(), secret_base32.map(str::to_owned));
        self.run(move |s| s.set_totp(&name, secret.as_deref()))
            .await
    }
    async fn record_totp_step(&self, name: &str, step: i64) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.run(move |s| s.record_totp_step(&name, step)).await
    }
    async fn disabled_users(&self) -> Result<Vec<String>, StoreError> {
        self.run(|s| s.disabled_users()).await
    }
    async fn note_login_failure(&self, name: &str, now: OffsetDateTime) -> Result<u32, StoreError> {
        let name = name.to_owned();
        self.run(move |s| s.note_login_failure(&name, now)).await
    }
    async fn login_failures(
        &self,
        name: &str,
    ) -> Result<(u32, Option<OffsetDateTime>), StoreError> {
        let name = name.to_owned();
        self.run(move |s| s.login_failures(&name)).await
    }
    async fn clear_login_failures(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.run(move |s| s.clear_login_failures(&name)).await
    }
}

#[async_trait]
impl<S: AccessStore + ?Sized + 'static> AsyncAccessStore for OffThread<S> {
    async fn put_request(&self, r: &AccessRequest) -> Result<(), StoreError> {
        let r = r.clone();
        self.run(move |s| s.put_request(&r)).await
    }
    async fn requests(&self) -> Result<Vec<(AccessRequest, Vec<Approval>)>, StoreError> {
        self.run(|s| s.requests()).await
    }
    async fn approve(
        &self,
        id: &str,
        decide: DecideFn,
        make_grant: MakeGrantFn,
    ) -> Result<ApproveOutcome, DecisionError> {
        let id = id.to_owned();
        self.run(move |s| s.approve(&id, &*decide, &*make_grant))
            .await
    }
    async fn deny(&self, id: &str, check: CheckFn) -> Result<AccessRequest, DecisionError> {
        let id = id.to_owned();
        self.run(move |s| s.deny(&id, &*check)).await
    }
    async fn grants(&self, now: OffsetDateTime, all: bool) -> Result<Vec<Grant>, StoreError> {
        self.run(move |s| s.grants(now, all)).await
    }
    async fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let id = id.to_owned();
        self.run(move |s| s.grant(&id)).await
    }
    async fn revoke_grant(
        &self,
        id: &str,
        at: OffsetDateTime,
        why: &str,
    ) -> Result<Option<Grant>, StoreError> {
        let (id, why) = (id.to_owned(), why.to_owned());
        self.run(move |s| s.revoke_grant(&id, at, &why)).await
    }
}

/// The credential vault (see [`VaultStore`]).
#[async_trait]
pub trait AsyncVaultStore: Send + Sync {
    /// Create or replace a value.
    async fn put_credential(
        &self,
        device: &str,
        account: &str,
        username: &str,
        secret: &Secret<String>,
        now: i64,
    ) -> Result<PutOutcome, VaultError>;
    /// Every entry (never a value).
    async fn list_credentials(&self) -> Result<Vec<VaultEntry>, VaultError>;
    /// One entry.
    async fn credential_entry(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<VaultEntry>, VaultError>;
    /// Remove an entry; whether it existed.
    async fn remove_credential(&self, device: &str, account: &str) -> Result<bool, VaultError>;
    /// The current value; marks it used at `used_at` when given.
    async fn credential(
        &self,
        device: &str,
        account: &str,
        used_at: Option<i64>,
    ) -> Result<Credential, VaultError>;
    /// The previous value kept during a rotation.
    async fn previous_credential(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<Credential>, VaultError>;
    /// Rotation: store the new value (pending), keep the current one as previous.
    async fn begin_rotation(
        &self,
        device: &str,
        account: &str,
        new: &Secret<String>,
        now: i64,
    ) -> Result<(), VaultError>;
    /// Rotation confirmed: drop the previous value.
    async fn commit_rotation(
        &self,
        device: &str,
        account: &str,
        now: i64,
    ) -> Result<(), VaultError>;
    /// Rotation undone: the previous value is current again.
    async fn abort_rotation(&self, device: &str, account: &str, now: i64)
        -> Result<(), VaultError>;
}

#[async_trait]
impl<S: VaultStore + ?Sized + 'static> AsyncVaultStore for OffThread<S> {
    async fn put_credential(
        &self,
        device: &str,
        account: &str,
        username: &str,
        secret: &Secret<String>,
        now: i64,
    ) -> Result<PutOutcome, VaultError> {
        let (device, account, username, secret) = (
            device.to_owned(),
            account.to_owned(),
            username.to_owned(),
            secret.clone(),
        );
        self.run(move |s| s.put_credential(&device, &account, &username, &secret, now))
            .await
    }
    async fn list_credentials(&self) -> Result<Vec<VaultEntry>, VaultError> {
        self.run(|s| s.list_credentials()).await
    }
    async fn credential_entry(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<VaultEntry>, VaultError> {
        let (device, account) = (device.to_owned(), account.to_owned());
        self.run(move |s| s.credential_entry(&device, &account))
            .await
    }
    async fn remove_credential(&self, device: &str, account: &str) -> Result<bool, VaultError> {
        let (device, account) = (device.to_owned(), account.to_owned());
        self.run(move |s| s.remove_credential(&device, &account))
            .await
    }
    async fn credential(
        &self,
        device: &str,
        account: &str,
        used_at: Option<i64>,
    ) -> Result<Credential, VaultError> {
        let (device, account) = (device.to_owned(), account.to_owned());
        self.run(move |s| s.credential(&device, &account, used_at))
            .await
    }
    async fn previous_credential(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<Credential>, VaultError> {
        let (device, account) = (device.to_owned(), account.to_owned());
        self.run(move |s| s.previous_credential(&device, &account))
            .await
    }
    async fn begin_rotation(
        &self,
        device: &str,
        account: &str,
        new: &Secret<String>,
        now: i64,
    ) -> Result<(), VaultError> {
        let (device, account, new) = (device.to_owned(), account.to_owned(), new.clone());
        self.run(move |s| s.begin_rotation(&device, &account, &new, now))
            .await
    }
    async fn commit_rotation(
        &self,
        device: &str,
        account: &str,
        now: i64,
    ) -> Result<(), VaultError> {
        let (device, account) = (device.to_owned(), account.to_owned());
        self.run(move |s| s.commit_rotation(&device, &account, now))
            .await
    }
    async fn abort_rotation(
        &self,
        device: &str,
        account: &str,
        now: i64,
    ) -> Result<(), VaultError> {
        let (device, account) = (device.to_owned(), account.to_owned());
        self.run(move |s| s.abort_rotation(&device, &account, now))
            .await
    }
}

/// The async stores the services run on.
#[derive(Clone)]
pub struct ServiceStores {
    /// Access requests, approvals and grants.
    pub access: Arc<dyn AsyncAccessStore>,
    /// Users.
    pub users: Arc<dyn AsyncUserStore>,
    /// Locks.
    pub locks: Arc<dyn AsyncLockStore>,
}

impl ServiceStores {
    /// All of them over one blocking store (the embedded SQLite one), off the async workers.
    pub fn off_thread<S>(store: &Arc<S>) -> Self
    where
        S: AccessStore + UserStore + LockStore + 'static,
    {
        let off = OffThread::new(store.clone());
        Self {
            access: off.clone(),
            users: off.clone(),
            locks: off,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    /// A blocking store whose every call panics (a bug, a poisoned driver).
    struct Panics;

    impl UserStore for Panics {
        fn add_user(&self, _: &User) -> Result<(), StoreError> {
            panic!("add_user")
        }
        fn user(&self, _: &str) -> Result<Option<User>, StoreError> {
            panic!("user")
        }
        fn list_users(&self) -> Result<Vec<User>, StoreError> {
            panic!("list_users")
        }
        fn disable_user(&self, _: &str, _: OffsetDateTime) -> Result<bool, StoreError> {
            panic!("disable_user")
        }
        fn set_password(&self, _: &str, _: &str) -> Result<bool, StoreError> {
            panic!("set_password")
        }
        fn set_totp(&self, _: &str, _: Option<&str>) -> Result<bool, StoreError> {
            panic!("set_totp")
        }
        fn record_totp_step(&self, _: &str, _: i64) -> Result<bool, StoreError> {
            panic!("record_totp_step")
        }
        fn disabled_users(&self) -> Result<Vec<String>, StoreError> {
            panic!("disabled_users")
        }
        fn note_login_failure(&self, _: &str, _: OffsetDateTime) -> Result<u32, StoreError> {
            panic!("note_login_failure")
        }
        fn login_failures(&self, _: &str) -> Result<(u32, Option<OffsetDateTime>), StoreError> {
            panic!("login_failures")
        }
        fn clear_login_failures(&self, _: &str) -> Result<(), StoreError> {
            panic!("clear_login_failures")
        }
    }

    #[tokio::test]
    async fn a_store_call_that_panics_is_an_error_not_a_crash() {
        let users: Arc<dyn AsyncUserStore> = OffThread::new(Arc::new(Panics));
        assert!(matches!(
            users.user("alice").await,
            Err(StoreError::Poisoned)
        ));
        assert!(matches!(
            users.list_users().await,
            Err(StoreError::Poisoned)
        ));
    }

    #[tokio::test]
    async fn the_sqlite_store_serves_every_async_trait() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let stores = ServiceStores::off_thread(&db);
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let lock = Lock {
            target: LockTarget::Device("pump-12".into()),
            until: None,
            reason: "recall".into(),
            by: "security sam".into(),
        };
        stores.locks.put_lock(&lock).await.unwrap();
        assert_eq!(stores.locks.active_locks(now).await.unwrap().len(), 1);
        assert!(stores.locks.remove_lock(&lock.target).await.unwrap());
        assert!(stores.users.user("nobody").await.unwrap().is_none());
        assert!(stores.users.disabled_users().await.unwrap().is_empty());
        assert!(stores.access.requests().await.unwrap().is_empty());
        assert!(stores.access.grant("grant-x").await.unwrap().is_none());
        // A decision on a request that does not exist.
        let refused = stores.access.deny("req-x", Box::new(|_| Ok(()))).await;
        assert!(matches!(refused, Err(DecisionError::NotFound(_))));
    }
}
