//! Ward's session recording format, pure.
//!
//! No files, no sockets, no clock: bytes and times go in, bytes and reports come out. The `ward`
//! binary owns the I/O (the recorder task, the file sink, fsync batching, the audit file writer and
//! the CLI) and drives these types.
//!
//! * [`mod@format`]: the binary framed layout ([`MAGIC`], record codes), [`Record`] and the [`Reader`].
//! * [`encoder`]: the [`Encoder`] state machine that turns session bytes into records, keeping the
//!   SHA-256 hash chain and writing Ed25519-signed checkpoints.
//! * [`mod@verify`]: [`verify()`] (names the first bad record) and [`seal_interrupted`] (crash recovery).
//! * [`signer`]: the gateway's Ed25519 recording key ([`Signer`]).
//! * [`keyring`]: every public key the gateway ever signed with ([`Keyring`], [`PublicKeys`]).
//! * [`anchor`]: off-host anchors of signed checkpoints, and the pure checker of
//!   `ward audit verify --anchors`.
//! * [`audit`]: the audit log: JSON lines, chained and signed the same way.
//! * [`trail`]: what the audit log says about each session ([`audit::session_trails`]), crash
//!   recovery's rule ([`trail::may_seal`]) and the recording/log cross-checks of `verify --all`.
//! * [`evidence`]: the signed parts of evidence bundles: `SHA256SUMS`, its signature, SPKI PEM
//!   keys, the audit-log slice that verifies alone.
//! * [`sealed`]: recordings encrypted at rest to age recipients: [`sealed::Unsealer`],
//!   [`sealed::open_records`], [`sealed::age_files`].
//! * [`export`]: asciicast v2, pcap, raw, JSON lines, hexdump, and the telnet IAC filter.
//!
//! The byte layout is specified in `docs/recording-format.md`.
#![forbid(unsafe_code)]

pub mod anchor;
pub mod audit;
pub mod encoder;
pub mod error;
pub mod evidence;
pub mod export;
pub mod format;
pub mod keyring;
pub mod sealed;
pub mod signer;
mod stream;
pub mod terminal;
pub mod trail;
pub mod verify;

pub use encoder::{CheckpointPolicy, Encoder};
pub use error::{ReadError, RecError};
pub use format::{
    read_all, read_prefix, Direction, EndInfo, Reader, Record, RecordAt, SessionMeta, MAGIC,
    MAGIC_V1, MAGIC_V2, MAX_DATA_PAYLOAD, MAX_RECORD_BODY, RECORD_HEADER_LEN,
};
pub use keyring::{Keyring, PublicKeys};
pub use signer::{key_id_of, Signer};
pub use verify::{
    seal_interrupted, seal_interrupted_keys, verify, verify_read, ErrorUnit, SealStatus,
    VerifyError, VerifyReport,
};
