//! Sealed records: a recording's data and events encrypted at rest to age X25519 recipients
//! (format version 3, `docs/recording-format.md`).
//!
//! Each encrypted recording has one random 16-byte file key, wrapped once per recipient into a
//! standard age v1 header that the meta record carries (`SessionMeta::age_header`, base64). Every
//! sealed record holds a fresh 16-byte nonce and the age STREAM ciphertext (ChaCha20-Poly1305,
//! 64 KiB chunks) of a run of ordinary data and event records, under the payload key
//! HKDF-SHA-256(ikm = file key, salt = nonce, info = "payload"). So the header followed by a
//! sealed record's body after its time is a complete age file, which `age -d -i KEY` decrypts.
//!
//! The gateway holds the file key only while the session is recorded; a finished recording is
//! readable only with an identity matching one of its recipients ([`Unsealer`]). The hash chain
//! and the signed checkpoints cover the records as stored, so verification needs no key.
//!
//! Reader API: [`Unsealer`], [`open_records`], [`is_sealed`], [`age_files`], [`load_identities`].

use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age_core::format::{FileKey, Stanza, FILE_KEY_BYTES};
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{hkdf, hmac};
use base64::Engine;

use crate::format::{
    code, decode, parse_raw, Reader, Record, SessionMeta, RECORD_HEADER_LEN, SEALED_FIXED,
};
use crate::{ReadError, RecError};

/// Plaintext bytes per STREAM chunk (age: 64 KiB).
pub const CHUNK: usize = 64 * 1024;
/// Poly1305 tag after each chunk.
pub const TAG: usize = 16;
/// The STREAM nonce at the start of every sealed body (after its time).
pub const NONCE: usize = 16;
/// Most plaintext one sealed record holds: its ciphertext (with a tag per 64 KiB chunk), time and
/// nonce stay within [`crate::MAX_RECORD_BODY`].
pub const MAX_PLAINTEXT: usize = (1 << 20) - 256;

/// The age v1 header's first line.
const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
/// The MAC line's prefix; the MAC covers the header up to and including `---`.
const MAC_PREFIX: &[u8] = b"---";
/// base64 without padding, as age writes it.
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;
/// base64 of the whole header in the meta record (JSON).
const B64_META: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Bytes a sealed record adds to `plaintext_len` bytes of inner records: its 5-byte header, time,
/// nonce, and a tag per 64 KiB chunk (at least one).
pub fn overhead(plaintext_len: usize) -> usize {
    RECORD_HEADER_LEN + SEALED_FIXED + TAG * plaintext_len.div_ceil(CHUNK).max(1)
}

/// Whether the recording's data is encrypted (its meta names recipients or carries an age header).
pub fn is_sealed(meta: &SessionMeta) -> bool {
    !meta.recipients.is_empty() || meta.age_header.is_some()
}

/// A recording's file key, held while the recording is written. Zeroized on drop; never printed.
pub(crate) struct SealKey(FileKey);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl SealKey {
    /// A fresh file key, and the age header (base64, for the meta record) wrapping it to every
    /// recipient.
    pub(crate) fn generate(
        recipients: &[age::x25519::Recipient],
    ) -> Result<(SealKey, String), RecError> {
        if recipients.is_empty() {
            return Err(RecError::Unseal(
                "an encrypted recording needs at least one recipient".into(),
            ));
        }
        let key = FileKey::try_init_with_mut(|k| aws_lc_rs::rand::fill(k))
            .map_err(|_| RecError::Unseal("no randomness for a file key".into()))?;
        let mut stanzas = Vec::new();
        for r in recipients {
            let (s, _labels) = age::Recipient::wrap_file_key(r, &key)
                .map_err(|e| RecError::Unseal(format!("wrapping the file key to {r}: {e}")))?;
            stanzas.extend(s);
        }
        let header = write_header(&stanzas, key.expose_secret())?;
        Ok((SealKey(key), B64_META.encode(header)))
    }

    /// Append a sealed record holding `plaintext` (encoded data and event records, at most
    /// [`MAX_PLAINTEXT`] bytes) at `t_ns`; returns where it starts in `out`. On error nothing is
    /// appended.
    pub(crate) fn seal(
        &self,
        t_ns: u64,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, RecError> {
        let start = out.len();
        let mut nonce = [0u8; NONCE];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| RecError::Unseal("no randomness for a nonce".into()))?;
        let body_len = SEALED_FIXED + stream_len(plaintext.len());
        let len = u32::try_from(body_len)
            .ok()
            .filter(|l| *l <= crate::MAX_RECORD_BODY)
            .ok_or_else(|| {
                RecError::Unseal(format!("{} bytes are too many to seal", plaintext.len()))
            })?;
        out.reserve(RECORD_HEADER_LEN + body_len);
        out.push(code::SEALED);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&t_ns.to_le_bytes());
        out.extend_from_slice(&nonce);
        let r = payload_key(self.0.expose_secret(), &nonce)
            .and_then(|key| stream_seal(&key, plaintext, out));
        if r.is_err() {
            out.truncate(start);
            return Err(RecError::Unseal("encryption failed".into()));
        }
        Ok(start)
    }
}

/// Length of the STREAM ciphertext of `n` plaintext bytes.
fn stream_len(n: usize) -> usize {
    n + TAG * n.div_ceil(CHUNK).max(1)
}

/// HKDF-SHA-256(ikm = file key, salt, info) into a key of `len`'s type.
fn hkdf_prk(file_key: &[u8; FILE_KEY_BYTES], salt: &[u8]) -> hkdf::Prk {
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(file_key)
}

/// The payload key of one sealed record: HKDF-SHA-256(file key, salt = nonce, info = "payload").
fn payload_key(
    file_key: &[u8; FILE_KEY_BYTES],
    nonce: &[u8; NONCE],
) -> Result<LessSafeKey, aws_lc_rs::error::Unspecified> {
    let prk = hkdf_prk(file_key, nonce);
    let okm = prk.expand(&[b"payload"], &aead::CHACHA20_POLY1305)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// The header MAC key: HKDF-SHA-256(file key, salt = empty, info = "header").
fn header_mac_key(
    file_key: &[u8; FILE_KEY_BYTES],
) -> Result<hmac::Key, aws_lc_rs::error::Unspecified> {
    let prk = hkdf_prk(file_key, &[]);
    let okm = prk.expand(&[b"header"], hmac::HMAC_SHA256)?;
    Ok(hmac::Key::from(okm))
}

/// STREAM nonce of chunk `counter`: 11-byte big-endian counter ‖ 0x01 on the last chunk, else 0x00.
fn chunk_nonce(counter: u64, last: bool) -> Nonce {
    let c = counter.to_be_bytes();
    Nonce::assume_unique_for_key([
        0,
        0,
        0,
        c[0],
        c[1],
        c[2],
        c[3],
        c[4],
        c[5],
        c[6],
        c[7],
        u8::from(last),
    ])
}

/// Append the STREAM ciphertext of `plaintext` (64 KiB chunks; one empty chunk if empty).
fn stream_seal(
    key: &LessSafeKey,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), aws_lc_rs::error::Unspecified> {
    let n = plaintext.len().div_ceil(CHUNK).max(1);
    let empty: [&[u8]; 1] = [&[]];
    let chunks: Box<dyn Iterator<Item = &[u8]>> = if plaintext.is_empty() {
        Box::new(empty.into_iter())
    } else {
        Box::new(plaintext.chunks(CHUNK))
    };
    for (i, chunk) in chunks.enumerate() {
        let at = out.len();
        out.extend_from_slice(chunk);
        let nonce = chunk_nonce(i as u64, i + 1 == n);
        let tail = out.get_mut(at..).unwrap_or_default();
        let tag = key.seal_in_place_separate_tag(nonce, Aad::empty(), tail)?;
        out.extend_from_slice(tag.as_ref());
    }
    Ok(())
}

/// Decrypt a STREAM ciphertext (age's rules: every chunk but the last is full; the last may be
/// empty only if it is the only one).
fn stream_open(key: &LessSafeKey, ct: &[u8]) -> Result<Vec<u8>, String> {
    let full = CHUNK + TAG;
    if ct.len() < TAG {
        return Err(format!(
            "ciphertext of {} bytes is shorter than one tag",
            ct.len()
        ));
    }
    let n = ct.len().div_ceil(full);
    let mut plain = Vec::with_capacity(ct.len());
    for (i, chunk) in ct.chunks(full).enumerate() {
        let last = i + 1 == n;
        if chunk.len() < TAG || (last && n > 1 && chunk.len() == TAG) {
            return Err(format!(
                "chunk {i} of the ciphertext is cut short (truncated or altered)"
            ));
        }
        let at = plain.len();
        plain.extend_from_slice(chunk);
        let buf = plain.get_mut(at..).unwrap_or_default();
        let len = key
            .open_in_place(chunk_nonce(i as u64, last), Aad::empty(), buf)
            .map_err(|_| {
                format!("chunk {i} does not decrypt (altered, or sealed under another key)")
            })?
            .len();
        plain.truncate(at + len);
    }
    Ok(plain)
}

/// Write an age v1 header: the version line, the stanzas (body base64 in 64-column lines, the last
/// one short), and the MAC line (as age-core's `format::write::age_stanza` and age's header writer).
fn write_header(stanzas: &[Stanza], file_key: &[u8; FILE_KEY_BYTES]) -> Result<Vec<u8>, RecError> {
    let mut h = VERSION_LINE.to_vec();
    for s in stanzas {
        h.extend_from_slice(b"-> ");
        h.extend_from_slice(s.tag.as_bytes());
        for a in &s.args {
            h.push(b' ');
            h.extend_from_slice(a.as_bytes());
        }
        h.push(b'\n');
        let body = B64.encode(&s.body);
        let mut rest = body.as_bytes();
        while rest.len() >= 64 {
            let (line, r) = rest.split_at(64);
            h.extend_from_slice(line);
            h.push(b'\n');
            rest = r;
        }
        h.extend_from_slice(rest);
        h.push(b'\n');
    }
    h.extend_from_slice(MAC_PREFIX);
    let key = header_mac_key(file_key)
        .map_err(|_| RecError::Unseal("deriving the header MAC key failed".into()))?;
    let mac = hmac::sign(&key, &h);
    h.push(b' ');
    h.extend_from_slice(B64.encode(mac.as_ref()).as_bytes());
    h.push(b'\n');
    Ok(h)
}

/// A parsed age header: its stanzas, the bytes the MAC covers, and the MAC.
struct Header {
    stanzas: Vec<Stanza>,
    mac_input_len: usize,
    mac: Vec<u8>,
}

/// Parse a complete age v1 header (nothing may follow its MAC line).
fn parse_header(h: &[u8]) -> Result<Header, String> {
    let mut rest = h
        .strip_prefix(VERSION_LINE)
        .ok_or("the age header does not start with age-encryption.org/v1")?;
    let mut stanzas = Vec::new();
    while !rest.starts_with(MAC_PREFIX) {
        match age_core::format::read::age_stanza(rest) {
            Ok((r, s)) => {
                stanzas.push(Stanza::from(s));
                rest = r;
            }
            Err(_) => {
                return Err(format!(
                    "the age header's stanza {} does not parse",
                    stanzas.len() + 1
                ))
            }
        }
    }
    let mac_input_len = h.len() - rest.len() + MAC_PREFIX.len();
    let mac_b64 = rest
        .strip_prefix(b"--- ")
        .and_then(|r| r.strip_suffix(b"\n"))
        .ok_or("the age header's MAC line is malformed")?;
    let mac = B64
        .decode(mac_b64)
        .ok()
        .filter(|m| m.len() == 32)
        .ok_or("the age header's MAC is not 32 bytes of base64")?;
    if stanzas.is_empty() {
        return Err("the age header has no recipient stanza".into());
    }
    Ok(Header {
        stanzas,
        mac_input_len,
        mac,
    })
}

/// The meta's age header as bytes.
fn header_bytes(meta: &SessionMeta) -> Result<Vec<u8>, String> {
    let b64 = meta
        .age_header
        .as_deref()
        .ok_or("the meta record has no age_header")?;
    B64_META
        .decode(b64)
        .map_err(|_| "the meta record's age_header is not base64".to_string())
}

/// What verification checks of an encrypted recording's meta without a key: recipients and header
/// both present or both absent, every recipient an age X25519 recipient, and a well-formed header
/// with one X25519 stanza per recipient.
pub(crate) fn check_meta(meta: &SessionMeta) -> Result<(), String> {
    match (meta.recipients.is_empty(), meta.age_header.is_some()) {
        (true, false) => return Ok(()),
        (true, true) => return Err("the meta record has an age_header but no recipients".into()),
        (false, false) => {
            return Err("the meta record names recipients but has no age_header".into())
        }
        (false, true) => {}
    }
    for (i, r) in meta.recipients.iter().enumerate() {
        if age::x25519::Recipient::from_str(r).is_err() {
            return Err(format!(
                "recipient {} of the meta record is not an age X25519 recipient",
                i + 1
            ));
        }
    }
    let header = parse_header(&header_bytes(meta)?)?;
    let x25519 = header.stanzas.iter().filter(|s| s.tag == "X25519").count();
    if x25519 != meta.recipients.len() {
        return Err(format!(
            "the age header has {x25519} X25519 stanzas for {} recipients",
            meta.recipients.len()
        ));
    }
    Ok(())
}

/// Opens the sealed records of one recording: holds its file key, unwrapped with a reviewer's
/// identity. Zeroized on drop; `Debug` shows nothing.
pub struct Unsealer {
    key: SealKey,
}

impl std::fmt::Debug for Unsealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unsealer([redacted])")
    }
}

impl Unsealer {
    /// Unwrap the recording's file key from `meta`'s age header with the first of `identities`
    /// that matches one of its stanzas, and check the header's MAC. Errors: the recording is not
    /// encrypted, its header is malformed, no identity matches (names the recipients), or the MAC
    /// does not verify.
    pub fn new<I: age::Identity + ?Sized>(
        meta: &SessionMeta,
        identities: &[Box<I>],
    ) -> Result<Unsealer, RecError> {
        if !is_sealed(meta) {
            return Err(RecError::Unseal(format!(
                "recording {} is not encrypted",
                meta.session_id
            )));
        }
        let bytes = header_bytes(meta).map_err(RecError::Unseal)?;
        let header = parse_header(&bytes).map_err(RecError::Unseal)?;
        for id in identities {
            match id.unwrap_stanzas(&header.stanzas) {
                None => continue,
                Some(Err(e)) => {
                    return Err(RecError::Unseal(format!(
                        "the identity matches but the file key does not unwrap: {e}"
                    )))
                }
                Some(Ok(key)) => {
                    let mac_key = header_mac_key(key.expose_secret())
                        .map_err(|_| RecError::Unseal("deriving the header MAC key".into()))?;
                    let input = bytes.get(..header.mac_input_len).unwrap_or_default();
                    if hmac::verify(&mac_key, input, &header.mac).is_err() {
                        return Err(RecError::Unseal(
                            "the age header's MAC does not verify (header altered)".into(),
                        ));
                    }
                    return Ok(Unsealer { key: SealKey(key) });
                }
            }
        }
        Err(RecError::Unseal(format!(
            "recording {} is encrypted to {}; none of the {} identities given matches",
            meta.session_id,
            meta.recipients.join(", "),
            identities.len()
        )))
    }

    /// The plaintext of one sealed record's body after its time (nonce ‖ ciphertext, as in
    /// [`Record::Sealed`]): encoded data and event records.
    pub fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, RecError> {
        let (nonce, ct) = body
            .split_first_chunk::<NONCE>()
            .ok_or_else(|| RecError::Unseal("sealed body shorter than its nonce".into()))?;
        let key = payload_key(self.key.0.expose_secret(), nonce)
            .map_err(|_| RecError::Unseal("deriving the payload key".into()))?;
        stream_open(&key, ct).map_err(RecError::Unseal)
    }

    /// The records inside one sealed record's body (data and event records only).
    pub fn open(&self, body: &[u8]) -> Result<Vec<Record>, RecError> {
        let plain = self.decrypt(body)?;
        inner_records(&plain).map_err(RecError::Unseal)
    }
}

/// Parse the plaintext of a sealed record: data and event records, nothing else.
fn inner_records(plain: &[u8]) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut i = 0u64;
    while pos < plain.len() {
        let raw = parse_raw(plain, pos, i).map_err(|e| {
            format!(
                "inner record {i} at byte {pos} of the plaintext: {}",
                e.what()
            )
        })?;
        if !matches!(raw.code, code::DATA_UP | code::DATA_DOWN | code::EVENT) {
            return Err(format!(
                "inner record {i} at byte {pos} of the plaintext has type 0x{:02x}; only data and event records may be sealed",
                raw.code
            ));
        }
        let rec = decode(&raw).map_err(|e| {
            format!(
                "inner record {i} at byte {pos} of the plaintext: {}",
                e.what()
            )
        })?;
        pos += raw.bytes.len();
        i += 1;
        out.push(rec);
    }
    Ok(out)
}

/// `records` (of one recording, in file order, as [`crate::read_all`] returns them) with every
/// sealed record replaced by the data and event records inside it. Without an unsealer, an
/// encrypted recording's first sealed record is an error. Errors name the record's ordinal.
pub fn open_records(
    records: Vec<Record>,
    unsealer: Option<&Unsealer>,
) -> Result<Vec<Record>, RecError> {
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        match r {
            Record::Sealed { body, .. } => {
                let Some(u) = unsealer else {
                    return Err(RecError::Unseal(format!(
                        "record {i} is encrypted at rest: an identity matching one of the recording's recipients is needed to read it"
                    )));
                };
                let inner = u
                    .open(&body)
                    .map_err(|e| RecError::Unseal(format!("record {i}: {e}")))?;
                out.extend(inner);
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Every sealed record of a recording as a standalone age file (the meta's age header followed by
/// the record's nonce and ciphertext), in order: `age -d -i KEY` decrypts each to encoded Ward
/// data and event records. Empty for a recording that is not encrypted.
pub fn age_files(bytes: &[u8]) -> Result<Vec<Vec<u8>>, ReadError> {
    let mut reader = Reader::new(bytes);
    let mut header: Option<Vec<u8>> = None;
    let mut files = Vec::new();
    while let Some(r) = reader.next_record() {
        let r = r?;
        match r.record {
            Record::Meta(meta) if meta.age_header.is_some() => {
                header = Some(header_bytes(&meta).map_err(|what| ReadError::Malformed {
                    record: r.index,
                    offset: r.offset,
                    what,
                })?);
            }
            Record::Sealed { body, .. } => {
                let Some(h) = &header else {
                    return Err(ReadError::Malformed {
                        record: r.index,
                        offset: r.offset,
                        what: "sealed record in a recording whose meta has no age header".into(),
                    });
                };
                let mut f = Vec::with_capacity(h.len() + body.len());
                f.extend_from_slice(h);
                f.extend_from_slice(&body);
                files.push(f);
            }
            _ => {}
        }
    }
    Ok(files)
}

/// Parse an age identity file (`AGE-SECRET-KEY-1…` lines; blank lines and `#` comments ignored,
/// as `age-keygen` writes it). Errors name the line, never its content.
pub fn load_identities(text: &str) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, RecError> {
    let mut ids: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match age::x25519::Identity::from_str(line) {
            Ok(id) => ids.push(Box::new(id)),
            Err(_) => {
                return Err(RecError::Unseal(format!(
                    "line {} of the identity file is not an age X25519 identity (AGE-SECRET-KEY-1…; make one with age-keygen)",
                    n + 1
                )))
            }
        }
    }
    if ids.is_empty() {
        return Err(RecError::Unseal(
            "the identity file holds no identity (AGE-SECRET-KEY-1… line; make one with age-keygen)"
                .into(),
        ));
    }
    Ok(ids)
}

/// A freshly generated age X25519 identity in the text form `age-keygen` writes (a comment with
/// its public key, then `AGE-SECRET-KEY-1…`), for `ward quickstart`. `Debug` shows nothing; write
/// it to a 0600 file.
pub struct NewIdentity {
    text: age::secrecy::SecretString,
    recipient: String,
}

impl std::fmt::Debug for NewIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewIdentity({}, [redacted])", self.recipient)
    }
}

impl NewIdentity {
    /// A new identity.
    pub fn generate() -> NewIdentity {
        let id = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        let text = format!(
            "# public key: {recipient}\n{}\n",
            id.to_string().expose_secret()
        );
        NewIdentity {
            text: text.into(),
            recipient,
        }
    }

    /// The identity file's text (secret: never log it).
    pub fn file_text(&self) -> &str {
        self.text.expose_secret()
    }

    /// Its recipient (`age1…`), for `[recording] recipients`.
    pub fn recipient(&self) -> &str {
        &self.recipient
    }
}

/// Parse an age X25519 recipient (`age1…`), for configuration.
pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, String> {
    age::x25519::Recipient::from_str(s.trim())
        .map_err(|e| format!("not an age X25519 recipient (age1…): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn ident() -> (age::x25519::Identity, age::x25519::Recipient) {
        let id = age::x25519::Identity::generate();
        let r = id.to_public();
        (id, r)
    }

    /// Decrypt a standalone age file with the age crate (the reference implementation).
    fn age_decrypt(file: &[u8], id: &age::x25519::Identity) -> Result<Vec<u8>, String> {
        let d = age::Decryptor::new(file).map_err(|e| e.to_string())?;
        let mut r = d
            .decrypt(std::iter::once(id as &dyn age::Identity))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn sealed_file(key: &SealKey, header_b64: &str, plain: &[u8]) -> Vec<u8> {
        let mut rec = Vec::new();
        key.seal(7, plain, &mut rec).unwrap();
        let mut file = B64_META.decode(header_b64).unwrap();
        file.extend_from_slice(&rec[RECORD_HEADER_LEN + 8..]);
        file
    }

    #[test]
    fn the_age_crate_decrypts_what_we_seal_at_every_chunk_boundary() {
        let (id, r) = ident();
        let (key, header) = SealKey::generate(std::slice::from_ref(&r)).unwrap();
        for len in [
            1,
            100,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            3 * CHUNK + 17,
            MAX_PLAINTEXT,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let file = sealed_file(&key, &header, &plain);
            assert_eq!(age_decrypt(&file, &id).unwrap(), plain, "len {len}");
            assert_eq!(
                file.len() - B64_META.decode(&header).unwrap().len(),
                NONCE + stream_len(len)
            );
        }
        // An empty payload is one empty last chunk, as age writes it.
        let file = sealed_file(&key, &header, &[]);
        assert_eq!(age_decrypt(&file, &id).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn we_open_what_the_age_crate_encrypts() {
        let (id, r) = ident();
        for len in [0usize, 5, CHUNK, CHUNK + 3, 2 * CHUNK] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                .unwrap();
            let mut file = Vec::new();
            let mut w = enc.wrap_output(&mut file).unwrap();
            std::io::Write::write_all(&mut w, &plain).unwrap();
            w.finish().unwrap();
            // Split the age file into header and payload as a recording stores them.
            let end = file.windows(4).position(|w| w == b"\n---").unwrap() + 1;
            let end = end + file[end..].iter().position(|b| *b == b'\n').unwrap() + 1;
            let meta = SessionMeta {
                session_id: "s".into(),
                recipients: vec![r.to_string()],
                age_header: Some(B64_META.encode(&file[..end])),
                ..SessionMeta::default()
            };
            check_meta(&meta).unwrap();
            let ids = vec![Box::new(id.clone()) as Box<dyn age::Identity>];
            let u = Unsealer::new(&meta, &ids).unwrap();
            assert_eq!(u.decrypt(&file[end..]).unwrap(), plain, "len {len}");
        }
    }

    #[test]
    fn our_header_has_one_stanza_per_recipient_and_a_valid_mac() {
        let (a, ra) = ident();
        let (b, rb) = ident();
        let (key, header) = SealKey::generate(&[ra.clone(), rb.clone()]).unwrap();
        let h = B64_META.decode(&header).unwrap();
        let text = String::from_utf8(h.clone()).unwrap();
        assert!(
            text.starts_with("age-encryption.org/v1\n-> X25519 "),
            "{text}"
        );
        assert_eq!(text.matches("\n-> X25519 ").count(), 2, "{text}");
        assert!(text.contains("\n--- "), "{text}");
        assert!(!text.contains('='), "no base64 padding: {text}");
        for id in [a, b] {
            let file = sealed_file(&key, &header, b"hello");
            assert_eq!(age_decrypt(&file, &id).unwrap(), b"hello");
        }
        let meta = SessionMeta {
            recipients: vec![ra.to_string(), rb.to_string()],
            age_header: Some(header),
            ..SessionMeta::default()
        };
        check_meta(&meta).unwrap();
        // One recipient too few for the header: caught without a key.
        let short = SessionMeta {
            recipients: vec![ra.to_string()],
            ..meta.clone()
        };
        assert!(check_meta(&short)
            .unwrap_err()
            .contains("2 X25519 stanzas for 1"));
    }

    #[test]
    fn an_altered_header_mac_or_ciphertext_is_refused() {
        let (id, r) = ident();
        let (key, header) = SealKey::generate(std::slice::from_ref(&r)).unwrap();
        let ids = vec![Box::new(id.clone()) as Box<dyn age::Identity>];
        let meta = SessionMeta {
            session_id: "s".into(),
            recipients: vec![r.to_string()],
            age_header: Some(header.clone()),
            ..SessionMeta::default()
        };
        let mut rec = Vec::new();
        key.seal(1, &vec![9u8; 3 * CHUNK], &mut rec).unwrap();
        let body = rec[RECORD_HEADER_LEN + 8..].to_vec();
        let u = Unsealer::new(&meta, &ids).unwrap();
        assert_eq!(u.decrypt(&body).unwrap(), vec![9u8; 3 * CHUNK]);
        // Flip a byte of every region: nonce, each chunk, the last tag.
        for at in [0, NONCE + 5, NONCE + CHUNK + TAG + 1, body.len() - 1] {
            let mut b = body.clone();
            b[at] ^= 1;
            assert!(u.decrypt(&b).is_err(), "flip at {at}");
        }
        // Cut the last chunk off: the new last chunk lacks its last flag.
        let cut = &body[..NONCE + 2 * (CHUNK + TAG)];
        assert!(u.decrypt(cut).unwrap_err().to_string().contains("chunk 1"));
        // The header's MAC binds it: change its MAC line.
        let mut h = B64_META.decode(&header).unwrap();
        let n = h.len();
        h[n - 3] = if h[n - 3] == b'A' { b'B' } else { b'A' };
        let bad = SessionMeta {
            age_header: Some(B64_META.encode(&h)),
            ..meta.clone()
        };
        let e = Unsealer::new(&bad, &ids).unwrap_err().to_string();
        assert!(e.contains("MAC") || e.contains("base64"), "{e}");
        // Another identity: no match, and the message names the recipient.
        let other = vec![Box::new(age::x25519::Identity::generate()) as Box<dyn age::Identity>];
        let e = Unsealer::new(&meta, &other).unwrap_err().to_string();
        assert!(e.contains(&r.to_string()), "{e}");
    }

    #[test]
    fn identity_files_parse_and_errors_name_the_line_not_the_secret() {
        let id = age::x25519::Identity::generate();
        let sk = id.to_string();
        let text = format!(
            "# created: now\n# public key: {}\n{}\n",
            id.to_public(),
            sk.expose_secret()
        );
        assert_eq!(load_identities(&text).unwrap().len(), 1);
        let bad = format!("{}\nAGE-SECRET-KEY-1NOTAKEY\n", sk.expose_secret());
        let e = load_identities(&bad).err().unwrap().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("NOTAKEY"), "{e}");
        assert!(load_identities("# nothing\n").is_err());
        // A generated identity file loads, and opens what is sealed to its recipient.
        let new = NewIdentity::generate();
        assert!(!format!("{new:?}").contains("AGE-SECRET"));
        let ids = load_identities(new.file_text()).unwrap();
        let r = parse_recipient(new.recipient()).unwrap();
        let (key, header) = SealKey::generate(&[r]).unwrap();
        let meta = SessionMeta {
            recipients: vec![new.recipient().to_string()],
            age_header: Some(header),
            ..SessionMeta::default()
        };
        let mut rec = Vec::new();
        key.seal(1, b"x", &mut rec).unwrap();
        let u = Unsealer::new(&meta, &ids).unwrap();
        assert_eq!(u.decrypt(&rec[RECORD_HEADER_LEN + 8..]).unwrap(), b"x");
        assert!(format!(
            "{:?}",
            Unsealer {
                key: SealKey(FileKey::new(Box::new([7; 16])))
            }
        )
        .contains("redacted"));
    }
}
