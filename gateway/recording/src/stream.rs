//! Where verification reads records from: a recording held in memory, or one read through a
//! bounded window from any [`std::io::Read`] (a file), so that verifying a recording of any size
//! holds at most one record (≤ [`crate::MAX_RECORD_BODY`]) plus a read chunk in memory.

use std::io::{self, Read};

use crate::format::{check_magic, magic_of, parse_raw, Raw, MAX_RECORD_BODY, RECORD_HEADER_LEN};
use crate::ReadError;

/// Bytes read from the input at a time.
const READ_CHUNK: usize = 64 * 1024;

/// A recording's bytes, record by record, at absolute offsets.
pub(crate) trait Source {
    /// Check the magic; `Ok(offset of record 0)`.
    fn magic(&mut self) -> Result<(usize, &'static [u8; 8]), ReadError>;
    /// The record at byte `pos` (ordinal `index`), offsets absolute.
    fn raw(&mut self, pos: usize, index: u64) -> Result<Raw<'_>, ReadError>;
    /// Whether the input goes on at `pos`.
    fn more(&mut self, pos: usize) -> bool;
    /// The input's length (once the walk has reached its end).
    fn len(&self) -> usize;
}

impl Source for &[u8] {
    fn magic(&mut self) -> Result<(usize, &'static [u8; 8]), ReadError> {
        Ok((check_magic(self)?, magic_of(self)))
    }
    fn raw(&mut self, pos: usize, index: u64) -> Result<Raw<'_>, ReadError> {
        parse_raw(self, pos, index)
    }
    fn more(&mut self, pos: usize) -> bool {
        pos < <[u8]>::len(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

/// A bounded window over a reader: `buf[start..end]` holds the input from byte `base` on.
pub(crate) struct Window<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    base: usize,
    eof: bool,
    /// The first read error (the walk then sees the input end there).
    pub(crate) error: Option<io::Error>,
}

impl<R: Read> Window<R> {
    pub(crate) fn new(r: R) -> Self {
        Window {
            r,
            buf: Vec::new(),
            start: 0,
            end: 0,
            base: 0,
            eof: false,
            error: None,
        }
    }

    fn held(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// Drop what lies before `pos` and read until `n` bytes from `pos` are held (or the input ends).
    fn fill(&mut self, pos: usize, n: usize) {
        let skip = pos.saturating_sub(self.base).min(self.end - self.start);
        self.start += skip;
        self.base += skip;
        if self.end - self.start >= n || self.eof {
            return;
        }
        // Move what is held to the front, and make room for the rest (the buffer only grows, to
        // at most one record plus a read chunk).
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let room = self.end + n.max(READ_CHUNK);
        if self.buf.len() < room {
            self.buf.resize(room, 0);
        }
        while self.end < n && !self.eof {
            let got = match self.buf.get_mut(self.end..) {
                Some(space) => self.r.read(space),
                None => Ok(0),
            };
            match got {
                Ok(0) => self.eof = true,
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(e);
                    self.eof = true;
                }
            }
        }
    }
}

/// `e` with its offset moved by `by` (a window's errors are relative to the window).
fn shifted(e: ReadError, by: usize) -> ReadError {
    let by = by as u64;
    match e {
        ReadError::Truncated {
            record,
            offset,
            needed,
            available,
        } => ReadError::Truncated {
            record,
            offset: offset + by,
            needed,
            available,
        },
        ReadError::UnknownType {
            record,
            offset,
            code,
        } => ReadError::UnknownType {
            record,
            offset: offset + by,
            code,
        },
        ReadError::Oversized {
            record,
            offset,
            len,
            max,
        } => ReadError::Oversized {
            record,
            offset: offset + by,
            len,
            max,
        },
        ReadError::Malformed {
            record,
            offset,
            what,
        } => ReadError::Malformed {
            record,
            offset: offset + by,
            what,
        },
        other => other,
    }
}

impl<R: Read> Source for Window<R> {
    fn magic(&mut self) -> Result<(usize, &'static [u8; 8]), ReadError> {
        self.fill(0, crate::MAGIC.len());
        Ok((check_magic(self.held())?, magic_of(self.held())))
    }

    fn raw(&mut self, pos: usize, index: u64) -> Result<Raw<'_>, ReadError> {
        self.fill(pos, RECORD_HEADER_LEN);
        let body = match self.held().get(1..RECORD_HEADER_LEN) {
            Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]).min(MAX_RECORD_BODY),
            _ => 0,
        };
        self.fill(pos, RECORD_HEADER_LEN + body as usize);
        let base = self.base;
        match parse_raw(self.held(), 0, index) {
            Ok(mut raw) => {
                raw.offset += base;
                Ok(raw)
            }
            Err(e) => Err(shifted(e, base)),
        }
    }

    fn more(&mut self, pos: usize) -> bool {
        self.fill(pos, 1);
        !self.held().is_empty()
    }

    fn len(&self) -> usize {
        self.base + self.held().len()
    }
}
