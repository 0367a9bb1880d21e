//! The gateway's signing keys as a service: every public key (security and admin), and rotation
//! (admins), audited here. `ward audit pubkey --all` and `ward audit rotate-key --gateway` are
//! its front end over frames.

use ward_recording::Keyring;

use super::{Caller, Context, Refusal, Role};
use crate::audit::AuditLog;
use crate::signing::{Rotated, SigningKeys};

/// The signing-key service.
#[derive(Clone)]
pub struct SigningService {
    ctx: Context,
    keys: SigningKeys,
    log: AuditLog,
}

impl SigningService {
    /// Over the gateway's `keys`; rotation switches the audit writer of `log`.
    pub fn new(ctx: Context, keys: SigningKeys, log: AuditLog) -> Self {
        SigningService { ctx, keys, log }
    }

    /// Every public key the gateway ever had, oldest first (audited `public_keys_read`).
    pub async fn list(&self, caller: Caller<'_>) -> Result<Keyring, Refusal> {
        let mut trail = self.ctx.audit.trail();
        let now = self.ctx.clock.now();
        if let Err(r) = Role::Security.require(caller.principal, "read the gateway's signing keys")
        {
            trail.push(
                caller
                    .event("public_keys_read", "denied", now)
                    .reason(r.to_string()),
            );
            return Err(r);
        }
        let keyring = (*self.keys.keyring()).clone();
        trail.push(
            caller
                .event("public_keys_read", "success", now)
                .detail("keys", keyring.entries().len()),
        );
        Ok(keyring)
    }

    /// Rotate the signing key (audited `signing_key_rotated`, severity warning, with both key
    /// ids): the audit log's lines so far are checkpointed with the old key, then everything new
    /// (audit checkpoints, sessions starting from now) is signed with the new one; sessions in
    /// progress finish with the key they started with. The old private key is overwritten on
    /// disk; its public key stays in the keyring, so everything it signed still verifies.
    pub async fn rotate(&self, caller: Caller<'_>) -> Result<Rotated, Refusal> {
        let mut trail = self.ctx.audit.trail();
        let now = self.ctx.clock.now();
        if let Err(r) = Role::Admin.require(caller.principal, "rotate the signing key") {
            trail.push(
                caller
                    .event("signing_key_rotated", "denied", now)
                    .reason(r.to_string()),
            );
            return Err(r);
        }
        let log = self.log.clone();
        let rotated = self
            .keys
            .rotate(now, |signer| async move {
                if let Err(e) = log.rotate(signer).await {
                    tracing::error!(error = %e, "the audit log could not checkpoint with the old key before the rotation");
                }
            })
            .await;
        match rotated {
            Ok(r) => {
                tracing::warn!(old = %r.old_key_id, new = %r.new_key_id, "signing key rotated");
                trail.push(
                    caller
                        .event("signing_key_rotated", "success", self.ctx.clock.now())
                        .severity("warning")
                        .reason(format!(
                            "signing key {} retired (its private key deleted), {} signs from now on",
                            r.old_key_id, r.new_key_id
                        ))
                        .detail("old_key_id", r.old_key_id.clone())
                        .detail("new_key_id", r.new_key_id.clone()),
                );
                Ok(r)
            }
            Err(e) => {
                let why = format!("the signing key was not rotated: {e:#}");
                trail.push(
                    caller
                        .event("signing_key_rotated", "failure", now)
                        .severity("high")
                        .reason(why.clone()),
                );
                Err(Refusal::Unavailable(why))
            }
        }
    }
}
