//! Exports and replay helpers, pure: asciicast v2 (terminal sessions), pcap (synthesized TCP/IP
//! for Wireshark/tshark), raw per-direction bytes, JSON lines, and hexdump lines.
//!
//! All take decoded records ([`crate::format::read_all`] / [`crate::format::read_prefix`]);
//! verify first ([`crate::verify()`]) if the export must be trustworthy.

mod telnet;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;

pub use crate::format::{read_all, read_prefix};
use crate::format::{Direction, Record, SessionMeta};
use crate::RecError;
pub use telnet::TelnetFilter;

use crate::terminal::TerminalGuard;

/// asciicast options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsciicastOpts {
    /// Terminal columns.
    pub width: u16,
    /// Terminal rows.
    pub height: u16,
    /// Also emit `"i"` events for client → device bytes (input that was never echoed included).
    pub include_input: bool,
    /// Keep every escape sequence the device sent. By default the ones `ward replay` drops
    /// ([`crate::terminal::TerminalGuard`]: titles, clipboard, queries, mouse modes, DCS…) are
    /// dropped here too, since a player writes the export to a reviewer's terminal.
    pub raw: bool,
}

impl Default for AsciicastOpts {
    /// 80×24, output only.
    fn default() -> Self {
        AsciicastOpts {
            width: 80,
            height: 24,
            include_input: false,
            raw: false,
        }
    }
}

fn meta_of(records: &[Record]) -> Option<&SessionMeta> {
    records.iter().find_map(|r| match r {
        Record::Meta(m) => Some(m),
        _ => None,
    })
}

/// Decodes UTF-8 across chunk boundaries; invalid bytes become U+FFFD.
#[derive(Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest
                        .split_at_checked(e.valid_up_to())
                        .unwrap_or((rest, &[]));
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{fffd}');
                            rest = bad.get(n..).unwrap_or_default();
                        }
                        None => {
                            rest = bad; // incomplete sequence at the end: wait for more
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// An asciicast v2 recording (<https://docs.asciinema.org/manual/asciicast/v2/>) of a terminal
/// session: header line, then `[seconds, "o", text]` for device output and, with
/// `include_input`, `[seconds, "i", text]` for client input. Telnet negotiation is removed when
/// the session's protocol is `telnet`.
pub fn asciicast(records: &[Record], opts: &AsciicastOpts) -> Result<Vec<u8>, RecError> {
    let meta = meta_of(records).ok_or_else(|| RecError::Export("no meta record".into()))?;
    let telnet = meta.protocol == "telnet";
    let header = serde_json::json!({
        "version": 2,
        "width": opts.width,
        "height": opts.height,
        "timestamp": meta.started_unix_ms.div_euclid(1000),
        "title": format!("{} {} → {} ({})", meta.principal_kind, meta.principal_name, meta.device, meta.session_id),
    });
    let mut out = header.to_string().into_bytes();
    out.push(b'\n');
    let mut filters = [TelnetFilter::new(), TelnetFilter::new()];
    let mut guards = [TerminalGuard::new(), TerminalGuard::new()];
    let mut text = [Utf8Stream::default(), Utf8Stream::default()];
    let mut last_t = 0u64;
    let emit = |out: &mut Vec<u8>, t_ns: u64, kind: &str, s: String| -> Result<(), RecError> {
        if s.is_empty() {
            return Ok(());
        }
        let ev = serde_json::json!([t_ns as f64 / 1e9, kind, s]);
        serde_json::to_writer(&mut *out, &ev).map_err(|e| RecError::Export(e.to_string()))?;
        out.push(b'\n');
        Ok(())
    };
    for r in records {
        let Record::Data { dir, t_ns, payload } = r else {
            continue;
        };
        last_t = last_t.max(*t_ns);
        let (i, kind) = match dir {
            Direction::Down => (0, "o"),
            Direction::Up if opts.include_input => (1, "i"),
            Direction::Up => continue,
        };
        let (Some(filter), Some(guard), Some(stream)) =
            (filters.get_mut(i), guards.get_mut(i), text.get_mut(i))
        else {
            continue;
        };
        let bytes = if telnet {
            filter.filter(payload)
        } else {
            payload.clone()
        };
        // Device output is what a player writes to the reviewer's terminal.
        let bytes = if opts.raw || kind != "o" {
            bytes
        } else {
            guard.filter(&bytes)
        };
        let s = stream.push(&bytes);
        emit(&mut out, *t_ns, kind, s)?;
    }
    for (i, kind) in [(0usize, "o"), (1, "i")] {
        if let Some(stream) = text.get_mut(i) {
            let s = stream.finish();
            emit(&mut out, last_t, kind, s)?;
        }
    }
    Ok(out)
}

/// The session's bytes per direction: `(client → device, device → client)`.
pub fn raw(records: &[Record]) -> (Vec<u8>, Vec<u8>) {
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for r in records {
        if let Record::Data { dir, payload, .. } = r {
            match dir {
                Direction::Up => up.extend_from_slice(payload),
                Direction::Down => down.extend_from_slice(payload),
            }
        }
    }
    (up, down)
}

/// The bytes an event stands in for on the wire: an injected credential's `length` (bounded, so a
/// forged field cannot blow up an export); nothing for other events.
fn filler_len(kind: &str, fields: &[(String, String)]) -> usize {
    if kind != "credential_injected" {
        return 0;
    }
    fields
        .iter()
        .find(|(k, _)| k == "length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .map_or(0, |n| n.min(64 * 1024))
}

/// One JSON object per record (data payloads in standard base64, field `payload_b64`).
pub fn json_lines(records: &[Record]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let v = match r {
            Record::Meta(m) => serde_json::json!({"record": i, "type": "meta", "meta": m}),
            Record::Data { dir, t_ns, payload } => serde_json::json!({"record": i, "type": "data",
                "dir": dir, "t_ns": t_ns, "len": payload.len(), "payload_b64": b64.encode(payload)}),
            Record::Checkpoint {
                index,
                t_ns,
                key_id,
                chain,
            } => serde_json::json!({"record": i,
                "type": "checkpoint", "index": index, "t_ns": t_ns, "key_id": key_id,
                "chain": hex::encode(chain)}),
            Record::End { t_ns, info } => {
                serde_json::json!({"record": i, "type": "end", "t_ns": t_ns, "end": info})
            }
            Record::Interrupted { t_ns, reason } => serde_json::json!({"record": i,
                "type": "interrupted", "t_ns": t_ns, "reason": reason}),
            // Still encrypted (not opened with `sealed::open_records`): its size only.
            Record::Sealed { t_ns, body } => serde_json::json!({"record": i,
                "type": "sealed", "t_ns": t_ns, "len": body.len()}),
            Record::Event {
                t_ns,
                dir,
                kind,
                fields,
            } => {
                let fields: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                serde_json::json!({"record": i, "type": "event", "dir": dir, "t_ns": t_ns,
                    "kind": kind, "fields": fields})
            }
        };
        out.extend_from_slice(v.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Hexdump lines for one data record, 16 bytes a line:
/// `+0.012345s ▶ 0000  47 45 54 20 …  |GET …|` (`▶` client → device, `◀` device → client;
/// non-printable bytes as `.`).
pub fn hexdump(t_ns: u64, dir: Direction, payload: &[u8]) -> String {
    let arrow = match dir {
        Direction::Up => '▶',
        Direction::Down => '◀',
    };
    let prefix = format!(
        "+{}.{:06}s {arrow}",
        t_ns / 1_000_000_000,
        (t_ns % 1_000_000_000) / 1000
    );
    let mut s = String::new();
    for (i, row) in payload.chunks(16).enumerate() {
        let mut hexes = String::with_capacity(48);
        let mut ascii = String::with_capacity(16);
        for (j, b) in row.iter().enumerate() {
            if j > 0 {
                hexes.push(' ');
            }
            let _ = write!(hexes, "{b:02x}");
            ascii.push(if b.is_ascii_graphic() || *b == b' ' {
                char::from(*b)
            } else {
                '.'
            });
        }
        let _ = writeln!(s, "{prefix} {:04x}  {hexes:<47}  |{ascii}|", i * 16);
    }
    s
}

/// TCP segment payload limit in the pcap (typical Ethernet MSS, so dissectors are happy).
pub const PCAP_MSS: usize = 1460;
const LINKTYPE_RAW: u32 = 101;
const CLIENT_ISN: u32 = 0x1000_0000;
const DEVICE_ISN: u32 = 0x2000_0000;
const FLAG_FIN: u8 = 0x01;
const FLAG_SYN: u8 = 0x02;
const FLAG_PSH: u8 = 0x08;
const FLAG_ACK: u8 = 0x10;

struct Pcap {
    out: Vec<u8>,
    client: SocketAddr,
    device: SocketAddr,
    ip_id: u16,
    /// Next sequence number: [client, device].
    seq: [u32; 2],
    base_us: i64,
}

fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        if let [a, b] = c {
            sum += u32::from(u16::from_be_bytes([*a, *b]));
        }
    }
    if let [a] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*a, 0]));
    }
    sum
}

fn checksum_finish(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Pcap {
    fn packet(&mut self, t_ns: u64, from_client: bool, flags: u8, payload: &[u8]) {
        let (src, dst) = if from_client {
            (self.client, self.device)
        } else {
            (self.device, self.client)
        };
        let (me, peer) = if from_client { (0, 1) } else { (1, 0) };
        let seq = self.seq.get(me).copied().unwrap_or(0);
        let ack = if flags & FLAG_ACK != 0 {
            self.seq.get(peer).copied().unwrap_or(0)
        } else {
            0
        };
        let mut tcp = Vec::with_capacity(20 + payload.len());
        tcp.extend_from_slice(&src.port().to_be_bytes());
        tcp.extend_from_slice(&dst.port().to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&ack.to_be_bytes());
        tcp.push(5 << 4);
        tcp.push(flags);
        tcp.extend_from_slice(&65535u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(payload);
        let tcp_len = tcp.len();
        let mut sum = 0u32;
        let mut ip = Vec::with_capacity(40);
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                sum = checksum_add(sum, &s.octets());
                sum = checksum_add(sum, &d.octets());
                sum += 6 + tcp_len as u32;
                ip.extend_from_slice(&[0x45, 0]);
                ip.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
                ip.extend_from_slice(&self.ip_id.to_be_bytes());
                ip.extend_from_slice(&[0x40, 0, 64, 6, 0, 0]); // DF, TTL 64, TCP, checksum 0
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let c = checksum_finish(checksum_add(0, &ip)).to_be_bytes();
                if let Some(slot) = ip.get_mut(10..12) {
                    slot.copy_from_slice(&c);
                }
                self.ip_id = self.ip_id.wrapping_add(1);
            }
            (s, d) => {
                let (s, d) = (to_v6(s), to_v6(d));
                sum = checksum_add(sum, &s.octets());
                sum = checksum_add(sum, &d.octets());
                sum += tcp_len as u32 + 6;
                ip.extend_from_slice(&[0x60, 0, 0, 0]);
                ip.extend_from_slice(&(tcp_len as u16).to_be_bytes());
                ip.extend_from_slice(&[6, 64]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
            }
        }
        let c = checksum_finish(checksum_add(sum, &tcp)).to_be_bytes();
        if let Some(slot) = tcp.get_mut(16..18) {
            slot.copy_from_slice(&c);
        }
        let us = self.base_us.saturating_add((t_ns / 1000) as i64).max(0);
        let len = (ip.len() + tcp.len()) as u32;
        self.out
            .extend_from_slice(&((us / 1_000_000) as u32).to_le_bytes());
        self.out
            .extend_from_slice(&((us % 1_000_000) as u32).to_le_bytes());
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&ip);
        self.out.extend_from_slice(&tcp);
        let advance = payload.len() as u32 + u32::from(flags & (FLAG_SYN | FLAG_FIN) != 0);
        if let Some(s) = self.seq.get_mut(me) {
            *s = s.wrapping_add(advance);
        }
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A classic libpcap file (magic `0xa1b2c3d4`, microseconds, link type 101 = raw IP) with the
/// session as one synthesized TCP connection between `client_addr` and `device_addr`: three-way
/// handshake, data segments of at most [`PCAP_MSS`] bytes with correct sequence/ack numbers and
/// checksums, and a FIN exchange. Timestamps are the session start plus each record's time. Use
/// the device's real port so dissectors (telnet 23, HTTP 80, DICOM 104, HL7 2575) apply. Mixed
/// IPv4/IPv6 addresses are written as IPv6 (v4-mapped).
pub fn pcap(
    records: &[Record],
    client_addr: SocketAddr,
    device_addr: SocketAddr,
) -> Result<Vec<u8>, RecError> {
    let start_ms = meta_of(records).map_or(0, |m| m.started_unix_ms);
    let mut p = Pcap {
        out: Vec::new(),
        client: client_addr,
        device: device_addr,
        ip_id: 1,
        seq: [CLIENT_ISN, DEVICE_ISN],
        base_us: start_ms.saturating_mul(1000),
    };
    p.out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    p.out.extend_from_slice(&2u16.to_le_bytes());
    p.out.extend_from_slice(&4u16.to_le_bytes());
    p.out.extend_from_slice(&0i32.to_le_bytes());
    p.out.extend_from_slice(&0u32.to_le_bytes());
    p.out.extend_from_slice(&65535u32.to_le_bytes());
    p.out.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
    p.packet(0, true, FLAG_SYN, &[]);
    p.packet(0, false, FLAG_SYN | FLAG_ACK, &[]);
    p.packet(0, true, FLAG_ACK, &[]);
    let mut last_t = 0u64;
    for r in records {
        match r {
            Record::Data { dir, t_ns, payload } => {
                last_t = last_t.max(*t_ns);
                for seg in payload.chunks(PCAP_MSS) {
                    p.packet(*t_ns, *dir == Direction::Up, FLAG_ACK | FLAG_PSH, seg);
                }
            }
            Record::Event {
                t_ns,
                dir,
                kind,
                fields,
            } => {
                // An injected secret went to the device but is not in the recording: same-length
                // filler keeps the TCP sequence numbers what the device saw (the JSON export
                // names the event).
                last_t = last_t.max(*t_ns);
                let filler = filler_len(kind, fields);
                let stars = vec![b'*'; filler];
                for seg in stars.chunks(PCAP_MSS) {
                    p.packet(*t_ns, *dir == Direction::Up, FLAG_ACK | FLAG_PSH, seg);
                }
            }
            Record::End { t_ns, .. } | Record::Interrupted { t_ns, .. } => {
                last_t = last_t.max(*t_ns)
            }
            _ => {}
        }
    }
    p.packet(last_t, true, FLAG_FIN | FLAG_ACK, &[]);
    p.packet(last_t, false, FLAG_FIN | FLAG_ACK, &[]);
    p.packet(last_t, true, FLAG_ACK, &[]);
    Ok(p.out)
}
