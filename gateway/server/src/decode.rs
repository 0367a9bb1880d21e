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
use ward_core::session::Authorized;
use ward_core::stage::Stage;

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
    let permit = session.permit();
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
            .filter(|r| r.covers(session.principal(), session.device()))
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
