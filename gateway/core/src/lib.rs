//! Ward's sans-I/O core.
//!
//! Everything here is pure: no sockets, no files, no clock reads. Callers pass bytes, config
//! text and `now`, and get back frames, validated config, decisions and session states. The
//! `ward` binary drives it with tokio/quinn and owns all I/O.
//!
//! * [`frame`]: the control frames exchanged at the start of each stream, `decode` / `encode`.
//! * [`config`]: the TOML configuration parsed into valid-by-construction types.
//! * [`policy`]: rules, locks and [`policy::evaluate`], which returns a permit or a reason.
//! * [`session`]: session states as types (`Handshaken` → `Authorized` → `Closed`).
//! * [`stage`]: what a session's bytes pass through (decoders, injectors): bytes and `now` in, a
//!   verdict out.
//! * [`inject`]: device credentials from the vault: which one a session gets, how the gateway logs
//!   in with it (telnet prompts, HTTP `Authorization`), and how a factory password is rotated.
//! * [`noise`]: unauthenticated events aggregated per source and interval, with a cap.
//! * [`admission`]: connection budgets (anonymous vs certificate holders, per source), eviction.
//! * [`sso`]: an OpenID provider's verified claims mapped to Ward's principal, MFA checked.
//! * [`principal`], [`device`], [`window`], [`duration`]: the value types those are built from.
#![forbid(unsafe_code)]

pub mod access;
pub mod admission;
pub mod config;
pub mod device;
pub mod duration;
pub mod escape;
pub mod frame;
pub mod http1;
pub mod inject;
pub mod messages;
pub mod noise;
pub mod operations;
pub mod password;
pub mod policy;
pub mod principal;
pub mod ratelimit;
pub mod secret;
pub mod session;
pub mod sso;
pub mod stage;
pub mod suggest;
pub mod totp;
pub mod when;
pub mod window;

pub use config::{
    Config, ConfigError, ConfigErrorKind, GatewayConfig, Limits, Location, SAMPLE_CONFIG,
};
pub use device::{CertPin, Device, DeviceAddress, DeviceError, DeviceId, DeviceTls, Protocol};
pub use duration::{format_duration, parse_duration, DurationError};
pub use escape::{escape, Escaped};
pub use frame::{
    decode, decode_request, decode_response, encode, encode_request, encode_response, AccessOp,
    AccessReply, DeviceInfo, ErrorCode, Frame, FrameError, LockInfo, Login, Request, Response,
    ALPN,
};
pub use policy::{
    evaluate, evaluate_access, evaluate_id, lock_applies, AccessInputs, Decision, DenyReason,
    DeviceSelector, Lock, LockTarget, Permit, Rule, Who,
};
pub use principal::{Principal, PrincipalKind, UnknownPrincipalKind};
pub use session::{Authorized, Closed, Denied, EndReason, Handshaken};
pub use window::{Hours, Window, WindowError, WindowState};
