//! Session states as types: [`Handshaken`] → [`Authorized`] → [`Closed`].
//!
//! Each transition consumes the previous state. [`Authorized`] can only be built from a
//! [`Permit`] that came out of [`policy::evaluate`] (its fields are
//! private and it has no public constructor), so the I/O layer cannot start proxying to a device
//! without a policy decision, and the device's address is read from the `Authorized` value.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::device::{Device, DeviceAddress};
use crate::policy::{self, AccessInputs, Decision, DenyReason, Lock, Permit, Rule};
use crate::principal::Principal;

/// Why a session ended (or, in a [`Permit`], why it will end if nothing cuts it short).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The client closed its stream.
    ClientClosed,
    /// The device closed its connection.
    DeviceClosed,
    /// The client's certificate expired.
    CertificateExpiry,
    /// The rule's `max_session` elapsed.
    MaxDuration,
    /// The rule's `hours` window closed.
    WindowEnd,
    /// No bytes either way for `idle_timeout`.
    IdleTimeout,
    /// A lock was placed on the principal, device or org; carries the lock's reason.
    Locked(String),
    /// The gateway is shutting down.
    Shutdown,
    /// Dialling or talking to the device failed; carries the error text.
    DeviceError(String),
    /// The session recording could not be written, so the session was cut (fail closed).
    RecordingFailed,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::ClientClosed => f.write_str("client closed"),
            EndReason::DeviceClosed => f.write_str("device closed"),
            EndReason::CertificateExpiry => f.write_str("certificate expiry"),
            EndReason::MaxDuration => f.write_str("maximum session duration"),
            EndReason::WindowEnd => f.write_str("access window end"),
            EndReason::IdleTimeout => f.write_str("idle timeout"),
            EndReason::Locked(reason) => write!(f, "locked: {reason}"),
            EndReason::Shutdown => f.write_str("gateway shutdown"),
            EndReason::DeviceError(e) => write!(f, "device error: {e}"),
            EndReason::RecordingFailed => f.write_str("recording failed"),
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

    /// Whether the gateway must end the session at `now`: the permit's deadline has passed, or a
    /// lock now applies. The I/O layer calls this on its timer and whenever locks change.
    pub fn check(&self, locks: &[Lock], now: OffsetDateTime) -> Option<EndReason> {
        if now >= self.permit.ends_at() {
            return Some(self.permit.end_reason().clone());
        }
        locks
            .iter()
            .find(|lock| policy::lock_applies(lock, &self.principal, self.device.id.as_str(), now))
            .map(|lock| EndReason::Locked(lock.reason.clone()))
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

/// What a config reload means for a session that is already proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// The new policy still permits the session.
    Keep,
    /// A break-glass session: an emergency override, kept as it is whatever the new policy says
    /// (it is capped, recorded and flagged already; a reload is not a security decision about it).
    KeepBreakGlass,
    /// The new policy would refuse it now: the reason to cut it with (sent in `Closed`).
    Cut(String),
}

/// Re-checks a live session of `principal` on `device_id` (connected to `dialed`, break-glass or
/// not) against a reloaded policy (`inputs` and `devices` from the new config) at `now`, as if it
/// were opened now. Locks are left out: the lock path cuts sessions on its own, and a reload must
/// not dress a lock up as a policy change. A device whose address changed is cut too: the session
/// is connected to what is no longer that device.
pub fn recheck(
    inputs: &AccessInputs<'_>,
    devices: &[Device],
    principal: &Principal,
    device_id: &str,
    dialed: &DeviceAddress,
    break_glass: bool,
    now: OffsetDateTime,
) -> Recheck {
    if break_glass {
        return Recheck::KeepBreakGlass;
    }
    let cut = |why: String| Recheck::Cut(format!("policy changed on reload: {why}"));
    let Some(device) = devices.iter().find(|d| d.id.as_str() == device_id) else {
        return cut(DenyReason::UnknownDevice {
            principal: principal.to_string(),
            device: device_id.to_owned(),
        }
        .to_string());
    };
    if device.address != *dialed {
        return cut(format!(
            "device {device_id} now has another address; open a new session"
        ));
    }
    let inputs = AccessInputs {
        locks: &[],
        ..*inputs
    };
    match policy::evaluate_access(&inputs, principal, device, None, now) {
        Decision::Permit(_) => Recheck::Keep,
        Decision::Deny(reason) => cut(reason.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceAddress, DeviceId, Protocol};
    use crate::policy::{DeviceSelector, LockTarget, Who};
    use crate::principal::PrincipalKind;
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

    #[test]
    fn authorize_then_expire_then_close() {
        let (rules, devices, principal) = setup();
        let session = Handshaken::new(principal)
            .authorize(&rules, &[], &devices, "pump-12", NOW)
            .unwrap();
        assert_eq!(session.device().id.as_str(), "pump-12");
        assert_eq!(session.ends_at(), NOW + Duration::hours(1));
        assert_eq!(session.check(&[], NOW + Duration::minutes(59)), None);
        assert_eq!(
            session.check(&[], NOW + Duration::hours(1)),
            Some(EndReason::MaxDuration)
        );
        let closed = session.close(EndReason::MaxDuration);
        assert_eq!(closed.reason().to_string(), "maximum session duration");
    }

    #[test]
    fn a_new_lock_ends_an_authorized_session() {
        let (rules, devices, principal) = setup();
        let session = Handshaken::new(principal)
            .authorize(&rules, &[], &devices, "pump-12", NOW)
            .unwrap();
        let lock = Lock {
            target: LockTarget::Device("pump-12".into()),
            until: None,
            reason: "firmware recall".into(),
            by: "security/bob".into(),
        };
        assert_eq!(
            session.check(&[lock], NOW + Duration::minutes(1)),
            Some(EndReason::Locked("firmware recall".into()))
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

    #[test]
    fn end_reasons_display() {
        assert_eq!(
            EndReason::CertificateExpiry.to_string(),
            "certificate expiry"
        );
        assert_eq!(EndReason::Locked("x".into()).to_string(), "locked: x");
        assert_eq!(
            EndReason::DeviceError("refused".into()).to_string(),
            "device error: refused"
        );
    }

    #[test]
    fn reload_recheck_keeps_cuts_and_spares_break_glass() {
        let (rules, devices, principal) = setup();
        let addr = devices[0].address.clone();
        let with_rule = AccessInputs {
            rules: &rules,
            ..AccessInputs::default()
        };
        let no_rules = AccessInputs::default();
        let moved = vec![Device {
            address: "10.20.0.99:23".parse().unwrap(),
            ..devices[0].clone()
        }];
        // (name, new policy, new devices, session's device, break-glass, verdict)
        type Case<'a> = (
            &'a str,
            AccessInputs<'a>,
            &'a [Device],
            &'a str,
            bool,
            Recheck,
        );
        let cases: Vec<Case<'_>> = vec![
            ("still permitted", with_rule, &devices, "pump-12", false, Recheck::Keep),
            (
                "rule removed",
                no_rules,
                &devices,
                "pump-12",
                false,
                Recheck::Cut(
                    "policy changed on reload: no rule lets vendor acme/jdoe reach pump-12".into(),
                ),
            ),
            (
                "device removed",
                with_rule,
                &[],
                "pump-12",
                false,
                Recheck::Cut(
                    "policy changed on reload: no rule lets vendor acme/jdoe reach pump-12".into(),
                ),
            ),
            (
                "device re-addressed",
                with_rule,
                &moved,
                "pump-12",
                false,
                Recheck::Cut(
                    "policy changed on reload: device pump-12 now has another address; open a new session".into(),
                ),
            ),
            ("break-glass kept", no_rules, &[], "pump-12", true, Recheck::KeepBreakGlass),
        ];
        for (name, inputs, devices, id, bg, want) in cases {
            let got = recheck(&inputs, devices, &principal, id, &addr, bg, NOW);
            assert_eq!(got, want, "{name}");
        }
        // A lock is not reported as a policy change (the lock path cuts on its own).
        let lock = Lock {
            target: LockTarget::Device("pump-12".into()),
            until: None,
            reason: "recall".into(),
            by: "security/bob".into(),
        };
        let locked = AccessInputs {
            rules: &rules,
            locks: std::slice::from_ref(&lock),
            ..AccessInputs::default()
        };
        assert_eq!(
            recheck(&locked, &devices, &principal, "pump-12", &addr, false, NOW),
            Recheck::Keep
        );
    }
}
