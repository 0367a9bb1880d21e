//! Fuzz-style property tests of the data-phase frame reader (`datapath::FrameReader`, security
//! case 27: oversized or garbled frames are errors, never panics) and of `review::printable`, the
//! escaping of peer-controlled text before it reaches a reviewer's terminal. `FrameReader` reads
//! an `AsyncRead`, so there is no libFuzzer target for it (docs/fuzzing.md); these run the
//! reader over byte slices and over a reader that hands out bytes a few at a time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};
use ward_server::review::printable;
use ward_transport::datapath::{FrameReader, Inbound, DATA, EOF, HEADER, MAX_DATA};

/// Hands out at most `step` bytes per read.
struct Chunky {
    data: Vec<u8>,
    pos: usize,
    step: usize,
}

impl AsyncRead for Chunky {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .step
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, PartialEq)]
enum Item {
    Data(Vec<u8>),
    Eof,
    Control(Vec<u8>),
}

/// Everything the reader yields, then how it ended (`Ok` = clean end of stream).
fn read_all<R: AsyncRead + Unpin>(r: R, input_len: usize) -> (Vec<Item>, io::Result<()>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut fr = FrameReader::new(r);
        let mut items = Vec::new();
        // Every item consumes at least one byte except an empty DATA frame's (5 bytes), so
        // more items than input bytes would mean the reader loops.
        for _ in 0..=input_len + 1 {
            match fr.next().await {
                Ok(None) => return (items, Ok(())),
                Ok(Some(Inbound::Data(d))) => items.push(Item::Data(d.to_vec())),
                Ok(Some(Inbound::Eof)) => items.push(Item::Eof),
                Ok(Some(Inbound::Control(c))) => items.push(Item::Control(c)),
                Err(e) => return (items, Err(e)),
            }
        }
        panic!("the reader yielded more items than there are input bytes");
    })
}

fn check_any(bytes: &[u8], step: usize) -> Result<(), TestCaseError> {
    let (items, end) = read_all(
        Chunky {
            data: bytes.to_vec(),
            pos: 0,
            step,
        },
        bytes.len(),
    );
    let mut consumed = 0usize;
    for item in &items {
        match item {
            Item::Data(d) => {
                prop_assert!(d.len() <= MAX_DATA);
                consumed += d.len();
            }
            Item::Eof => consumed += HEADER,
            Item::Control(c) => {
                prop_assert!(c.len() >= HEADER);
                prop_assert!(c.len() <= HEADER + ward_core::frame::MAX_PAYLOAD);
                prop_assert!(c[0] != DATA && c[0] != EOF);
                // Handed to the control decoder: a whole frame, so never "incomplete".
                prop_assert!(!matches!(ward_core::frame::decode(c), Ok(None)));
                consumed += c.len();
            }
        }
    }
    prop_assert!(consumed <= bytes.len(), "yielded more bytes than were read");
    if let Err(e) = &end {
        prop_assert!(
            matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ),
            "{:?}",
            e
        );
    }
    // Same items whether the bytes come all at once or a few at a time (data may be split
    // differently; compare the data bytes, not the chunks).
    let (whole, whole_end) = read_all(bytes, bytes.len());
    prop_assert_eq!(flatten(&items), flatten(&whole));
    prop_assert_eq!(end.is_ok(), whole_end.is_ok());
    Ok(())
}

/// Data bytes joined; other items as markers.
fn flatten(items: &[Item]) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::new();
    for i in items {
        match (out.last_mut(), i) {
            (Some(Item::Data(acc)), Item::Data(d)) => acc.extend_from_slice(d),
            (_, Item::Data(d)) if d.is_empty() => {}
            (_, Item::Data(d)) => out.push(Item::Data(d.clone())),
            (_, Item::Eof) => out.push(Item::Eof),
            (_, Item::Control(c)) => out.push(Item::Control(c.clone())),
        }
    }
    out
}

fn header(t: u8, len: u32) -> Vec<u8> {
    let mut v = vec![t];
    v.extend_from_slice(&len.to_be_bytes());
    v
}

#[derive(Clone, Debug)]
enum Frame {
    Data(Vec<u8>),
    Eof,
    Control(u8, Vec<u8>),
    /// A header claiming `len` bytes, then whatever follows.
    Header(u8, u32),
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Frame::Data),
        1 => Just(Frame::Eof),
        2 => (any::<u8>().prop_filter("control", |t| *t != DATA && *t != EOF),
              proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(t, p)| Frame::Control(t, p)),
        1 => (prop_oneof![Just(DATA), Just(EOF), any::<u8>()],
              prop_oneof![Just(MAX_DATA as u32), Just(MAX_DATA as u32 + 1),
                          Just(ward_core::frame::MAX_PAYLOAD as u32 + 1), any::<u32>()])
            .prop_map(|(t, l)| Frame::Header(t, l)),
    ]
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        match f {
            Frame::Data(d) => {
                out.extend(header(DATA, d.len() as u32));
                out.extend_from_slice(d);
            }
            Frame::Eof => out.extend(header(EOF, 0)),
            Frame::Control(t, p) => {
                out.extend(header(*t, p.len() as u32));
                out.extend_from_slice(p);
            }
            Frame::Header(t, l) => out.extend(header(*t, *l)),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200), step in 1usize..9) {
        check_any(&bytes, step)?;
    }

    #[test]
    fn frame_sequences(frames in proptest::collection::vec(arb_frame(), 0..6), step in 1usize..9) {
        let bytes = encode(&frames);
        check_any(&bytes, step)?;
        if frames.iter().any(|f| matches!(f, Frame::Header(..))) {
            return Ok(());
        }
        // Well-formed frames: everything comes out exactly as it went in, then a clean end.
        let (items, end) = read_all(&bytes[..], bytes.len());
        prop_assert!(end.is_ok(), "{:?}", end);
        let want: Vec<Item> = frames
            .iter()
            .map(|f| match f {
                Frame::Data(d) => Item::Data(d.clone()),
                Frame::Eof => Item::Eof,
                Frame::Control(t, p) => {
                    let mut c = header(*t, p.len() as u32);
                    c.extend_from_slice(p);
                    Item::Control(c)
                }
                Frame::Header(..) => unreachable!(),
            })
            .collect();
        prop_assert_eq!(flatten(&items), flatten(&want));
    }

    #[test]
    fn printable_never_emits_control_characters(s in "\\PC{0,40}|[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}a]{0,20}") {
        let p = printable(&s);
        prop_assert!(!p.chars().any(char::is_control), "{:?}", p);
        if !s.chars().any(char::is_control) {
            prop_assert_eq!(p, s);
        }
    }
}

#[test]
fn oversized_headers_are_refused_before_the_payload() {
    for (t, len) in [
        (DATA, MAX_DATA as u32 + 1),
        (DATA, u32::MAX),
        (0x01, ward_core::frame::MAX_PAYLOAD as u32 + 1),
        (0x42, u32::MAX),
    ] {
        // Only the header: the reader must not wait for (or allocate) the payload.
        let (items, end) = read_all(&header(t, len)[..], HEADER);
        assert!(items.is_empty());
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
