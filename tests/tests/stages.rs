//! The stage hook end to end: a device's stages (a decoder that holds partial lines, an injector
//! that rewrites, a policy that denies an operation) see every chunk before it is recorded and
//! forwarded; a denial ends the session with the stage's typed reason (client, audit, recording);
//! the recording holds exactly what was forwarded; a device without stages is untouched.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::{SessionEnd, Transport};
use ward_core::stage::{
    Direction, SessionContext, Stage, StageFactory, StageStop, StopKind, Verdict,
};
use ward_server::review::{self, ExportFormat, Filter};
use ward_tests::*;

const RULES: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

const DENIED: &str =
    "stage deny-delete denied operation DELETE (client to device): DELETE is not allowed on this device";

/// A decoder's buffering: holds client → device bytes until a line is complete.
struct Lines(Vec<u8>);

impl Stage for Lines {
    fn name(&self) -> &str {
        "lines"
    }
    fn process(
        &mut self,
        dir: Direction,
        input: &[u8],
        _: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Verdict {
        if dir == Direction::Down {
            return Verdict::Pass;
        }
        self.0.extend_from_slice(input);
        match self.0.iter().rposition(|&b| b == b'\n') {
            None if self.0.len() > 4096 => Verdict::End(StageStop::new(
                "lines",
                dir,
                StopKind::TooLarge { limit: 4096 },
            )),
            None => Verdict::Hold,
            Some(at) => {
                out.extend(self.0.drain(..=at));
                Verdict::Replace
            }
        }
    }
}

/// An injector: `$PW` becomes the device's password (client → device only).
struct Inject;

impl Stage for Inject {
    fn name(&self) -> &str {
        "inject"
    }
    fn process(
        &mut self,
        dir: Direction,
        input: &[u8],
        _: OffsetDateTime,
        out: &mut Vec<u8>,
    ) -> Verdict {
        let text = String::from_utf8_lossy(input);
        if dir == Direction::Down || !text.contains("$PW") {
            return Verdict::Pass;
        }
        out.extend_from_slice(text.replace("$PW", "hunter2").as_bytes());
        Verdict::Replace
    }
}

/// Operation-level policy: a line starting with `DELETE` ends the session.
struct DenyDelete;

impl Stage for DenyDelete {
    fn name(&self) -> &str {
        "deny-delete"
    }
    fn process(
        &mut self,
        dir: Direction,
        input: &[u8],
        _: OffsetDateTime,
        _: &mut Vec<u8>,
    ) -> Verdict {
        if dir == Direction::Up
            && input
                .split(|&b| b == b'\n')
                .any(|l| l.starts_with(b"DELETE"))
        {
            return Verdict::End(StageStop::new(
                "deny-delete",
                dir,
                StopKind::Denied {
                    operation: "DELETE".into(),
                    reason: "DELETE is not allowed on this device".into(),
                },
            ));
        }
        Verdict::Pass
    }
}

/// Stages for `pump-12` only.
struct ForPump12;

impl StageFactory for ForPump12 {
    fn stages(&self, session: &SessionContext<'_>) -> Vec<Box<dyn Stage>> {
        if session.device.id.as_str() != "pump-12" {
            return Vec::new();
        }
        vec![
            Box::new(Lines(Vec::new())),
            Box::new(Inject),
            Box::new(DenyDelete),
        ]
    }
}

async fn gateway() -> (TestGateway, Arc<Pki>) {
    init_logs();
    let pki = Arc::new(Pki::new());
    let staged = ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let plain = ward::sim::echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let devices = [
        DeviceSpec::new("pump-12", staged.addr, "raw", &[("vendor", "acme")]),
        DeviceSpec::new("pump-13", plain.addr, "raw", &[("vendor", "acme")]),
    ];
    let options = ward_server::gateway::Options {
        stages: Some(Arc::new(ForPump12)),
        ..Default::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let gw = start_gateway_with(pki.clone(), &devices, RULES, "", clock, options).await;
    (gw, pki)
}

/// Wait (bounded) until the gateway has sealed the session's recording; its raw exports (up, down).
async fn recorded(gw: &TestGateway, id: &str) -> (Vec<u8>, Vec<u8>) {
    let state = gw.state_dir();
    let key = review::public_key(&state).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let bytes = loop {
        if let Ok(bytes) = review::read_recording(&state, id) {
            let report = ward_recording::verify(&bytes, &key);
            if report.status != ward_recording::SealStatus::Unsealed {
                assert!(report.ok, "{:?}", report.first_error);
                break bytes;
            }
        }
        assert!(Instant::now() < deadline, "recording {id} was never sealed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let dir = tempfile::tempdir().unwrap();
    let files = review::export(&bytes, ExportFormat::Raw, &dir.path().join("s")).unwrap();
    (
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(&files[1]).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stage_rewrites_and_ends_the_session_with_its_reason_and_the_recording_holds_what_was_forwarded(
) {
    let (gw, pki) = gateway().await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);

    // pump-12: a partial line is held, released whole with `$PW` rewritten; the echo shows the
    // device got the rewritten line; DELETE ends the session.
    let client = gw.client(&vendor, Transport::Quic);
    let session = client.open("pump-12", false, None).await.unwrap();
    let id = session.session_id.clone();
    let (local, remote) = tokio::io::duplex(64 * 1024);
    let (lr, lw) = tokio::io::split(local);
    let run = tokio::spawn(session.run(lr, lw));
    let (mut rr, mut rw) = tokio::io::split(remote);
    rw.write_all(b"user $P").await.unwrap();
    rw.write_all(b"W\n").await.unwrap();
    let mut echoed = vec![0u8; b"user hunter2\n".len()];
    tokio::time::timeout(Duration::from_secs(5), rr.read_exact(&mut echoed))
        .await
        .expect("the released line comes back")
        .unwrap();
    assert_eq!(echoed, b"user hunter2\n");
    rw.write_all(b"DELETE /config\n").await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the stage must end the session")
        .unwrap();
    assert_eq!(end, SessionEnd::ClosedByGateway(DENIED.into()));
    let (up, down) = recorded(&gw, &id).await;
    assert_eq!(
        up, b"user hunter2\n",
        "client → device: what the device was sent"
    );
    assert_eq!(down, b"user hunter2\n", "device → client");

    // pump-13, same gateway, no stages: everything passes as it was sent.
    let client = gw.client(&vendor, Transport::Tcp);
    let session = client.open("pump-13", false, None).await.unwrap();
    let plain_id = session.session_id.clone();
    let data = b"user $PW\nDELETE /config\n".to_vec();
    let (out, end) = echo_session(session, &data).await;
    assert_eq!(end, SessionEnd::Completed);
    assert_eq!(out, data);
    let (up, down) = recorded(&gw, &plain_id).await;
    assert_eq!((up.as_slice(), down.as_slice()), (&data[..], &data[..]));

    // The same typed reason in the audit log and the recording's end record.
    let key = review::public_key(&gw.state_dir()).unwrap();
    let list = review::list(&gw.state_dir(), &key, &Filter::default()).unwrap();
    let staged = list.iter().find(|s| s.id == id).unwrap();
    assert_eq!(staged.end_reason, DENIED);
    assert_eq!(staged.bytes_up, b"user hunter2\n".len() as u64);
    assert_eq!(
        list.iter().find(|s| s.id == plain_id).unwrap().end_reason,
        "completed"
    );
    let closes: Vec<_> = audit_events(&gw.state_dir())
        .into_iter()
        .filter(|e| e["event"] == "session_close")
        .collect();
    assert!(
        closes
            .iter()
            .any(|e| e["session_id"] == id.as_str() && e["reason"] == DENIED),
        "{closes:?}"
    );
}
