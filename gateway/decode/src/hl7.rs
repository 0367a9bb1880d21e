//! The hl7 decoder stage (placeholder until its decoder lands: it ends every session that has an
//! operation list for hl7, and passes the others undecoded).

use time::OffsetDateTime;
use ward_core::operations::OpPolicy;
use ward_core::stage::{Direction, Stage, StageStop, StopKind, Verdict};

/// Decodes hl7 operations and enforces the session's operation list.
#[derive(Debug)]
pub struct Hl7Stage {
    policy: OpPolicy,
}

impl Hl7Stage {
    /// The stage for a session under `policy` on `device`.
    pub fn new(policy: OpPolicy, device: &str) -> Self {
        let _ = device;
        Self { policy }
    }
}

impl Stage for Hl7Stage {
    fn name(&self) -> &str {
        "hl7"
    }

    fn process(&mut self, dir: Direction, _: &[u8], _: OffsetDateTime, _: &mut Vec<u8>) -> Verdict {
        if self.policy.enforces() {
            return Verdict::End(StageStop::new(
                "hl7",
                dir,
                StopKind::Unavailable("the hl7 decoder is not built yet".into()),
            ));
        }
        Verdict::Pass
    }
}
