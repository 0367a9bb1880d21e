//! The http decoder stage (placeholder until its decoder lands: it ends every session that has an
//! operation list for http, and passes the others undecoded).

use time::OffsetDateTime;
use ward_core::operations::OpPolicy;
use ward_core::stage::{Direction, Stage, StageStop, StopKind, Verdict};

/// Decodes http operations and enforces the session's operation list.
#[derive(Debug)]
pub struct HttpStage {
    policy: OpPolicy,
}

impl HttpStage {
    /// The stage for a session under `policy` on `device`.
    pub fn new(policy: OpPolicy, device: &str) -> Self {
        let _ = device;
        Self { policy }
    }
}

impl Stage for HttpStage {
    fn name(&self) -> &str {
        "http"
    }

    fn process(&mut self, dir: Direction, _: &[u8], _: OffsetDateTime, _: &mut Vec<u8>) -> Verdict {
        if self.policy.enforces() {
            return Verdict::End(StageStop::new(
                "http",
                dir,
                StopKind::Unavailable("the http decoder is not built yet".into()),
            ));
        }
        Verdict::Pass
    }
}
