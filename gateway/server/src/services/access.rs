//! Access requests, approvals, denials, grants and revocation. The decisions are the pure
//! functions in `ward_core::access`; this service runs them against the store, writes the audit
//! events and tells the gateway when grants changed.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use ward_core::access::{self, AccessRequest, Grant, RequestState};

use super::{Caller, Context, Refusal, Role, Trail};
use crate::access_store::{ApproveOutcome, DecisionError};
use crate::audit::Event;
use crate::store_async::{AsyncAccessStore, CheckFn, DecideFn, MakeGrantFn};

/// A new access request.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// The device asked for.
    pub device: String,
    /// Why.
    pub reason: String,
    /// How long.
    pub duration: Duration,
    /// When it should start (unix seconds); now when absent.
    pub start_unix: Option<i64>,
}

/// A request as listed: the request, its state at the time of listing, who approved it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestView {
    /// The request.
    #[serde(flatten)]
    pub request: AccessRequest,
    /// Its state now.
    pub state_now: RequestState,
    /// The approvers' names.
    pub approvals: Vec<String>,
}

/// The access workflow.
#[derive(Clone)]
pub struct AccessService {
    ctx: Context,
    store: Arc<dyn AsyncAccessStore>,
}

/// A fresh random id such as `req-3f2a…`.
pub(crate) fn random_id(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(rand::random::<[u8; 6]>()))
}

fn store_error(e: impl std::fmt::Display) -> Refusal {
    Refusal::Unavailable(format!("store error: {e}"))
}

impl AccessService {
    /// A service over `store`.
    pub fn new(ctx: Context, store: Arc<dyn AsyncAccessStore>) -> Self {
        Self { ctx, store }
    }

    /// Files a request for the caller.
    pub async fn request(
        &self,
        caller: Caller<'_>,
        new: NewRequest,
    ) -> Result<AccessRequest, Refusal> {
        let now = self.ctx.clock.now();
        let cfg = self.ctx.live.config();
        let start = new
            .start_unix
            .map(OffsetDateTime::from_unix_timestamp)
            .transpose()
            .map_err(|_| Refusal::Invalid("bad start time".into()))?;
        let mut trail = self.ctx.audit.trail();
        let made =
            access::check_start_ahead(start, now, cfg.access.max_start_ahead).and_then(|()| {
                access::new_request(
                    &cfg.approvals,
                    &cfg.devices,
                    caller.principal,
                    access::Ask {
                        device: &new.device,
                        reason: &new.reason,
                        start,
                        duration: new.duration,
                    },
                    now,
                    random_id("req"),
                )
            });
        let r = match made {
            Ok(r) => r,
            Err(e) => {
                trail.push(
                    caller
                        .event("access_request", "denied", now)
                        .device(new.device.clone())
                        .reason(e.to_string()),
                );
                return Err(Refusal::Denied(e.to_string()));
            }
        };
        self.store.put_request(&r).await.map_err(store_error)?;
        trail.push(
            caller
                .event("access_request", "success", now)
                .device(r.device.clone())
                .reason(r.reason.clone())
                .detail("request", r.id.clone())
                .detail("policy", r.policy.clone())
                .detail("start", r.start.to_string())
                .detail("end", r.end.to_string())
                .detail("expires", r.expires.to_string()),
        );
        Ok(r)
    }

    /// The requests the caller may see: pending ones, or all with `all`.
    pub async fn list_requests(
        &self,
        caller: Caller<'_>,
        all: bool,
    ) -> Result<Vec<RequestView>, Refusal> {
        let now = self.ctx.clock.now();
        let cfg = self.ctx.live.config();
        let rows = self.store.requests().await.map_err(store_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|(r, a)| {
                let state = r.state_at(now);
                let visible = access::can_see(&r, &cfg.approvals, caller.principal)
                    && (all || state == RequestState::Pending);
                visible.then(|| RequestView {
                    state_now: state,
                    approvals: a.iter().map(|a| a.approver.name.clone()).collect(),
                    request: r,
                })
            })
            .collect())
    }

    /// Approves a request as the caller; the approval that completes it makes the grant.
    pub async fn approve(
        &self,
        caller: Caller<'_>,
        id: &str,
        comment: Option<String>,
    ) -> Result<ApproveOutcome, Refusal> {
        let now = self.ctx.clock.now();
        let cfg = self.ctx.live.config();
        let comment = comment.filter(|c| !c.trim().is_empty());
        let mut trail = self.ctx.audit.trail();
        let (approver, note) = (caller.principal.clone(), comment.clone());
        let decide: DecideFn = Box::new(move |r, a| {
            access::approve(r, a, &cfg.approvals, &approver, note.clone(), now)
        });
        let make_grant: MakeGrantFn = Box::new(|r, a| access::grant_for(r, a, random_id("grant")));
        let out = match self.store.approve(id, decide, make_grant).await {
            Ok(out) => out,
            Err(e) => {
                let ev = caller.event("access_approve", "denied", now);
                return Err(decision_refused(&mut trail, ev, id, e));
            }
        };
        trail.push(
            caller
                .event("access_approve", "success", now)
                .device(out.request.device.clone())
                .detail("request", id.to_owned())
                .detail("requester", out.request.requester.to_string())
                .detail("approvals", out.approved.count)
                .detail("required", out.approved.required)
                .reason(comment.unwrap_or_default()),
        );
        if let Some(g) = &out.grant {
            trail.push(granted(g, now));
            drop(trail);
            self.ctx.live.access_changed();
        }
        Ok(out)
    }

    /// Denies a request as the caller; a reason is required.
    pub async fn deny(
        &self,
        caller: Caller<'_>,
        id: &str,
        reason: &str,
    ) -> Result<AccessRequest, Refusal> {
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid(
                "a reason is required: ward deny ID --reason TEXT".into(),
            ));
        }
        let now = self.ctx.clock.now();
        let cfg = self.ctx.live.config();
        let mut trail = self.ctx.audit.trail();
        let decider = caller.principal.clone();
        let check: CheckFn =
            Box::new(move |r| access::check_deny(r, &cfg.approvals, &decider, now));
        let r = match self.store.deny(id, check).await {
            Ok(r) => r,
            Err(e) => {
                let ev = caller.event("access_deny", "denied", now);
                return Err(decision_refused(&mut trail, ev, id, e));
            }
        };
        trail.push(
            caller
                .event("access_deny", "success", now)
                .device(r.device.clone())
                .detail("request", id.to_owned())
                .detail("requester", r.requester.to_string())
                .reason(reason.to_owned()),
        );
        Ok(r)
    }

    /// The grants the caller may see (security and admin see all; others those they could
    /// revoke): current ones, or all with `all`.
    pub async fn list_grants(&self, caller: Caller<'_>, all: bool) -> Result<Vec<Grant>, Refusal> {
        let now = self.ctx.clock.now();
        let cfg = self.ctx.live.config();
        let grants = self.store.grants(now, all).await.map_err(store_error)?;
        let staff = Role::Security.held_by(caller.principal);
        Ok(grants
            .into_iter()
            .filter(|g| {
                staff || access::can_revoke(g, &cfg.approvals, &cfg.devices, caller.principal)
            })
            .collect())
    }

    /// Revokes a grant (holders, approvers, security and admin may); a reason is required. Its
    /// live sessions end.
    pub async fn revoke(
        &self,
        caller: Caller<'_>,
        grant: &str,
        reason: &str,
    ) -> Result<Grant, Refusal> {
        let now = self.ctx.clock.now();
        let cfg = self.ctx.live.config();
        let found = self.store.grant(grant).await.map_err(store_error)?;
        let may = found
            .as_ref()
            .is_some_and(|g| access::can_revoke(g, &cfg.approvals, &cfg.devices, caller.principal));
        let mut trail = self.ctx.audit.trail();
        if !may {
            trail.push(
                caller
                    .event("access_revoke", "denied", now)
                    .detail("grant", grant.to_owned())
                    .reason("not the holder, an approver, security or admin"),
            );
            return Err(not_found_grant(grant));
        }
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid(
                "a reason is required: ward revoke GRANT --reason TEXT".into(),
            ));
        }
        let why = format!("by {}: {reason}", caller.principal);
        let g = match self.store.revoke_grant(grant, now, &why).await {
            Ok(Some(g)) => g,
            Ok(None) => return Err(not_found_grant(grant)),
            Err(e) => return Err(store_error(e)),
        };
        self.ctx.live.access_changed();
        trail.push(
            caller
                .event("access_revoke", "success", now)
                .severity("warning")
                .device(g.device.clone())
                .detail("grant", g.id.clone())
                .detail("principal", g.principal.to_string())
                .reason(reason.to_owned()),
        );
        Ok(g)
    }
}

/// The event for a grant made by a completing approval.
fn granted(g: &Grant, now: OffsetDateTime) -> Event {
    Event::new("access_grant", "success", now)
        .device(g.device.clone())
        .detail("grant", g.id.clone())
        .detail("request", g.request.clone())
        .detail("principal", g.principal.to_string())
        .detail("start", g.start.to_string())
        .detail("end", g.end.to_string())
        .detail("approvers", g.approvers.join(","))
        .reason("approved by every approver group")
}

fn not_found_grant(id: &str) -> Refusal {
    Refusal::Forbidden(format!(
        "no grant {id} that you may revoke (holders, approvers, security and admin can)"
    ))
}

fn decision_refused(trail: &mut Trail, e: Event, id: &str, err: DecisionError) -> Refusal {
    let msg = err.to_string();
    trail.push(e.detail("request", id.to_owned()).reason(msg.clone()));
    match err {
        DecisionError::Store(e) => store_error(e),
        DecisionError::NotFound(_) | DecisionError::Refused(_) => Refusal::Denied(msg),
    }
}
