//! Error types.

use crate::verify::VerifyError;

/// Why bytes could not be read as records. Every variant names where: the record's ordinal
/// (0 = the meta record) and the byte offset of its first byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The input does not start with the 8-byte Ward recording magic.
    #[error("bad magic: not a Ward recording")]
    BadMagic,
    /// The input is a Ward recording of a format version this reader does not know.
    #[error("unsupported recording format version {0} (this reader knows versions 1 to 3)")]
    UnsupportedVersion(u8),
    /// The input ends inside a record (torn write or cut tail).
    #[error("record {record} at byte {offset}: truncated record: needs {needed} bytes, {available} remain (tail cut mid-record)")]
    Truncated {
        /// Record ordinal.
        record: u64,
        /// Byte offset of the record.
        offset: u64,
        /// Bytes the record needs (header included).
        needed: u64,
        /// Bytes left in the input from `offset`.
        available: u64,
    },
    /// The type byte names no record type.
    #[error("record {record} at byte {offset}: unknown record type 0x{code:02x} (garbage, or an earlier record's length was altered)")]
    UnknownType {
        /// Record ordinal.
        record: u64,
        /// Byte offset of the record.
        offset: u64,
        /// The type byte.
        code: u8,
    },
    /// The declared body length exceeds [`crate::MAX_RECORD_BODY`].
    #[error("record {record} at byte {offset}: oversized record: body length {len} exceeds {max}")]
    Oversized {
        /// Record ordinal.
        record: u64,
        /// Byte offset of the record.
        offset: u64,
        /// Declared body length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The body does not have the shape its type requires.
    #[error("record {record} at byte {offset}: malformed record: {what}")]
    Malformed {
        /// Record ordinal.
        record: u64,
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

impl ReadError {
    /// The record ordinal the error is about (0 for magic errors).
    pub fn record(&self) -> u64 {
        match self {
            ReadError::BadMagic | ReadError::UnsupportedVersion(_) => 0,
            ReadError::Truncated { record, .. }
            | ReadError::UnknownType { record, .. }
            | ReadError::Oversized { record, .. }
            | ReadError::Malformed { record, .. } => *record,
        }
    }

    /// The byte offset the error is about (0 for magic errors).
    pub fn offset(&self) -> u64 {
        match self {
            ReadError::BadMagic | ReadError::UnsupportedVersion(_) => 0,
            ReadError::Truncated { offset, .. }
            | ReadError::UnknownType { offset, .. }
            | ReadError::Oversized { offset, .. }
            | ReadError::Malformed { offset, .. } => *offset,
        }
    }

    /// The message without the "record N at byte M: " prefix.
    pub(crate) fn what(&self) -> String {
        match self {
            ReadError::BadMagic | ReadError::UnsupportedVersion(_) => self.to_string(),
            ReadError::Truncated { needed, available, .. } => format!(
                "truncated record: needs {needed} bytes, {available} remain (tail cut mid-record)"
            ),
            ReadError::UnknownType { code, .. } => format!(
                "unknown record type 0x{code:02x} (garbage, or an earlier record's length was altered)"
            ),
            ReadError::Oversized { len, max, .. } => {
                format!("oversized record: body length {len} exceeds {max}")
            }
            ReadError::Malformed { what, .. } => format!("malformed record: {what}"),
        }
    }
}

/// Errors of the recording library (key handling, encoding, recovery, export).
#[derive(Debug, thiserror::Error)]
pub enum RecError {
    /// The signing key could not be generated or parsed.
    #[error("recording signing key: {0}")]
    Key(String),
    /// The session metadata could not be encoded, or is larger than a record may be.
    #[error("session metadata: {0}")]
    Meta(String),
    /// The input could not be read as a recording.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Nothing can be salvaged: the input lacks a complete header and meta record.
    #[error("cannot recover the recording: {0}")]
    Unrecoverable(String),
    /// The recording (or log) is already sealed; nothing to recover.
    #[error("already sealed: {0}")]
    AlreadySealed(String),
    /// Verification found damage or tampering that recovery must not paper over.
    #[error("does not verify: {0}")]
    Tampered(VerifyError),
    /// An export could not be built from these records.
    #[error("export: {0}")]
    Export(String),
    /// An encrypted recording could not be sealed or opened: no matching identity, a header or
    /// record that does not decrypt, or sealed records with no identity given.
    #[error("encrypted recording: {0}")]
    Unseal(String),
}
