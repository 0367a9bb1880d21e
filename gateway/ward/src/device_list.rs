//! `ward devices`: what the listing says about each device, decided by the same policy as opening
//! it: reachable now (and by which rule), after an approved request, or only as break-glass.

use time::OffsetDateTime;
use ward_core::frame::{DeviceInfo, Reach};
use ward_core::policy::{self, AccessInputs, Decision};
use ward_core::{Device, Principal};

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
