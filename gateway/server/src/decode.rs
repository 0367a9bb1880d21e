//! The protocol decoder a session gets (issue 15; docs/protocols.md), and what the gateway does
//! with the refusals (audited: `crate::session`); the index's summary is
//! [`ward_decode::summary`].
//!
//! A device of protocol `dicom`, `hl7`, `http` or `telnet` gets its protocol's decoder stage
//! ([`ward_decode`]) first in its pipeline; `raw` devices are opaque. The operation list the
//! stage enforces is the permitting rule's `operations` for that protocol. A session on an access
//! grant gets the list of the first rule that covers the principal and the device and gives one
//! (the grant widens *when*, never *what*); break-glass sessions are decoded and recorded but
//! refused nothing (an emergency must not be stopped by an operation list).

use ward_core::config::Config;
use ward_core::operations::{OpPolicy, OpProtocol, Operations};
use ward_core::policy::Permit;
use ward_core::session::Authorized;
use ward_core::stage::Stage;
use ward_core::{Device, Principal};

/// The decoder stage for `session` under `config`; none for a `raw` device.
pub(crate) fn stages(config: &Config, session: &Authorized) -> Vec<Box<dyn Stage>> {
    let device = session.device();
    let Some(protocol) = OpProtocol::of_device(device.protocol) else {
        return Vec::new();
    };
    vec![ward_decode::stage(
        policy(config, session, protocol),
        device.id.as_str(),
    )]
}

/// The operation policy of `session` for `protocol`.
fn policy(config: &Config, session: &Authorized, protocol: OpProtocol) -> OpPolicy {
    policy_for(
        config,
        session.principal(),
        session.device(),
        session.permit(),
        protocol,
    )
}

/// The operation policy a session of `principal` on `device` under `permit` gets for `protocol`:
/// what a session enforces, and what `ward devices` shows before one is opened.
pub(crate) fn policy_for(
    config: &Config,
    principal: &Principal,
    device: &Device,
    permit: &Permit,
    protocol: OpProtocol,
) -> OpPolicy {
    if permit.break_glass() {
        return OpPolicy::observe(protocol);
    }
    let listed = |rule: &str| -> Option<(String, Operations)> {
        let ops = config.operations.get(rule)?;
        ops.for_protocol(protocol)?;
        Some((rule.to_string(), ops.clone()))
    };
    let found = if permit.grant().is_none() {
        listed(permit.rule())
    } else {
        config
            .rules
            .iter()
            .filter(|r| r.covers(principal, device))
            .find_map(|r| listed(&r.name))
    };
    match found {
        Some((rule, ops)) => OpPolicy {
            rule,
            protocol,
            list: ops.for_protocol(protocol).cloned(),
        },
        None => OpPolicy::observe(protocol),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use time::macros::datetime;
    use ward_core::policy::AccessInputs;
    use ward_core::session::Handshaken;
    use ward_core::{Principal, PrincipalKind};

    fn who(kind: PrincipalKind, org: Option<&str>, roles: &[&str]) -> Principal {
        Principal {
            kind,
            name: "someone".into(),
            org: org.map(Into::into),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            serial: "0a".into(),
            not_after: datetime!(2030-01-01 0:00 UTC),
        }
    }

    fn session(
        config: &Config,
        p: Principal,
        device: &str,
        break_glass: Option<&str>,
    ) -> Authorized {
        // A Saturday, 23:00 UTC: inside radiology's weekend window.
        let now = datetime!(2026-11-28 23:00 UTC);
        let inputs = AccessInputs {
            rules: &config.rules,
            ..AccessInputs::default()
        };
        Handshaken::new(p)
            .authorize_access(&inputs, &config.devices, device, break_glass, now)
            .unwrap()
    }

    #[test]
    fn the_permitting_rules_list_applies_and_break_glass_is_observed_only() {
        let config = Config::parse(ward_core::config::SAMPLE_CONFIG, "ward.toml").unwrap();
        // The radiology rule's DICOM list governs the globex vendor on pacs-1.
        let s = session(
            &config,
            who(PrincipalKind::Vendor, Some("globex"), &[]),
            "pacs-1",
            None,
        );
        let p = policy(&config, &s, OpProtocol::Dicom);
        assert_eq!(p.rule, "radiology-weekend-maintenance");
        assert_eq!(p.list.unwrap().allow, ["C-ECHO", "C-FIND"]);
        assert_eq!(stages(&config, &s).len(), 1);
        // The admins' rule gives no list: decoded and recorded, nothing refused.
        let s = session(
            &config,
            who(PrincipalKind::Admin, None, &[]),
            "pacs-1",
            None,
        );
        assert!(!policy(&config, &s, OpProtocol::Dicom).enforces());
        // Break-glass on the pump: decoded, never refused, whatever the rules say.
        let s = session(
            &config,
            who(PrincipalKind::Clinician, None, &["icu"]),
            "pump-12",
            Some("pump alarm, bed 4"),
        );
        assert!(s.permit().break_glass());
        assert!(!policy(&config, &s, OpProtocol::Telnet).enforces());
        assert_eq!(stages(&config, &s).len(), 1);
    }

    #[test]
    fn raw_devices_get_no_decoder() {
        let text = ward_core::config::SAMPLE_CONFIG.replace(
            "address = \"10.30.0.5:104\"\nprotocol = \"dicom\"",
            "address = \"10.30.0.5:104\"\nprotocol = \"raw\"",
        );
        let config = Config::parse(&text, "ward.toml").unwrap();
        let s = session(
            &config,
            who(PrincipalKind::Admin, None, &[]),
            "pacs-1",
            None,
        );
        assert!(stages(&config, &s).is_empty());
    }
}
