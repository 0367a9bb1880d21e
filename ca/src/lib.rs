//! Ward's certificate authority.
//!
//! Ward identifies every person and every gateway by a short-lived X.509 certificate whose one URI
//! SAN is a SPIFFE ID, `spiffe://<trust-domain>/<kind>/<name>`. This crate creates the CA
//! ([`Ca::init`]), issues identities ([`Ca::issue`]), and checks presented certificates
//! ([`Validator::validate`]), returning the [`Identity`] the rest of Ward authorizes.
//!
//! Nothing here reads the clock: every operation that depends on time takes `now`, which callers
//! get from a [`Clock`] ([`SystemClock`] in production, [`FixedClock`] in tests). The file format,
//! the certificate profile and the validation rules are described in `docs/identity.md`.
#![forbid(unsafe_code)]

mod ca;
mod clock;
pub mod duration;
mod error;
mod fsutil;
mod identity;
mod inspect;
mod kind;
pub mod names;
mod secret;
mod validate;

pub use ca::{
    check_csr, Ca, IssueRequest, Issued, CA_JSON, ISSUED_LOG, ISSUING_CRT, ISSUING_KEY, ROOT_CRT,
    ROOT_KEY,
};
pub use clock::{Clock, FixedClock, SystemClock};
pub use duration::{format_duration, parse_duration, parse_ttl, DurationError, HumanDuration};
pub use error::CaError;

/// Refuse a private key file that group or others can read or write, naming the `chmod 600` to
/// run (for every key Ward reads: identities, the gateway's key, the audit signing key).
pub fn check_private_key(path: &std::path::Path) -> Result<(), CaError> {
    fsutil::check_private(path)
}
pub use identity::Identity;
pub use inspect::{inspect, Inspection, Verdict};
pub use kind::{Caps, CapsError, Kind, KindCaps, UnknownKind};
pub use names::NameError;
pub use secret::Secret;
pub use validate::{Usage, ValidationError, Validator, MAX_SKEW};
