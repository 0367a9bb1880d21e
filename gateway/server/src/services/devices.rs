//! The devices a principal may use (`ward devices`): what the listing says about each device,
//! decided by the same policy as opening it: reachable now (and by which rule), after an approved
//! request, or only as break-glass.

use time::OffsetDateTime;
use ward_core::config::Config;
use ward_core::frame::{DeviceInfo, Reach};
use ward_core::operations::OpProtocol;
use ward_core::policy::{self, AccessInputs, Decision};
use ward_core::{Device, Principal};

use super::{Caller, Context, Refusal};

/// The device listing.
#[derive(Clone)]
pub struct DeviceService {
    ctx: Context,
}

impl DeviceService {
    /// A listing over the gateway's current config and grants.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Exactly what opening each device would decide now (grants, approval policies,
    /// maintenance windows, rules; locks ignored, so a lock is not a listing).
    pub fn list(&self, caller: Caller<'_>) -> Result<Vec<DeviceInfo>, Refusal> {
        let now = self.ctx.clock.now();
        let grants = self.ctx.live.grants();
        let config = self.ctx.live.config();
        let inputs = policy::AccessInputs {
            rules: &config.rules,
            locks: &[],
            approvals: &config.approvals,
            grants: &grants,
        };
        Ok(config
            .devices
            .iter()
            .filter_map(|d| listed(&inputs, caller.principal, d, now))
            .map(|mut info| {
                held_to(&config, &inputs, caller.principal, &mut info, now);
                info
            })
            .collect())
    }
}

/// Fill in what a session opened now would be held to: the operation list of the rule (or, for a
/// grant, the covering rule) that permits it, as the session's decoder would enforce it
/// ([`crate::decode::policy_for`]), and whether the device is reached over TLS.
fn held_to(
    config: &Config,
    inputs: &AccessInputs<'_>,
    principal: &Principal,
    info: &mut DeviceInfo,
    now: OffsetDateTime,
) {
    let Some(device) = config.device(&info.id) else {
        return;
    };
    info.tls = device.tls.is_some();
    let Some(protocol) = OpProtocol::of_device(device.protocol) else {
        return;
    };
    if let Decision::Permit(p) = policy::evaluate_access(inputs, principal, device, None, now) {
        info.operations = crate::decode::policy_for(config, principal, device, &p, protocol).list;
    }
}

/// How `principal` may reach `device` at `now`, or `None` if it may not at all (the device is
/// then not listed, so the listing reveals nothing a principal could not use).
pub fn listed(
    inputs: &AccessInputs<'_>,
    principal: &Principal,
    device: &Device,
    now: OffsetDateTime,
) -> Option<DeviceInfo> {
    let info = |rule: String, reach: Reach| DeviceInfo {
        id: device.id.to_string(),
        protocol: device.protocol,
        labels: device.labels.clone(),
        rule,
        reach,
        operations: None,
        tls: false,
    };
    if let Decision::Permit(p) = policy::evaluate_access(inputs, principal, device, None, now) {
        return Some(info(p.rule().to_owned(), Reach::Open));
    }
    let request = ward_core::access::policy_for(inputs.approvals, principal, device).is_some();
    // The reason only has to be non-empty for the decision; nothing is opened or audited here.
    let glass = matches!(
        policy::evaluate_access(inputs, principal, device, Some("listing"), now),
        Decision::Permit(_)
    );
    let reach = match (request, glass) {
        (true, true) => Reach::RequestOrBreakGlass,
        (true, false) => Reach::Request,
        (false, true) => Reach::BreakGlass,
        (false, false) => return None,
    };
    Some(info(String::new(), reach))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Older clients read `deny_unknown_fields`: an entry reachable now is sent as before, and an
    /// entry from an older gateway (no `reach`) reads as reachable now.
    #[test]
    fn the_listing_stays_readable_both_ways() {
        let open = DeviceInfo {
            id: "pump-12".into(),
            protocol: ward_core::Protocol::Telnet,
            labels: Default::default(),
            rule: "r".into(),
            reach: Reach::Open,
            operations: None,
            tls: false,
        };
        let json = serde_json::to_value(&open).unwrap();
        assert!(json.get("reach").is_none(), "{json}");
        let old: DeviceInfo = serde_json::from_value(json).unwrap();
        assert_eq!(old.reach, Reach::Open);
        let request = DeviceInfo {
            reach: Reach::RequestOrBreakGlass,
            ..open
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["reach"], "request_or_break_glass");
        let back: DeviceInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back, request);
    }
}
