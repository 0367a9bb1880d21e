//! The devices a principal may open.

use ward_core::frame::DeviceInfo;
use ward_core::policy;

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
            .filter_map(|d| {
                match policy::evaluate_access(&inputs, caller.principal, d, None, now) {
                    policy::Decision::Permit(p) => Some(DeviceInfo {
                        id: d.id.to_string(),
                        protocol: d.protocol,
                        labels: d.labels.clone(),
                        rule: p.rule().to_owned(),
                    }),
                    policy::Decision::Deny(_) => None,
                }
            })
            .collect())
    }
}
