//! Just-in-time access: access requests, approvals, grants and break-glass, as pure decisions.
//!
//! Vendors hold no standing access to devices an [`ApprovalPolicy`] covers. They ask
//! ([`new_request`]) for a device and a time window; people the policy names approve
//! ([`approve`]); when every approver group has approved and enough distinct people have, the
//! request becomes a [`Grant`] bound to the requester's principal name, the device and the window.
//! A grant is itself the permission for its window: it opens the device to its principal even
//! outside maintenance windows, and it never outlives its `end`.
//!
//! Rules enforced here (the store only persists and serialises them):
//! * a requester never approves (or denies) its own request;
//! * a pending request expires (`pending_expiry`, default 1 h) and then cannot be approved;
//! * an approver approves at most once; approvers must match one of the policy's groups;
//! * a request is complete when every group has at least one approval and the number of distinct
//!   approvers reaches `required` (default: the number of groups).
//!
//! Everything takes `now`; nothing reads a clock.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::device::Device;
use crate::policy::{DeviceSelector, Who};
use crate::principal::{Principal, PrincipalKind};

/// Default lifetime of a pending request.
pub const DEFAULT_PENDING_EXPIRY: Duration = Duration::from_secs(3600);
/// Default longest window a request may ask for.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(8 * 3600);
/// Default cap of a break-glass session.
pub const DEFAULT_BREAK_GLASS_MAX: Duration = Duration::from_secs(30 * 60);
/// Longest free text (reason, comment) kept.
pub const MAX_TEXT: usize = 1000;

/// `[[approval]]`: which sessions need an approved request, and who approves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// Unique name (audited with every decision).
    pub name: String,
    /// The devices it covers.
    pub devices: DeviceSelector,
    /// Whose sessions on those devices need an approved request.
    pub who: Who,
    /// Approver groups; each must contribute at least one approval.
    pub approvers: Vec<Who>,
    /// Distinct approvers needed (≥ number of groups).
    pub required: u32,
    /// Longest window a request may ask for.
    pub max_duration: Duration,
    /// How long a request stays pending before it expires.
    pub pending_expiry: Duration,
}

impl ApprovalPolicy {
    /// Whether this policy governs `principal` on `device`.
    pub fn covers(&self, principal: &Principal, device: &Device) -> bool {
        self.who.matches(principal) && self.devices.matches(device)
    }

    /// Whether `principal` may approve under this policy (matches at least one group).
    pub fn is_approver(&self, principal: &Principal) -> bool {
        self.approvers.iter().any(|g| g.matches(principal))
    }
}

/// The first policy that governs `principal` on `device`.
pub fn policy_for<'a>(
    policies: &'a [ApprovalPolicy],
    principal: &Principal,
    device: &Device,
) -> Option<&'a ApprovalPolicy> {
    policies.iter().find(|p| p.covers(principal, device))
}

/// A device's `break_glass` setting: who may open an emergency session and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    /// Who may break the glass (default: clinicians).
    pub who: Who,
    /// Cap on the session (default 30 minutes).
    pub max: Duration,
}

impl Default for BreakGlass {
    fn default() -> Self {
        BreakGlass {
            who: Who {
                kind: Some(PrincipalKind::Clinician),
                ..Who::default()
            },
            max: DEFAULT_BREAK_GLASS_MAX,
        }
    }
}

/// A principal as recorded on requests, approvals and grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRef {
    /// Name (unique per kind in the trust domain).
    pub name: String,
    /// Kind.
    pub kind: PrincipalKind,
    /// Organisation.
    pub org: Option<String>,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl PrincipalRef {
    /// From a validated principal.
    pub fn of(p: &Principal) -> Self {
        PrincipalRef {
            name: p.name.clone(),
            kind: p.kind,
            org: p.org.clone(),
            roles: p.roles.clone(),
        }
    }

    /// Whether this is the same person as `p` (same kind and name).
    pub fn is(&self, p: &Principal) -> bool {
        self.kind == p.kind && self.name == p.name
    }
}

impl std::fmt::Display for PrincipalRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.org {
            Some(org) => write!(f, "{} {org}/{}", self.kind.as_str(), self.name),
            None => write!(f, "{} {}", self.kind.as_str(), self.name),
        }
    }
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for approvals.
    Pending,
    /// Enough approvals: a grant exists.
    Approved,
    /// An approver said no.
    Denied,
    /// Nobody decided before `expires`.
    Expired,
}

impl RequestState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
        }
    }
}

/// An access request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    /// Id (`req-…`).
    pub id: String,
    /// Who asked.
    pub requester: PrincipalRef,
    /// For which device.
    pub device: String,
    /// Why.
    pub reason: String,
    /// Window start.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Window end.
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// When it expires if still pending.
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    /// The approval policy that governs it.
    pub policy: String,
    /// Stored state (see [`AccessRequest::state_at`] for expiry).
    pub state: RequestState,
}

impl AccessRequest {
    /// The state at `now`: a pending request past `expires` is expired.
    pub fn state_at(&self, now: OffsetDateTime) -> RequestState {
        if self.state == RequestState::Pending && now >= self.expires {
            RequestState::Expired
        } else {
            self.state
        }
    }
}

/// One approver's yes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The request.
    pub request: String,
    /// Who approved.
    pub approver: PrincipalRef,
    /// Optional comment.
    pub comment: Option<String>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// An approved request: access for one principal to one device during `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Id (`grant-…`).
    pub id: String,
    /// The request it came from.
    pub request: String,
    /// Who it is for.
    pub principal: PrincipalRef,
    /// Which device.
    pub device: String,
    /// Window start.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Window end.
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
    /// Who approved (names).
    pub approvers: Vec<String>,
    /// When it was revoked, if it was.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Who revoked it and why.
    #[serde(default)]
    pub revoked: Option<String>,
}

impl Grant {
    /// Whether the grant lets `principal` reach `device` at `now`.
    pub fn covers(&self, principal: &Principal, device: &str, now: OffsetDateTime) -> bool {
        self.is_live(now) && self.principal.is(principal) && self.device == device
    }

    /// Not revoked and `start <= now < end`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.start <= now && now < self.end
    }

    /// Not revoked and not yet ended (live or upcoming).
    pub fn is_current(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && now < self.end
    }
}

/// Why a request could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No approval policy lets this principal ask for this device (also for unknown devices, so
    /// device ids cannot be probed).
    #[error("no approval policy lets {principal} request access to {device}")]
    NoPolicy {
        /// Principal display.
        principal: String,
        /// Device id.
        device: String,
    },
    /// The reason is empty or too long.
    #[error("a reason is required (1 to {MAX_TEXT} characters)")]
    Reason,
    /// Zero or over the policy's maximum.
    #[error("duration must be more than 0 and at most {max} (policy {policy})")]
    Duration {
        /// The policy's maximum, formatted.
        max: String,
        /// Policy name.
        policy: String,
    },
    /// The window would start in the past (more than a minute ago).
    #[error("the window cannot start in the past")]
    StartInPast,
    /// The window would start further ahead than `[access] max_start_ahead`.
    #[error("the window cannot start more than {max} ahead ([access] max_start_ahead)")]
    StartTooFarAhead {
        /// The limit, formatted.
        max: String,
    },
}

/// Refuses a request window starting more than `max_ahead` after `now`.
pub fn check_start_ahead(
    start: Option<OffsetDateTime>,
    now: OffsetDateTime,
    max_ahead: Duration,
) -> Result<(), RequestError> {
    let limit = time::Duration::try_from(max_ahead)
        .ok()
        .and_then(|d| now.checked_add(d));
    match (start, limit) {
        (Some(s), Some(limit)) if s > limit => Err(RequestError::StartTooFarAhead {
            max: crate::duration::format_duration(max_ahead),
        }),
        _ => Ok(()),
    }
}

/// What a requester asks for: a device, why, and a window (`start` `None` means now).
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The device id asked for.
    pub device: &'a str,
    /// Why (shown to approvers, kept in the audit log).
    pub reason: &'a str,
    /// When the window starts; `None` for as soon as it is approved.
    pub start: Option<OffsetDateTime>,
    /// How long the window lasts.
    pub duration: Duration,
}

/// Builds a pending request. `id` is chosen by the caller (random).
pub fn new_request(
    policies: &[ApprovalPolicy],
    devices: &[Device],
    principal: &Principal,
    ask: Ask<'_>,
    now: OffsetDateTime,
    id: String,
) -> Result<AccessRequest, RequestError> {
    let Ask {
        device: device_id,
        reason,
        start,
        duration,
    } = ask;
    let no_policy = || RequestError::NoPolicy {
        principal: principal.to_string(),
        device: device_id.to_owned(),
    };
    let device = devices
        .iter()
        .find(|d| d.id.as_str() == device_id)
        .ok_or_else(no_policy)?;
    let policy = policy_for(policies, principal, device).ok_or_else(no_policy)?;
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_TEXT {
        return Err(RequestError::Reason);
    }
    let too_long = || RequestError::Duration {
        max: crate::duration::format_duration(policy.max_duration),
        policy: policy.name.clone(),
    };
    if duration.is_zero() || duration > policy.max_duration {
        return Err(too_long());
    }
    let start = start.unwrap_or(now);
    if start < now - time::Duration::MINUTE {
        return Err(RequestError::StartInPast);
    }
    let span = time::Duration::try_from(duration).map_err(|_| too_long())?;
    let end = start.checked_add(span).ok_or_else(too_long)?;
    let expiry = time::Duration::try_from(policy.pending_expiry).unwrap_or(time::Duration::HOUR);
    Ok(AccessRequest {
        id,
        requester: PrincipalRef::of(principal),
        device: device_id.to_owned(),
        reason: reason.to_owned(),
        start,
        end,
        created: now,
        expires: now.checked_add(expiry).unwrap_or(end).min(end),
        policy: policy.name.clone(),
        state: RequestState::Pending,
    })
}

/// Why an approval or denial was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// Requesters cannot decide their own requests.
    #[error("you cannot approve or deny your own request")]
    SelfApproval,
    /// Past `expires` while pending.
    #[error("request {0} expired before it was approved; ask again with `ward request`")]
    Expired(String),
    /// Already approved or denied.
    #[error("request {id} is already {state}")]
    NotPending {
        /// Request id.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// Not in any approver group of the policy.
    #[error("you are not an approver under policy {0}")]
    NotApprover(String),
    /// This approver already approved.
    #[error("you have already approved request {0}")]
    AlreadyApproved(String),
    /// The policy the request was made under no longer exists.
    #[error("policy {0} no longer exists; the request cannot be approved")]
    PolicyGone(String),
}

/// What an accepted approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approved {
    /// The approval to store.
    pub approval: Approval,
    /// Whether the request is now complete (the caller creates the grant with [`grant_for`]).
    pub complete: bool,
    /// Distinct approvers so far, this one included.
    pub count: usize,
    /// Approvals needed in all.
    pub required: usize,
}

fn check_decider(
    request: &AccessRequest,
    policies: &[ApprovalPolicy],
    who: &Principal,
    now: OffsetDateTime,
) -> Result<ApprovalPolicy, DecideError> {
    if request.requester.is(who) {
        return Err(DecideError::SelfApproval);
    }
    match request.state_at(now) {
        RequestState::Pending => {}
        RequestState::Expired => return Err(DecideError::Expired(request.id.clone())),
        state => {
            return Err(DecideError::NotPending {
                id: request.id.clone(),
                state: state.as_str(),
            })
        }
    }
    let policy = policies
        .iter()
        .find(|p| p.name == request.policy)
        .ok_or_else(|| DecideError::PolicyGone(request.policy.clone()))?;
    if !policy.is_approver(who) {
        return Err(DecideError::NotApprover(policy.name.clone()));
    }
    Ok(policy.clone())
}

/// Decides an approval of `request` (which already has `approvals`) by `approver` at `now`.
pub fn approve(
    request: &AccessRequest,
    approvals: &[Approval],
    policies: &[ApprovalPolicy],
    approver: &Principal,
    comment: Option<String>,
    now: OffsetDateTime,
) -> Result<Approved, DecideError> {
    let policy = check_decider(request, policies, approver, now)?;
    let mine = |a: &&Approval| a.request == request.id;
    if approvals
        .iter()
        .filter(mine)
        .any(|a| a.approver.is(approver))
    {
        return Err(DecideError::AlreadyApproved(request.id.clone()));
    }
    let approval = Approval {
        request: request.id.clone(),
        approver: PrincipalRef::of(approver),
        comment,
        at: now,
    };
    let all: Vec<&Approval> = approvals
        .iter()
        .filter(mine)
        .chain(std::iter::once(&approval))
        .collect();
    let count = all.len();
    let groups_covered = policy.approvers.iter().all(|group| {
        all.iter()
            .any(|a| group.matches(&principal_of_ref(&a.approver)))
    });
    let required = (policy.required as usize)
        .max(policy.approvers.len())
        .max(1);
    Ok(Approved {
        approval,
        complete: groups_covered && count >= required,
        count,
        required,
    })
}

/// Checks that `denier` may deny `request` at `now`.
pub fn check_deny(
    request: &AccessRequest,
    policies: &[ApprovalPolicy],
    denier: &Principal,
    now: OffsetDateTime,
) -> Result<(), DecideError> {
    check_decider(request, policies, denier, now).map(|_| ())
}

/// The grant a complete request becomes.
pub fn grant_for(request: &AccessRequest, approvals: &[Approval], id: String) -> Grant {
    Grant {
        id,
        request: request.id.clone(),
        principal: request.requester.clone(),
        device: request.device.clone(),
        start: request.start,
        end: request.end,
        approvers: approvals
            .iter()
            .filter(|a| a.request == request.id)
            .map(|a| a.approver.name.clone())
            .collect(),
        revoked_at: None,
        revoked: None,
    }
}

/// Whether `who` may see `request` in `ward requests`: its requester, anyone who could approve
/// it, and security/admin staff.
pub fn can_see(request: &AccessRequest, policies: &[ApprovalPolicy], who: &Principal) -> bool {
    request.requester.is(who)
        || who.kind.is_security_staff()
        || policies
            .iter()
            .any(|p| p.name == request.policy && p.is_approver(who))
}

/// Whether `who` may revoke `grant`: its holder, approvers of its device's policy, security and
/// admin staff.
pub fn can_revoke(
    grant: &Grant,
    policies: &[ApprovalPolicy],
    devices: &[Device],
    who: &Principal,
) -> bool {
    if grant.principal.is(who) || who.kind.is_security_staff() {
        return true;
    }
    let Some(device) = devices.iter().find(|d| d.id.as_str() == grant.device) else {
        return false;
    };
    let holder = principal_of_ref(&grant.principal);
    policies
        .iter()
        .any(|p| p.covers(&holder, device) && p.is_approver(who))
}

/// A `Principal` for matching a stored [`PrincipalRef`] against `Who` patterns.
fn principal_of_ref(r: &PrincipalRef) -> Principal {
    Principal {
        kind: r.kind,
        name: r.name.clone(),
        org: r.org.clone(),
        roles: r.roles.clone(),
        serial: String::new(),
        not_after: OffsetDateTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceAddress, DeviceId, Protocol};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-01-06 10:00 UTC);

    fn pump() -> Device {
        Device {
            id: DeviceId::new("pump-12").unwrap(),
            address: "127.0.0.1:23".parse::<DeviceAddress>().unwrap(),
            protocol: Protocol::Telnet,
            labels: [("class".to_string(), "infusion-pump".to_string())].into(),
            maintenance: None,
            break_glass: None,
            netns: None,
            tls: None,
        }
    }

    fn who(kind: Option<PrincipalKind>, roles: &[&str]) -> Who {
        Who {
            kind,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Who::default()
        }
    }

    fn policy() -> ApprovalPolicy {
        ApprovalPolicy {
            name: "pumps".into(),
            devices: DeviceSelector::All,
            who: who(Some(PrincipalKind::Vendor), &[]),
            approvers: vec![
                who(Some(PrincipalKind::Clinician), &["icu"]),
                who(None, &["biomed"]),
            ],
            required: 2,
            max_duration: DEFAULT_MAX_DURATION,
            pending_expiry: DEFAULT_PENDING_EXPIRY,
        }
    }

    fn person(kind: PrincipalKind, name: &str, roles: &[&str]) -> Principal {
        Principal {
            kind,
            name: name.into(),
            org: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            serial: "01".into(),
            not_after: NOW + time::Duration::hours(8),
        }
    }

    fn request() -> AccessRequest {
        let vendor = person(PrincipalKind::Vendor, "tech", &[]);
        new_request(
            &[policy()],
            &[pump()],
            &vendor,
            Ask {
                device: "pump-12",
                reason: "firmware update",
                start: None,
                duration: Duration::from_secs(7200),
            },
            NOW,
            "req-1".into(),
        )
        .unwrap()
    }

    #[test]
    fn request_needs_a_policy_reason_and_sane_window() {
        let vendor = person(PrincipalKind::Vendor, "tech", &[]);
        let nurse = person(PrincipalKind::Clinician, "nurse", &["icu"]);
        let mk = |p: &Principal, dev: &str, reason: &str, start, secs| {
            new_request(
                &[policy()],
                &[pump()],
                p,
                Ask {
                    device: dev,
                    reason,
                    start,
                    duration: Duration::from_secs(secs),
                },
                NOW,
                "r".into(),
            )
        };
        assert!(mk(&vendor, "pump-12", "fix", None, 60).is_ok());
        assert!(matches!(
            mk(&nurse, "pump-12", "fix", None, 60),
            Err(RequestError::NoPolicy { .. })
        ));
        // Unknown device reads like no policy.
        assert_eq!(
            mk(&vendor, "pump-99", "fix", None, 60)
                .unwrap_err()
                .to_string(),
            "no approval policy lets vendor tech request access to pump-99"
        );
        assert_eq!(
            mk(&vendor, "pump-12", "  ", None, 60),
            Err(RequestError::Reason)
        );
        assert!(matches!(
            mk(&vendor, "pump-12", "fix", None, 9 * 3600),
            Err(RequestError::Duration { .. })
        ));
        assert!(matches!(
            mk(&vendor, "pump-12", "fix", None, 0),
            Err(RequestError::Duration { .. })
        ));
        assert_eq!(
            mk(
                &vendor,
                "pump-12",
                "fix",
                Some(NOW - time::Duration::hours(1)),
                60
            ),
            Err(RequestError::StartInPast)
        );
        let r = mk(
            &vendor,
            "pump-12",
            "fix",
            Some(NOW + time::Duration::days(1)),
            60,
        )
        .unwrap();
        // Pending expiry never reaches past the window's end; default 1 h.
        assert_eq!(r.expires, NOW + time::Duration::hours(1));
    }

    #[test]
    fn self_approval_is_refused() {
        let r = request();
        let vendor = person(PrincipalKind::Vendor, "tech", &["icu", "biomed"]);
        assert_eq!(
            approve(&r, &[], &[policy()], &vendor, None, NOW),
            Err(DecideError::SelfApproval)
        );
        assert_eq!(
            check_deny(&r, &[policy()], &vendor, NOW),
            Err(DecideError::SelfApproval)
        );
    }

    #[test]
    fn expired_request_cannot_be_approved() {
        let r = request();
        let nurse = person(PrincipalKind::Clinician, "nurse", &["icu"]);
        let later = r.expires;
        assert_eq!(r.state_at(later), RequestState::Expired);
        assert_eq!(
            approve(&r, &[], &[policy()], &nurse, None, later),
            Err(DecideError::Expired("req-1".into()))
        );
        assert!(approve(
            &r,
            &[],
            &[policy()],
            &nurse,
            None,
            later - time::Duration::SECOND
        )
        .is_ok());
    }

    #[test]
    fn grant_needs_every_group_and_enough_people() {
        let r = request();
        let nurse = person(PrincipalKind::Clinician, "nurse", &["icu"]);
        let nurse2 = person(PrincipalKind::Clinician, "nurse2", &["icu"]);
        let biomed = person(PrincipalKind::Clinician, "eng", &["biomed"]);
        let outsider = person(PrincipalKind::Clinician, "radiographer", &["radiology"]);
        assert_eq!(
            approve(&r, &[], &[policy()], &outsider, None, NOW),
            Err(DecideError::NotApprover("pumps".into()))
        );
        let a1 = approve(&r, &[], &[policy()], &nurse, None, NOW).unwrap();
        assert!(!a1.complete);
        assert_eq!((a1.count, a1.required), (1, 2));
        let approvals = vec![a1.approval];
        assert_eq!(
            approve(&r, &approvals, &[policy()], &nurse, None, NOW),
            Err(DecideError::AlreadyApproved("req-1".into()))
        );
        // Two ICU nurses: two people, but biomed has not approved: no grant.
        let a2 = approve(&r, &approvals, &[policy()], &nurse2, None, NOW).unwrap();
        assert!(!a2.complete);
        let a3 = approve(&r, &approvals, &[policy()], &biomed, None, NOW).unwrap();
        assert!(a3.complete);
        let mut all = approvals.clone();
        all.push(a3.approval);
        let g = grant_for(&r, &all, "grant-1".into());
        assert_eq!(g.approvers, vec!["nurse".to_string(), "eng".to_string()]);
        assert_eq!((g.start, g.end), (NOW, NOW + time::Duration::hours(2)));
        let vendor = person(PrincipalKind::Vendor, "tech", &[]);
        assert!(g.covers(&vendor, "pump-12", NOW));
        assert!(!g.covers(&vendor, "pump-13", NOW));
        assert!(!g.covers(&nurse, "pump-12", NOW));
        assert!(!g.covers(&vendor, "pump-12", g.end));
        let mut revoked = g.clone();
        revoked.revoked_at = Some(NOW);
        assert!(!revoked.covers(&vendor, "pump-12", NOW));
    }

    #[test]
    fn decided_requests_stay_decided() {
        let mut r = request();
        r.state = RequestState::Approved;
        let nurse = person(PrincipalKind::Clinician, "nurse", &["icu"]);
        assert!(matches!(
            approve(&r, &[], &[policy()], &nurse, None, NOW),
            Err(DecideError::NotPending { .. })
        ));
        assert!(matches!(
            check_deny(&r, &[], &nurse, NOW),
            Err(DecideError::NotPending { .. })
        ));
    }

    #[test]
    fn visibility_and_revocation() {
        let r = request();
        let g = grant_for(&r, &[], "g".into());
        let vendor = person(PrincipalKind::Vendor, "tech", &[]);
        let other_vendor = person(PrincipalKind::Vendor, "other", &[]);
        let nurse = person(PrincipalKind::Clinician, "nurse", &["icu"]);
        let sec = person(PrincipalKind::Security, "soc", &[]);
        let p = [policy()];
        assert!(can_see(&r, &p, &vendor) && can_see(&r, &p, &nurse) && can_see(&r, &p, &sec));
        assert!(!can_see(&r, &p, &other_vendor));
        let devices = [pump()];
        assert!(can_revoke(&g, &p, &devices, &vendor));
        assert!(can_revoke(&g, &p, &devices, &nurse));
        assert!(can_revoke(&g, &p, &devices, &sec));
        assert!(!can_revoke(&g, &p, &devices, &other_vendor));
    }

    #[test]
    fn a_window_may_not_start_beyond_max_start_ahead() {
        let day = std::time::Duration::from_secs(86400);
        let max = 30 * day;
        assert!(check_start_ahead(None, NOW, max).is_ok());
        assert!(check_start_ahead(Some(NOW + time::Duration::days(30)), NOW, max).is_ok());
        let e = check_start_ahead(Some(NOW + time::Duration::days(31)), NOW, max).unwrap_err();
        assert!(e.to_string().contains("max_start_ahead"), "{e}");
        assert!(check_start_ahead(
            Some(NOW + time::Duration::days(9999)),
            NOW,
            std::time::Duration::MAX
        )
        .is_ok());
    }
}
