//! Exports: asciicast v2, pcap (parsed back by a small reader here), raw, JSON lines, hexdump,
//! and the telnet filter.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;

use base64::Engine as _;
use common::*;
use proptest::prelude::*;
use ward_recording::export::*;
use ward_recording::*;

fn session(protocol: &str, chunks: &[(Direction, u64, &[u8])]) -> Vec<Record> {
    let s = signer();
    let mut m = meta("exp-1");
    m.protocol = protocol.into();
    let mut out = Vec::new();
    let mut enc = Encoder::start(&m, s.clone(), CheckpointPolicy::default(), &mut out).unwrap();
    for (dir, t, p) in chunks {
        enc.data(*dir, *t, p, &mut out);
    }
    enc.finish(9_000_000_000, &end_info(), &mut out);
    assert!(verify(&out, &s.public_key()).ok);
    read_all(&out).unwrap()
}

/// Issue 12 item 7. Reproduction: `ward export --format asciicast` kept the OSC title, OSC 52
/// clipboard write and the device-attributes query that `ward replay` drops; playing the export
/// sent them to the reviewer's terminal.
#[test]
fn asciicast_filters_what_replay_filters_unless_raw() {
    use Direction::*;
    let evil: &[u8] =
        b"\x1b]0;owned\x07\x1b]52;c;cm0gLXJmIH4=\x07\x1b[31mred\x1b[0m\x1b[c\x1bP1$qm\x1b\\ok\r\n";
    let records = session("raw", &[(Down, 1_000_000, evil)]);
    let text = |raw: bool| {
        let cast = asciicast(
            &records,
            &AsciicastOpts {
                raw,
                ..AsciicastOpts::default()
            },
        )
        .unwrap();
        let mut out = String::new();
        for line in cast
            .split(|b| *b == b'\n')
            .skip(1)
            .filter(|l| !l.is_empty())
        {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            out.push_str(v[2].as_str().unwrap());
        }
        out
    };
    let safe = text(false);
    assert_eq!(safe, "\x1b[31mred\x1b[0mok\r\n", "{safe:?}");
    assert_eq!(text(true).as_bytes(), evil);
}

#[test]
fn asciicast_v2_strips_telnet_and_keeps_utf8_across_chunks() {
    use Direction::*;
    let records = session(
        "telnet",
        &[
            (
                Down,
                1_000_000,
                b"\xff\xfb\x01\xff\xfb\x03login: \xff\xfa\x18\x01\xff",
            ),
            (Down, 2_000_000, b"\xf0ok \xe2\x82"), // SB ... IAC | SE split; "€" split
            (Up, 2_500_000, b"se\xff\xffcret\r\n"), // never echoed; IAC IAC = 0xff data
            (Down, 3_000_000, b"\xac done\x1b[0m\r\n"),
        ],
    );
    let cast = asciicast(
        &records,
        &AsciicastOpts {
            width: 132,
            height: 43,
            include_input: true,
            raw: false,
        },
    )
    .unwrap();
    let text = String::from_utf8(cast).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["width"], 132);
    assert_eq!(header["height"], 43);
    assert_eq!(header["timestamp"], 1_795_000_000);
    assert!(header["title"]
        .as_str()
        .unwrap()
        .contains("infusion-pump-12"));
    let events: Vec<(f64, String, String)> =
        lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let out: String = events
        .iter()
        .filter(|e| e.1 == "o")
        .map(|e| e.2.as_str())
        .collect();
    let inp: String = events
        .iter()
        .filter(|e| e.1 == "i")
        .map(|e| e.2.as_str())
        .collect();
    assert_eq!(out, "login: ok € done\x1b[0m\r\n");
    assert_eq!(inp, "se\u{fffd}cret\r\n");
    assert_eq!(events[0], (0.001, "o".to_string(), "login: ".to_string()));
    assert!(
        events.windows(2).all(|w| w[0].0 <= w[1].0),
        "times non-decreasing"
    );

    let no_input = asciicast(&records, &AsciicastOpts::default()).unwrap();
    assert!(!String::from_utf8(no_input).unwrap().contains("\"i\""));
}

#[test]
fn raw_and_json_lines() {
    use Direction::*;
    let records = session(
        "raw",
        &[(Up, 1, b"\x00\x01GET"), (Down, 2, b"\xffOK"), (Up, 3, b"!")],
    );
    assert_eq!(
        raw(&records),
        (b"\x00\x01GET!".to_vec(), b"\xffOK".to_vec())
    );
    let jl = json_lines(&records);
    let vals: Vec<serde_json::Value> = jl
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(vals.len(), records.len());
    assert_eq!(vals[0]["type"], "meta");
    assert_eq!(vals[0]["meta"]["session_id"], "exp-1");
    let data: Vec<&serde_json::Value> = vals.iter().filter(|v| v["type"] == "data").collect();
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(data[1]["dir"], "down");
    assert_eq!(
        b64.decode(data[1]["payload_b64"].as_str().unwrap())
            .unwrap(),
        b"\xffOK"
    );
    assert_eq!(vals.last().unwrap()["type"], "checkpoint");
}

#[test]
fn hexdump_lines() {
    let s = hexdump(12_345_678, Direction::Up, b"GET / HTTP/1.1\r\nHost: x\r\n");
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        "+0.012345s ▶ 0000  47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a  |GET / HTTP/1.1..|"
    );
    assert_eq!(
        lines[1],
        "+0.012345s ▶ 0010  48 6f 73 74 3a 20 78 0d 0a                       |Host: x..|"
    );
    assert!(hexdump(2_000_000_000, Direction::Down, b"\x00").starts_with("+2.000000s ◀ 0000  00 "));
    assert_eq!(hexdump(0, Direction::Down, b""), "");
}

// ---- a small pcap reader, independent of the writer ----

struct Seg {
    ts_us: u64,
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: Vec<u8>,
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn parse_pcap(b: &[u8]) -> Vec<Seg> {
    assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 0xa1b2c3d4);
    assert_eq!(u16::from_le_bytes([b[4], b[5]]), 2);
    assert_eq!(u16::from_le_bytes([b[6], b[7]]), 4);
    assert_eq!(
        u32::from_le_bytes(b[20..24].try_into().unwrap()),
        101,
        "LINKTYPE_RAW"
    );
    let mut pos = 24;
    let mut segs = Vec::new();
    while pos < b.len() {
        let sec = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()) as u64;
        let usec = u32::from_le_bytes(b[pos + 4..pos + 8].try_into().unwrap()) as u64;
        let incl = u32::from_le_bytes(b[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let orig = u32::from_le_bytes(b[pos + 12..pos + 16].try_into().unwrap()) as usize;
        assert_eq!(incl, orig);
        let pkt = &b[pos + 16..pos + 16 + incl];
        pos += 16 + incl;
        let (src_ip, dst_ip, tcp, pseudo): (std::net::IpAddr, std::net::IpAddr, &[u8], u32) =
            match pkt[0] >> 4 {
                4 => {
                    let ihl = (pkt[0] & 0x0f) as usize * 4;
                    assert_eq!(u16::from_be_bytes([pkt[2], pkt[3]]) as usize, pkt.len());
                    assert_eq!(pkt[9], 6);
                    assert_eq!(fold(sum16(&pkt[..ihl])), 0xffff, "IPv4 header checksum");
                    let s: [u8; 4] = pkt[12..16].try_into().unwrap();
                    let d: [u8; 4] = pkt[16..20].try_into().unwrap();
                    let tcp = &pkt[ihl..];
                    (
                        s.into(),
                        d.into(),
                        tcp,
                        sum16(&s) + sum16(&d) + 6 + tcp.len() as u32,
                    )
                }
                6 => {
                    assert_eq!(
                        u16::from_be_bytes([pkt[4], pkt[5]]) as usize,
                        pkt.len() - 40
                    );
                    assert_eq!(pkt[6], 6);
                    let s: [u8; 16] = pkt[8..24].try_into().unwrap();
                    let d: [u8; 16] = pkt[24..40].try_into().unwrap();
                    let tcp = &pkt[40..];
                    (
                        s.into(),
                        d.into(),
                        tcp,
                        sum16(&s) + sum16(&d) + 6 + tcp.len() as u32,
                    )
                }
                v => panic!("IP version {v}"),
            };
        assert_eq!(fold(pseudo + sum16(tcp)), 0xffff, "TCP checksum");
        let off = (tcp[12] >> 4) as usize * 4;
        segs.push(Seg {
            ts_us: sec * 1_000_000 + usec,
            src: SocketAddr::new(src_ip, u16::from_be_bytes([tcp[0], tcp[1]])),
            dst: SocketAddr::new(dst_ip, u16::from_be_bytes([tcp[2], tcp[3]])),
            seq: u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
            ack: u32::from_be_bytes(tcp[8..12].try_into().unwrap()),
            flags: tcp[13],
            payload: tcp[off..].to_vec(),
        });
    }
    segs
}

/// Reassemble one direction by sequence number, checking the handshake, acks and FIN.
fn reassemble(segs: &[Seg], from: SocketAddr) -> Vec<u8> {
    let mine: Vec<&Seg> = segs.iter().filter(|s| s.src == from).collect();
    let theirs: Vec<&Seg> = segs.iter().filter(|s| s.src != from).collect();
    assert!(mine[0].flags & 0x02 != 0, "starts with SYN");
    assert!(mine.last().unwrap().flags & 0x10 != 0);
    assert!(mine.iter().any(|s| s.flags & 0x01 != 0), "has FIN");
    let isn = mine[0].seq;
    let peer_isn = theirs[0].seq;
    let mut data = Vec::new();
    let mut next = isn.wrapping_add(1);
    for s in &mine[1..] {
        assert!(s.payload.len() <= 1460);
        assert_eq!(s.seq, next, "contiguous sequence numbers");
        assert!(s.ack.wrapping_sub(peer_isn) >= 1, "acks the peer's SYN");
        data.extend_from_slice(&s.payload);
        next = next.wrapping_add(s.payload.len() as u32 + u32::from(s.flags & 0x01));
    }
    // The peer's final ACK covers our FIN.
    assert_eq!(theirs.last().unwrap().ack, next);
    data
}

fn check_pcap(client: SocketAddr, device: SocketAddr) {
    use Direction::*;
    let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
    let records = session(
        "dicom",
        &[
            (Up, 1_000, b"A-ASSOCIATE-RQ"),
            (Down, 2_000_500, &big),
            (Up, 3_000_000, b"\xff\x00bye"),
        ],
    );
    let (up, down) = raw(&records);
    let p = pcap(&records, client, device).unwrap();
    let segs = parse_pcap(&p);
    assert_eq!(segs[0].flags, 0x02);
    assert_eq!(segs[1].flags, 0x12);
    assert_eq!(segs[2].flags, 0x10);
    assert_eq!(segs[0].dst.port(), 104);
    assert_eq!(reassemble(&segs, segs[0].src), up);
    assert_eq!(reassemble(&segs, segs[1].src), down);
    // Timestamps: session start + record time.
    let start_us = 1_795_000_000_123u64 * 1000;
    assert_eq!(segs[0].ts_us, start_us);
    let first_down = segs
        .iter()
        .find(|s| s.src == segs[1].src && !s.payload.is_empty())
        .unwrap();
    assert_eq!(first_down.ts_us, start_us + 2_000);
    assert!(segs.windows(2).all(|w| w[0].ts_us <= w[1].ts_us));
    assert_eq!(
        segs.last().unwrap().ts_us,
        start_us + 9_000_000,
        "FIN at the end record's time"
    );
}

#[test]
fn pcap_ipv4_reassembles_to_the_recorded_bytes() {
    check_pcap(
        "192.0.2.10:50123".parse().unwrap(),
        "10.20.0.12:104".parse().unwrap(),
    );
}

#[test]
fn pcap_ipv6_reassembles_to_the_recorded_bytes() {
    check_pcap(
        "[2001:db8::10]:50123".parse().unwrap(),
        "[2001:db8:1::12]:104".parse().unwrap(),
    );
}

#[test]
fn telnet_filter_split_sequences() {
    let cases: &[(&[&[u8]], &[u8])] = &[
        (&[b"a\xff", b"\xffb"], b"a\xffb"),        // IAC IAC split
        (&[b"a\xff", b"\xfb", b"\x01b"], b"ab"),   // IAC WILL ECHO in three chunks
        (&[b"\xff\xfd\x18x\xff\xfe\x1fy"], b"xy"), // DO, DONT
        (&[b"1\xff\xfa\x18\x00VT1", b"00\xff", b"\xf0", b"2"], b"12"), // SB ... IAC SE split
        (&[b"\xff\xfa\x18\xff\xff\xff\xf0z"], b"z"), // escaped IAC inside SB
        (&[b"q\xff\xf1r\xff\xf9s"], b"qrs"),       // NOP, GA
        (&[b"\xff"], b""),                         // dangling IAC
    ];
    for (chunks, want) in cases {
        let mut f = TelnetFilter::new();
        let mut out = Vec::new();
        for c in *chunks {
            f.push(c, &mut out);
        }
        assert_eq!(&out, want, "{chunks:?}");
    }
}

#[derive(Debug, Clone)]
enum Tok {
    Data(Vec<u8>),
    Literal255,
    Cmd(u8),
    Opt(u8, u8),
    Sub(Vec<u8>),
}

fn tok() -> impl Strategy<Value = Tok> {
    prop_oneof![
        proptest::collection::vec(0u8..=254, 0..8).prop_map(Tok::Data),
        Just(Tok::Literal255),
        (241u8..=249).prop_map(Tok::Cmd),
        (251u8..=254, any::<u8>()).prop_map(|(v, o)| Tok::Opt(v, o)),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Tok::Sub),
    ]
}

proptest! {
    #[test]
    fn telnet_filter_never_panics_and_is_split_invariant(input in proptest::collection::vec(any::<u8>(), 0..256), cut in any::<prop::sample::Index>()) {
        let whole = TelnetFilter::new().filter(&input);
        let (a, b) = input.split_at(cut.index(input.len() + 1).min(input.len()));
        let mut f = TelnetFilter::new();
        let mut split = f.filter(a);
        split.extend(f.filter(b));
        prop_assert_eq!(&whole, &split);
        prop_assert!(whole.len() <= input.len());
    }

    #[test]
    fn telnet_filter_recovers_exactly_the_data(toks in proptest::collection::vec(tok(), 0..32), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let (mut wire, mut want) = (Vec::new(), Vec::new());
        for t in &toks {
            match t {
                Tok::Data(d) => { wire.extend(d); want.extend(d); }
                Tok::Literal255 => { wire.extend([255, 255]); want.push(255); }
                Tok::Cmd(c) => wire.extend([255, *c]),
                Tok::Opt(v, o) => wire.extend([255, *v, *o]),
                Tok::Sub(body) => {
                    wire.extend([255, 250]);
                    for b in body { if *b == 255 { wire.extend([255, 255]) } else { wire.push(*b) } }
                    wire.extend([255, 240]);
                }
            }
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.sort_unstable();
        let mut f = TelnetFilter::new();
        let mut out = Vec::new();
        let mut prev = 0;
        for p in points.into_iter().chain([wire.len()]) {
            f.push(&wire[prev..p.max(prev)], &mut out);
            prev = p.max(prev);
        }
        // Data bytes only: no command, option or subnegotiation byte leaks; 0xff only where the
        // data had a literal 255.
        prop_assert_eq!(out, want);
    }
}
