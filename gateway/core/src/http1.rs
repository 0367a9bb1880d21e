//! HTTP/1.1 message framing, shared by the stages that follow HTTP/1.1 streams (the credential
//! injector, [`crate::inject::http`], and the HTTP decoder of `ward-decode`): how a request's or a
//! response's body is delimited, read strictly for requests (refusing every ambiguity a device
//! could resolve differently: request smuggling, security case 45) and leniently for responses.
//!
//! Pure helpers: bytes in, a framing or one step of a chunk-size line out.

use crate::stage::StopKind;

/// The largest request head (or trailer section, or response head) a stage holds, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;

/// The most header fields in one head.
pub const MAX_HEADERS: usize = 128;

/// The longest chunk-size line (size and extensions), in bytes.
pub const MAX_CHUNK_LINE: usize = 4096;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Framing {
    /// A request's framing, refusing every ambiguity: both `Content-Length` and
    /// `Transfer-Encoding`; several `Content-Length` that differ, or one that is not plain digits;
    /// a `Transfer-Encoding` other than exactly one header `chunked`; one at all in HTTP/1.0.
    pub fn of_request(headers: &[httparse::Header<'_>], http10: bool) -> Result<Self, StopKind> {
        let mut length: Option<u64> = None;
        let mut te = 0;
        let mut chunked = false;
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let n = content_length(h.value)
                    .ok_or_else(|| bad("a Content-Length that is not plain digits"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("several Content-Length headers that differ"));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                te += 1;
                chunked = trim(h.value).eq_ignore_ascii_case(b"chunked");
            }
        }
        match (length, te) {
            (None, 0) => Ok(Framing::None),
            (Some(n), 0) => Ok(Framing::Length(n)),
            (Some(_), _) => Err(bad("both Content-Length and Transfer-Encoding")),
            (None, _) if http10 => Err(bad("Transfer-Encoding in an HTTP/1.0 request")),
            (None, 1) if chunked => Ok(Framing::Chunked),
            (None, _) => Err(bad(
                "a Transfer-Encoding other than exactly one `chunked` (codings are not supported)",
            )),
        }
    }
}

/// A response's framing as the device means it, leniently; `None`: the body runs until the
/// device closes.
pub fn response_framing(headers: &[httparse::Header<'_>]) -> Option<Framing> {
    let mut length = None;
    let mut te = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = content_length(h.value)?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    match (te, length) {
        (Some(v), _) => {
            let last = v.rsplit(|&b| b == b',').next().unwrap_or_default();
            trim(last)
                .eq_ignore_ascii_case(b"chunked")
                .then_some(Framing::Chunked)
        }
        (None, Some(n)) => Some(Framing::Length(n)),
        (None, None) => None,
    }
}

/// `1*DIGIT`, at most 18 of them (fits a u64 with room), spaces around allowed.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let v = trim(value);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Where a reader is in a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// In a chunk-size line: `len` bytes of it read, `digits` hex digits making `value`.
    /// `digits == u8::MAX` once past the digits (extensions); `len` counts towards
    /// [`MAX_CHUNK_LINE`] and is `usize::MAX` after its CR.
    Size {
        /// Bytes of the line read.
        len: usize,
        /// The size so far.
        value: u64,
        /// Hex digits read.
        digits: u8,
    },
    /// In chunk data: this many bytes left.
    Data(u64),
    /// After chunk data: its CR.
    DataCr,
    /// After chunk data's CR: its LF.
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

impl Chunk {
    /// At the start of a chunk-size line.
    pub const START: Chunk = Chunk::Size {
        len: 0,
        value: 0,
        digits: 0,
    };
}

/// One step of a chunk-size line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeStep {
    /// The line goes on.
    More(Chunk),
    /// The line ended: the chunk's size.
    Done(u64),
}

/// One byte of a chunk-size line: `1*15HEXDIG *( BWS ";" ... ) CRLF`, strictly.
pub fn chunk_size_byte(len: usize, value: u64, digits: u8, b: u8) -> Result<SizeStep, StopKind> {
    const PAST_DIGITS: u8 = u8::MAX;
    const AFTER_CR: usize = usize::MAX;
    if len == AFTER_CR {
        return if b == b'\n' {
            Ok(SizeStep::Done(value))
        } else {
            Err(bad("a bare CR in a chunk-size line"))
        };
    }
    if len >= MAX_CHUNK_LINE {
        return Err(StopKind::TooLarge {
            limit: MAX_CHUNK_LINE,
        });
    }
    let more = |digits, value| {
        Ok(SizeStep::More(Chunk::Size {
            len: len + 1,
            value,
            digits,
        }))
    };
    match b {
        b'\r' if digits > 0 => Ok(SizeStep::More(Chunk::Size {
            len: AFTER_CR,
            value,
            digits,
        })),
        b'\n' => Err(bad("a bare LF in a chunk-size line (lines end with CRLF)")),
        _ if digits == PAST_DIGITS => {
            if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 {
                more(digits, value)
            } else {
                Err(bad("an invalid byte in a chunk extension"))
            }
        }
        _ => match (b as char).to_digit(16) {
            Some(d) if digits < 15 => more(digits + 1, value << 4 | u64::from(d)),
            Some(_) => Err(bad("a chunk size of more than 15 hex digits")),
            None if digits > 0 && matches!(b, b';' | b' ' | b'\t') => more(PAST_DIGITS, value),
            None => Err(bad("a chunk-size line that does not start with hex digits")),
        },
    }
}

/// A request refused for `why` ([`StopKind::Unparseable`]).
pub fn bad(why: &str) -> StopKind {
    StopKind::Unparseable(format!("HTTP request refused: {why}"))
}

/// `input` split at `n` bytes (or whole when shorter).
pub fn split(input: &[u8], n: u64) -> (&[u8], &[u8]) {
    let at = usize::try_from(n).unwrap_or(usize::MAX).min(input.len());
    input.split_at(at)
}

/// `v` without the spaces and tabs around it.
pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    v.get(start..end).unwrap_or_default()
}

/// RFC 9110 `tchar`.
pub fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;

    fn h<'a>(name: &'a str, value: &'a [u8]) -> httparse::Header<'a> {
        httparse::Header { name, value }
    }

    #[test]
    fn request_framing_refuses_ambiguity() {
        assert_eq!(Framing::of_request(&[], false).unwrap(), Framing::None);
        assert_eq!(
            Framing::of_request(&[h("Content-Length", b" 12 ")], false).unwrap(),
            Framing::Length(12)
        );
        assert_eq!(
            Framing::of_request(&[h("transfer-encoding", b"Chunked")], false).unwrap(),
            Framing::Chunked
        );
        for bad in [
            vec![
                h("Content-Length", b"1"),
                h("Transfer-Encoding", b"chunked"),
            ],
            vec![h("Content-Length", b"1"), h("Content-Length", b"2")],
            vec![h("Content-Length", b"+1")],
            vec![h("Transfer-Encoding", b"gzip, chunked")],
            vec![
                h("Transfer-Encoding", b"chunked"),
                h("Transfer-Encoding", b"chunked"),
            ],
        ] {
            assert!(Framing::of_request(&bad, false).is_err(), "{bad:?}");
        }
        assert!(Framing::of_request(&[h("Transfer-Encoding", b"chunked")], true).is_err());
    }

    #[test]
    fn response_framing_is_lenient() {
        assert_eq!(
            response_framing(&[h("Transfer-Encoding", b"gzip, chunked")]),
            Some(Framing::Chunked)
        );
        assert_eq!(response_framing(&[]), None);
        assert_eq!(
            response_framing(&[h("Content-Length", b"0")]),
            Some(Framing::Length(0))
        );
    }

    #[test]
    fn chunk_size_lines() {
        let mut c = Chunk::START;
        let mut done = None;
        for &b in b"1a;x=y\r\n" {
            let Chunk::Size { len, value, digits } = c else {
                panic!()
            };
            match chunk_size_byte(len, value, digits, b).unwrap() {
                SizeStep::More(n) => c = n,
                SizeStep::Done(n) => done = Some(n),
            }
        }
        assert_eq!(done, Some(0x1a));
        assert!(chunk_size_byte(0, 0, 0, b'g').is_err());
        assert!(chunk_size_byte(0, 0, 0, b'\n').is_err());
    }
}
