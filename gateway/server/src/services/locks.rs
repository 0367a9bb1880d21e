//! Locks on principals, devices and orgs (security and admin). A lock ends the live sessions it
//! matches at once and refuses new ones until it ends or is removed.

use std::sync::Arc;
use std::time::Duration;

use ward_core::frame::LockTarget;
use ward_core::policy::Lock;
use ward_core::suggest::KnownNames;

use super::{Caller, Context, Refusal, Role};
use crate::audit::Event;
use crate::store_async::{AsyncLockStore, AsyncUserStore};

/// A lock to put.
#[derive(Debug, Clone)]
pub struct LockRequest {
    /// What to lock.
    pub target: LockTarget,
    /// For how long; until unlocked when absent.
    pub duration: Option<Duration>,
    /// Why (recorded, and told to the sessions it ends).
    pub reason: String,
    /// Lock a target that matches nothing known (a typo guard otherwise refuses it).
    pub force: bool,
}

/// What a lock did.
#[derive(Debug, Clone)]
pub struct Locked {
    /// The lock as stored.
    pub lock: Lock,
    /// How many live sessions it ended.
    pub sessions_ended: usize,
    /// It was forced past the typo guard.
    pub forced: bool,
}

/// Locks.
#[derive(Clone)]
pub struct LockService {
    ctx: Context,
    locks: Arc<dyn AsyncLockStore>,
    users: Arc<dyn AsyncUserStore>,
}

impl LockService {
    /// A service over `locks`; `users` names the targets a lock may match.
    pub fn new(
        ctx: Context,
        locks: Arc<dyn AsyncLockStore>,
        users: Arc<dyn AsyncUserStore>,
    ) -> Self {
        Self { ctx, locks, users }
    }

    /// A refused `lock`/`unlock` event (lock events name the identity, not the address).
    fn denied(&self, caller: Caller<'_>, event: &str) -> Event {
        Event::new(event, "denied", self.ctx.clock.now()).principal(caller.identity)
    }

    /// Puts a lock and ends the live sessions it matches.
    pub async fn lock(&self, caller: Caller<'_>, req: LockRequest) -> Result<Locked, Refusal> {
        let LockRequest {
            target,
            duration,
            reason,
            force,
        } = req;
        let mut trail = self.ctx.audit.trail();
        if let Err(r) = Role::Security.require(caller.principal, "lock") {
            trail.push(self.denied(caller, "lock").reason(format!(
                "only security and admin identities may lock; target {target}"
            )));
            return Err(r);
        }
        let known = self.known_names().await;
        if let Err(e) = ward_core::suggest::check_lock_target(&target, &known, force) {
            trail.push(
                self.denied(caller, "lock")
                    .reason(e.to_string())
                    .detail("target", ward_core::escape(&target.to_string())),
            );
            return Err(Refusal::Invalid(e.to_string()));
        }
        let now = self.ctx.clock.now();
        // A duration past the calendar is refused, not a panic.
        let until = match duration {
            None => None,
            Some(d) => Some(
                time::Duration::try_from(d)
                    .ok()
                    .and_then(|d| now.checked_add(d))
                    .ok_or_else(|| Refusal::Invalid("lock duration out of range".into()))?,
            ),
        };
        let lock = Lock {
            target: target.clone(),
            until,
            reason: reason.clone(),
            by: caller.identity.principal(),
        };
        self.locks
            .put_lock(&lock)
            .await
            .map_err(|e| Refusal::Unavailable(format!("lock not stored: {e}")))?;
        let cut = self.ctx.live.locked(&lock);
        trail.push(
            Event::new("lock", "success", now)
                .severity("warning")
                .principal(caller.identity)
                .reason(reason)
                .detail("target", target.to_string())
                .detail(
                    "until",
                    until
                        .map(|u| u.to_string())
                        .unwrap_or_else(|| "until unlocked".into()),
                )
                .detail("sessions_ended", cut)
                .detail("forced", force),
        );
        Ok(Locked {
            lock,
            sessions_ended: cut,
            forced: force,
        })
    }

    /// Removes the lock on `target`.
    pub async fn unlock(&self, caller: Caller<'_>, target: &LockTarget) -> Result<(), Refusal> {
        let mut trail = self.ctx.audit.trail();
        if let Err(r) = Role::Security.require(caller.principal, "unlock") {
            trail.push(self.denied(caller, "unlock").reason(format!(
                "only security and admin identities may unlock; target {target}"
            )));
            return Err(r);
        }
        let existed = self
            .locks
            .remove_lock(target)
            .await
            .map_err(|e| Refusal::Unavailable(format!("unlock not stored: {e}")))?;
        self.ctx.live.unlocked(target);
        trail.push(
            Event::new(
                "unlock",
                if existed { "success" } else { "failure" },
                self.ctx.clock.now(),
            )
            .principal(caller.identity)
            .detail("target", target.to_string()),
        );
        if existed {
            Ok(())
        } else {
            Err(Refusal::NotFound(format!("no lock on {target}")))
        }
    }

    /// The current locks (security and admin).
    pub fn list(&self, caller: Caller<'_>) -> Result<Vec<Lock>, Refusal> {
        Role::Security.require(caller.principal, "list locks")?;
        Ok(self.ctx.live.locks())
    }

    /// Everything a lock can match now: configured devices, orgs and principals named in the
    /// config, users, grants and live sessions (security case: typo locks).
    async fn known_names(&self) -> KnownNames {
        let config = self.ctx.live.config();
        let mut k = KnownNames {
            devices: config.devices.iter().map(|d| d.id.to_string()).collect(),
            ..Default::default()
        };
        fn principal(k: &mut KnownNames, org: Option<&String>, name: &str) {
            k.principals.push(name.to_owned());
            if let Some(org) = org {
                k.principals.push(format!("{org}/{name}"));
                k.orgs.push(org.clone());
            }
        }
        for u in self.users.list_users().await.unwrap_or_default() {
            principal(&mut k, u.org.as_ref(), &u.name);
        }
        for g in self.ctx.live.grants().iter() {
            principal(&mut k, g.principal.org.as_ref(), &g.principal.name);
        }
        for p in self.ctx.live.live_principals() {
            principal(&mut k, p.org.as_ref(), &p.name);
            k.principals.push(p.serial.clone());
        }
        let whos = config.rules.iter().map(|r| &r.who).chain(
            config
                .approvals
                .iter()
                .flat_map(|a| std::iter::once(&a.who).chain(a.approvers.iter())),
        );
        for who in whos {
            k.orgs.extend(who.org.clone());
            if let Some(name) = &who.name {
                principal(&mut k, who.org.as_ref(), name);
            }
        }
        k.orgs.sort();
        k.orgs.dedup();
        k.principals.sort();
        k.principals.dedup();
        k
    }
}
