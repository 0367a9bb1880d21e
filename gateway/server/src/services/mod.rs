//! The gateway's services: access requests and grants, login, users, locks, the device listing,
//! review of recordings and the credential vault, with domain values in and out.
//!
//! Each service takes who is asking (a [`Caller`]: the authenticated certificate identity, its
//! policy [`Principal`] and address; login takes the address alone) and a typed request, and
//! returns a typed answer or a typed [`Refusal`]. They are async over the async store traits
//! ([`crate::store_async`]). No service knows frames, JSON or a stream: the
//! frame dispatcher ([`crate::dispatch`]) is one adapter over them, a web console is another.
//!
//! Every audit event a service writes goes through a [`Trail`] opened from [`Audit`]: a service
//! holds no audit log, only the means to open a trail, whose events are written when it is
//! dropped, on every path out of the operation. No front end writes a service's events, so none
//! can forget them. The audit gate (an answer leaves only once its events are durable,
//! `AuditLog::commit`) belongs to the front end, which writes the answer.
//!
//! Services hold what they need (store traits, clock, audit log, a [`LiveState`] view of the
//! running gateway), never the gateway's whole state.

use std::net::SocketAddr;
use std::sync::Arc;

use ward_ca::{Clock, Identity};
use ward_core::access::Grant;
use ward_core::config::Config;
use ward_core::frame::LockTarget;
use ward_core::policy::Lock;
use ward_core::{Principal, PrincipalKind};

use crate::audit::{AuditLog, Event};

pub mod access;
pub mod devices;
pub mod keys;
pub mod live;
pub mod locks;
pub mod login;
pub(crate) mod pins;
pub mod principal;
pub mod review;
pub mod signing;
pub mod sso;
pub mod users;
pub mod vault;

pub use principal::principal_of;

/// Why a service did not do what was asked. Each front end maps it onto its own answer once
/// (frames: [`crate::dispatch::refusal_frame`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The policy, a decision or an authentication said no (the text says why).
    #[error("{0}")]
    Denied(String),
    /// The caller's kind may not do this at all.
    #[error("{0}")]
    Forbidden(String),
    /// The thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or names something unknown; the text says what to do instead
    /// (a suggestion for a mistyped lock target, the missing option, …).
    #[error("{0}")]
    Invalid(String),
    /// The store, the CA or another part the service needs failed; nothing was changed unless the
    /// text says so.
    #[error("{0}")]
    Unavailable(String),
    /// A login's TOTP code was right but used already.
    #[error("{}", login::TOTP_REUSED)]
    TotpReused,
}

/// What a service is told about who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The validated certificate identity.
    pub identity: &'a Identity,
    /// Its policy view ([`principal_of`]).
    pub principal: &'a Principal,
    /// Where the request came from.
    pub peer: SocketAddr,
}

impl Caller<'_> {
    /// An audit event naming the caller and its address.
    pub fn event(&self, event: &str, outcome: &str, now: time::OffsetDateTime) -> Event {
        Event::new(event, outcome, now)
            .principal(self.identity)
            .source(self.peer)
    }
}

/// The roles an operation may require. One check for every service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Security staff or an admin.
    Security,
    /// An admin.
    Admin,
}

impl Role {
    /// Whether `p` holds the role.
    pub fn held_by(self, p: &Principal) -> bool {
        match self {
            Role::Security => p.kind.is_security_staff(),
            Role::Admin => p.kind == PrincipalKind::Admin,
        }
    }

    /// `Ok` when `p` holds the role, else the refusal naming `what` was asked.
    pub fn require(self, p: &Principal, what: &str) -> Result<(), Refusal> {
        if self.held_by(p) {
            return Ok(());
        }
        let who = match self {
            Role::Security => "security and admin identities",
            Role::Admin => "admin identities",
        };
        Err(Refusal::Forbidden(format!(
            "{p} may not {what}: only {who} can"
        )))
    }
}

/// The audit events of one service operation. They are written when the trail is dropped, on
/// every path out of the operation (an answer, a refusal, an early `?`).
pub struct Trail {
    log: AuditLog,
    events: Vec<Event>,
}

impl Trail {
    /// Adds an event.
    pub fn push(&mut self, e: Event) {
        self.events.push(e);
    }
}

impl Drop for Trail {
    fn drop(&mut self) {
        for e in self.events.drain(..) {
            self.log.emit(e);
        }
    }
}

/// The one place services write audit events: each operation opens a [`Trail`].
#[derive(Clone)]
pub struct Audit(AuditLog);

impl Audit {
    /// Services write to `log`.
    pub fn new(log: AuditLog) -> Self {
        Self(log)
    }

    /// A trail for one operation.
    pub fn trail(&self) -> Trail {
        Trail {
            log: self.0.clone(),
            events: Vec::new(),
        }
    }
}

/// What services read from, and tell, the running gateway: the policy they decide on and the
/// live sessions a change affects. The gateway implements it; tests use a fixed one.
pub trait LiveState: Send + Sync {
    /// The current config (one snapshot per operation).
    fn config(&self) -> Arc<Config>;
    /// The current grants (live or upcoming).
    fn grants(&self) -> Arc<[Grant]>;
    /// The current locks.
    fn locks(&self) -> Vec<Lock>;
    /// The principals of the live sessions (for lock-target suggestions).
    fn live_principals(&self) -> Vec<Principal>;
    /// Grants or users changed in the store: re-read them and end the sessions that lost their
    /// footing.
    fn access_changed(&self);
    /// A lock was stored: apply it. Returns how many live sessions it ended.
    fn locked(&self, lock: &Lock) -> usize;
    /// The lock on `target` was removed.
    fn unlocked(&self, target: &LockTarget);
}

/// What every service holds.
#[derive(Clone)]
pub struct Context {
    /// The gateway's clock.
    pub clock: Arc<dyn Clock>,
    /// Where events go.
    pub audit: Audit,
    /// The running gateway.
    pub live: Arc<dyn LiveState>,
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
