//! HL7 v2 over MLLP through Ward with an operation list (issue 15): the Python `hl7` package's
//! `mllp_send` (PyPI; .ci/run installs it in a venv) sends through the local forwarder (`ward
//! connect --listen` semantics) to an MLLP receiver this test runs, which logs every message it
//! gets and answers each with an `AA` ACK.
//!
//! - allowed `ADT^A01`/`ADT^A04` reach the receiver byte for byte, and its `AA` comes back;
//! - a denied `ORM^O01` is answered by the gateway with an `AR` ACK carrying the reason, the
//!   receiver never sees it, and the connection goes on;
//! - the recording holds the operations, the refusal and the results; `ward sessions --op`
//!   finds the session.
//!
//! Loopback only; bounded in time. Under CI a missing `mllp_send` fails the test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::Transport;
use ward_server::review::{self, ExportFormat, Filter};
use ward_tests::*;

const LIMIT: Duration = Duration::from_secs(60);

const RULES: &str = r#"
[[rule]]
name = "his-feeds-the-pump-gateway"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
operations.hl7 = { allow = ["ADT^A*"], deny = ["ORM^*"] }
"#;

const SB: u8 = 0x0b;
const EB: u8 = 0x1c;
const CR: u8 = 0x0d;

const ADT_A01: &str = "MSH|^~\\&|HIS|NORTH|PUMPGW|ICU|20261128050000||ADT^A01^ADT_A01|MSG00001|P|2.5\rEVN|A01|20261128050000\rPID|1||PAT-4711^^^NORTH^MR||DOE^JANE||19700101|F\rPV1|1|I|ICU^12^1";
const ORM_O01: &str = "MSH|^~\\&|HIS|NORTH|PUMPGW|ICU|20261128050100||ORM^O01|MSG00002|P|2.5\rPID|1||PAT-4711||DOE^JANE\rORC|NW|ORD-1\rOBR|1|ORD-1||PUMP^Infusion";
const ADT_A04: &str = "MSH|^~\\&|HIS|NORTH|PUMPGW|ICU|20261128050200||ADT^A04|MSG00003|P|2.5\rPID|1||PAT-0815||ROE^RICHARD";

fn framed(msg: &str) -> Vec<u8> {
    let mut f = vec![SB];
    f.extend_from_slice(msg.as_bytes());
    f.extend_from_slice(&[EB, CR]);
    f
}

/// An MLLP receiver: logs every frame it gets (whole, framing included) and answers `AA`.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(2).position(|w| w == [EB, CR]) {
                        let frame: Vec<u8> = buf.drain(..end + 2).collect();
                        let msg = String::from_utf8_lossy(&frame[1..frame.len() - 2]).into_owned();
                        let msh: Vec<&str> = msg.split('\r').next().unwrap().split('|').collect();
                        let (control_id, trigger) =
                            (msh[9], msh[8].split('^').nth(1).unwrap_or(""));
                        seen.lock().unwrap().push(frame);
                        let ack = format!(
                            "MSH|^~\\&|PUMPGW|ICU|HIS|NORTH|20261128050001||ACK^{trigger}^ACK|ACK-{control_id}|P|2.5\rMSA|AA|{control_id}\r"
                        );
                        if s.write_all(&framed(&ack)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, log)
}

fn field<'a>(ev: &'a serde_json::Value, k: &str) -> Option<&'a str> {
    ev["fields"][k].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_send_through_ward_allowed_delivered_denied_answered_ar() {
    if !require_peer("mllp_send") {
        return;
    }
    init_logs();
    tokio::time::timeout(LIMIT, async {
        let (device, log) = receiver().await;
        let pki = Arc::new(Pki::new());
        let devices = [DeviceSpec::new(
            "pump-gw",
            device,
            "hl7",
            &[("vendor", "acme")],
        )];
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let gw = start_gateway(pki.clone(), &devices, RULES, "", clock).await;
        let vendor = pki.person(Kind::Vendor, "his", Some("acme"), &[]);
        let fwd = forwarder(gw.client(&vendor, Transport::Quic), "pump-gw").await;

        let work = tempfile::tempdir().unwrap();
        let file = work.path().join("messages.hl7");
        let sent: Vec<u8> = [framed(ADT_A01), framed(ORM_O01), framed(ADT_A04)].concat();
        std::fs::write(&file, &sent).unwrap();
        let out = tokio::process::Command::new("mllp_send")
            .arg("-f")
            .arg(&file)
            .args(["-p", &fwd.port().to_string()])
            .arg(fwd.ip().to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "mllp_send failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One answer per message, in order: AA (the device), AR (Ward, with the reason), AA.
        let answers: Vec<&str> = stdout.split('\x1c').filter(|a| a.contains("MSA|")).collect();
        assert_eq!(answers.len(), 3, "{stdout:?}");
        assert!(answers[0].contains("MSA|AA|MSG00001"), "{stdout:?}");
        assert!(answers[1].contains("MSA|AR|MSG00002|Ward refused ORM\\S\\O01: rule his-feeds-the-pump-gateway denies hl7 operations matching"), "{stdout:?}");
        assert!(answers[1].contains("|ACK^O01^ACK|"), "{stdout:?}");
        assert!(answers[1].contains("\rERR|||200^Unsupported message type^HL70357|E||||Ward refused"), "{stdout:?}");
        assert!(answers[2].contains("MSA|AA|MSG00003"), "{stdout:?}");

        // The receiver got the allowed messages byte for byte (mllp_send strips the last
        // segment's CR before framing) and nothing of the refused one.
        let got = log.lock().unwrap().clone();
        assert_eq!(got, vec![framed(ADT_A01), framed(ADT_A04)]);
        assert!(!got.concat().windows(7).any(|w| w == b"ORM^O01"));

        // The recording: operations, the refusal, the device's results.
        let state = gw.state_dir();
        let key = review::public_key(&state).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let bytes = loop {
            let list = review::list(
                &state,
                &key,
                &Filter {
                    device: Some("pump-gw".into()),
                    ..Default::default()
                },
            )
            .unwrap();
            if let Some(s) = list.first() {
                if let Ok(bytes) = review::read_recording(&state, &s.id) {
                    if ward_recording::verify(&bytes, &key).status
                        != ward_recording::SealStatus::Unsealed
                    {
                        break bytes;
                    }
                }
            }
            assert!(Instant::now() < deadline, "the session's recording was never sealed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let dir = tempfile::tempdir().unwrap();
        let files = review::export(&bytes, ExportFormat::Json, &dir.path().join("s")).unwrap();
        let json = std::fs::read_to_string(&files[0]).unwrap();
        let events: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["type"] == "event")
            .collect();
        let of = |kind: &str| -> Vec<&serde_json::Value> {
            events.iter().filter(|e| e["kind"] == kind).collect()
        };
        let ops: Vec<&str> = of("operation").iter().map(|e| field(e, "op").unwrap()).collect();
        assert_eq!(ops, ["ADT^A01", "ADT^A04"], "{json}");
        let first = of("operation")[0];
        assert_eq!(field(first, "protocol"), Some("hl7"));
        assert_eq!(field(first, "control_id"), Some("MSG00001"));
        assert_eq!(field(first, "sending_app"), Some("HIS"));
        assert_eq!(field(first, "phi.patient_name"), Some("DOE^JANE"));
        let denied = of("operation_denied");
        assert_eq!(denied.len(), 1, "{json}");
        assert_eq!(field(denied[0], "op"), Some("ORM^O01"));
        assert_eq!(field(denied[0], "rule"), Some("his-feeds-the-pump-gateway"));
        let results: Vec<(&str, &str)> = of("operation_result")
            .iter()
            .map(|e| (field(e, "ack").unwrap(), field(e, "control_id").unwrap()))
            .collect();
        assert_eq!(results, [("AA", "MSG00001"), ("AA", "MSG00003")], "{json}");
        // The refusal is what the client was sent: it is in the recording's device → client bytes.
        let raw = review::export(&bytes, ExportFormat::Raw, &dir.path().join("r")).unwrap();
        let down = std::fs::read(&raw[1]).unwrap();
        assert!(down.windows(10).any(|w| w == b"MSA|AR|MSG"), "{}", String::from_utf8_lossy(&down));
        let up = std::fs::read(&raw[0]).unwrap();
        assert_eq!(up, [framed(ADT_A01), framed(ADT_A04)].concat());

        // `ward sessions --op` finds the session by what it did, refused operations included.
        let found = |op: &str| -> usize {
            let filter = Filter {
                op: Some(op.into()),
                ..Default::default()
            };
            review::list(&state, &key, &filter).unwrap().len()
        };
        assert_eq!(found("hl7:ORM^O01"), 1);
        assert_eq!(found("hl7:ADT^A*"), 1);
        assert_eq!(found("hl7:ORU^*"), 0);
    })
    .await
    .unwrap();
}
