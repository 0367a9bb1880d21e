//! Ward's gateway: the QUIC and TLS-over-TCP listeners, connection admission, request dispatch,
//! the session pipeline (authorize, dial, record, proxy), the audit log, review of recordings and
//! crash recovery. I/O around the pure crates (`ward-core`: frames, config, policy;
//! `ward-recording`; `ward-ca`), over the store (`ward-store`) and the wire (`ward-transport`).
//! See docs/architecture.md.
#![forbid(unsafe_code)]

// The store's and the wire's modules, under the names the gateway's code uses for them.
pub use ward_store::{access_store, recording_store, session_index, store, store_async, users};
pub use ward_transport::{datapath, refusal, tls};

mod admit;
pub mod anchors;
pub mod audit;
mod decode;
pub mod device_login;
mod device_tls;
pub mod diskwatch;
pub mod dispatch;
pub mod fleet;
pub mod gateway;
pub mod hygiene;
mod inject;
pub mod jit;
pub mod login_gate;
pub mod netns;
pub mod pipeline;
mod policy_watch;
pub mod recorder;
pub mod recovery;
pub mod reload;
pub mod review;
pub mod review_jobs;
pub mod services;
mod session;
pub mod signing;
pub mod state_lock;
pub mod unseal;
pub mod web;

/// The gateway's Ed25519 signing key for recordings and the audit log, inside the state dir.
pub const AUDIT_KEY: &str = "audit.key";
/// Its public key (hex), inside the state dir.
pub const AUDIT_PUB: &str = "audit.pub";
/// Session recordings, inside the state dir (the recording store's layout).
pub use ward_store::recording_store::RECORDINGS_DIR;
