//! Issue 15 items 2 and 4, security case 49, with the real `ward` binary against a gateway whose
//! test stage reports operations the way the decoders do (events `operation`,
//! `operation_result`, `operation_denied`, `undecodable`; patient data under `phi.`):
//!
//! - `ward sessions --op PROTOCOL:GLOB` finds exactly the sessions that did a matching operation,
//!   through the gateway (the session index) and on the host, from the index and from the
//!   recordings alone (the same answer);
//! - `ward ops SESSION` lists a session's operations with patient data masked; `--show-phi` shows
//!   it to a security identity and is audited (`phi_viewed`); a vendor can do neither;
//! - `ward export --format ops` writes JSON lines, masked unless `--show-phi`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::{SessionEnd, Transport};
use ward_core::stage::{
    Direction, Note, RecordedEvent, SessionContext, Stage, StageFactory, Verdict,
};
use ward_store::session_index::SessionIndex;
use ward_tests::process::*;
use ward_tests::*;

const PATIENT: &str = "DOE^JANE";

/// What a decoder reports, from lines the client types: `dicom C-STORE UID NAME`, `telnet rate 5`,
/// `http POST /config`, `deny hl7 ORM^O01`, and anything else is not decodable. Passes every
/// byte; device → client lines starting `dicom` are answers.
#[derive(Default)]
struct Reports {
    up: Vec<u8>,
    down: Vec<u8>,
    notes: Vec<Note>,
    offset: u64,
    undecodable: bool,
}

fn op_event(kind: &str, protocol: &str, op: &str, more: &[(&str, &str)]) -> RecordedEvent {
    let mut fields = vec![("protocol", protocol), ("op", op)];
    fields.extend_from_slice(more);
    RecordedEvent::new(kind, &fields)
}

impl Reports {
    fn line(&mut self, dir: Direction, line: &str) {
        // As a decoder does: after bytes it cannot decode, the rest passes undecoded.
        if self.undecodable {
            return;
        }
        let words: Vec<&str> = line.split(' ').collect();
        let ev = match (dir, words.as_slice()) {
            (Direction::Down, ["dicom", op, ..]) => Some(op_event(
                "operation_result",
                "dicom",
                op,
                &[("status", "0x0000")],
            )),
            (Direction::Down, _) => None,
            (_, ["dicom", "C-STORE", uid, name]) => Some(op_event(
                "operation",
                "dicom",
                "C-STORE",
                &[("sop_instance", uid), ("phi.patient_name", name)],
            )),
            (_, ["dicom", op]) => Some(op_event("operation", "dicom", op, &[])),
            (_, ["telnet", rest @ ..]) => {
                Some(op_event("operation", "telnet", &rest.join(" "), &[]))
            }
            (_, ["http", method, path]) => Some(op_event(
                "operation",
                "http",
                &format!("{method} {path}"),
                &[("host", "monitor")],
            )),
            (_, ["deny", protocol, op]) => Some(op_event(
                "operation_denied",
                protocol,
                op,
                &[("rule", "r"), ("reason", "rule r allows only ADT^A*")],
            )),
            _ => {
                self.undecodable = true;
                Some(RecordedEvent::new(
                    "undecodable",
                    &[
                        ("protocol", "dicom"),
                        ("direction", "up"),
                        ("offset", &self.offset.to_string()),
                        ("why", "not a PDU"),
                    ],
                ))
            }
        };
        if dir == Direction::Up {
            self.offset += line.len() as u64 + 1;
        }
        if let Some(ev) = ev {
            self.notes.push(Note::Event(ev));
        }
    }
}

impl Stage for Reports {
    fn name(&self) -> &str {
        "reports"
    }
    fn process(
        &mut self,
        dir: Direction,
        input: &[u8],
        _: OffsetDateTime,
        _: &mut Vec<u8>,
    ) -> Verdict {
        let buf = if dir == Direction::Up {
            &mut self.up
        } else {
            &mut self.down
        };
        buf.extend_from_slice(input);
        let mut lines = Vec::new();
        while let Some(at) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        for l in lines {
            self.line(dir, &l);
        }
        Verdict::Pass
    }
    fn take_notes(&mut self, notes: &mut Vec<Note>) {
        notes.append(&mut self.notes);
    }
}

/// The reporting stage on every device but `pump-1`.
struct Decoding;

impl StageFactory for Decoding {
    fn stages(&self, session: &SessionContext<'_>) -> Vec<Box<dyn Stage>> {
        if session.device.id.as_str() == "pump-1" {
            return Vec::new();
        }
        vec![Box::new(Reports::default())]
    }
}

/// Run `ward` on a blocking thread (the gateway serves on the runtime's workers).
async fn ward_run(args: Vec<String>) -> Finished {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&mut ward(&args))
    })
    .await
    .unwrap()
}

fn args(parts: &[&str], more: &[String]) -> Vec<String> {
    parts
        .iter()
        .map(|s| s.to_string())
        .chain(more.iter().cloned())
        .collect()
}

async fn ward_ok(parts: &[&str], more: &[String]) -> Finished {
    let a = args(parts, more);
    let out = ward_run(a.clone()).await;
    assert!(out.status.success(), "ward {a:?}: {out:?}");
    out
}

/// Session ids listed by `ward sessions --json` with `filter`, sorted.
async fn listed(source: &[String], filter: &[&str]) -> Vec<String> {
    let mut parts = vec!["sessions", "--json"];
    parts.extend_from_slice(filter);
    let out = ward_ok(&parts, source).await;
    let mut ids: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    ids
}

/// Run one session on `device` typing `lines` (the device echoes them); its id.
async fn session(gw: &TestGateway, identity: &Path, device: &str, lines: &[&str]) -> String {
    let client = gw.client(identity, Transport::Quic);
    let session = client.open(device, false, None).await.unwrap();
    let id = session.session_id.clone();
    let data: Vec<u8> = lines
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect();
    let (out, end) = echo_session(session, &data).await;
    assert_eq!(end, SessionEnd::Completed);
    assert_eq!(out, data);
    id
}

/// Wait (bounded) until every session's index row is closed (sealed and stamped).
async fn indexed(state: &Path, ids: &[&String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = ward_store::session_index::read_only(state).unwrap_or_default();
        let done = ids.iter().all(|id| {
            rows.iter()
                .any(|r| &&r.summary.id == id && r.stamp.is_some())
        });
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sessions never indexed as closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ops_rows(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_found_by_operation_and_operations_are_shown_without_patient_data_unless_asked(
) {
    init_logs();
    let pki = Arc::new(Pki::new());
    let echo = echo_device().await;
    let devices = [
        DeviceSpec::new("modality-1", echo, "raw", &[("vendor", "acme")]),
        DeviceSpec::new("console-1", echo, "raw", &[("vendor", "acme")]),
        DeviceSpec::new("pump-1", echo, "raw", &[("vendor", "acme")]),
    ];
    let options = ward_server::gateway::Options {
        stages: Some(Arc::new(Decoding)),
        ..Default::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut gw = start_gateway_with(pki.clone(), &devices, ACME_RULES, "", clock, options).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let security = pki.person(Kind::Security, "sam", None, &[]);
    let state = gw.state_dir();

    let store = session(
        &gw,
        &vendor,
        "modality-1",
        &["dicom C-ECHO", &format!("dicom C-STORE 1.2.3.4 {PATIENT}")],
    )
    .await;
    let echo_only = session(&gw, &vendor, "modality-1", &["dicom C-ECHO"]).await;
    let console = session(
        &gw,
        &vendor,
        "console-1",
        &[
            "telnet RATE   5",
            "http POST /config",
            "deny hl7 ORM^O01",
            "\u{1}garbage",
            "dicom C-STORE 9.9 LATER^ONE",
        ],
    )
    .await;
    let plain = session(&gw, &vendor, "pump-1", &["dicom C-STORE 5.5 X^Y"]).await;
    indexed(&state, &[&store, &echo_only, &console, &plain]).await;

    // The index rows carry the operations the recorder saw (not a fallback read).
    let rows = ward_store::session_index::read_only(&state).unwrap();
    let row = |id: &str| {
        rows.iter()
            .find(|r| r.summary.id == id)
            .unwrap()
            .summary
            .clone()
    };
    assert_eq!(row(&store).ops, ["dicom:C-ECHO", "dicom:C-STORE"]);
    assert!(!row(&store).ops_unknown);
    assert_eq!(
        row(&console).ops,
        ["hl7:ORM^O01", "http:POST /config", "telnet:RATE   5"]
    );
    assert_eq!(row(&console).denied_ops, 1);
    assert_eq!(
        row(&console).undecodable.as_deref(),
        Some("dicom up at byte 51: not a PDU")
    );
    assert!(row(&plain).ops.is_empty());

    let remote: Vec<String> = args(
        &["--gateway", &gw.quic(), "--transport", "quic", "--ca"],
        &[pki.root().display().to_string()],
    )
    .into_iter()
    .chain(["--identity".to_string(), security.display().to_string()])
    .collect();
    let local: Vec<String> = vec!["--state-dir".into(), state.display().to_string()];
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    // --op through the gateway and on the host: exactly the right sessions.
    for source in [&remote, &local] {
        assert_eq!(
            listed(source, &["--op", "dicom:C-STORE"]).await,
            sorted(vec![store.clone()])
        );
        assert_eq!(
            listed(source, &["--op", "dicom:C-ECHO"]).await,
            sorted(vec![store.clone(), echo_only.clone()])
        );
        assert_eq!(
            listed(source, &["--op", "telnet:rate *"]).await,
            [console.as_str()]
        );
        assert_eq!(
            listed(source, &["--op", "http:POST"]).await,
            [console.as_str()]
        );
        assert_eq!(
            listed(source, &["--op", "hl7:ORM^O01"]).await,
            [console.as_str()]
        );
        assert_eq!(
            listed(source, &["--op", "http:GET"]).await,
            Vec::<String>::new()
        );
        assert_eq!(listed(source, &["--op", "dicom:C-*"]).await.len(), 2);
    }
    // A pattern that is not one is refused before anything is asked.
    let bad = ward_run(args(&["sessions", "--op", "C-STORE"], &remote)).await;
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("dicom:C-STORE"), "{bad:?}");

    // The table shows the operations and the markers; --json carries them all.
    let table = ward_ok(&["sessions"], &remote).await.stdout;
    eprintln!("ward sessions:\n{table}");
    assert!(table.contains("OPS"), "{table}");
    assert!(table.contains("dicom:C-ECHO,dicom:C-STORE"), "{table}");
    assert!(
        table.contains("[1 DENIED]") && table.contains("[UNDECODABLE: dicom up at byte 51"),
        "{table}"
    );
    let json = ward_ok(&["sessions", "--json", "--op", "http:POST"], &remote)
        .await
        .stdout;
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(v["ops"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["denied_ops"], 1);
    assert!(v["undecodable"].as_str().unwrap().contains("not a PDU"));

    // ward ops: masked by default, as a table and as JSON lines.
    let table = ward_ok(&["ops", &store], &remote).await.stdout;
    eprintln!("ward ops {store}:\n{table}");
    assert!(
        table.contains("C-STORE") && table.contains("phi.patient_name=***"),
        "{table}"
    );
    assert!(!table.contains(PATIENT), "{table}");
    let rows = ops_rows(&ward_ok(&["ops", &store, "--json"], &remote).await.stdout);
    // Requests in the order typed, answers in the order echoed (the two ways interleave as the
    // chunks came).
    let of = |kind: &str, dir: &str| -> Vec<&serde_json::Value> {
        rows.iter()
            .filter(|r| r["kind"] == kind && r["dir"] == dir)
            .collect()
    };
    let requests = of("operation", "up");
    let answers = of("operation_result", "down");
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(
        requests
            .iter()
            .map(|r| r["op"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["C-ECHO", "C-STORE"]
    );
    assert_eq!(
        answers
            .iter()
            .map(|r| r["op"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["C-ECHO", "C-STORE"]
    );
    let stored = requests[1];
    assert_eq!(stored["protocol"], "dicom");
    assert_eq!(stored["fields"]["phi.patient_name"], "***");
    assert_eq!(stored["fields"]["sop_instance"], "1.2.3.4");
    assert_eq!(answers[1]["fields"]["status"], "0x0000");
    assert!(stored["time"].as_str().unwrap().ends_with('Z'));
    let stored_at = rows.iter().position(|r| r == stored).unwrap();
    // On the host: the same rows, masked.
    let host = ops_rows(&ward_ok(&["ops", &store, "--json"], &local).await.stdout);
    assert_eq!(host, rows);
    let refused = ward_run(args(&["ops", &store, "--show-phi"], &local)).await;
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("--gateway"), "{refused:?}");
    assert!(!refused.stdout.contains(PATIENT));

    // --show-phi: shown to security, audited with the session and who asked.
    let shown = ops_rows(
        &ward_ok(&["ops", &store, "--json", "--show-phi"], &remote)
            .await
            .stdout,
    );
    assert_eq!(shown[stored_at]["fields"]["phi.patient_name"], PATIENT);
    let phi_viewed = |outcome: &'static str| {
        let state = state.clone();
        let id = store.clone();
        move || {
            audit_events(&state)
                .into_iter()
                .filter(|e| e["event"] == "phi_viewed" && e["outcome"] == outcome)
                .filter(|e| e["session_id"] == id.as_str())
                .collect::<Vec<_>>()
        }
    };
    let mut audited = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            audited = phi_viewed("success")();
            !audited.is_empty()
        })
        .await,
        "no phi_viewed event"
    );
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["principal"]["name"], "sam", "{}", audited[0]);
    assert_eq!(audited[0]["detail"]["phi_fields"], 1, "{}", audited[0]);
    // Masked views are audited too, without it.
    assert!(audit_events(&state)
        .iter()
        .any(|e| e["event"] == "operations_viewed" && e["session_id"] == store.as_str()));

    // A vendor may not list operations, masked or not; the refused ask is audited.
    let as_vendor: Vec<String> = remote[..remote.len() - 1]
        .iter()
        .cloned()
        .chain([vendor.display().to_string()])
        .collect();
    for extra in [&[][..], &["--show-phi"][..]] {
        let mut parts = vec!["ops", store.as_str()];
        parts.extend_from_slice(extra);
        let out = ward_run(args(&parts, &as_vendor)).await;
        assert!(!out.status.success(), "{out:?}");
        assert!(out.stderr.contains("only security and admin"), "{out:?}");
        assert!(!out.stdout.contains(PATIENT));
    }
    let out = ward_run(args(&["sessions", "--op", "dicom:C-STORE"], &as_vendor)).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        eventually(Duration::from_secs(5), || !phi_viewed("denied")()
            .is_empty())
        .await,
        "the vendor's --show-phi is not audited"
    );

    // ward export --format ops: JSON lines, masked unless --show-phi.
    let dir = tempfile::tempdir().unwrap();
    let masked = dir.path().join("ops.jsonl");
    let mut more = vec![masked.display().to_string()];
    more.extend(remote.iter().cloned());
    ward_ok(&["export", &store, "--format", "ops", "--out"], &more).await;
    let text = std::fs::read_to_string(&masked).unwrap();
    assert!(!text.contains(PATIENT));
    let exported = ops_rows(&text);
    assert_eq!(exported, host);
    let unmasked = dir.path().join("ops-phi.jsonl");
    let mut more = vec![unmasked.display().to_string(), "--show-phi".into()];
    more.extend(remote.iter().cloned());
    ward_ok(&["export", &store, "--format", "ops", "--out"], &more).await;
    assert!(std::fs::read_to_string(&unmasked)
        .unwrap()
        .contains(PATIENT));
    let wrong = ward_run(args(
        &[
            "export",
            &store,
            "--format",
            "json",
            "--out",
            "-",
            "--show-phi",
        ],
        &remote,
    ))
    .await;
    assert!(!wrong.status.success(), "{wrong:?}");

    // The index and the recordings alone give the same answer: listed from the index (as the
    // gateway left it), then with a row marked as recovery writes it (operations not read), then
    // without any index.
    let full = |source: Vec<String>| async move {
        let out = ward_ok(&["sessions", "--json"], &source).await.stdout;
        let mut v: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        v
    };
    let from_gateway = full(remote.clone()).await;
    gw.shutdown(Duration::from_millis(100)).await;
    let from_index = full(local.clone()).await;
    assert_eq!(from_index, from_gateway);
    assert_eq!(from_index.len(), 4);
    {
        let db = ward_store::store::SqliteStore::open(&state).unwrap();
        let mut rows = db.all().unwrap();
        let r = rows.iter_mut().find(|r| r.summary.id == console).unwrap();
        r.summary.ops.clear();
        r.summary.undecodable = None;
        r.summary.denied_ops = 0;
        r.summary.ops_unknown = true;
        db.put(r).unwrap();
    }
    assert_eq!(full(local.clone()).await, from_index);
    assert_eq!(
        listed(&local, &["--op", "telnet:rate *"]).await,
        [console.as_str()]
    );
    std::fs::rename(state.join("ward.db"), state.join("ward.db.away")).unwrap();
    let _ = std::fs::remove_file(state.join("ward.db-wal"));
    let _ = std::fs::remove_file(state.join("ward.db-shm"));
    assert_eq!(full(local.clone()).await, from_index);
    assert_eq!(
        listed(&local, &["--op", "dicom:C-STORE"]).await,
        [store.as_str()]
    );
    assert_eq!(
        listed(&local, &["--op", "http:POST"]).await,
        [console.as_str()]
    );
}

/// An HL7 receiver on loopback: answers each MLLP-framed message with an `AA` ACK.
async fn hl7_receiver() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
                        let msg: Vec<u8> = buf.drain(..end + 2).collect();
                        let text = String::from_utf8_lossy(&msg);
                        let control = text.split('|').nth(9).unwrap_or("?").to_string();
                        let ack = format!(
                            "\x0bMSH|^~\\&|PUMPGW|ICU|HIS|NORTH|20261128050000||ACK|A-{control}|P|2.5\rMSA|AA|{control}\x1c\r"
                        );
                        if conn.write_all(ack.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// With the real HL7 decoder (no test stage): the message's patient fields are recorded, masked
/// in `ward ops` and shown with `--show-phi`; `ward sessions --op` finds the message type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hl7_decoders_patient_fields_are_masked_unless_asked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_logs();
    let pki = Arc::new(Pki::new());
    let receiver = hl7_receiver().await;
    let devices = [DeviceSpec::new(
        "lab-1",
        receiver,
        "hl7",
        &[("vendor", "acme")],
    )];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let gw = start_gateway(pki.clone(), &devices, ACME_RULES, "", clock).await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let security = pki.person(Kind::Security, "sam", None, &[]);
    let state = gw.state_dir();

    let client = gw.client(&vendor, Transport::Quic);
    let session = client.open("lab-1", false, None).await.unwrap();
    let id = session.session_id.clone();
    let (local, remote) = tokio::io::duplex(64 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(remote);
    let msg = "MSH|^~\\&|HIS|NORTH|PUMPGW|ICU|20261128050000||ADT^A01^ADT_A01|MSG00001|P|2.5\rEVN|A01|20261128050000\rPID|1||PAT-4711^^^NORTH^MR||DOE^JANE||19700101|F\rPV1|1|I|ICU^12^1";
    let mut framed = vec![0x0b];
    framed.extend_from_slice(msg.as_bytes());
    framed.extend_from_slice(&[0x1c, 0x0d]);
    rw.write_all(&framed).await.unwrap();
    let mut ack = Vec::new();
    let mut chunk = [0u8; 1024];
    while !ack.ends_with(&[0x1c, 0x0d]) {
        let n = tokio::time::timeout(Duration::from_secs(5), rr.read(&mut chunk))
            .await
            .expect("the receiver's ACK")
            .unwrap();
        assert!(n > 0, "closed before the ACK");
        ack.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&ack).contains("MSA|AA|MSG00001"));
    rw.shutdown().await.unwrap();
    drop(rw);
    let end = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, SessionEnd::Completed);
    indexed(&state, &[&id]).await;

    let remote: Vec<String> = [
        "--gateway",
        &gw.quic(),
        "--transport",
        "quic",
        "--ca",
        &pki.root().display().to_string(),
        "--identity",
        &security.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        listed(&remote, &["--op", "hl7:ADT^A01*"]).await,
        [id.as_str()]
    );
    assert!(listed(&remote, &["--op", "hl7:ORM^*"]).await.is_empty());

    let masked = ops_rows(&ward_ok(&["ops", &id, "--json"], &remote).await.stdout);
    let text = serde_json::to_string(&masked).unwrap();
    assert!(
        !text.contains("DOE") && !text.contains("PAT-4711"),
        "{text}"
    );
    let request = masked.iter().find(|r| r["kind"] == "operation").unwrap();
    assert_eq!(request["protocol"], "hl7");
    assert!(
        request["op"].as_str().unwrap().starts_with("ADT^A01"),
        "{request}"
    );
    let phi: Vec<&String> = request["fields"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("phi."))
        .collect();
    assert!(
        !phi.is_empty(),
        "the decoder reports patient fields: {request}"
    );
    for k in &phi {
        assert_eq!(request["fields"][k.as_str()], "***", "{request}");
    }
    assert!(masked
        .iter()
        .any(|r| r["kind"] == "operation_result" && r["fields"]["ack"] == "AA"));

    let shown = ward_ok(&["ops", &id, "--json", "--show-phi"], &remote)
        .await
        .stdout;
    assert!(
        shown.contains("DOE^JANE") && shown.contains("PAT-4711"),
        "{shown}"
    );
    assert!(
        eventually(Duration::from_secs(5), || audit_events(&state).iter().any(
            |e| e["event"] == "phi_viewed" && e["session_id"] == id.as_str()
        ))
        .await
    );
}
