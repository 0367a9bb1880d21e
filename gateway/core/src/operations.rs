//! Operation-level policy (docs/protocols.md): which operations of a protocol a rule lets through.
//!
//! A rule may carry, per protocol, an [`OpList`] of `allow` and `deny` patterns:
//!
//! ```toml
//! operations.dicom  = { allow = ["C-ECHO", "C-FIND"] }
//! operations.http   = { allow = ["GET /status*", "GET /logs/*"] }
//! operations.hl7    = { allow = ["ADT^A*"], deny = ["ORM^*"] }
//! operations.telnet = { deny = ["factory-reset*", "passwd*"] }
//! ```
//!
//! An operation is named as its protocol names it (see [`crate::operations::OpProtocol`]): a DIMSE
//! command (`C-STORE`), an HL7 message type (`ORM^O01`), an HTTP method and path (`POST /config`),
//! a typed telnet command line (`rate 5`). A `deny` pattern that matches refuses the operation; a
//! list with `allow` patterns refuses every operation none of them matches (deny by default); a
//! list with only `deny` patterns lets the rest through. A protocol without a list is not governed
//! at the operation level (the session-level decision is the whole decision), but is still decoded
//! and recorded operation by operation.
//!
//! Patterns are globs: `*` matches any run of characters (also none), everything else matches
//! itself. Telnet commands match without regard to case and with runs of blanks folded to one (a
//! console that accepts `FACTORY-RESET` or `factory-reset  now` must not slip past a deny).
//!
//! Pure: strings in, a decision out.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::device::Protocol;

/// The protocols Ward decodes operation by operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpProtocol {
    /// DICOM upper layer: DIMSE commands (`C-ECHO`, `C-STORE`, `N-GET`, …), and the association
    /// (`A-ASSOCIATE`).
    Dicom,
    /// HL7 v2 over MLLP: the message type `MSH-9` (`ADT^A01`, `ORM^O01`).
    Hl7,
    /// HTTP/1.1: method and path (`GET /status`).
    Http,
    /// Telnet: a typed command line (`rate 5`).
    Telnet,
}

impl OpProtocol {
    /// Every protocol, in declaration order.
    pub const ALL: [OpProtocol; 4] = [
        OpProtocol::Dicom,
        OpProtocol::Hl7,
        OpProtocol::Http,
        OpProtocol::Telnet,
    ];

    /// Its name in the config and in `--op` (`dicom`, `hl7`, `http`, `telnet`).
    pub fn as_str(self) -> &'static str {
        match self {
            OpProtocol::Dicom => "dicom",
            OpProtocol::Hl7 => "hl7",
            OpProtocol::Http => "http",
            OpProtocol::Telnet => "telnet",
        }
    }

    /// The decoder a device of `protocol` gets; `None` for `raw` (an opaque byte stream).
    pub fn of_device(protocol: Protocol) -> Option<OpProtocol> {
        match protocol {
            Protocol::Dicom => Some(OpProtocol::Dicom),
            Protocol::Hl7 => Some(OpProtocol::Hl7),
            Protocol::Http => Some(OpProtocol::Http),
            Protocol::Telnet => Some(OpProtocol::Telnet),
            Protocol::Raw => None,
        }
    }

    /// The protocol named `s` (as [`OpProtocol::as_str`] writes it).
    pub fn parse(s: &str) -> Option<OpProtocol> {
        OpProtocol::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether names of this protocol's operations compare without regard to case and blanks.
    fn folds(self) -> bool {
        matches!(self, OpProtocol::Telnet)
    }
}

impl fmt::Display for OpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule's operation list for one protocol.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OpList {
    /// Patterns of operations let through; empty: every operation not denied.
    pub allow: Vec<String>,
    /// Patterns of operations refused, whatever `allow` says.
    pub deny: Vec<String>,
}

/// What an [`OpList`] says of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpDecision {
    /// Let it through.
    Allow,
    /// Refuse it, for this reason (for the peer, the audit event and the recording).
    Deny(String),
}

impl OpList {
    /// Whether `operation` of `protocol` passes this list of `rule`.
    pub fn decide(&self, rule: &str, protocol: OpProtocol, operation: &str) -> OpDecision {
        let name = normalise(protocol, operation);
        if let Some(p) = self
            .deny
            .iter()
            .find(|p| glob(&normalise(protocol, p), &name))
        {
            return OpDecision::Deny(format!(
                "rule {rule} denies {protocol} operations matching \"{p}\""
            ));
        }
        if self.allow.is_empty()
            || self
                .allow
                .iter()
                .any(|p| glob(&normalise(protocol, p), &name))
        {
            return OpDecision::Allow;
        }
        OpDecision::Deny(format!(
            "rule {rule} allows only these {protocol} operations: {}",
            self.allow.join(", ")
        ))
    }
}

/// The operation lists of one rule (or of the rules behind a grant).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Operations {
    /// `operations.dicom`.
    pub dicom: Option<OpList>,
    /// `operations.hl7`.
    pub hl7: Option<OpList>,
    /// `operations.http`.
    pub http: Option<OpList>,
    /// `operations.telnet`.
    pub telnet: Option<OpList>,
}

impl Operations {
    /// The list for `protocol`, if the rule gives one.
    pub fn for_protocol(&self, protocol: OpProtocol) -> Option<&OpList> {
        match protocol {
            OpProtocol::Dicom => self.dicom.as_ref(),
            OpProtocol::Hl7 => self.hl7.as_ref(),
            OpProtocol::Http => self.http.as_ref(),
            OpProtocol::Telnet => self.telnet.as_ref(),
        }
    }

    /// True when no protocol has a list.
    pub fn is_empty(&self) -> bool {
        OpProtocol::ALL
            .into_iter()
            .all(|p| self.for_protocol(p).is_none())
    }
}

/// The policy one session's decoder enforces: the list (if any) and the rule it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpPolicy {
    /// The rule whose list applies (named in refusals).
    pub rule: String,
    /// The protocol decoded.
    pub protocol: OpProtocol,
    /// `None`: operations are decoded and recorded, none refused.
    pub list: Option<OpList>,
}

impl OpPolicy {
    /// Decode only: nothing is refused.
    pub fn observe(protocol: OpProtocol) -> Self {
        Self {
            rule: String::new(),
            protocol,
            list: None,
        }
    }

    /// True when some operation may be refused: then a stream that cannot be decoded ends the
    /// session (fail closed) instead of passing undecoded.
    pub fn enforces(&self) -> bool {
        self.list.is_some()
    }

    /// Whether `operation` passes.
    pub fn decide(&self, operation: &str) -> OpDecision {
        match &self.list {
            None => OpDecision::Allow,
            Some(list) => list.decide(&self.rule, self.protocol, operation),
        }
    }
}

/// An operation's name as patterns see it: telnet folded to lower case with blanks collapsed.
fn normalise(protocol: OpProtocol, s: &str) -> String {
    if !protocol.folds() {
        return s.to_string();
    }
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative wildcard matching with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn list(allow: &[&str], deny: &[&str]) -> OpList {
        OpList {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("C-ECHO", "C-ECHO"));
        assert!(!glob("C-ECHO", "C-ECHO2"));
        assert!(glob("GET /status*", "GET /status"));
        assert!(glob("GET /status*", "GET /status/pump?x=1"));
        assert!(!glob("GET /status*", "POST /status"));
        assert!(glob("ADT^A*", "ADT^A01"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("**", "anything"));
        assert!(!glob("", "x"));
    }

    #[test]
    fn allow_lists_deny_by_default_and_deny_wins() {
        let l = list(&["ADT^A*"], &["ADT^A08"]);
        assert_eq!(l.decide("r", OpProtocol::Hl7, "ADT^A01"), OpDecision::Allow);
        assert!(matches!(
            l.decide("r", OpProtocol::Hl7, "ADT^A08"),
            OpDecision::Deny(why) if why.contains("rule r denies") && why.contains("ADT^A08")
        ));
        assert!(matches!(
            l.decide("r", OpProtocol::Hl7, "ORM^O01"),
            OpDecision::Deny(why) if why.contains("allows only") && why.contains("ADT^A*")
        ));
    }

    #[test]
    fn deny_only_lists_let_the_rest_through() {
        let l = list(&[], &["factory-reset*", "passwd*"]);
        assert_eq!(
            l.decide("r", OpProtocol::Telnet, "rate 5"),
            OpDecision::Allow
        );
        for typed in [
            "factory-reset",
            "FACTORY-RESET now",
            "passwd  admin",
            "  Passwd",
        ] {
            assert!(
                matches!(
                    l.decide("r", OpProtocol::Telnet, typed),
                    OpDecision::Deny(_)
                ),
                "{typed}"
            );
        }
        // Other protocols keep case: an HTTP path is case-sensitive.
        let h = list(&[], &["POST /config*"]);
        assert_eq!(
            h.decide("r", OpProtocol::Http, "post /config"),
            OpDecision::Allow
        );
    }

    #[test]
    fn observe_only_allows_everything() {
        let p = OpPolicy::observe(OpProtocol::Dicom);
        assert!(!p.enforces());
        assert_eq!(p.decide("C-STORE"), OpDecision::Allow);
    }
}
