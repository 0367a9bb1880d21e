//! The store's key-encryption key (admins only): `ward keys status` and `ward keys rotate --kek`.
//!
//! Rotation runs online: the gateway keeps serving logins and sessions while every secret in the
//! store (vault values, TOTP seeds) is re-encrypted under a new key in one transaction
//! ([`ward_store::keywrap::rotate_file_kek`] has the order of operations and why a crash at any
//! point is recovered at the next start). Audited as `kek_rotated` with the old and new
//! fingerprints and the counts; never a key or a value.

use std::sync::Arc;

use ward_store::keywrap::{KeyCount, KeySource, Rotated};

use super::vault::Vault;
use super::{Caller, Context, Refusal, Role};

/// `ward keys`.
#[derive(Clone)]
pub struct KeysService {
    ctx: Context,
    vault: Arc<Vault>,
}

impl KeysService {
    /// Over the gateway's vault (which holds the store's key handle and its secrets).
    pub fn new(ctx: Context, vault: Arc<Vault>) -> Self {
        Self { ctx, vault }
    }

    /// The keys and how many values each seals (admins only). Not audited: nothing changes and
    /// nothing secret is shown.
    pub async fn status(&self, caller: Caller<'_>) -> Result<Vec<KeyCount>, Refusal> {
        Role::Admin.require(caller.principal, "see the key-encryption keys")?;
        let secrets = self.secrets()?;
        tokio::task::spawn_blocking(move || secrets.key_counts())
            .await
            .map_err(|e| Refusal::Unavailable(format!("key status: {e}")))?
            .map_err(|e| Refusal::Unavailable(e.to_string()))
    }

    /// A new key-encryption key, every value re-encrypted under it (admins only). One rotation
    /// at a time. Audited as `kek_rotated`.
    pub async fn rotate_kek(&self, caller: Caller<'_>) -> Result<Rotated, Refusal> {
        let mut trail = self.ctx.audit.trail();
        let now = self.ctx.clock.now();
        let ev = |outcome: &str| caller.event("kek_rotated", outcome, now);
        if let Err(r) = Role::Admin.require(caller.principal, "rotate the key-encryption key") {
            trail.push(ev("denied").reason("not an admin"));
            return Err(r);
        }
        let old = self.vault.keys.fingerprint().unwrap_or_default();
        let path = match self.vault.keys.source() {
            KeySource::File(p) => p.clone(),
            KeySource::Env(var) => {
                let r = Refusal::Invalid(format!(
                    "the key-encryption key comes from environment variable {var}: the gateway cannot replace it; put a new key in a file, then run `ward vault rekey --new-key-file FILE` with the gateway stopped and point [vault] key_file at it"
                ));
                trail.push(ev("failure").detail("old_kek", old).reason(r.to_string()));
                return Err(r);
            }
        };
        let secrets = match self.secrets() {
            Ok(s) => s,
            Err(r) => {
                trail.push(ev("failure").detail("old_kek", old).reason(r.to_string()));
                return Err(r);
            }
        };
        let Ok(_one) = self.vault.kek_rotation.try_lock() else {
            let r = Refusal::Invalid("a key-encryption key rotation is already running".into());
            trail.push(ev("failure").detail("old_kek", old).reason(r.to_string()));
            return Err(r);
        };
        let done = tokio::task::spawn_blocking(move || {
            ward_store::keywrap::rotate_file_kek(&*secrets, &path)
        })
        .await
        .map_err(|e| Refusal::Unavailable(format!("key rotation: {e}")))
        .and_then(|r| r.map_err(|e| Refusal::Unavailable(e.to_string())));
        match done {
            Ok(r) => {
                tracing::info!(event = "kek_rotated", old = %r.old, new = %r.new, vault_values = r.rewrapped.vault_values, totp_seeds = r.rewrapped.totp_seeds, "rotated the key-encryption key");
                trail.push(
                    ev("success")
                        .severity("warning")
                        .detail("old_kek", r.old.as_str())
                        .detail("new_kek", r.new.as_str())
                        .detail("vault_values", r.rewrapped.vault_values)
                        .detail("totp_seeds", r.rewrapped.totp_seeds)
                        .detail("plaintext_seeds_sealed", r.rewrapped.plaintext_seeds_sealed),
                );
                Ok(r)
            }
            Err(r) => {
                trail.push(
                    ev("failure")
                        .severity("high")
                        .detail("old_kek", old)
                        .detail(
                            "current_kek",
                            self.vault.keys.fingerprint().unwrap_or_default(),
                        )
                        .reason(r.to_string()),
                );
                Err(r)
            }
        }
    }

    fn secrets(&self) -> Result<Arc<dyn ward_store::keywrap::SecretStore>, Refusal> {
        self.vault.secrets.clone().ok_or_else(|| {
            Refusal::Unavailable("this gateway has no store of secrets to manage".into())
        })
    }
}
