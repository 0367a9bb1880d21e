//! The devices a principal may use (`ward devices`): what the listing says about each device,
//! decided by the same policy as opening it: reachable now (and by which rule), after an approved
//! request, or only as break-glass.

use time::OffsetDateTime;
use ward_core::config::Config;
use ward_core::frame::{DeviceInfo, Reach};
use ward_core::operations::OpProtocol;
use ward_core::policy::{self, AccessInputs, Decision};
use ward_core::{Device, Principal};

use super::{Caller, Context, Refusal, Role};

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

/// How the caller may reach a device, for "My devices" (the web console's `GET
/// /api/v1/my/devices`): the listing's [`Reach`], with the rule, the end and the reason in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Now, through a rule or a live grant.
    Open,
    /// After an approved access request.
    Request,
    /// Only as a break-glass session.
    BreakGlass,
    /// A rule names the caller for it, but not now (outside its hours, a maintenance window, a
    /// grant not yet started): `why` says when.
    None,
}

/// One device in the caller's own listing ([`DeviceService::mine`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyDevice {
    /// What `ward devices` lists for it.
    pub info: DeviceInfo,
    /// How the caller may reach it.
    pub access: Access,
    /// Why, in a sentence (the rule that permits, the approval policy, the denial reason).
    pub why: String,
    /// The rule (or grant, or break-glass) that permits it now.
    pub rule: Option<String>,
    /// When a session opened now would end at the latest (Unix seconds).
    pub until: Option<i64>,
    /// For break-glass: what the justification must say.
    pub break_glass_requires: Option<String>,
}

impl DeviceService {
    /// The caller's own listing: every device [`DeviceService::list`] shows (the same
    /// decisions), with the rule, the end and the reason in words, plus the devices a rule names
    /// the caller for but that are closed now (outside hours, maintenance) with the denial reason.
    pub fn mine(&self, caller: Caller<'_>) -> Result<Vec<MyDevice>, Refusal> {
        let now = self.ctx.clock.now();
        let grants = self.ctx.live.grants();
        let config = self.ctx.live.config();
        let inputs = policy::AccessInputs {
            rules: &config.rules,
            locks: &[],
            approvals: &config.approvals,
            grants: &grants,
        };
        let principal = caller.principal;
        Ok(config
            .devices
            .iter()
            .filter_map(|d| mine_one(&config, &inputs, principal, d, now))
            .collect())
    }
}

/// What the justification of a break-glass session must say.
pub const BREAK_GLASS_REQUIRES: &str =
    "why this is an emergency (patient safety): the reason goes to the audit log and the security team reviews every break-glass session";

/// One device of [`DeviceService::mine`], or `None` when nothing lets `principal` near it.
fn mine_one(
    config: &Config,
    inputs: &AccessInputs<'_>,
    principal: &Principal,
    device: &Device,
    now: OffsetDateTime,
) -> Option<MyDevice> {
    let at = |t: OffsetDateTime| {
        let t = t.replace_nanosecond(0).unwrap_or(t);
        t.to_offset(time::UtcOffset::UTC)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.unix_timestamp().to_string())
    };
    let glass_cap = device
        .break_glass
        .as_ref()
        .map(|bg| humantime_secs(bg.max.as_secs()));
    let glass_requires = || {
        Some(match &glass_cap {
            Some(cap) => format!("{BREAK_GLASS_REQUIRES} (at most {cap})"),
            None => BREAK_GLASS_REQUIRES.to_owned(),
        })
    };
    let Some(mut info) = listed(inputs, principal, device, now) else {
        // Named by a rule, but not now: say why (the listing itself leaves such devices out).
        let named = config
            .rules
            .iter()
            .any(|r| r.who.matches(principal) && r.devices.matches(device));
        if !named {
            return None;
        }
        let why = match policy::evaluate_access(inputs, principal, device, None, now) {
            Decision::Deny(reason) => reason.to_string(),
            Decision::Permit(_) => return None,
        };
        let info = DeviceInfo {
            id: device.id.to_string(),
            protocol: device.protocol,
            labels: device.labels.clone(),
            rule: String::new(),
            reach: Reach::Open,
            operations: None,
            tls: device.tls.is_some(),
        };
        return Some(MyDevice {
            info,
            access: Access::None,
            why,
            rule: None,
            until: None,
            break_glass_requires: None,
        });
    };
    held_to(config, inputs, principal, &mut info, now);
    let policy_name = || {
        ward_core::access::policy_for(inputs.approvals, principal, device)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    };
    let mine = match info.reach {
        Reach::Open => {
            let Decision::Permit(p) = policy::evaluate_access(inputs, principal, device, None, now)
            else {
                return None;
            };
            let why = match p.grant() {
                Some(g) => format!(
                    "open now: grant {g} until {} (then: {})",
                    at(p.ends_at()),
                    p.end_reason()
                ),
                None => format!(
                    "open now: rule {} permits you until {} (then: {})",
                    p.rule(),
                    at(p.ends_at()),
                    p.end_reason()
                ),
            };
            MyDevice {
                access: Access::Open,
                why,
                rule: Some(p.rule().to_owned()),
                until: Some(p.ends_at().unix_timestamp()),
                break_glass_requires: None,
                info,
            }
        }
        Reach::Request | Reach::RequestOrBreakGlass => {
            let glass = info.reach == Reach::RequestOrBreakGlass;
            let mut why = format!(
                "request access: approval policy {} (an approver must agree before you can open it)",
                policy_name()
            );
            if glass {
                why.push_str("; in an emergency, break-glass");
            }
            MyDevice {
                access: Access::Request,
                why,
                rule: None,
                until: None,
                break_glass_requires: if glass { glass_requires() } else { None },
                info,
            }
        }
        Reach::BreakGlass => MyDevice {
            access: Access::BreakGlass,
            why: format!(
                "emergency access only (break-glass): recorded, flagged for review{}",
                glass_cap
                    .as_ref()
                    .map(|c| format!(", at most {c}"))
                    .unwrap_or_default()
            ),
            rule: None,
            until: None,
            break_glass_requires: glass_requires(),
            info,
        },
    };
    Some(mine)
}

/// `90m`, `2h`, `45s`: a cap for people.
fn humantime_secs(secs: u64) -> String {
    if secs >= 3600 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs >= 60 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// Who a [`Who`](ward_core::policy::Who) selector names, for people and scripts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WhoView {
    /// The certificate kind, if the selector names one.
    pub kind: Option<String>,
    /// The exact name, if any.
    pub name: Option<String>,
    /// The organisation, if any.
    pub org: Option<String>,
    /// Roles the principal must all hold.
    pub roles: Vec<String>,
}

impl From<&ward_core::policy::Who> for WhoView {
    fn from(w: &ward_core::policy::Who) -> Self {
        WhoView {
            kind: w.kind.map(|k| k.as_str().to_owned()),
            name: w.name.clone(),
            org: w.org.clone(),
            roles: w.roles.clone(),
        }
    }
}

/// One way principals reach a device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reacher {
    /// `rule` (now, within its hours), `request` (after an approved request under an approval
    /// policy), `grant` (a live or upcoming grant) or `break_glass` (emergency sessions).
    pub via: &'static str,
    /// The rule's, approval policy's or grant's name (`break-glass` for break-glass).
    pub name: String,
    /// Who.
    pub who: WhoView,
    /// For `request`: the approver groups (one approval from each).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<WhoView>,
    /// For `grant`: when its window ends (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// A configured device with who may reach it (security staff's inventory).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceEntry {
    /// The device id.
    pub id: String,
    /// Its protocol.
    pub protocol: ward_core::Protocol,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where the gateway dials it.
    pub address: String,
    /// Reached over TLS with a pinned certificate.
    pub tls: bool,
    /// Who may reach it, and how.
    pub reach: Vec<Reacher>,
}

impl DeviceService {
    /// Every configured device with who may reach it: the rules, approval policies, grants and
    /// break-glass settings that select it (security and admin; the same config and grants
    /// [`DeviceService::list`] decides on).
    pub fn inventory(&self, caller: Caller<'_>) -> Result<Vec<DeviceEntry>, Refusal> {
        Role::Security.require(caller.principal, "list every device and who may reach it")?;
        let now = self.ctx.clock.now();
        let config = self.ctx.live.config();
        let grants = self.ctx.live.grants();
        Ok(config
            .devices
            .iter()
            .map(|d| {
                let mut reach: Vec<Reacher> = Vec::new();
                let plain = |via, name: &str, who| Reacher {
                    via,
                    name: name.to_owned(),
                    who,
                    approvers: Vec::new(),
                    until: None,
                };
                for r in config.rules.iter().filter(|r| r.devices.matches(d)) {
                    reach.push(plain("rule", &r.name, WhoView::from(&r.who)));
                }
                for a in config.approvals.iter().filter(|a| a.devices.matches(d)) {
                    reach.push(Reacher {
                        approvers: a.approvers.iter().map(WhoView::from).collect(),
                        ..plain("request", &a.name, WhoView::from(&a.who))
                    });
                }
                let live = grants.iter().filter(|g| g.device == d.id.as_str());
                for g in live.filter(|g| g.revoked_at.is_none() && g.end > now) {
                    let who = WhoView {
                        kind: Some(g.principal.kind.as_str().to_owned()),
                        name: Some(g.principal.name.clone()),
                        org: g.principal.org.clone(),
                        roles: Vec::new(),
                    };
                    reach.push(Reacher {
                        until: g
                            .end
                            .format(&time::format_description::well_known::Rfc3339)
                            .ok(),
                        ..plain("grant", &g.id, who)
                    });
                }
                if let Some(bg) = &d.break_glass {
                    reach.push(plain("break_glass", "break-glass", WhoView::from(&bg.who)));
                }
                DeviceEntry {
                    id: d.id.to_string(),
                    protocol: d.protocol,
                    labels: d.labels.clone(),
                    address: d.address.to_string(),
                    tls: d.tls.is_some(),
                    reach,
                }
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
