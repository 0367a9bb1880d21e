//! Ward's protocol decoders and their operation-level policy (issue 15; docs/protocols.md).
//!
//! One [`Stage`] per protocol, pure like the rest of the core: bytes and `now` in, a
//! [`ward_core::stage::Verdict`] and notes out, no I/O, bounded memory whatever a peer sends, the
//! same operations whatever the chunking. Each stage
//!
//! - decodes every operation both ways and reports it as a hash-chained recording event
//!   ([`Operation::event`], kind `operation`; answers as `operation_result`);
//! - decides each request against the session's [`OpPolicy`]: a refused one never reaches the
//!   device; the stage answers the client the protocol's way ([`ward_core::stage::Note::Reply`]:
//!   an HTTP `403`, an HL7 `AR` ACK, a DIMSE failure status, a line on the console) and reports an
//!   `operation_denied` event (recorded and audited);
//! - on bytes it cannot decode: with a policy that refuses anything ([`OpPolicy::enforces`]) it
//!   ends the session (fail closed); without one it reports an `undecodable` event with the offset
//!   and passes the rest of the session through undecoded (still recorded in full).
//!
//! Fields that carry patient data (DICOM PatientName/PatientID, HL7 PID) are reported under keys
//! starting with [`PHI_PREFIX`]: views mask them unless a security/admin reviewer asks otherwise.

#![forbid(unsafe_code)]

pub mod dicom;
pub mod harness;
pub mod hl7;
pub mod http;
pub mod summary;
pub mod telnet;

use ward_core::operations::{OpPolicy, OpProtocol};
use ward_core::stage::{Direction, RecordedEvent, Stage};

/// Keys of fields that carry patient data start with this (`phi.patient_name`).
pub const PHI_PREFIX: &str = "phi.";

/// Recording event kinds the decoders report.
pub mod kind {
    /// A request decoded (and, if a policy applies, allowed).
    pub const OPERATION: &str = "operation";
    /// An answer decoded (a DIMSE response's status, an HL7 ACK code, an HTTP status).
    pub const RESULT: &str = "operation_result";
    /// A request the policy refused; it never reached the device.
    pub const DENIED: &str = "operation_denied";
    /// The stream is not the protocol the device is configured with, from `offset` on.
    pub const UNDECODABLE: &str = "undecodable";
}

/// One decoded operation or answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Its protocol.
    pub protocol: OpProtocol,
    /// Who sent it: [`Direction::Up`] for the client's requests.
    pub direction: Direction,
    /// What policy matches and `ward sessions --op` finds: `C-STORE`, `ORM^O01`,
    /// `GET /status`, `rate 5`. For an answer, the name of the request it answers (if known).
    pub name: String,
    /// Key fields, in order (`sop_class`, `status`, `control_id`, …). Never patient data.
    pub fields: Vec<(String, String)>,
    /// Patient data (`patient_name`, `patient_id`, `pid`): recorded, masked in views by
    /// default. Keys without the prefix; [`Operation::event`] adds it.
    pub phi: Vec<(String, String)>,
}

impl Operation {
    /// A request or answer `name` of `protocol`, sent in `direction`.
    pub fn new(protocol: OpProtocol, direction: Direction, name: impl Into<String>) -> Self {
        Self {
            protocol,
            direction,
            name: name.into(),
            fields: Vec::new(),
            phi: Vec::new(),
        }
    }

    /// With a key field.
    pub fn field(mut self, key: &str, value: impl Into<String>) -> Self {
        self.fields.push((key.to_string(), value.into()));
        self
    }

    /// With a patient-data field.
    pub fn phi(mut self, key: &str, value: impl Into<String>) -> Self {
        self.phi.push((key.to_string(), value.into()));
        self
    }

    /// The recording event for it, of kind `kind` ([`kind::OPERATION`] or [`kind::RESULT`]):
    /// fields `protocol`, `op`, the key fields, then the patient data under [`PHI_PREFIX`].
    pub fn event(&self, kind: &str) -> RecordedEvent {
        let mut fields = vec![
            ("protocol".to_string(), self.protocol.as_str().to_string()),
            ("op".to_string(), self.name.clone()),
        ];
        fields.extend(self.fields.iter().cloned());
        fields.extend(
            self.phi
                .iter()
                .map(|(k, v)| (format!("{PHI_PREFIX}{k}"), v.clone())),
        );
        RecordedEvent {
            kind: kind.to_string(),
            fields,
        }
    }
}

/// The `operation_denied` event for `op` refused by `policy` because `reason`.
pub fn denied_event(policy: &OpPolicy, op: &Operation, reason: &str) -> RecordedEvent {
    let mut ev = op.event(kind::DENIED);
    ev.fields.push(("rule".to_string(), policy.rule.clone()));
    ev.fields.push(("reason".to_string(), reason.to_string()));
    ev
}

/// The `undecodable` event: the bytes `dir` from `offset` (counted from the first byte that way)
/// are not `protocol`, because `why`.
pub fn undecodable_event(
    protocol: OpProtocol,
    dir: Direction,
    offset: u64,
    why: &str,
) -> RecordedEvent {
    RecordedEvent::new(
        kind::UNDECODABLE,
        &[
            ("protocol", protocol.as_str()),
            (
                "direction",
                if dir == Direction::Up { "up" } else { "down" },
            ),
            ("offset", &offset.to_string()),
            ("why", why),
        ],
    )
}

/// The decoder stage for a session under `policy`, on device `device`.
pub fn stage(policy: OpPolicy, device: &str) -> Box<dyn Stage> {
    match policy.protocol {
        OpProtocol::Dicom => Box::new(dicom::DicomStage::new(policy, device)),
        OpProtocol::Hl7 => Box::new(hl7::Hl7Stage::new(policy, device)),
        OpProtocol::Http => Box::new(http::HttpStage::new(policy, device)),
        OpProtocol::Telnet => Box::new(telnet::TelnetStage::new(policy, device)),
    }
}
