//! The telnet decoder stage (placeholder until its decoder lands: it ends every session that has an
//! operation list for telnet, and passes the others undecoded).

use time::OffsetDateTime;
use ward_core::operations::OpPolicy;
use ward_core::stage::{Direction, Stage, StageStop, StopKind, Verdict};

/// Decodes telnet operations and enforces the session's operation list.
#[derive(Debug)]
pub struct TelnetStage {
    policy: OpPolicy,
}

impl TelnetStage {
    /// The stage for a session under `policy` on `device`.
    pub fn new(policy: OpPolicy, device: &str) -> Self {
        let _ = device;
        Self { policy }
    }
}

impl Stage for TelnetStage {
    fn name(&self) -> &str {
        "telnet"
    }

    fn process(&mut self, dir: Direction, _: &[u8], _: OffsetDateTime, _: &mut Vec<u8>) -> Verdict {
        if self.policy.enforces() {
            return Verdict::End(StageStop::new(
                "telnet",
                dir,
                StopKind::Unavailable("the telnet decoder is not built yet".into()),
            ));
        }
        Verdict::Pass
    }
}
