//! Ward: a zero-trust access gateway for legacy medical devices.
//!
//! This crate is the I/O shell around the pure core (`ward-core`: frames, config, policy) and the CA
//! (`ward-ca`): the QUIC and TLS-over-TCP listeners, the device dialer and proxy, the embedded store,
//! the client (`ward connect`), simulated devices and `ward quickstart`. See docs/architecture.md.
#![forbid(unsafe_code)]

pub mod access_store;
mod admit;
pub mod audit;
pub mod client;
pub mod datapath;
pub mod diskwatch;
pub mod gateway;
pub mod hygiene;
pub mod jit;
pub mod login_gate;
pub mod netns;
mod policy_watch;
pub mod quickstart;
pub mod recorder;
pub mod recovery;
pub mod refusal;
pub mod reload;
pub mod review;
pub mod review_jobs;
mod session;
pub mod session_index;
pub mod sim;
pub mod state_lock;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod users;

/// The gateway's Ed25519 signing key for recordings and the audit log, inside the state dir.
pub const AUDIT_KEY: &str = "audit.key";
/// Its public key (hex), inside the state dir.
pub const AUDIT_PUB: &str = "audit.pub";
/// Session recordings, inside the state dir.
pub const RECORDINGS_DIR: &str = "recordings";
