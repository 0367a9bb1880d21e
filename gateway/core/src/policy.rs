//! Access policy: rules are data, [`evaluate`] is a pure function of rules, locks, principal,
//! device and `now`, and every decision carries a reason.
//!
//! * **Deny by default.** A principal reaches a device only through a rule whose `who` matches
//!   the principal and whose `devices` selects the device, while its `hours` (if any) are open.
//!   An empty [`Who`] or an empty label selector matches nothing (config rejects both anyway).
//! * **Locks win.** A lock on the principal, the device or the principal's org denies even when
//!   a rule permits.
//! * **Several rules.** When more than one rule permits, the one giving the longest session is
//!   used (earliest in the config on a tie), so adding a rule never shortens anyone's access.
//! * **Session end.** [`Permit::ends_at`] is the earliest of the certificate's expiry, `now +
//!   max_session` and the end of the current `hours` stretch, and [`Permit::end_reason`] says which.
//! * **No existence oracle.** Asking for a device that does not exist is denied with
//!   [`DenyReason::UnknownDevice`], whose text is exactly that of [`DenyReason::NoRule`]
//!   (`no rule lets vendor acme/jdoe reach pump-99`), so a client cannot probe for device ids.
//!   The variants stay distinct for the audit log.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::access::{policy_for, ApprovalPolicy, Grant};
use crate::device::{Device, DeviceId};
use crate::principal::{Principal, PrincipalKind};
use crate::session::EndReason;
use crate::window::{format_local, Hours, WindowState};

/// Which principals a rule is for. Every given field must match; roles must all be present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    /// Certificate kind.
    pub kind: Option<PrincipalKind>,
    /// Exact principal name.
    pub name: Option<String>,
    /// Exact organisation.
    pub org: Option<String>,
    /// Roles the principal must all hold.
    pub roles: Vec<String>,
}

impl Who {
    /// True when no field is set (such a `Who` matches nobody).
    pub fn is_empty(&self) -> bool {
        self.kind.is_none() && self.name.is_none() && self.org.is_none() && self.roles.is_empty()
    }

    /// Whether `principal` is one of the principals this describes.
    pub fn matches(&self, principal: &Principal) -> bool {
        !self.is_empty()
            && self.kind.is_none_or(|k| k == principal.kind)
            && self.name.as_ref().is_none_or(|n| *n == principal.name)
            && self
                .org
                .as_ref()
                .is_none_or(|o| principal.org.as_ref() == Some(o))
            && self.roles.iter().all(|r| principal.roles.contains(r))
    }
}

/// Which devices a rule is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelector {
    /// Every device (config: `devices = { all = true }`).
    All,
    /// These device ids.
    Ids(Vec<DeviceId>),
    /// Devices carrying all of these labels with these values (an empty map matches nothing).
    Labels(BTreeMap<String, String>),
}

impl DeviceSelector {
    /// Whether `device` is selected.
    pub fn matches(&self, device: &Device) -> bool {
        match self {
            DeviceSelector::All => true,
            DeviceSelector::Ids(ids) => ids.contains(&device.id),
            DeviceSelector::Labels(labels) => {
                !labels.is_empty()
                    && labels
                        .iter()
                        .all(|(k, v)| device.labels.get(k).is_some_and(|dv| dv == v))
            }
        }
    }
}

/// One access rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique name, reported in permits, denials and audit records.
    pub name: String,
    /// Who it is for.
    pub who: Who,
    /// Which devices.
    pub devices: DeviceSelector,
    /// Longest single session, if limited.
    pub max_session: Option<std::time::Duration>,
    /// When it applies; `None` = any time.
    pub hours: Option<Hours>,
}

impl Rule {
    /// Whether the rule is about this principal and device (ignoring time).
    pub fn covers(&self, principal: &Principal, device: &Device) -> bool {
        self.who.matches(principal) && self.devices.matches(device)
    }
}

/// What a lock applies to. On the wire: `{"principal":"acme/jdoe"}`, `{"device":"pump-12"}`,
/// `{"org":"acme"}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LockTarget {
    /// A principal, named by certificate serial, `org/name`, or bare `name`. A bare name locks
    /// that name in every org: a lock errs on the side of too wide.
    Principal(String),
    /// A device id.
    Device(String),
    /// Every principal of an organisation.
    Org(String),
}

impl fmt::Display for LockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockTarget::Principal(p) => write!(f, "principal {p}"),
            LockTarget::Device(d) => write!(f, "device {d}"),
            LockTarget::Org(o) => write!(f, "org {o}"),
        }
    }
}

/// A lock placed by security staff (`ward lock …`): denies new sessions and ends current ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// What is locked.
    pub target: LockTarget,
    /// When it lifts by itself; `None` = until unlocked.
    pub until: Option<OffsetDateTime>,
    /// Why (shown to the locked-out user).
    pub reason: String,
    /// Who placed it (`qualified_name` of the security principal).
    pub by: String,
}

/// Whether `lock` stops `principal` from using the device with id `device` at `now`.
pub fn lock_applies(lock: &Lock, principal: &Principal, device: &str, now: OffsetDateTime) -> bool {
    if lock.until.is_some_and(|until| now >= until) {
        return false;
    }
    match &lock.target {
        LockTarget::Principal(p) => {
            *p == principal.serial || *p == principal.name || *p == principal.qualified_name()
        }
        LockTarget::Device(d) => d == device,
        LockTarget::Org(o) => principal.org.as_ref() == Some(o),
    }
}

/// Proof that policy allowed a session. Only [`evaluate`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    rule: String,
    ends_at: OffsetDateTime,
    end_reason: EndReason,
    grant: Option<String>,
    break_glass: bool,
}

impl Permit {
    /// The rule that allowed it.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The latest instant the session may run to.
    pub fn ends_at(&self) -> OffsetDateTime {
        self.ends_at
    }

    /// What ends the session at `ends_at` if nothing else does first: one of
    /// [`EndReason::CertificateExpiry`], [`EndReason::MaxDuration`], [`EndReason::WindowEnd`].
    pub fn end_reason(&self) -> &EndReason {
        &self.end_reason
    }

    /// The access grant that allowed it, if a grant did.
    pub fn grant(&self) -> Option<&str> {
        self.grant.as_deref()
    }

    /// Whether this is an emergency (break-glass) session.
    pub fn break_glass(&self) -> bool {
        self.break_glass
    }
}

/// Why a request was denied. `Display` is the user-facing text sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyReason {
    /// No rule covers this principal and device.
    #[error("no rule lets {principal} reach {device}")]
    NoRule {
        /// Principal display (`vendor acme/jdoe`).
        principal: String,
        /// Device id.
        device: String,
    },
    /// The device does not exist; reads exactly like [`DenyReason::NoRule`] on purpose.
    #[error("no rule lets {principal} reach {device}")]
    UnknownDevice {
        /// Principal display.
        principal: String,
        /// The requested id.
        device: String,
    },
    /// A rule covers the request but its hours are closed now.
    #[error("rule {rule} allows {principal} on {device} only during {hours}; next window opens {next_open}")]
    OutsideWindow {
        /// The rule that opens soonest.
        rule: String,
        /// Principal display.
        principal: String,
        /// Device id.
        device: String,
        /// The rule's hours, e.g. `Mon-Fri 07:00-19:00 (UTC)`.
        hours: String,
        /// When it next opens, e.g. `Mon 07:00`.
        next_open: String,
    },
    /// A lock applies to the principal, device or org.
    #[error("locked: {reason} (by {by}, until {})", until_text(*.until))]
    Locked {
        /// The lock's reason.
        reason: String,
        /// Who locked it.
        by: String,
        /// When it lifts; `None` = indefinitely.
        until: Option<OffsetDateTime>,
    },
    /// An approval policy governs this principal on this device and no grant covers now.
    #[error("{device} needs an approved access request for {principal} (policy {policy}); ask with: ward request {device} --reason TEXT --duration 2h")]
    NeedsApproval {
        /// Principal display.
        principal: String,
        /// Device id.
        device: String,
        /// The approval policy.
        policy: String,
    },
    /// The principal holds a grant for this device whose window has not started.
    #[error("grant {grant} for {device} starts at {}", until_text(Some(*.starts)))]
    GrantNotYet {
        /// Grant id.
        grant: String,
        /// Device id.
        device: String,
        /// Window start.
        starts: OffsetDateTime,
    },
    /// A vendor outside the device's maintenance windows, with no grant covering now.
    #[error("{device} takes vendor sessions only in its maintenance windows ({windows}); next window opens {next_open}; an approved access request can cover other times")]
    OutsideMaintenance {
        /// Principal display.
        principal: String,
        /// Device id.
        device: String,
        /// The windows, e.g. `Tue 02:00-04:00 (UTC)`.
        windows: String,
        /// When the next one opens.
        next_open: String,
    },
    /// Break-glass asked where the device's policy does not allow it for this principal.
    #[error("break-glass access to {device} is not allowed for {principal}")]
    BreakGlassNotAllowed {
        /// Principal display.
        principal: String,
        /// Device id.
        device: String,
    },
    /// Break-glass asked without a reason.
    #[error("break-glass access needs a reason: ward connect DEVICE --break-glass --reason TEXT")]
    BreakGlassNoReason,
    /// The principal's certificate has already expired.
    #[error("the certificate for {principal} expired at {}", until_text(Some(*.not_after)))]
    CertificateExpired {
        /// Principal display.
        principal: String,
        /// The certificate's expiry.
        not_after: OffsetDateTime,
    },
}

fn until_text(until: Option<OffsetDateTime>) -> String {
    match until {
        None => "indefinitely".to_owned(),
        Some(t) => t
            .format(&Rfc3339)
            .unwrap_or_else(|_| format!("unix {}", t.unix_timestamp())),
    }
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with the rule and the session's end.
    Permit(Permit),
    /// Denied, with the reason.
    Deny(DenyReason),
}

/// Decides whether `principal` may open a session to `device` at `now` (see the module docs).
pub fn evaluate(
    rules: &[Rule],
    locks: &[Lock],
    principal: &Principal,
    device: &Device,
    now: OffsetDateTime,
) -> Decision {
    if principal.not_after <= now {
        return Decision::Deny(DenyReason::CertificateExpired {
            principal: principal.to_string(),
            not_after: principal.not_after,
        });
    }
    let mut covered = false;
    let mut best: Option<Permit> = None;
    // The closed rule that opens soonest, for the denial message.
    let mut soonest: Option<(&Rule, &Hours, OffsetDateTime)> = None;
    for rule in rules.iter().filter(|r| r.covers(principal, device)) {
        covered = true;
        let mut ends_at = principal.not_after;
        let mut end_reason = EndReason::CertificateExpiry;
        if let Some(limit) = rule
            .max_session
            .and_then(|d| time::Duration::try_from(d).ok())
            .and_then(|d| now.checked_add(d))
        {
            if limit < ends_at {
                ends_at = limit;
                end_reason = EndReason::MaxDuration;
            }
        }
        if let Some(hours) = &rule.hours {
            match hours.state(now) {
                WindowState::Open { until } => {
                    if let Some(until) = until.filter(|u| *u < ends_at) {
                        ends_at = until;
                        end_reason = EndReason::WindowEnd;
                    }
                }
                WindowState::Closed { opens_at } => {
                    if soonest.is_none_or(|(_, _, t)| opens_at < t) {
                        soonest = Some((rule, hours, opens_at));
                    }
                    continue;
                }
            }
        }
        if best.as_ref().is_none_or(|b| ends_at > b.ends_at) {
            best = Some(Permit {
                rule: rule.name.clone(),
                ends_at,
                end_reason,
                grant: None,
                break_glass: false,
            });
        }
    }
    if !covered {
        return Decision::Deny(DenyReason::NoRule {
            principal: principal.to_string(),
            device: device.id.to_string(),
        });
    }
    if let Some(lock) = locks
        .iter()
        .find(|l| lock_applies(l, principal, device.id.as_str(), now))
    {
        return Decision::Deny(DenyReason::Locked {
            reason: lock.reason.clone(),
            by: lock.by.clone(),
            until: lock.until,
        });
    }
    match (best, soonest) {
        (Some(permit), _) => Decision::Permit(permit),
        (None, Some((rule, hours, opens_at))) => Decision::Deny(DenyReason::OutsideWindow {
            rule: rule.name.clone(),
            principal: principal.to_string(),
            device: device.id.to_string(),
            hours: hours.to_string(),
            next_open: format_local(opens_at, hours.offset()),
        }),
        // Unreachable: a covering rule either permits or is closed. Deny, as always by default.
        (None, None) => Decision::Deny(DenyReason::NoRule {
            principal: principal.to_string(),
            device: device.id.to_string(),
        }),
    }
}

/// What session authorization looks at besides rules: locks, approval policies and grants.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessInputs<'a> {
    /// `[[rule]]`s.
    pub rules: &'a [Rule],
    /// Active locks.
    pub locks: &'a [Lock],
    /// `[[approval]]` policies.
    pub approvals: &'a [ApprovalPolicy],
    /// Grants (any state; only live ones count).
    pub grants: &'a [Grant],
}

/// Full session authorization: locks, break-glass, grants, approval policies, rules and
/// maintenance windows, in that order.
///
/// * A lock denies everything, break-glass included.
/// * Break-glass (`Some(reason)`) is allowed only where the device's `break_glass` matches the
///   principal, needs a non-empty reason, and is capped by the device's `max`.
/// * A live grant for this principal and device permits until the grant's end, outside
///   maintenance windows too (the approval explicitly covered the time).
/// * A principal an approval policy governs on this device is denied without a live grant, even
///   if a rule would permit: no standing access.
/// * Otherwise [`evaluate`]; a vendor's permit is then limited to the device's maintenance windows.
pub fn evaluate_access(
    inputs: &AccessInputs<'_>,
    principal: &Principal,
    device: &Device,
    break_glass: Option<&str>,
    now: OffsetDateTime,
) -> Decision {
    if principal.not_after <= now {
        return Decision::Deny(DenyReason::CertificateExpired {
            principal: principal.to_string(),
            not_after: principal.not_after,
        });
    }
    let decision = decide_access(inputs, principal, device, break_glass, now);
    // Like `evaluate`: a lock is reported only to principals that could otherwise reach the
    // device, so that a lock never reveals a device's existence.
    if let Decision::Deny(
        DenyReason::NoRule { .. }
        | DenyReason::UnknownDevice { .. }
        | DenyReason::BreakGlassNotAllowed { .. },
    ) = decision
    {
        return decision;
    }
    match inputs
        .locks
        .iter()
        .find(|l| lock_applies(l, principal, device.id.as_str(), now))
    {
        Some(lock) => Decision::Deny(DenyReason::Locked {
            reason: lock.reason.clone(),
            by: lock.by.clone(),
            until: lock.until,
        }),
        None => decision,
    }
}

fn decide_access(
    inputs: &AccessInputs<'_>,
    principal: &Principal,
    device: &Device,
    break_glass: Option<&str>,
    now: OffsetDateTime,
) -> Decision {
    if let Some(reason) = break_glass {
        return break_glass_decision(principal, device, reason, now);
    }
    if let Some(permit) = grant_permit(inputs, principal, device, now) {
        return permit;
    }
    if let Some(refusal) = approval_refusal(inputs, principal, device, now) {
        return refusal;
    }
    match evaluate(inputs.rules, &[], principal, device, now) {
        Decision::Permit(permit) => within_maintenance(permit, principal, device, now),
        deny => deny,
    }
}

/// `limit` and why the session ends there, or the certificate's expiry if that comes first.
fn capped(
    principal: &Principal,
    limit: OffsetDateTime,
    reason: EndReason,
) -> (OffsetDateTime, EndReason) {
    if limit < principal.not_after {
        (limit, reason)
    } else {
        (principal.not_after, EndReason::CertificateExpiry)
    }
}

/// Break-glass: only where the device allows this principal, with a reason, for at most its cap.
fn break_glass_decision(
    principal: &Principal,
    device: &Device,
    reason: &str,
    now: OffsetDateTime,
) -> Decision {
    let Some(bg) = device
        .break_glass
        .as_ref()
        .filter(|bg| bg.who.matches(principal))
    else {
        return Decision::Deny(DenyReason::BreakGlassNotAllowed {
            principal: principal.to_string(),
            device: device.id.to_string(),
        });
    };
    if reason.trim().is_empty() {
        return Decision::Deny(DenyReason::BreakGlassNoReason);
    }
    let limit = time::Duration::try_from(bg.max)
        .ok()
        .and_then(|d| now.checked_add(d))
        .unwrap_or(principal.not_after);
    let (ends_at, end_reason) = capped(principal, limit, EndReason::MaxDuration);
    Decision::Permit(Permit {
        rule: "break-glass".to_owned(),
        ends_at,
        end_reason,
        grant: None,
        break_glass: true,
    })
}

/// A live grant covering this principal and device permits until its end (the latest one wins).
fn grant_permit(
    inputs: &AccessInputs<'_>,
    principal: &Principal,
    device: &Device,
    now: OffsetDateTime,
) -> Option<Decision> {
    let grant = inputs
        .grants
        .iter()
        .filter(|g| g.covers(principal, device.id.as_str(), now))
        .max_by_key(|g| g.end)?;
    // A certificate issued for this grant (`ward login`) ends with it, to within X.509's
    // one-second precision: then the window, not the certificate, is what ends the session.
    let (ends_at, end_reason) = if grant
        .end
        .checked_sub(time::Duration::SECOND)
        .is_some_and(|almost| principal.not_after > almost)
    {
        (grant.end.min(principal.not_after), EndReason::WindowEnd)
    } else {
        capped(principal, grant.end, EndReason::WindowEnd)
    };
    Some(Decision::Permit(Permit {
        rule: format!("grant {}", grant.id),
        ends_at,
        end_reason,
        grant: Some(grant.id.clone()),
        break_glass: false,
    }))
}

/// Without a live grant, a principal an approval policy governs is refused even where a rule
/// would permit (no standing access): told of its upcoming grant, or that it needs approval.
fn approval_refusal(
    inputs: &AccessInputs<'_>,
    principal: &Principal,
    device: &Device,
    now: OffsetDateTime,
) -> Option<Decision> {
    let policy = policy_for(inputs.approvals, principal, device)?;
    let device_id = device.id.as_str();
    if let Some(upcoming) = inputs
        .grants
        .iter()
        .filter(|g| g.is_current(now) && g.principal.is(principal) && g.device == device_id)
        .min_by_key(|g| g.start)
    {
        return Some(Decision::Deny(DenyReason::GrantNotYet {
            grant: upcoming.id.clone(),
            device: device_id.to_owned(),
            starts: upcoming.start,
        }));
    }
    Some(Decision::Deny(DenyReason::NeedsApproval {
        principal: principal.to_string(),
        device: device_id.to_owned(),
        policy: policy.name.clone(),
    }))
}

/// A vendor's rule permit holds only inside the device's maintenance windows, and ends with the
/// window if that comes first.
fn within_maintenance(
    mut permit: Permit,
    principal: &Principal,
    device: &Device,
    now: OffsetDateTime,
) -> Decision {
    let Some(hours) = device
        .maintenance
        .as_ref()
        .filter(|_| principal.kind == PrincipalKind::Vendor)
    else {
        return Decision::Permit(permit);
    };
    match hours.state(now) {
        WindowState::Open { until } => {
            if let Some(until) = until.filter(|u| *u < permit.ends_at) {
                permit.ends_at = until;
                permit.end_reason = EndReason::WindowEnd;
            }
            Decision::Permit(permit)
        }
        WindowState::Closed { opens_at } => Decision::Deny(DenyReason::OutsideMaintenance {
            principal: principal.to_string(),
            device: device.id.to_string(),
            windows: hours.to_string(),
            next_open: format_local(opens_at, hours.offset()),
        }),
    }
}

/// [`evaluate`] for a device named by the client: an id not in `devices` is denied with
/// [`DenyReason::UnknownDevice`].
pub fn evaluate_id(
    rules: &[Rule],
    locks: &[Lock],
    principal: &Principal,
    devices: &[Device],
    device_id: &str,
    now: OffsetDateTime,
) -> Decision {
    match devices.iter().find(|d| d.id.as_str() == device_id) {
        Some(device) => evaluate(rules, locks, principal, device, now),
        None => Decision::Deny(DenyReason::UnknownDevice {
            principal: principal.to_string(),
            device: device_id.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceAddress, Protocol};
    use proptest::prelude::*;
    use time::macros::datetime;
    use time::{Duration, UtcOffset};

    /// Monday.
    const NOW: OffsetDateTime = datetime!(2024-01-01 10:00 UTC);

    fn device(id: &str, labels: &[(&str, &str)]) -> Device {
        Device {
            id: DeviceId::new(id).unwrap(),
            address: "10.0.0.1:23".parse::<DeviceAddress>().unwrap(),
            protocol: Protocol::Telnet,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            maintenance: None,
            break_glass: None,
            netns: None,
            tls: None,
        }
    }

    fn principal(kind: PrincipalKind, org: Option<&str>, name: &str, roles: &[&str]) -> Principal {
        Principal {
            kind,
            name: name.into(),
            org: org.map(Into::into),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            serial: format!("serial-{name}"),
            not_after: NOW + Duration::days(90),
        }
    }

    fn hours(texts: &[&str]) -> Option<Hours> {
        Some(Hours::parse(texts, UtcOffset::UTC).unwrap())
    }

    fn rules() -> Vec<Rule> {
        vec![
            Rule {
                name: "acme-maintains-its-pumps".into(),
                who: Who {
                    kind: Some(PrincipalKind::Vendor),
                    org: Some("acme".into()),
                    ..Who::default()
                },
                devices: DeviceSelector::Labels(
                    [("vendor".to_string(), "acme".to_string())].into(),
                ),
                max_session: Some(std::time::Duration::from_secs(2 * 3600)),
                hours: None,
            },
            Rule {
                name: "icu-nurses-see-icu-consoles".into(),
                who: Who {
                    kind: Some(PrincipalKind::Clinician),
                    roles: vec!["icu".into(), "nurse".into()],
                    ..Who::default()
                },
                devices: DeviceSelector::Ids(vec![DeviceId::new("monitor-3").unwrap()]),
                max_session: None,
                hours: hours(&["Mon-Fri 07:00-19:00"]),
            },
            Rule {
                name: "night-biomed".into(),
                who: Who {
                    name: Some("carol".into()),
                    ..Who::default()
                },
                devices: DeviceSelector::All,
                max_session: Some(std::time::Duration::from_secs(30 * 86_400)),
                hours: hours(&["Mon-Sun 09:00-12:00"]),
            },
            Rule {
                name: "admins-anything".into(),
                who: Who {
                    kind: Some(PrincipalKind::Admin),
                    ..Who::default()
                },
                devices: DeviceSelector::All,
                max_session: None,
                hours: None,
            },
        ]
    }

    fn devices() -> Vec<Device> {
        vec![
            device("pump-12", &[("vendor", "acme"), ("class", "infusion-pump")]),
            device("pump-13", &[("vendor", "globex")]),
            device("monitor-3", &[("unit", "icu")]),
        ]
    }

    enum Want {
        Permit(&'static str, OffsetDateTime, EndReason),
        Deny(&'static str),
    }

    #[test]
    fn table() {
        let jdoe = principal(PrincipalKind::Vendor, Some("acme"), "jdoe", &[]);
        let globex = principal(PrincipalKind::Vendor, Some("globex"), "g", &[]);
        let alice = principal(PrincipalKind::Clinician, None, "alice", &["icu", "nurse"]);
        let bob = principal(PrincipalKind::Clinician, None, "bob", &["icu"]);
        let carol = principal(PrincipalKind::Clinician, None, "carol", &[]);
        let root = principal(PrincipalKind::Admin, None, "root", &[]);
        let mut short_cert = jdoe.clone();
        short_cert.not_after = NOW + Duration::minutes(20);
        let mut expired = jdoe.clone();
        expired.not_after = NOW;
        let saturday = NOW + Duration::days(5);

        let rows: Vec<(&str, &Principal, &str, OffsetDateTime, Want)> = vec![
            // acme-maintains-its-pumps
            ("vendor on own pump", &jdoe, "pump-12", NOW,
                Want::Permit("acme-maintains-its-pumps", NOW + Duration::hours(2), EndReason::MaxDuration)),
            ("cert expiry before max_session", &short_cert, "pump-12", NOW,
                Want::Permit("acme-maintains-its-pumps", NOW + Duration::minutes(20), EndReason::CertificateExpiry)),
            ("expired cert", &expired, "pump-12", NOW,
                Want::Deny("the certificate for vendor acme/jdoe expired at 2024-01-01T10:00:00Z")),
            ("vendor on other vendor's pump", &jdoe, "pump-13", NOW,
                Want::Deny("no rule lets vendor acme/jdoe reach pump-13")),
            ("other vendor on acme pump", &globex, "pump-12", NOW,
                Want::Deny("no rule lets vendor globex/g reach pump-12")),
            ("unknown device reads like no rule", &jdoe, "pump-99", NOW,
                Want::Deny("no rule lets vendor acme/jdoe reach pump-99")),
            // icu-nurses-see-icu-consoles
            ("nurse in hours", &alice, "monitor-3", NOW,
                Want::Permit("icu-nurses-see-icu-consoles", NOW + Duration::hours(9), EndReason::WindowEnd)),
            ("nurse on saturday", &alice, "monitor-3", saturday,
                Want::Deny("rule icu-nurses-see-icu-consoles allows clinician alice on monitor-3 only during Mon-Fri 07:00-19:00 (UTC); next window opens Mon 07:00")),
            ("missing one role", &bob, "monitor-3", NOW,
                Want::Deny("no rule lets clinician bob reach monitor-3")),
            ("nurse on a pump", &alice, "pump-12", NOW,
                Want::Deny("no rule lets clinician alice reach pump-12")),
            // night-biomed (name match, all devices, window)
            ("carol in window", &carol, "pump-13", NOW,
                Want::Permit("night-biomed", NOW + Duration::hours(2), EndReason::WindowEnd)),
            ("carol before window", &carol, "pump-13", NOW - Duration::hours(2),
                Want::Deny("rule night-biomed allows clinician carol on pump-13 only during Mon-Sun 09:00-12:00 (UTC); next window opens Mon 09:00")),
            // admins-anything
            ("admin anywhere, bounded by cert", &root, "monitor-3", NOW,
                Want::Permit("admins-anything", NOW + Duration::days(90), EndReason::CertificateExpiry)),
        ];
        let devices = devices();
        let rules = rules();
        for (name, p, dev, now, want) in rows {
            let got = evaluate_id(&rules, &[], p, &devices, dev, now);
            match (want, got) {
                (Want::Permit(rule, ends_at, reason), Decision::Permit(permit)) => {
                    assert_eq!(permit.rule(), rule, "{name}");
                    assert_eq!(permit.ends_at(), ends_at, "{name}");
                    assert_eq!(permit.end_reason(), &reason, "{name}");
                }
                (Want::Deny(text), Decision::Deny(reason)) => {
                    assert_eq!(reason.to_string(), text, "{name}")
                }
                (_, got) => panic!("{name}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn most_generous_rule_wins() {
        let carol = principal(PrincipalKind::Clinician, Some("biomed"), "carol", &[]);
        let mut rules = rules();
        rules.push(Rule {
            name: "biomed-short".into(),
            who: Who {
                org: Some("biomed".into()),
                ..Who::default()
            },
            devices: DeviceSelector::All,
            max_session: Some(std::time::Duration::from_secs(600)),
            hours: None,
        });
        let Decision::Permit(p) = evaluate(&rules, &[], &carol, &devices()[1], NOW) else {
            panic!("expected permit");
        };
        assert_eq!(p.rule(), "night-biomed");
        // Outside night-biomed's window the short rule still applies.
        let Decision::Permit(p) =
            evaluate(&rules, &[], &carol, &devices()[1], NOW + Duration::hours(3))
        else {
            panic!("expected permit");
        };
        assert_eq!(p.rule(), "biomed-short");
    }

    #[test]
    fn locks() {
        let jdoe = principal(PrincipalKind::Vendor, Some("acme"), "jdoe", &[]);
        let pump = &devices()[0];
        let lock = |target, until| Lock {
            target,
            until,
            reason: "credential leak".into(),
            by: "security/bob".into(),
        };
        let rows = [
            (lock(LockTarget::Principal("acme/jdoe".into()), None), true),
            (lock(LockTarget::Principal("jdoe".into()), None), true),
            (
                lock(LockTarget::Principal("serial-jdoe".into()), None),
                true,
            ),
            (
                lock(LockTarget::Principal("globex/jdoe".into()), None),
                false,
            ),
            (lock(LockTarget::Device("pump-12".into()), None), true),
            (lock(LockTarget::Device("pump-13".into()), None), false),
            (lock(LockTarget::Org("acme".into()), None), true),
            (lock(LockTarget::Org("globex".into()), None), false),
            (lock(LockTarget::Org("acme".into()), Some(NOW)), false),
            (
                lock(
                    LockTarget::Org("acme".into()),
                    Some(NOW + Duration::hours(1)),
                ),
                true,
            ),
        ];
        for (lock, applies) in rows {
            assert_eq!(
                lock_applies(&lock, &jdoe, pump.id.as_str(), NOW),
                applies,
                "{lock:?}"
            );
            let decision = evaluate(&rules(), std::slice::from_ref(&lock), &jdoe, pump, NOW);
            assert_eq!(
                matches!(decision, Decision::Deny(DenyReason::Locked { .. })),
                applies
            );
        }
        let Decision::Deny(reason) = evaluate(
            &rules(),
            &[lock(LockTarget::Org("acme".into()), None)],
            &jdoe,
            pump,
            NOW,
        ) else {
            panic!("expected deny");
        };
        assert_eq!(
            reason.to_string(),
            "locked: credential leak (by security/bob, until indefinitely)"
        );
        let Decision::Deny(reason) = evaluate(
            &rules(),
            &[lock(
                LockTarget::Device("pump-12".into()),
                Some(datetime!(2024-01-02 0:00 UTC)),
            )],
            &jdoe,
            pump,
            NOW,
        ) else {
            panic!("expected deny");
        };
        assert_eq!(
            reason.to_string(),
            "locked: credential leak (by security/bob, until 2024-01-02T00:00:00Z)"
        );
    }

    #[test]
    fn a_lock_does_not_reveal_devices_without_a_rule() {
        let globex = principal(PrincipalKind::Vendor, Some("globex"), "g", &[]);
        let lock = Lock {
            target: LockTarget::Device("pump-12".into()),
            until: None,
            reason: "x".into(),
            by: "y".into(),
        };
        let decision = evaluate(&rules(), &[lock], &globex, &devices()[0], NOW);
        assert!(matches!(
            decision,
            Decision::Deny(DenyReason::NoRule { .. })
        ));
    }

    #[test]
    fn empty_selectors_match_nothing() {
        let jdoe = principal(PrincipalKind::Vendor, Some("acme"), "jdoe", &[]);
        assert!(!Who::default().matches(&jdoe));
        assert!(!DeviceSelector::Labels(BTreeMap::new()).matches(&devices()[0]));
    }

    // --- property: no permit without a covering, open rule ---

    fn arb_principal() -> impl Strategy<Value = Principal> {
        (
            proptest::sample::select(PrincipalKind::ALL.to_vec()),
            proptest::option::of(proptest::sample::select(vec!["acme", "globex"])),
            proptest::sample::select(vec!["x", "y"]),
            proptest::sample::subsequence(vec!["r1", "r2"], 0..=2),
            0i64..200,
        )
            .prop_map(|(kind, org, name, roles, hours_left)| Principal {
                kind,
                name: name.into(),
                org: org.map(Into::into),
                roles: roles.into_iter().map(Into::into).collect(),
                serial: "s".into(),
                not_after: NOW + Duration::hours(hours_left),
            })
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let who = (
            proptest::option::of(proptest::sample::select(PrincipalKind::ALL.to_vec())),
            proptest::option::of(proptest::sample::select(vec!["x", "y"])),
            proptest::option::of(proptest::sample::select(vec!["acme", "globex"])),
            proptest::sample::subsequence(vec!["r1", "r2"], 0..=2),
        )
            .prop_map(|(kind, name, org, roles)| Who {
                kind,
                name: name.map(Into::into),
                org: org.map(Into::into),
                roles: roles.into_iter().map(Into::into).collect(),
            });
        let selector = prop_oneof![
            Just(DeviceSelector::All),
            proptest::sample::subsequence(vec!["d1", "d2", "d3"], 0..=3).prop_map(|ids| {
                DeviceSelector::Ids(ids.into_iter().map(|i| DeviceId::new(i).unwrap()).collect())
            }),
            proptest::collection::btree_map(
                proptest::sample::select(vec!["a", "b"]).prop_map(String::from),
                proptest::sample::select(vec!["1", "2"]).prop_map(String::from),
                0..=2
            )
            .prop_map(DeviceSelector::Labels),
        ];
        let hours = proptest::option::of(proptest::sample::select(vec![
            "Mon-Fri 07:00-19:00",
            "Sat 22:00-06:00",
            "Mon-Sun 00:00-24:00",
            "Tue,Thu 10:00-11:00",
        ]));
        (
            "[a-z]{1,6}",
            who,
            selector,
            proptest::option::of(1u64..100_000),
            hours,
        )
            .prop_map(|(name, who, devices, max, hours)| Rule {
                name,
                who,
                devices,
                max_session: max.map(std::time::Duration::from_secs),
                hours: hours.map(|h| Hours::parse(&[h], UtcOffset::UTC).unwrap()),
            })
    }

    fn arb_device() -> impl Strategy<Value = Device> {
        (
            proptest::sample::select(vec!["d1", "d2", "d3", "d4"]),
            proptest::collection::btree_map(
                proptest::sample::select(vec!["a", "b"]).prop_map(String::from),
                proptest::sample::select(vec!["1", "2"]).prop_map(String::from),
                0..=2,
            ),
        )
            .prop_map(|(id, labels)| Device {
                id: DeviceId::new(id).unwrap(),
                address: "10.0.0.1:23".parse().unwrap(),
                protocol: Protocol::Raw,
                labels,
                maintenance: None,
                break_glass: None,
                netns: None,
                tls: None,
            })
    }

    /// An independent statement of "covered": written from the config semantics, not from
    /// `Who::matches` / `DeviceSelector::matches`.
    fn oracle_covers(rule: &Rule, p: &Principal, d: &Device) -> bool {
        let w = &rule.who;
        let who_set =
            w.kind.is_some() || w.name.is_some() || w.org.is_some() || !w.roles.is_empty();
        let who_ok = who_set
            && w.kind.is_none_or(|k| k == p.kind)
            && w.name.as_deref().is_none_or(|n| n == p.name)
            && w.org.as_deref().is_none_or(|o| p.org.as_deref() == Some(o))
            && w.roles.iter().all(|r| p.roles.iter().any(|pr| pr == r));
        let dev_ok = match &rule.devices {
            DeviceSelector::All => true,
            DeviceSelector::Ids(ids) => ids.iter().any(|i| i.as_str() == d.id.as_str()),
            DeviceSelector::Labels(l) => {
                !l.is_empty() && l.iter().all(|(k, v)| d.labels.get(k) == Some(v))
            }
        };
        who_ok && dev_ok
    }

    proptest! {
        #[test]
        fn never_permits_beyond_the_rules(
            rules in proptest::collection::vec(arb_rule(), 0..5),
            p in arb_principal(),
            d in arb_device(),
            minutes in 0i64..20_160,
        ) {
            let now = NOW + Duration::minutes(minutes);
            let allowed: Vec<&Rule> = rules
                .iter()
                .filter(|r| oracle_covers(r, &p, &d))
                .filter(|r| r.hours.as_ref().is_none_or(|h| h.is_open(now)))
                .collect();
            match evaluate(&rules, &[], &p, &d, now) {
                Decision::Permit(permit) => {
                    prop_assert!(p.not_after > now);
                    prop_assert!(allowed.iter().any(|r| r.name == permit.rule()));
                    prop_assert!(permit.ends_at() > now);
                    prop_assert!(permit.ends_at() <= p.not_after);
                }
                Decision::Deny(_) => {
                    prop_assert!(allowed.is_empty() || p.not_after <= now);
                }
            }
        }
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;
    use crate::access::{BreakGlass, PrincipalRef};
    use crate::device::{DeviceAddress, Protocol};
    use time::macros::datetime;
    use time::{Duration, UtcOffset};

    /// Monday 10:00.
    const NOW: OffsetDateTime = datetime!(2024-01-01 10:00 UTC);

    fn pump() -> Device {
        Device {
            id: DeviceId::new("pump-12").unwrap(),
            address: "10.0.0.1:23".parse::<DeviceAddress>().unwrap(),
            protocol: Protocol::Telnet,
            labels: [("class".to_string(), "infusion-pump".to_string())].into(),
            maintenance: Some(Hours::parse(&["Tue 02:00-04:00"], UtcOffset::UTC).unwrap()),
            break_glass: Some(BreakGlass::default()),
            netns: None,
            tls: None,
        }
    }

    fn person(kind: PrincipalKind, name: &str) -> Principal {
        Principal {
            kind,
            name: name.into(),
            org: Some("acme".into()),
            roles: vec![],
            serial: "01".into(),
            not_after: NOW + Duration::hours(8),
        }
    }

    fn standing_rule() -> Vec<Rule> {
        vec![Rule {
            name: "vendors".into(),
            who: Who {
                kind: Some(PrincipalKind::Vendor),
                ..Who::default()
            },
            devices: DeviceSelector::All,
            max_session: None,
            hours: None,
        }]
    }

    fn approval() -> ApprovalPolicy {
        ApprovalPolicy {
            name: "pumps".into(),
            devices: DeviceSelector::All,
            who: Who {
                kind: Some(PrincipalKind::Vendor),
                ..Who::default()
            },
            approvers: vec![Who {
                kind: Some(PrincipalKind::Clinician),
                ..Who::default()
            }],
            required: 1,
            max_duration: crate::access::DEFAULT_MAX_DURATION,
            pending_expiry: crate::access::DEFAULT_PENDING_EXPIRY,
        }
    }

    fn grant(p: &Principal, start: OffsetDateTime, end: OffsetDateTime) -> Grant {
        Grant {
            id: "grant-1".into(),
            request: "req-1".into(),
            principal: PrincipalRef::of(p),
            device: "pump-12".into(),
            start,
            end,
            approvers: vec!["nurse".into()],
            revoked_at: None,
            revoked: None,
        }
    }

    fn decide(
        inputs: &AccessInputs<'_>,
        p: &Principal,
        bg: Option<&str>,
        now: OffsetDateTime,
    ) -> Decision {
        evaluate_access(inputs, p, &pump(), bg, now)
    }

    #[test]
    fn maintenance_window_names_the_next_window() {
        let vendor = person(PrincipalKind::Vendor, "tech");
        let rules = standing_rule();
        let inputs = AccessInputs {
            rules: &rules,
            ..AccessInputs::default()
        };
        let Decision::Deny(reason) = decide(&inputs, &vendor, None, NOW) else {
            panic!("vendor outside the window must be denied");
        };
        assert!(matches!(reason, DenyReason::OutsideMaintenance { .. }));
        assert!(
            reason.to_string().contains("next window opens Tue 02:00"),
            "{reason}"
        );
        // Inside the window: permitted, cut at the window's end.
        let tue = datetime!(2024-01-02 03:00 UTC);
        let mut v = vendor.clone();
        v.not_after = tue + Duration::hours(8);
        let Decision::Permit(p) = decide(&inputs, &v, None, tue) else {
            panic!("inside the window");
        };
        assert_eq!(p.ends_at(), datetime!(2024-01-02 04:00 UTC));
        assert_eq!(p.end_reason(), &EndReason::WindowEnd);
        // Clinicians are not limited by maintenance windows.
        let rules = vec![Rule {
            who: Who {
                kind: Some(PrincipalKind::Clinician),
                ..Who::default()
            },
            ..standing_rule().remove(0)
        }];
        let inputs = AccessInputs {
            rules: &rules,
            ..AccessInputs::default()
        };
        assert!(matches!(
            decide(&inputs, &person(PrincipalKind::Clinician, "n"), None, NOW),
            Decision::Permit(_)
        ));
    }

    #[test]
    fn grants_open_their_window_and_nothing_else() {
        let vendor = person(PrincipalKind::Vendor, "tech");
        let approvals = [approval()];
        let rules = standing_rule();
        // A standing rule does not help where an approval policy governs.
        let none = AccessInputs {
            rules: &rules,
            approvals: &approvals,
            ..AccessInputs::default()
        };
        assert!(matches!(
            decide(&none, &vendor, None, NOW),
            Decision::Deny(DenyReason::NeedsApproval { .. })
        ));
        let grants = [grant(
            &vendor,
            NOW + Duration::hours(1),
            NOW + Duration::hours(3),
        )];
        let inputs = AccessInputs {
            approvals: &approvals,
            grants: &grants,
            ..AccessInputs::default()
        };
        // Before the window: named grant, its start.
        assert!(matches!(
            decide(&inputs, &vendor, None, NOW),
            Decision::Deny(DenyReason::GrantNotYet { .. })
        ));
        // Inside: permitted outside the maintenance window, ends with the grant.
        let Decision::Permit(p) = decide(&inputs, &vendor, None, NOW + Duration::hours(2)) else {
            panic!("grant window");
        };
        assert_eq!(p.grant(), Some("grant-1"));
        assert_eq!(p.ends_at(), NOW + Duration::hours(3));
        assert_eq!(p.end_reason(), &EndReason::WindowEnd);
        // After: denied again.
        assert!(matches!(
            decide(&inputs, &vendor, None, NOW + Duration::hours(3)),
            Decision::Deny(DenyReason::NeedsApproval { .. })
        ));
        // Another vendor gains nothing from it.
        assert!(matches!(
            decide(
                &inputs,
                &person(PrincipalKind::Vendor, "other"),
                None,
                NOW + Duration::hours(2)
            ),
            Decision::Deny(DenyReason::NeedsApproval { .. })
        ));
        // The certificate still caps it.
        let mut short = vendor.clone();
        short.not_after = NOW + Duration::minutes(150);
        let Decision::Permit(p) = decide(&inputs, &short, None, NOW + Duration::hours(2)) else {
            panic!("grant window");
        };
        assert_eq!(p.end_reason(), &EndReason::CertificateExpiry);
        // A certificate issued for the grant ends with it (X.509 keeps whole seconds): the
        // session ends at the certificate's end, and the reason is the window's.
        let mut bound = vendor.clone();
        bound.not_after = NOW + Duration::hours(3) - Duration::milliseconds(400);
        let Decision::Permit(p) = decide(&inputs, &bound, None, NOW + Duration::hours(2)) else {
            panic!("grant window");
        };
        assert_eq!(p.ends_at(), bound.not_after);
        assert_eq!(p.end_reason(), &EndReason::WindowEnd);
        // A lock wins over the grant.
        let locks = [Lock {
            target: LockTarget::Principal("tech".into()),
            until: None,
            reason: "stolen laptop".into(),
            by: "soc".into(),
        }];
        let locked = AccessInputs {
            locks: &locks,
            ..inputs
        };
        assert!(matches!(
            decide(&locked, &vendor, None, NOW + Duration::hours(2)),
            Decision::Deny(DenyReason::Locked { .. })
        ));
    }

    #[test]
    fn break_glass_where_allowed_capped_and_flagged() {
        let nurse = person(PrincipalKind::Clinician, "nurse");
        let inputs = AccessInputs::default();
        // No rule at all: break-glass still opens, capped at 30 minutes and flagged.
        let Decision::Permit(p) = decide(&inputs, &nurse, Some("patient crashing"), NOW) else {
            panic!("break-glass");
        };
        assert!(p.break_glass());
        assert_eq!(p.ends_at(), NOW + Duration::minutes(30));
        assert_eq!(p.end_reason(), &EndReason::MaxDuration);
        assert!(matches!(
            decide(&inputs, &nurse, Some("  "), NOW),
            Decision::Deny(DenyReason::BreakGlassNoReason)
        ));
        // Vendors may not break the glass (default who = clinicians).
        assert!(matches!(
            decide(
                &inputs,
                &person(PrincipalKind::Vendor, "tech"),
                Some("x"),
                NOW
            ),
            Decision::Deny(DenyReason::BreakGlassNotAllowed { .. })
        ));
        // A device without break_glass refuses it.
        let mut d = pump();
        d.break_glass = None;
        assert!(matches!(
            evaluate_access(&inputs, &nurse, &d, Some("x"), NOW),
            Decision::Deny(DenyReason::BreakGlassNotAllowed { .. })
        ));
        // Without break-glass the same nurse has no rule.
        assert!(matches!(
            decide(&inputs, &nurse, None, NOW),
            Decision::Deny(DenyReason::NoRule { .. })
        ));
    }
}
