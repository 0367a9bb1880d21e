//! The dicom decoder stage (placeholder until its decoder lands: it ends every session that has an
//! operation list for dicom, and passes the others undecoded).

use time::OffsetDateTime;
use ward_core::operations::OpPolicy;
use ward_core::stage::{Direction, Stage, StageStop, StopKind, Verdict};

/// Decodes dicom operations and enforces the session's operation list.
#[derive(Debug)]
pub struct DicomStage {
    policy: OpPolicy,
}

impl DicomStage {
    /// The stage for a session under `policy` on `device`.
    pub fn new(policy: OpPolicy, device: &str) -> Self {
        let _ = device;
        Self { policy }
    }
}

impl Stage for DicomStage {
    fn name(&self) -> &str {
        "dicom"
    }

    fn process(&mut self, dir: Direction, _: &[u8], _: OffsetDateTime, _: &mut Vec<u8>) -> Verdict {
        if self.policy.enforces() {
            return Verdict::End(StageStop::new(
                "dicom",
                dir,
                StopKind::Unavailable("the dicom decoder is not built yet".into()),
            ));
        }
        Verdict::Pass
    }
}
