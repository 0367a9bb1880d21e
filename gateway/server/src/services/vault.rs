//! The credential vault (admins only): set, list, remove and rotate device credentials, and the
//! session path's [`credential`]. Values never appear in an answer, a refusal, an audit event or
//! a log line: events name the device, the account, the user name and the key's fingerprint.
//!
//! Rotation ([`VaultService::rotate`]) stores the new random password before the device is
//! changed (pending, with the previous one kept), has the device driver (a [`DeviceRotator`])
//! change it through the device's console, confirms a login with the new one, and only then drops
//! the previous one. When anything fails it finds out which password the device accepts and
//! keeps that one current, and says so.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ward_ca::Clock;
use ward_core::inject::{Credential, LoginProfile, VaultConfig};
use ward_core::secret::Secret;
use ward_core::Device;

use super::{Caller, Context, Refusal, Role};
use crate::audit::Event;
use crate::gateway::Shared;
use crate::store_async::AsyncVaultStore;
use ward_store::keywrap::{KeyHandle, KeyRing, Rewrapped, SecretStore};
use ward_store::vault::{Kek, KeySource, PutOutcome, VaultEntry, VaultError, VaultStore};

/// Changes a device's password through its console, and checks a login. The gateway's telnet
/// driver implements it (`device_login`); tests use a fake. Error texts are shown to admins and
/// audited: they must never contain a password.
#[async_trait]
pub trait DeviceRotator: Send + Sync {
    /// Log in as `old` and change the password to `new` with `profile`'s rotate procedure.
    async fn rotate(
        &self,
        device: &Device,
        old: &Credential,
        new: &Secret<String>,
        profile: &LoginProfile,
    ) -> Result<(), String>;
    /// Log in with `credential` and log out again: whether the device accepts it.
    async fn login_check(
        &self,
        device: &Device,
        credential: &Credential,
        profile: &LoginProfile,
    ) -> Result<(), String>;
}

/// The gateway's [`DeviceRotator`] for telnet consoles: [`crate::device_login`]'s `rotate` and
/// `login_check` on the device's address.
pub struct TelnetRotator {
    clock: Arc<dyn Clock>,
}

impl TelnetRotator {
    /// A driver reading times from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock }
    }
}

/// The device's socket address (resolved once), for the drivers that dial by address.
async fn socket_addr(device: &Device) -> Result<std::net::SocketAddr, String> {
    if device.tls.is_some() {
        return Err(format!(
            "device {} speaks TLS; rotation dials its console in plain TCP and does not support TLS devices yet",
            device.id
        ));
    }
    if device.netns.is_some() {
        return Err(format!(
            "device {} is reached through network namespace {}; rotation dials from the gateway's own namespace and does not support that yet",
            device.id,
            device.netns.as_deref().unwrap_or_default()
        ));
    }
    let addr = device.address.to_string();
    let first = tokio::net::lookup_host(addr.as_str())
        .await
        .map_err(|e| format!("device {} address {addr}: {e}", device.id))?
        .next();
    first.ok_or_else(|| format!("device {} address {addr} resolves to nothing", device.id))
}

#[async_trait]
impl DeviceRotator for TelnetRotator {
    async fn rotate(
        &self,
        device: &Device,
        old: &Credential,
        new: &Secret<String>,
        profile: &LoginProfile,
    ) -> Result<(), String> {
        let addr = socket_addr(device).await?;
        crate::device_login::rotate(addr, device.id.as_str(), old, new, profile, &*self.clock)
            .await
            .map_err(|f| f.reason)
    }

    async fn login_check(
        &self,
        device: &Device,
        credential: &Credential,
        profile: &LoginProfile,
    ) -> Result<(), String> {
        let addr = socket_addr(device).await?;
        crate::device_login::login_check(
            addr,
            device.id.as_str(),
            credential,
            profile,
            &*self.clock,
        )
        .await
        .map_err(|f| f.reason)
    }
}

/// The store's key-encryption key as the vault service sees it: the store's shared
/// [`KeyHandle`] (a `ward keys rotate --kek` swaps the ring in it) and where the key lives.
pub struct VaultKeys {
    source: KeySource,
    handle: KeyHandle,
}

impl VaultKeys {
    /// Over the store's handle, with the key at `source`.
    pub fn new(source: KeySource, handle: KeyHandle) -> VaultKeys {
        VaultKeys { source, handle }
    }

    /// Over a given key (tests, host-side commands).
    pub fn with_key(kek: Kek) -> VaultKeys {
        VaultKeys {
            source: KeySource::Env("(given)".into()),
            handle: KeyHandle::with(KeyRing::of(kek)),
        }
    }

    /// The current ring.
    pub fn get(&self) -> Result<Arc<KeyRing>, VaultError> {
        Ok(self.handle.get()?)
    }

    /// The current key's fingerprint, when there is a key.
    pub fn fingerprint(&self) -> Option<String> {
        self.handle.fingerprint()
    }

    /// Where the key lives.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The shared handle.
    pub fn handle(&self) -> &KeyHandle {
        &self.handle
    }
}

/// The gateway's vault: its key, its table and the device driver that rotates passwords.
pub struct Vault {
    /// The key.
    pub keys: VaultKeys,
    /// The table.
    pub store: Arc<dyn AsyncVaultStore>,
    /// The driver for `rotate`.
    pub rotator: Option<Arc<dyn DeviceRotator>>,
    /// The entries a rotation is running on (one at a time per entry; `set` and `remove` wait
    /// their turn by being refused).
    pub rotating: Rotating,
    /// Every secret in the store, for `ward keys` (none in tests that need no rotation).
    pub secrets: Option<Arc<dyn SecretStore>>,
    /// What the key step of the start did.
    pub at_start: StartKeys,
    /// Held by a running `ward keys rotate --kek` (one at a time).
    pub kek_rotation: tokio::sync::Mutex<()>,
}

/// The (device, account) entries being rotated.
#[derive(Default)]
pub struct Rotating(Mutex<std::collections::HashSet<(String, String)>>);

/// Marks an entry as being rotated until dropped.
struct RotatingGuard<'a> {
    set: &'a Rotating,
    key: (String, String),
}

impl Rotating {
    fn is_rotating(&self, device: &str, account: &str) -> bool {
        self.0
            .lock()
            .map(|s| s.contains(&(device.to_owned(), account.to_owned())))
            .unwrap_or(true)
    }

    fn start(&self, device: &str, account: &str) -> Option<RotatingGuard<'_>> {
        let key = (device.to_owned(), account.to_owned());
        let inserted = self.0.lock().ok()?.insert(key.clone());
        // The guard is made only when this call inserted (dropping one removes the entry).
        inserted.then(|| RotatingGuard { set: self, key })
    }
}

impl Drop for RotatingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.0.lock() {
            set.remove(&self.key);
        }
    }
}

fn rotation_running(device: &str, account: &str) -> Refusal {
    Refusal::Invalid(format!(
        "a rotation of {}/{} is running; try again when it has finished",
        ward_core::escape(device),
        ward_core::escape(account)
    ))
}

/// Why the session path got no credential. `Display` says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultRefusal {
    /// Nothing is vaulted for the device and account.
    #[error("no vaulted credential for {device}/{account}; an admin runs `ward vault set {device} {account}`")]
    NotVaulted {
        /// Device id.
        device: String,
        /// Account.
        account: String,
    },
    /// The value is there but cannot be read (wrong key, altered row); the text names the fix.
    #[error("{0}")]
    Unreadable(String),
    /// The store or the key failed.
    #[error("the vault is unavailable: {0}")]
    Unavailable(String),
}

/// The current credential for `device`/`account`, for a session that injects it; marks it used.
/// Runs the store and the decryption off the async workers.
pub(crate) async fn credential(
    shared: &Shared,
    device: &str,
    account: &str,
) -> Result<Credential, VaultRefusal> {
    let vault = &shared.vault;
    let not_vaulted = || VaultRefusal::NotVaulted {
        device: device.to_owned(),
        account: account.to_owned(),
    };
    let now = shared.clock.now().unix_timestamp();
    match vault.store.credential(device, account, Some(now)).await {
        Ok(c) => Ok(c),
        Err(VaultError::NotFound { .. }) => Err(not_vaulted()),
        Err(e @ (VaultError::WrongKey { .. } | VaultError::Tampered { .. })) => {
            Err(VaultRefusal::Unreadable(e.to_string()))
        }
        Err(e) => Err(VaultRefusal::Unavailable(e.to_string())),
    }
}

/// A value to vault.
#[derive(Debug, Clone)]
pub struct SetRequest {
    /// Device id (a configured device).
    pub device: String,
    /// The account (the role on the device).
    pub account: String,
    /// The user name the device knows; `None`: the entry's current one, else the account name.
    pub username: Option<String>,
    /// The value.
    pub secret: Secret<String>,
}

/// What a rotation did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The entry afterwards.
    pub entry: Option<VaultEntry>,
    /// What happened, for the admin.
    pub message: String,
}

/// The vault's operations.
#[derive(Clone)]
pub struct VaultService {
    ctx: Context,
    vault: Arc<Vault>,
}

fn refusal(e: VaultError) -> Refusal {
    match e {
        VaultError::NotFound { .. } => Refusal::NotFound(e.to_string()),
        VaultError::Invalid(_) | VaultError::State(_) => Refusal::Invalid(e.to_string()),
        _ => Refusal::Unavailable(e.to_string()),
    }
}

/// A strong random password a console can take: 24 characters of A-Z a-z 0-9 and `-_.+=@%`,
/// with at least one of each class.
pub fn generate_password() -> Secret<String> {
    use rand::Rng;
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const DIGIT: &[u8] = b"23456789";
    const SYMBOL: &[u8] = b"-_.+=@%";
    let all: Vec<u8> = [LOWER, UPPER, DIGIT, SYMBOL].concat();
    let mut rng = rand::rng();
    loop {
        let mut s = String::with_capacity(24);
        for _ in 0..24 {
            let i = rng.random_range(0..all.len());
            s.push(char::from(all.get(i).copied().unwrap_or(b'x')));
        }
        let secret = Secret::new(s);
        let has = |set: &[u8]| secret.expose().bytes().any(|b| set.contains(&b));
        if has(LOWER) && has(UPPER) && has(DIGIT) && has(SYMBOL) {
            return secret;
        }
    }
}

impl VaultService {
    /// A service over `vault`.
    pub fn new(ctx: Context, vault: Arc<Vault>) -> Self {
        Self { ctx, vault }
    }

    fn event(
        &self,
        caller: Caller<'_>,
        event: &str,
        outcome: &str,
        device: &str,
        account: &str,
    ) -> Event {
        caller
            .event(event, outcome, self.ctx.clock.now())
            .detail("device", ward_core::escape(device))
            .detail("account", ward_core::escape(account))
    }

    /// Creates or replaces a value (admins only). Audited as `vault_set` (never the value).
    pub async fn set(&self, caller: Caller<'_>, req: SetRequest) -> Result<VaultEntry, Refusal> {
        let SetRequest {
            device,
            account,
            username,
            secret,
        } = req;
        let now = self.ctx.clock.now().unix_timestamp();
        let mut trail = self.ctx.audit.trail();
        let ev = |outcome: &str| self.event(caller, "vault_set", outcome, &device, &account);
        if let Err(r) = Role::Admin.require(caller.principal, "set vaulted credentials") {
            trail.push(ev("denied").reason("not an admin"));
            return Err(r);
        }
        let config = self.ctx.live.config();
        if !config.devices.iter().any(|d| d.id.as_str() == device) {
            let r = Refusal::Invalid(format!(
                "no device {} in the gateway's config: vault credentials for configured devices (`ward devices` lists them)",
                ward_core::escape(&device)
            ));
            trail.push(ev("failure").reason(r.to_string()));
            return Err(r);
        }
        if self.vault.rotating.is_rotating(&device, &account) {
            let r = rotation_running(&device, &account);
            trail.push(ev("failure").reason(r.to_string()));
            return Err(r);
        }
        let result = async {
            let existing = self.vault.store.credential_entry(&device, &account).await?;
            let username = username
                .or_else(|| existing.map(|e| e.username))
                .unwrap_or_else(|| account.clone());
            let outcome = self
                .vault
                .store
                .put_credential(&device, &account, &username, &secret, now)
                .await?;
            let entry = self
                .vault
                .store
                .credential_entry(&device, &account)
                .await?
                .ok_or_else(|| VaultError::NotFound {
                    device: device.clone(),
                    account: account.clone(),
                })?;
            Ok::<_, VaultError>((outcome, entry))
        }
        .await;
        drop(secret);
        match result {
            Ok((outcome, entry)) => {
                trail.push(
                    ev("success")
                        .detail(
                            "change",
                            match outcome {
                                PutOutcome::Created => "created",
                                PutOutcome::Replaced => "replaced",
                            },
                        )
                        .detail("username", ward_core::escape(&entry.username))
                        .detail("key_fingerprint", entry.key_fingerprint.clone()),
                );
                Ok(entry)
            }
            Err(e) => {
                trail.push(ev("failure").reason(e.to_string()));
                Err(refusal(e))
            }
        }
    }

    /// Every entry: names, user names, times, key fingerprints; never a value (admins only).
    pub async fn list(&self, caller: Caller<'_>) -> Result<Vec<VaultEntry>, Refusal> {
        Role::Admin.require(caller.principal, "list vaulted credentials")?;
        self.vault.store.list_credentials().await.map_err(refusal)
    }

    /// Removes an entry (admins only). Audited as `vault_remove`.
    pub async fn remove(
        &self,
        caller: Caller<'_>,
        device: &str,
        account: &str,
    ) -> Result<(), Refusal> {
        let mut trail = self.ctx.audit.trail();
        let ev = |outcome: &str| self.event(caller, "vault_remove", outcome, device, account);
        if let Err(r) = Role::Admin.require(caller.principal, "remove vaulted credentials") {
            trail.push(ev("denied").reason("not an admin"));
            return Err(r);
        }
        if self.vault.rotating.is_rotating(device, account) {
            let r = rotation_running(device, account);
            trail.push(ev("failure").reason(r.to_string()));
            return Err(r);
        }
        match self.vault.store.remove_credential(device, account).await {
            Ok(true) => {
                trail.push(ev("success").severity("warning"));
                Ok(())
            }
            Ok(false) => {
                let e = VaultError::NotFound {
                    device: device.to_owned(),
                    account: account.to_owned(),
                };
                trail.push(ev("failure").reason(e.to_string()));
                Err(refusal(e))
            }
            Err(e) => {
                trail.push(ev("failure").reason(e.to_string()));
                Err(refusal(e))
            }
        }
    }

    /// Replaces the device's password with a random one nobody knows (admins only): the new one
    /// is stored (pending) before the device is changed, confirmed by a login, then committed.
    /// A failure keeps whichever password the device accepts current and says which. Audited as
    /// `vault_rotate`.
    pub async fn rotate(
        &self,
        caller: Caller<'_>,
        device_id: &str,
        account: &str,
    ) -> Result<Rotated, Refusal> {
        let mut trail = self.ctx.audit.trail();
        let ev = |outcome: &str| self.event(caller, "vault_rotate", outcome, device_id, account);
        if let Err(r) = Role::Admin.require(caller.principal, "rotate vaulted credentials") {
            trail.push(ev("denied").reason("not an admin"));
            return Err(r);
        }
        let result = match self.vault.rotating.start(device_id, account) {
            Some(_running) => self.rotate_inner(device_id, account).await,
            None => Err(rotation_running(device_id, account)),
        };
        match &result {
            Ok(r) => trail.push(ev("success").severity("warning").reason(r.message.clone())),
            Err(r) => trail.push(ev("failure").severity("high").reason(r.to_string())),
        }
        result
    }

    /// The rotations `[vault] rotate_every` makes due now: every vaulted value on a telnet device
    /// whose login profile has a rotate procedure, unchanged (set, rotated or re-keyed) for
    /// `every` or longer. Each runs as [`VaultService::rotate`] does, audited as `vault_rotate` by
    /// the gateway with `scheduled` set. Returns what was tried, with each outcome.
    pub async fn rotate_due(
        &self,
        every: std::time::Duration,
    ) -> Vec<(String, String, Result<Rotated, Refusal>)> {
        let entries = match self.vault.store.list_credentials().await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(event = "vault_schedule_failed", reason = %e,
                    "scheduled rotation: the vault could not be listed; trying again later");
                return Vec::new();
            }
        };
        let config = self.ctx.live.config();
        let now = self.ctx.clock.now().unix_timestamp();
        let every = i64::try_from(every.as_secs()).unwrap_or(i64::MAX);
        let mut tried = Vec::new();
        for e in entries {
            let telnet = config
                .device(&e.device)
                .is_some_and(|d| d.protocol == ward_core::Protocol::Telnet);
            let procedure = config.inject.login_for(&e.device).rotate.is_some();
            if !telnet || !procedure || now.saturating_sub(e.updated_unix) < every {
                continue;
            }
            let (device, account) = (e.device.as_str(), e.account.as_str());
            let mut trail = self.ctx.audit.trail();
            let ev = |outcome: &str| {
                Event::new("vault_rotate", outcome, self.ctx.clock.now())
                    .detail("device", ward_core::escape(device))
                    .detail("account", ward_core::escape(account))
                    .detail("scheduled", true)
            };
            let result = match self.vault.rotating.start(device, account) {
                Some(_running) => self.rotate_inner(device, account).await,
                None => Err(rotation_running(device, account)),
            };
            match &result {
                Ok(r) => trail.push(ev("success").severity("warning").reason(r.message.clone())),
                Err(r) => trail.push(ev("failure").severity("high").reason(r.to_string())),
            }
            tried.push((e.device.clone(), e.account.clone(), result));
        }
        tried
    }

    async fn rotate_inner(&self, device_id: &str, account: &str) -> Result<Rotated, Refusal> {
        let name = format!(
            "{}/{}",
            ward_core::escape(device_id),
            ward_core::escape(account)
        );
        let Some(rotator) = self.vault.rotator.clone() else {
            return Err(Refusal::Unavailable(
                "this gateway has no device driver for rotation; nothing was changed".into(),
            ));
        };
        let config = self.ctx.live.config();
        let Some(device) = config
            .devices
            .iter()
            .find(|d| d.id.as_str() == device_id)
            .cloned()
        else {
            return Err(Refusal::NotFound(format!(
                "no device {} in the gateway's config",
                ward_core::escape(device_id)
            )));
        };
        if device.protocol != ward_core::Protocol::Telnet {
            return Err(Refusal::Invalid(format!(
                "device {} speaks {}: rotation changes a password through a telnet console",
                device.id, device.protocol
            )));
        }
        let profile = config.inject.login_for(device_id);
        if profile.rotate.is_none() {
            return Err(Refusal::Invalid(format!(
                "device {}'s login profile {} has no rotate procedure: add `rotate = {{ command = \"passwd\", steps = [...] }}` to its [[login_profile]]",
                device.id, profile.name
            )));
        }
        let store = &self.vault.store;
        let not_found = || {
            refusal(VaultError::NotFound {
                device: device_id.to_owned(),
                account: account.to_owned(),
            })
        };
        let entry = store
            .credential_entry(device_id, account)
            .await
            .map_err(refusal)?
            .ok_or_else(not_found)?;
        let now = || self.ctx.clock.now().unix_timestamp();
        if entry.pending {
            // An earlier rotation did not finish: settle it on what the device accepts first.
            let settled = self
                .settle(&*rotator, &device, &profile, device_id, account)
                .await?;
            if settled == Settled::Neither {
                return Err(Refusal::Unavailable(format!(
                    "an earlier rotation of {name} did not finish and the device accepts neither password kept: both are kept; check the device, then `ward vault set {} {}` with its password",
                    ward_core::escape(device_id),
                    ward_core::escape(account)
                )));
            }
        }
        let old = store
            .credential(device_id, account, Some(now()))
            .await
            .map_err(refusal)?;
        let new = generate_password();
        // Stored before the device is changed: whatever happens next, the vault knows it.
        store
            .begin_rotation(device_id, account, &new, now())
            .await
            .map_err(|e| {
                Refusal::Unavailable(format!(
                    "the new password could not be stored, so the device was not changed: {e}"
                ))
            })?;
        let new_cred = Credential {
            account: old.account.clone(),
            username: old.username.clone(),
            secret: new,
        };
        let failure = match rotator
            .rotate(&device, &old, &new_cred.secret, &profile)
            .await
        {
            Ok(()) => match rotator.login_check(&device, &new_cred, &profile).await {
                Ok(()) => {
                    store
                        .commit_rotation(device_id, account, now())
                        .await
                        .map_err(|e| {
                            Refusal::Unavailable(format!(
                                "the device took the new password and a login with it works, but the vault could not mark it current ({e}); it is stored as pending and `ward vault rotate {} {}` settles it",
                                ward_core::escape(device_id),
                                ward_core::escape(account)
                            ))
                        })?;
                    let entry = store
                        .credential_entry(device_id, account)
                        .await
                        .ok()
                        .flatten();
                    return Ok(Rotated {
                        entry,
                        message: format!(
                            "rotated {name}: the device has a new random password that nobody knows; a login with it works"
                        ),
                    });
                }
                Err(e) => format!(
                    "the device accepted the change but a login with the new password failed: {}",
                    ward_core::escape(&e)
                ),
            },
            Err(e) => format!(
                "the device did not change its password: {}",
                ward_core::escape(&e)
            ),
        };
        drop(old);
        drop(new_cred);
        match self
            .settle(&*rotator, &device, &profile, device_id, account)
            .await?
        {
            Settled::Previous => Err(Refusal::Unavailable(format!(
                "rotation of {name} failed ({failure}); the previous password still works and is current again"
            ))),
            Settled::New => {
                let entry = store
                    .credential_entry(device_id, account)
                    .await
                    .ok()
                    .flatten();
                Ok(Rotated {
                    entry,
                    message: format!(
                        "rotated {name}: {failure}, but a login with the new password works, so it is current"
                    ),
                })
            }
            Settled::Neither => Err(Refusal::Unavailable(format!(
                "rotation of {name} failed ({failure}) and the device accepts neither the previous nor the new password: both are kept (the new one current, pending); check the device, then run `ward vault rotate` again to settle it or `ward vault set` with its password"
            ))),
        }
    }

    /// After a failed or interrupted rotation: keeps current whichever value the device accepts
    /// (the previous one first, since a refused change leaves it in place).
    async fn settle(
        &self,
        rotator: &dyn DeviceRotator,
        device: &Device,
        profile: &LoginProfile,
        device_id: &str,
        account: &str,
    ) -> Result<Settled, Refusal> {
        let store = &self.vault.store;
        let now = self.ctx.clock.now().unix_timestamp();
        if let Some(prev) = store
            .previous_credential(device_id, account)
            .await
            .map_err(refusal)?
        {
            if rotator.login_check(device, &prev, profile).await.is_ok() {
                store
                    .abort_rotation(device_id, account, now)
                    .await
                    .map_err(refusal)?;
                return Ok(Settled::Previous);
            }
        }
        let current = store
            .credential(device_id, account, None)
            .await
            .map_err(refusal)?;
        if rotator.login_check(device, &current, profile).await.is_ok() {
            store
                .commit_rotation(device_id, account, now)
                .await
                .map_err(refusal)?;
            return Ok(Settled::New);
        }
        Ok(Settled::Neither)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Previous,
    New,
    Neither,
}

/// The key step of the gateway's start: the store's key-encryption key (`[vault] key_file` /
/// `key_env`, default `<state_dir>/vault.key`, created 0600 at the first start) set on the
/// store, then what a crashed `ward keys rotate --kek` or an upgrade left finished: values under
/// an older key (kept beside the key file) and plaintext TOTP seeds of an older store are sealed
/// under the current key in one transaction ([`Vault::at_start`] says how many; the gateway
/// audits it). Warns, naming fingerprints, when stored values are sealed under a key the gateway
/// does not hold: sessions that inject them, and logins that need such a seed, are refused.
pub fn open_vault<S: VaultStore + SecretStore + 'static>(
    config: &VaultConfig,
    state_dir: &Path,
    db: &Arc<S>,
    rotator: Arc<dyn DeviceRotator>,
) -> anyhow::Result<Arc<Vault>> {
    let source = KeySource::of(config, state_dir);
    // The key itself (unset key_env, lax mode, garbage, a key file gone from under sealed
    // values): fail closed.
    let ring = ward_store::keywrap::load_store_keys(&**db, &source)?;
    // What a crash or an upgrade left: values under a key the gateway does not hold are refused
    // one by one (named), the gateway still starts.
    let (at_start, warning) = match ward_store::keywrap::finish_interrupted(&**db, &ring, &source) {
        Ok(done) => (done, None),
        Err(e) => (Rewrapped::default(), Some(e.to_string())),
    };
    if let Some(w) = &warning {
        tracing::warn!(event = "kek_finish_failed", "{w}");
    }
    if at_start.plaintext_seeds_sealed > 0 {
        tracing::info!(
            event = "totp_seeds_sealed",
            seeds = at_start.plaintext_seeds_sealed,
            "sealed the plaintext TOTP seeds of an older store under the key-encryption key"
        );
    }
    if at_start.vault_values + at_start.totp_seeds > 0 {
        tracing::warn!(
            event = "kek_rotation_finished",
            vault_values = at_start.vault_values,
            totp_seeds = at_start.totp_seeds,
            "finished a key-encryption key rotation a crash interrupted"
        );
    }
    let keys = VaultKeys::new(source, db.key_handle());
    let entries = db.list_credentials()?;
    if let Some(warning) = key_warning(keys.fingerprint().as_deref(), &entries) {
        tracing::warn!(event = "vault_key_mismatch", "{warning}");
    } else if let Some(fp) = keys.fingerprint() {
        tracing::info!(event = "vault_key_loaded", fingerprint = %fp, values = entries.len(), "key-encryption key loaded");
    }
    let secrets: Arc<dyn SecretStore> = db.clone();
    Ok(Arc::new(Vault {
        keys,
        store: crate::store_async::OffThread::new(db.clone()),
        rotator: Some(rotator),
        rotating: Rotating::default(),
        secrets: Some(secrets),
        at_start: StartKeys {
            rewrapped: at_start,
            warning,
        },
        kek_rotation: Default::default(),
    }))
}

/// What the key step of the start did, for the start's audit events.
#[derive(Debug, Clone, Default)]
pub struct StartKeys {
    /// Values sealed or re-encrypted.
    pub rewrapped: Rewrapped,
    /// Why finishing failed (values under a key the gateway does not hold), if it did.
    pub warning: Option<String>,
}

impl Vault {
    /// The audit events for what the key step of the start did (none when it did nothing).
    pub fn start_events(&self, now: time::OffsetDateTime) -> Vec<Event> {
        let mut out = Vec::new();
        let fp = self.keys.fingerprint().unwrap_or_default();
        let r = &self.at_start.rewrapped;
        if r.plaintext_seeds_sealed > 0 {
            out.push(
                Event::new("totp_seeds_sealed", "success", now)
                    .detail("kek", fp.as_str())
                    .detail("seeds", r.plaintext_seeds_sealed),
            );
        }
        if r.vault_values + r.totp_seeds > 0 {
            out.push(
                Event::new("kek_rotation_finished", "success", now)
                    .detail("kek", fp.as_str())
                    .detail("vault_values", r.vault_values)
                    .detail("totp_seeds", r.totp_seeds),
            );
        }
        if let Some(w) = &self.at_start.warning {
            out.push(
                Event::new("kek_rotation_finished", "failure", now)
                    .detail("kek", fp.as_str())
                    .reason(w.clone()),
            );
        }
        out
    }
}

/// What is wrong between the key at hand and the stored values' fingerprints, if anything.
fn key_warning(key: Option<&str>, entries: &[VaultEntry]) -> Option<String> {
    let mut other: Vec<&str> = entries
        .iter()
        .map(|e| e.key_fingerprint.as_str())
        .filter(|fp| Some(*fp) != key)
        .collect();
    other.sort_unstable();
    other.dedup();
    let n = entries
        .iter()
        .filter(|e| Some(e.key_fingerprint.as_str()) != key)
        .count();
    match key {
        _ if n == 0 => None,
        None => Some(format!(
            "{n} vaulted value(s) are stored but the vault key is missing (they need key {}): sessions that inject them are refused; restore the key file",
            other.join(", ")
        )),
        Some(fp) => Some(format!(
            "{n} vaulted value(s) are sealed under key {}, not this gateway's key {fp}: sessions that inject them are refused; start with that key, or `ward vault rekey`",
            other.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ward_ca::{FixedClock, Kind};
    use ward_core::access::Grant;
    use ward_core::config::Config;
    use ward_core::frame::LockTarget;
    use ward_core::policy::Lock;
    use ward_core::Principal;

    use super::*;
    use crate::audit::{AuditLog, AuditWriter};
    use crate::services::testing::{now, Who};
    use crate::services::{Audit, LiveState};
    use crate::store::SqliteStore;
    use crate::store_async::OffThread;

    struct Live(Arc<Config>);

    impl LiveState for Live {
        fn config(&self) -> Arc<Config> {
            self.0.clone()
        }
        fn grants(&self) -> Arc<[Grant]> {
            Arc::from(Vec::new())
        }
        fn locks(&self) -> Vec<Lock> {
            Vec::new()
        }
        fn live_principals(&self) -> Vec<Principal> {
            Vec::new()
        }
        fn access_changed(&self) {}
        fn locked(&self, _: &Lock) -> usize {
            0
        }
        fn unlocked(&self, _: &LockTarget) {}
    }

    /// A device whose password is `password`; `refuse_change` makes it refuse `passwd`,
    /// `forget_new` makes it accept the change but then refuse the new password at login.
    #[derive(Default)]
    struct FakeDevice {
        password: Mutex<String>,
        refuse_change: bool,
        forget_new: bool,
        rotations: AtomicUsize,
    }

    #[async_trait]
    impl DeviceRotator for FakeDevice {
        async fn rotate(
            &self,
            _: &Device,
            old: &Credential,
            new: &Secret<String>,
            _: &LoginProfile,
        ) -> Result<(), String> {
            self.rotations.fetch_add(1, Ordering::SeqCst);
            let mut pw = self.password.lock().unwrap();
            if *pw != *old.secret.expose() {
                return Err("login incorrect".into());
            }
            if self.refuse_change {
                return Err("passwd: authentication token manipulation error".into());
            }
            if !self.forget_new {
                *pw = new.expose().clone();
            } else {
                *pw = "something-else".into();
            }
            Ok(())
        }
        async fn login_check(
            &self,
            _: &Device,
            c: &Credential,
            _: &LoginProfile,
        ) -> Result<(), String> {
            if *self.password.lock().unwrap() == *c.secret.expose() {
                Ok(())
            } else {
                Err("login incorrect".into())
            }
        }
    }

    struct Fx {
        dir: tempfile::TempDir,
        audit: AuditLog,
        _writer: AuditWriter,
        db: Arc<SqliteStore>,
        kek: Kek,
        service: VaultService,
    }

    fn fixture(rotator: Option<Arc<dyn DeviceRotator>>) -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let config = Config::parse(ward_core::config::SAMPLE_CONFIG, "ward.toml").unwrap();
        let (signer, _) = ward_recording::Signer::generate().unwrap();
        let clock: Arc<dyn ward_ca::Clock> = Arc::new(FixedClock::new(now()));
        let (audit, writer) = AuditLog::open(dir.path(), Arc::new(signer), clock.clone()).unwrap();
        let ctx = Context {
            clock,
            audit: Audit::new(audit.clone()),
            live: Arc::new(Live(Arc::new(config))),
        };
        let kek = Kek::generate().unwrap();
        db.keys().set(KeyRing::of(kek.clone()));
        let vault = Arc::new(Vault {
            keys: VaultKeys::new(KeySource::Env("(given)".into()), db.keys().clone()),
            store: OffThread::new(db.clone()),
            rotator,
            rotating: Rotating::default(),
            secrets: Some(db.clone()),
            at_start: StartKeys::default(),
            kek_rotation: Default::default(),
        });
        Fx {
            service: VaultService::new(ctx, vault),
            dir,
            audit,
            _writer: writer,
            db,
            kek,
        }
    }

    impl Fx {
        async fn audit_text(&self) -> String {
            self.audit.flush().await;
            std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap()
        }
        fn current(&self) -> String {
            use ward_store::vault::VaultStore;
            self.db
                .credential("pump-12", "service", None)
                .unwrap()
                .secret
                .expose()
                .clone()
        }
    }

    fn admin() -> Who {
        Who::new(Kind::Admin, None, "alice", &[])
    }

    fn set_req(pw: &str) -> SetRequest {
        SetRequest {
            device: "pump-12".into(),
            account: "service".into(),
            username: Some("admin".into()),
            secret: Secret::new(pw.into()),
        }
    }

    #[tokio::test]
    async fn only_admins_touch_the_vault_and_every_change_is_audited_without_the_value() {
        let fx = fixture(None);
        let pw = "Needle-Factory-Pw-9917";
        for who in [
            Who::new(Kind::Security, None, "sam", &[]),
            Who::new(Kind::Vendor, Some("acme"), "vic", &[]),
            Who::new(Kind::Clinician, None, "carla", &["icu"]),
        ] {
            let r = fx.service.set(who.caller(), set_req(pw)).await;
            assert!(matches!(r, Err(Refusal::Forbidden(_))), "{r:?}");
            assert!(matches!(
                fx.service.list(who.caller()).await,
                Err(Refusal::Forbidden(_))
            ));
            assert!(matches!(
                fx.service.remove(who.caller(), "pump-12", "service").await,
                Err(Refusal::Forbidden(_))
            ));
            assert!(matches!(
                fx.service.rotate(who.caller(), "pump-12", "service").await,
                Err(Refusal::Forbidden(_))
            ));
        }
        assert!(fx.service.list(admin().caller()).await.unwrap().is_empty());
        let a = admin();
        let entry = fx.service.set(a.caller(), set_req(pw)).await.unwrap();
        assert_eq!(entry.username, "admin");
        assert_eq!(entry.key_fingerprint, fx.kek.fingerprint());
        // Replaced without --user: keeps the user name.
        let again = SetRequest {
            username: None,
            ..set_req(pw)
        };
        assert_eq!(
            fx.service.set(a.caller(), again).await.unwrap().username,
            "admin"
        );
        // An unknown device is refused.
        let unknown = SetRequest {
            device: "pump-99".into(),
            ..set_req(pw)
        };
        assert!(matches!(
            fx.service.set(a.caller(), unknown).await,
            Err(Refusal::Invalid(_))
        ));
        let listed = fx.service.list(a.caller()).await.unwrap();
        assert_eq!(listed.len(), 1);
        fx.service
            .remove(a.caller(), "pump-12", "service")
            .await
            .unwrap();
        assert!(matches!(
            fx.service.remove(a.caller(), "pump-12", "service").await,
            Err(Refusal::NotFound(_))
        ));
        let audit = fx.audit_text().await;
        assert!(!audit.contains(pw), "the audit log holds the value");
        let events: Vec<String> = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"].as_str().is_some_and(|e| e.starts_with("vault_")))
            .map(|v| {
                format!(
                    "{}/{}",
                    v["event"].as_str().unwrap(),
                    v["outcome"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            events,
            [
                "vault_set/denied",
                "vault_remove/denied",
                "vault_rotate/denied",
                "vault_set/denied",
                "vault_remove/denied",
                "vault_rotate/denied",
                "vault_set/denied",
                "vault_remove/denied",
                "vault_rotate/denied",
                "vault_set/success",
                "vault_set/success",
                "vault_set/failure",
                "vault_remove/success",
                "vault_remove/failure",
            ]
        );
        assert!(audit.contains(fx.kek.fingerprint()));
    }

    #[tokio::test]
    async fn rotation_commits_only_after_a_login_with_the_new_password() {
        let device = Arc::new(FakeDevice {
            password: Mutex::new("factory".into()),
            ..Default::default()
        });
        let fx = fixture(Some(device.clone()));
        let a = admin();
        fx.service
            .set(a.caller(), set_req("factory"))
            .await
            .unwrap();
        let r = fx
            .service
            .rotate(a.caller(), "pump-12", "service")
            .await
            .unwrap();
        let new = fx.current();
        assert_ne!(new, "factory");
        assert_eq!(new.len(), 24);
        assert_eq!(*device.password.lock().unwrap(), new);
        let e = r.entry.unwrap();
        assert!(!e.pending && !e.has_previous);
        assert_eq!(e.last_rotated_unix, Some(now().unix_timestamp()));
        assert!(!r.message.contains(&new));
        let audit = fx.audit_text().await;
        assert!(!audit.contains(&new) && !audit.contains("factory"));
        assert!(audit.contains("\"vault_rotate\""));
    }

    #[tokio::test]
    async fn scheduled_rotation_takes_due_telnet_values_only_and_is_audited_as_scheduled() {
        let device = Arc::new(FakeDevice {
            password: Mutex::new("factory".into()),
            ..Default::default()
        });
        let fx = fixture(Some(device.clone()));
        let a = admin();
        fx.service
            .set(a.caller(), set_req("factory"))
            .await
            .unwrap();
        let mut http = set_req("monitor-pw");
        http.device = "monitor-3".into();
        http.account = "console".into();
        fx.service.set(a.caller(), http).await.unwrap();
        // Set just now: not due under a 30-day schedule.
        let month = std::time::Duration::from_secs(30 * 86_400);
        assert!(fx.service.rotate_due(month).await.is_empty());
        assert_eq!(fx.current(), "factory");
        // Due (a zero interval): the telnet pump is rotated, the HTTP monitor is not touched.
        let tried = fx.service.rotate_due(std::time::Duration::ZERO).await;
        let names: Vec<(&str, &str)> = tried
            .iter()
            .map(|(d, a, _)| (d.as_str(), a.as_str()))
            .collect();
        assert_eq!(names, [("pump-12", "service")]);
        assert!(tried[0].2.is_ok(), "{:?}", tried[0].2.as_ref().err());
        let new = fx.current();
        assert_ne!(new, "factory");
        assert_eq!(*device.password.lock().unwrap(), new);
        let audit = fx.audit_text().await;
        let line = audit
            .lines()
            .find(|l| l.contains("\"vault_rotate\"") && l.contains("\"scheduled\":true"))
            .expect("a scheduled vault_rotate event");
        assert!(line.contains("\"success\""), "{line}");
        assert!(!audit.contains(&new));
    }

    #[tokio::test]
    async fn a_device_that_refuses_the_change_keeps_the_old_password_current() {
        let device = Arc::new(FakeDevice {
            password: Mutex::new("factory".into()),
            refuse_change: true,
            ..Default::default()
        });
        let fx = fixture(Some(device.clone()));
        let a = admin();
        fx.service
            .set(a.caller(), set_req("factory"))
            .await
            .unwrap();
        let err = fx
            .service
            .rotate(a.caller(), "pump-12", "service")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the previous password still works and is current again"),
            "{err}"
        );
        assert!(err.contains("token manipulation"), "{err}");
        assert_eq!(fx.current(), "factory");
        use ward_store::vault::VaultStore;
        let e = fx
            .db
            .credential_entry("pump-12", "service")
            .unwrap()
            .unwrap();
        assert!(!e.pending && !e.has_previous && e.last_rotated_unix.is_none());
    }

    #[tokio::test]
    async fn a_device_that_refuses_the_new_password_at_login_falls_back_or_keeps_both() {
        // The change "succeeds" but the device then takes neither password: both are kept.
        let device = Arc::new(FakeDevice {
            password: Mutex::new("factory".into()),
            forget_new: true,
            ..Default::default()
        });
        let fx = fixture(Some(device.clone()));
        let a = admin();
        fx.service
            .set(a.caller(), set_req("factory"))
            .await
            .unwrap();
        let err = fx
            .service
            .rotate(a.caller(), "pump-12", "service")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("neither the previous nor the new password"),
            "{err}"
        );
        use ward_store::vault::VaultStore;
        let e = fx
            .db
            .credential_entry("pump-12", "service")
            .unwrap()
            .unwrap();
        assert!(e.pending && e.has_previous);
        // The device is repaired to the old password: the next rotate settles on it, then rotates.
        *device.password.lock().unwrap() = "factory".into();
        let device2 = Arc::new(FakeDevice {
            password: Mutex::new("factory".into()),
            ..Default::default()
        });
        let fx2 = Fx {
            service: VaultService::new(
                fx.service.ctx.clone(),
                Arc::new(Vault {
                    keys: VaultKeys::new(KeySource::Env("(given)".into()), fx.db.keys().clone()),
                    store: OffThread::new(fx.db.clone()),
                    rotator: Some(device2.clone()),
                    rotating: Rotating::default(),
                    secrets: Some(fx.db.clone()),
                    at_start: StartKeys::default(),
                    kek_rotation: Default::default(),
                }),
            ),
            ..fx
        };
        fx2.service
            .rotate(a.caller(), "pump-12", "service")
            .await
            .unwrap();
        assert_eq!(*device2.password.lock().unwrap(), fx2.current());
        let e = fx2
            .db
            .credential_entry("pump-12", "service")
            .unwrap()
            .unwrap();
        assert!(!e.pending && !e.has_previous);
    }

    #[tokio::test]
    async fn without_a_driver_rotation_changes_nothing() {
        let fx = fixture(None);
        let a = admin();
        fx.service
            .set(a.caller(), set_req("factory"))
            .await
            .unwrap();
        let r = fx.service.rotate(a.caller(), "pump-12", "service").await;
        assert!(matches!(r, Err(Refusal::Unavailable(_))), "{r:?}");
        assert_eq!(fx.current(), "factory");
    }

    #[tokio::test]
    async fn one_rotation_at_a_time_and_no_set_meanwhile() {
        let fx = fixture(None);
        let a = admin();
        fx.service
            .set(a.caller(), set_req("factory"))
            .await
            .unwrap();
        let running = fx
            .service
            .vault
            .rotating
            .start("pump-12", "service")
            .unwrap();
        for r in [
            fx.service
                .rotate(a.caller(), "pump-12", "service")
                .await
                .err(),
            fx.service.set(a.caller(), set_req("other")).await.err(),
            fx.service
                .remove(a.caller(), "pump-12", "service")
                .await
                .err(),
        ] {
            let text = r.unwrap().to_string();
            assert!(
                text.contains("rotation of pump-12/service is running"),
                "{text}"
            );
        }
        assert_eq!(fx.current(), "factory");
        drop(running);
        fx.service.set(a.caller(), set_req("other")).await.unwrap();
        assert_eq!(fx.current(), "other");
    }

    #[test]
    fn a_key_that_does_not_fit_the_stored_values_is_named() {
        let entry = |fp: &str| VaultEntry {
            device: "pump-12".into(),
            account: "service".into(),
            username: "admin".into(),
            key_fingerprint: fp.into(),
            created_unix: 0,
            updated_unix: 0,
            last_used_unix: None,
            last_rotated_unix: None,
            pending: false,
            has_previous: false,
        };
        assert_eq!(key_warning(Some("aa"), &[entry("aa")]), None);
        assert_eq!(key_warning(None, &[]), None);
        let w = key_warning(Some("aa"), &[entry("aa"), entry("bb"), entry("bb")]).unwrap();
        assert!(
            w.starts_with("2 vaulted value(s) are sealed under key bb, not this gateway's key aa"),
            "{w}"
        );
        let w = key_warning(None, &[entry("bb")]).unwrap();
        assert!(
            w.contains("the vault key is missing (they need key bb)"),
            "{w}"
        );
    }

    #[test]
    fn generated_passwords_are_strong_and_console_safe() {
        for _ in 0..200 {
            let p = generate_password();
            let s = p.expose();
            assert_eq!(s.len(), 24);
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.+=@%".contains(&b)));
            assert!(ward_store::vault::check_value("admin", &p).is_ok());
        }
        assert_ne!(generate_password(), generate_password());
    }
}
