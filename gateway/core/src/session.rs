//! Session states as types: [`Handshaken`] → [`Authorized`] → [`Closed`].
//!
//! Each transition consumes the previous state. [`Authorized`] can only be built from a
//! [`Permit`] that came out of [`policy::evaluate`] (its fields are
//! private and it has no public constructor), so the I/O layer cannot start proxying to a device
//! without a policy decision, and the device's address is read from the `Authorized` value.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::device::Device;
use crate::policy::{self, AccessInputs, Decision, DenyReason, Lock, Permit, Rule};
use crate::principal::{Principal, PrincipalKind};

/// Why a session ended (or, in a [`Permit`], why it will end if nothing cuts it short).
///
/// One value per way a session ends, from the check that decides it to the three places it is
/// told: the client's `Closed` frame and the audit log's `session_close` (both [`fmt::Display`]),
/// and the recording's end record (the same text). [`EndReason::as_str`] is a stable short name
/// for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Both sides closed their halves: the session ran its course.
    Completed,
    /// The client's stream ended abruptly or could not be written: nobody is left to tell.
    ClientGone,
    /// The client's certificate expired.
    CertificateExpiry,
    /// The rule's `max_session` (or break-glass `max`) elapsed.
    MaxDuration,
    /// The rule's `hours`, the maintenance window or the grant's window closed.
    WindowEnd,
    /// No bytes either way for `idle_timeout` (in seconds).
    IdleTimeout(u64),
    /// A lock now applies to the principal, device or org.
    Locked {
        /// The lock's reason.
        reason: String,
        /// Who placed it.
        by: String,
    },
    /// Security staff ended this one session (the web console's "end session", `POST
    /// /api/v1/live/{id}/end`).
    Terminated {
        /// Who ended it (`security jsmith`).
        by: String,
        /// Why, as they gave it.
        reason: String,
    },
    /// The access grant the session ran on was revoked or ended.
    GrantEnded,
    /// The user was disabled.
    UserDisabled,
    /// A config reload no longer permits the session; carries the policy's reason.
    PolicyChanged(String),
    /// The gateway is shutting down.
    Shutdown,
    /// The device closed its connection or failed.
    DeviceFailed {
        /// The device's id.
        device: String,
        /// What failed.
        error: String,
    },
    /// The client sent a control frame in the middle of the session's data.
    ClientUnexpectedControl,
    /// The client's stream failed (bad frames, transport error).
    ClientError(String),
    /// The session recording could not be written, so the session was cut (fail closed).
    RecordingFailed(String),
    /// A stage of the session's pipeline (a protocol decoder's policy, a credential injector)
    /// ended it; its text names the stage, the direction and why.
    Stage(crate::stage::StageStop),
    /// The session never carried a byte: the device could not be reached, or its opening could
    /// not be audited. Carries the refusal the client was given.
    NotStarted(String),
}

impl EndReason {
    /// A stable short name for the reason, without its details.
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Completed => "completed",
            EndReason::ClientGone => "client_gone",
            EndReason::CertificateExpiry => "certificate_expiry",
            EndReason::MaxDuration => "max_duration",
            EndReason::WindowEnd => "window_end",
            EndReason::IdleTimeout(_) => "idle_timeout",
            EndReason::Locked { .. } => "locked",
            EndReason::Terminated { .. } => "terminated",
            EndReason::GrantEnded => "grant_ended",
            EndReason::UserDisabled => "user_disabled",
            EndReason::PolicyChanged(_) => "policy_changed",
            EndReason::Shutdown => "shutdown",
            EndReason::DeviceFailed { .. } => "device_failed",
            EndReason::ClientUnexpectedControl => "client_unexpected_control",
            EndReason::ClientError(_) => "client_error",
            EndReason::RecordingFailed(_) => "recording_failed",
            EndReason::Stage(_) => "stage_stopped",
            EndReason::NotStarted(_) => "not_started",
        }
    }

    /// Whether the gateway cut the session, so the client is told why (a `Closed` frame): not
    /// when both sides finished, the client went away, or the session never started (the
    /// client got a refusal instead).
    pub fn is_cut(&self) -> bool {
        !matches!(
            self,
            EndReason::Completed | EndReason::ClientGone | EndReason::NotStarted(_)
        )
    }

    /// For the reasons a [`Permit`] ends at its deadline (certificate expiry, maximum duration,
    /// window end): the limit's name, as the client is told when the session opens ("ends at …
    /// (maximum session duration)"). `None` for the others.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            EndReason::CertificateExpiry => Some("certificate expiry"),
            EndReason::MaxDuration => Some("maximum session duration"),
            EndReason::WindowEnd => Some("access window end"),
            _ => None,
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Completed => f.write_str("completed"),
            EndReason::ClientGone => f.write_str("client went away"),
            EndReason::IdleTimeout(secs) => write!(f, "idle for {secs}s"),
            EndReason::Locked { reason, by } => write!(f, "locked: {reason} (by {by})"),
            EndReason::Terminated { by, reason } => write!(f, "terminated by {by}: {reason}"),
            EndReason::GrantEnded => f.write_str("access grant revoked or ended"),
            EndReason::UserDisabled => f.write_str("user disabled"),
            EndReason::PolicyChanged(why) => write!(f, "policy changed on reload: {why}"),
            EndReason::Shutdown => f.write_str("gateway shutting down"),
            EndReason::DeviceFailed { device, error } => {
                write!(f, "device {device} closed or failed: {error}")
            }
            EndReason::ClientUnexpectedControl => {
                f.write_str("client sent an unexpected control frame during the session")
            }
            EndReason::ClientError(e) => write!(f, "client stream error: {e}"),
            EndReason::RecordingFailed(e) => {
                write!(f, "recording failed, session ended (fail closed): {e}")
            }
            EndReason::Stage(stop) => write!(f, "{stop}"),
            EndReason::NotStarted(why) => f.write_str(why),
            EndReason::CertificateExpiry | EndReason::MaxDuration | EndReason::WindowEnd => {
                write!(f, "{} reached", self.limit().unwrap_or("deadline"))
            }
        }
    }
}

/// The TLS/QUIC handshake is done and the client certificate validated into a [`Principal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshaken {
    principal: Principal,
}

impl Handshaken {
    /// Starts a session for a validated principal.
    pub fn new(principal: Principal) -> Self {
        Handshaken { principal }
    }

    /// Who is asking.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Asks policy whether this principal may open `device_id` now. An unknown device id is
    /// denied with [`DenyReason::UnknownDevice`], which reads the same as "no rule".
    // `Denied` is large, but so is `Authorized` (both carry the principal): boxing the error
    // would not make the `Result` smaller.
    #[allow(clippy::result_large_err)]
    pub fn authorize(
        self,
        rules: &[Rule],
        locks: &[Lock],
        devices: &[Device],
        device_id: &str,
        now: OffsetDateTime,
    ) -> Result<Authorized, Denied> {
        let inputs = AccessInputs {
            rules,
            locks,
            ..AccessInputs::default()
        };
        self.authorize_access(&inputs, devices, device_id, None, now)
    }

    /// Full authorization ([`policy::evaluate_access`]): grants, approval policies, maintenance
    /// windows and break-glass (`Some(reason)`) as well as rules and locks. An unknown device is
    /// denied like a device no rule reaches (for break-glass: like one that does not allow it).
    #[allow(clippy::result_large_err)]
    pub fn authorize_access(
        self,
        inputs: &AccessInputs<'_>,
        devices: &[Device],
        device_id: &str,
        break_glass: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Authorized, Denied> {
        let Some(device) = devices.iter().find(|d| d.id.as_str() == device_id) else {
            let reason = if break_glass.is_some() {
                DenyReason::BreakGlassNotAllowed {
                    principal: self.principal.to_string(),
                    device: device_id.to_owned(),
                }
            } else {
                DenyReason::UnknownDevice {
                    principal: self.principal.to_string(),
                    device: device_id.to_owned(),
                }
            };
            return Err(Denied {
                reason,
                principal: self.principal,
                device: device_id.to_owned(),
            });
        };
        match policy::evaluate_access(inputs, &self.principal, device, break_glass, now) {
            Decision::Permit(permit) => Ok(Authorized {
                principal: self.principal,
                device: device.clone(),
                permit,
            }),
            Decision::Deny(reason) => Err(Denied {
                principal: self.principal,
                device: device_id.to_owned(),
                reason,
            }),
        }
    }
}

/// Policy said no; carries everything the audit log and the client need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Who asked.
    pub principal: Principal,
    /// The device id they asked for, as given.
    pub device: String,
    /// Why not (its `Display` is what the client is told).
    pub reason: DenyReason,
}

/// Policy said yes: the session may proxy bytes to [`Authorized::device`] until
/// [`Authorized::ends_at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    principal: Principal,
    device: Device,
    permit: Permit,
}

impl Authorized {
    /// Who is connected.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The device to dial.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The policy decision that allowed this session.
    pub fn permit(&self) -> &Permit {
        &self.permit
    }

    /// When the session must end at the latest.
    pub fn ends_at(&self) -> OffsetDateTime {
        self.permit.ends_at()
    }

    /// Whether the gateway must end the session at `now` under `policy`, and why: the gateway is
    /// shutting down, the permit's deadline passed, a lock applies, the user is disabled, the
    /// grant the session ran on is revoked or ended, or (except for break-glass sessions) the
    /// current rules, approval policies and devices would refuse it if it were opened now. The
    /// I/O layer calls this whenever the policy snapshot changes.
    pub fn check(&self, policy: &PolicyView<'_>, now: OffsetDateTime) -> Option<EndReason> {
        if policy.shutting_down {
            return Some(EndReason::Shutdown);
        }
        if now >= self.permit.ends_at() {
            return Some(self.permit.end_reason().clone());
        }
        let device = self.device.id.as_str();
        if let Some(lock) = policy
            .access
            .locks
            .iter()
            .find(|lock| policy::lock_applies(lock, &self.principal, device, now))
        {
            return Some(EndReason::Locked {
                reason: lock.reason.clone(),
                by: lock.by.clone(),
            });
        }
        if self.principal.kind != PrincipalKind::Gateway
            && policy.disabled.contains(&self.principal.name)
        {
            return Some(EndReason::UserDisabled);
        }
        if let Some(grant) = self.permit.grant() {
            let live = policy.access.grants.iter();
            if !live.filter(|g| g.is_live(now)).any(|g| g.id == grant) {
                return Some(EndReason::GrantEnded);
            }
        }
        // Break-glass is an emergency override: kept whatever the new rules say (it is capped,
        // recorded and flagged already; a reload is not a security decision about it).
        if self.permit.break_glass() {
            return None;
        }
        self.refused_now(policy, now).map(EndReason::PolicyChanged)
    }

    /// Why the rules, approval policies and devices in `policy` would refuse this session if it
    /// were opened now (locks left to [`Authorized::check`]), or `None`. A device whose address
    /// changed is refused too: the session is connected to what is no longer that device.
    fn refused_now(&self, policy: &PolicyView<'_>, now: OffsetDateTime) -> Option<String> {
        let id = self.device.id.as_str();
        let Some(device) = policy.devices.iter().find(|d| d.id.as_str() == id) else {
            let unknown = DenyReason::UnknownDevice {
                principal: self.principal.to_string(),
                device: id.to_owned(),
            };
            return Some(unknown.to_string());
        };
        if device.address != self.device.address {
            return Some(format!(
                "device {id} now has another address; open a new session"
            ));
        }
        let inputs = AccessInputs {
            locks: &[],
            ..policy.access
        };
        match policy::evaluate_access(&inputs, &self.principal, device, None, now) {
            Decision::Permit(_) => None,
            Decision::Deny(reason) => Some(reason.to_string()),
        }
    }

    /// Ends the session.
    pub fn close(self, reason: EndReason) -> Closed {
        Closed {
            principal: self.principal,
            device: self.device,
            reason,
        }
    }
}

/// A finished session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    principal: Principal,
    device: Device,
    reason: EndReason,
}

impl Closed {
    /// Who was connected.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The device they were connected to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Why it ended.
    pub fn reason(&self) -> &EndReason {
        &self.reason
    }
}

/// Everything a live session is re-checked against ([`Authorized::check`]): one consistent
/// snapshot of the gateway's policy.
#[derive(Debug, Clone, Copy)]
pub struct PolicyView<'a> {
    /// Rules, locks, approval policies and grants.
    pub access: AccessInputs<'a>,
    /// The configured devices.
    pub devices: &'a [Device],
    /// Names of disabled users.
    pub disabled: &'a BTreeSet<String>,
    /// The gateway is shutting down: every session ends.
    pub shutting_down: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Grant, PrincipalRef};
    use crate::device::{DeviceAddress, DeviceId, Protocol};
    use crate::policy::{DeviceSelector, LockTarget, Who};
    use std::collections::BTreeMap;
    use time::macros::datetime;
    use time::Duration;

    const NOW: OffsetDateTime = datetime!(2024-01-01 10:00 UTC);

    fn setup() -> (Vec<Rule>, Vec<Device>, Principal) {
        let device = Device {
            id: DeviceId::new("pump-12").unwrap(),
            address: "10.20.0.12:23".parse::<DeviceAddress>().unwrap(),
            protocol: Protocol::Telnet,
            labels: BTreeMap::new(),
            maintenance: None,
            break_glass: None,
            netns: None,
            tls: None,
        };
        let rule = Rule {
            name: "r".into(),
            who: Who {
                kind: Some(PrincipalKind::Vendor),
                ..Who::default()
            },
            devices: DeviceSelector::All,
            max_session: Some(std::time::Duration::from_secs(3600)),
            hours: None,
        };
        let principal = Principal {
            kind: PrincipalKind::Vendor,
            name: "jdoe".into(),
            org: Some("acme".into()),
            roles: vec![],
            serial: "0a".into(),
            not_after: NOW + Duration::days(30),
        };
        (vec![rule], vec![device], principal)
    }

    /// A view of `rules`, `locks`, `grants`, `devices` and `disabled`, not shutting down.
    fn view<'a>(
        rules: &'a [Rule],
        locks: &'a [Lock],
        grants: &'a [Grant],
        devices: &'a [Device],
        disabled: &'a BTreeSet<String>,
    ) -> PolicyView<'a> {
        PolicyView {
            access: AccessInputs {
                rules,
                locks,
                approvals: &[],
                grants,
            },
            devices,
            disabled,
            shutting_down: false,
        }
    }

    fn grant(principal: &Principal, revoked: bool) -> Grant {
        Grant {
            id: "grant-1".into(),
            request: "req-1".into(),
            principal: PrincipalRef::of(principal),
            device: "pump-12".into(),
            start: NOW - Duration::minutes(5),
            end: NOW + Duration::hours(2),
            approvers: vec!["bob".into()],
            revoked_at: revoked.then_some(NOW + Duration::minutes(1)),
            revoked: revoked.then(|| "security/bob: done".into()),
        }
    }

    fn lock(reason: &str) -> Lock {
        Lock {
            target: LockTarget::Device("pump-12".into()),
            until: None,
            reason: reason.into(),
            by: "security/bob".into(),
        }
    }

    #[test]
    fn authorize_then_expire_then_close() {
        let (rules, devices, principal) = setup();
        let none = BTreeSet::new();
        let session = Handshaken::new(principal)
            .authorize(&rules, &[], &devices, "pump-12", NOW)
            .unwrap();
        assert_eq!(session.device().id.as_str(), "pump-12");
        assert_eq!(session.ends_at(), NOW + Duration::hours(1));
        let policy = view(&rules, &[], &[], &devices, &none);
        assert_eq!(session.check(&policy, NOW + Duration::minutes(59)), None);
        assert_eq!(
            session.check(&policy, NOW + Duration::hours(1)),
            Some(EndReason::MaxDuration)
        );
        let closed = session.close(EndReason::MaxDuration);
        assert_eq!(
            closed.reason().to_string(),
            "maximum session duration reached"
        );
        assert_eq!(closed.reason().limit(), Some("maximum session duration"));
    }

    /// Every way [`Authorized::check`] ends a rule-permitted session, and what it keeps.
    #[test]
    fn check_ends_a_live_session_for_each_policy_change() {
        let (rules, devices, principal) = setup();
        let none = BTreeSet::new();
        let session = Handshaken::new(principal.clone())
            .authorize(&rules, &[], &devices, "pump-12", NOW)
            .unwrap();
        let later = NOW + Duration::minutes(1);
        let locks = [lock("firmware recall")];
        let other_lock = [Lock {
            target: LockTarget::Org("other".into()),
            ..lock("x")
        }];
        let expired_lock = [Lock {
            until: Some(NOW),
            ..lock("x")
        }];
        let jdoe: BTreeSet<String> = ["jdoe".to_string()].into();
        let moved = vec![Device {
            address: "10.20.0.99:23".parse().unwrap(),
            ..devices[0].clone()
        }];
        let locked = Some(EndReason::Locked {
            reason: "firmware recall".into(),
            by: "security/bob".into(),
        });
        let no_rule = "no rule lets vendor acme/jdoe reach pump-12";
        let changed = |why: &str| Some(EndReason::PolicyChanged(why.into()));
        let mut shutting = view(&rules, &[], &[], &devices, &none);
        shutting.shutting_down = true;
        // (name, policy, verdict)
        let cases: Vec<(&str, PolicyView<'_>, Option<EndReason>)> = vec![
            ("unchanged", view(&rules, &[], &[], &devices, &none), None),
            ("shutdown", shutting, Some(EndReason::Shutdown)),
            (
                "lock",
                view(&rules, &locks, &[], &devices, &none),
                locked.clone(),
            ),
            (
                "lock elsewhere",
                view(&rules, &other_lock, &[], &devices, &none),
                None,
            ),
            (
                "lock lifted",
                view(&rules, &expired_lock, &[], &devices, &none),
                None,
            ),
            (
                "user disabled",
                view(&rules, &[], &[], &devices, &jdoe),
                Some(EndReason::UserDisabled),
            ),
            (
                "rule removed",
                view(&[], &[], &[], &devices, &none),
                changed(no_rule),
            ),
            (
                "device removed",
                view(&rules, &[], &[], &[], &none),
                changed(no_rule),
            ),
            (
                "device re-addressed",
                view(&rules, &[], &[], &moved, &none),
                changed("device pump-12 now has another address; open a new session"),
            ),
            // A lock is reported as a lock, not as a policy change.
            (
                "lock and rule removed",
                view(&[], &locks, &[], &devices, &none),
                locked,
            ),
        ];
        for (name, policy, want) in cases {
            assert_eq!(session.check(&policy, later), want, "{name}");
        }
        // A gateway identity is not a user: a disabled user of the same name does not end it.
        let gateway = Principal {
            kind: PrincipalKind::Gateway,
            ..principal
        };
        let any = vec![Rule {
            who: Who {
                org: Some("acme".into()),
                ..Who::default()
            },
            ..rules[0].clone()
        }];
        let gw_session = Handshaken::new(gateway)
            .authorize(&any, &[], &devices, "pump-12", NOW)
            .unwrap();
        let policy = view(&any, &[], &[], &devices, &jdoe);
        assert_eq!(gw_session.check(&policy, later), None);
    }

    /// A grant-permitted session ends with its grant; a break-glass one survives a reload.
    #[test]
    fn check_ends_grant_sessions_and_spares_break_glass_on_reload() {
        let (_, mut devices, principal) = setup();
        let none = BTreeSet::new();
        let live = [grant(&principal, false)];
        let revoked = [grant(&principal, true)];
        let session = Handshaken::new(principal.clone())
            .authorize_access(
                &view(&[], &[], &live, &devices, &none).access,
                &devices,
                "pump-12",
                None,
                NOW,
            )
            .unwrap();
        assert_eq!(session.permit().grant(), Some("grant-1"));
        let later = NOW + Duration::minutes(2);
        let cases: Vec<(&str, PolicyView<'_>, Option<EndReason>)> = vec![
            ("grant live", view(&[], &[], &live, &devices, &none), None),
            (
                "grant revoked",
                view(&[], &[], &revoked, &devices, &none),
                Some(EndReason::GrantEnded),
            ),
            (
                "grant gone",
                view(&[], &[], &[], &devices, &none),
                Some(EndReason::GrantEnded),
            ),
        ];
        for (name, policy, want) in cases {
            assert_eq!(session.check(&policy, later), want, "{name}");
        }
        // The grant's end is the session's deadline.
        let policy = view(&[], &[], &live, &devices, &none);
        assert_eq!(
            session.check(&policy, NOW + Duration::hours(2)),
            Some(EndReason::WindowEnd)
        );

        let clinician = Principal {
            kind: PrincipalKind::Clinician,
            ..principal
        };
        devices[0].break_glass = Some(crate::access::BreakGlass::default());
        let bg = Handshaken::new(clinician)
            .authorize_access(
                &AccessInputs::default(),
                &devices,
                "pump-12",
                Some("code blue"),
                NOW,
            )
            .unwrap();
        assert!(bg.permit().break_glass());
        let no_rules = view(&[], &[], &[], &[], &none);
        assert_eq!(
            bg.check(&no_rules, later),
            None,
            "break-glass kept on reload"
        );
        let locks = [lock("recall")];
        assert_eq!(
            bg.check(&view(&[], &locks, &[], &[], &none), later),
            Some(EndReason::Locked {
                reason: "recall".into(),
                by: "security/bob".into()
            }),
            "a lock ends break-glass too"
        );
        assert_eq!(
            bg.check(&no_rules, NOW + Duration::minutes(30)),
            Some(EndReason::MaxDuration)
        );
    }

    #[test]
    fn unknown_device_is_denied_like_no_rule() {
        let (rules, devices, principal) = setup();
        let denied = Handshaken::new(principal)
            .authorize(&rules, &[], &devices, "pump-99", NOW)
            .unwrap_err();
        assert!(matches!(denied.reason, DenyReason::UnknownDevice { .. }));
        assert_eq!(
            denied.reason.to_string(),
            "no rule lets vendor acme/jdoe reach pump-99"
        );
    }

    /// What the client, the audit log and the recording are told for each end reason (the texts
    /// predate the enum: clients and tests match on them).
    #[test]
    fn end_reasons_display() {
        let cases = [
            (EndReason::Completed, "completed", "completed"),
            (EndReason::ClientGone, "client_gone", "client went away"),
            (
                EndReason::CertificateExpiry,
                "certificate_expiry",
                "certificate expiry reached",
            ),
            (
                EndReason::MaxDuration,
                "max_duration",
                "maximum session duration reached",
            ),
            (
                EndReason::WindowEnd,
                "window_end",
                "access window end reached",
            ),
            (EndReason::IdleTimeout(300), "idle_timeout", "idle for 300s"),
            (
                EndReason::Locked {
                    reason: "x".into(),
                    by: "security/bob".into(),
                },
                "locked",
                "locked: x (by security/bob)",
            ),
            (
                EndReason::Terminated {
                    by: "security sam".into(),
                    reason: "incident 7".into(),
                },
                "terminated",
                "terminated by security sam: incident 7",
            ),
            (
                EndReason::GrantEnded,
                "grant_ended",
                "access grant revoked or ended",
            ),
            (EndReason::UserDisabled, "user_disabled", "user disabled"),
            (
                EndReason::PolicyChanged("no rule".into()),
                "policy_changed",
                "policy changed on reload: no rule",
            ),
            (EndReason::Shutdown, "shutdown", "gateway shutting down"),
            (
                EndReason::DeviceFailed {
                    device: "pump-12".into(),
                    error: "reset".into(),
                },
                "device_failed",
                "device pump-12 closed or failed: reset",
            ),
            (
                EndReason::ClientUnexpectedControl,
                "client_unexpected_control",
                "client sent an unexpected control frame during the session",
            ),
            (
                EndReason::ClientError("bad".into()),
                "client_error",
                "client stream error: bad",
            ),
            (
                EndReason::RecordingFailed("disk".into()),
                "recording_failed",
                "recording failed, session ended (fail closed): disk",
            ),
            (
                EndReason::NotStarted("device off".into()),
                "not_started",
                "device off",
            ),
        ];
        for (reason, name, text) in cases {
            assert_eq!(reason.as_str(), name);
            assert_eq!(reason.to_string(), text);
            let told = !matches!(name, "completed" | "client_gone" | "not_started");
            assert_eq!(reason.is_cut(), told, "{name}");
        }
        assert_eq!(
            EndReason::CertificateExpiry.limit(),
            Some("certificate expiry")
        );
        assert_eq!(EndReason::WindowEnd.limit(), Some("access window end"));
        assert_eq!(EndReason::Shutdown.limit(), None);
    }

    #[test]
    fn a_stage_stop_is_one_end_reason_told_as_the_stage_said() {
        use crate::stage::{Direction as D, StageStop, StopKind};
        let stop = StageStop {
            stage: "http".into(),
            direction: D::Up,
            kind: StopKind::Unparseable("no request line".into()),
        };
        let end = EndReason::Stage(stop.clone());
        assert_eq!(end.to_string(), stop.to_string());
        assert_eq!(end.as_str(), "stage_stopped");
        assert!(end.is_cut(), "the client is told why");
    }
}
