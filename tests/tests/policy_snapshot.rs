//! One watched policy snapshot, one typed end reason (issue 13 item 4): a config reload and a
//! disabled user end live sessions through the same re-check, and the one `EndReason` reaches
//! the client's `Closed` frame, the audit log's `session_close` and the recording's end record.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use ward_ca::{Clock, Kind, SystemClock};
use ward_client::{Client, SessionEnd, Transport};
use ward_core::EndReason;
use ward_store::users::{User, UserStore};
use ward_tests::*;

const ACME_RULE: &str = r#"
[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
"#;

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

async fn pump() -> Vec<DeviceSpec> {
    let echo = echo_device().await;
    vec![DeviceSpec::new(
        "pump-12",
        echo,
        "raw",
        &[("vendor", "acme")],
    )]
}

/// A live session on a duplex pipe, its echo checked once.
struct Live {
    id: String,
    run: JoinHandle<SessionEnd>,
    r: ReadHalf<DuplexStream>,
    w: WriteHalf<DuplexStream>,
}

impl Live {
    async fn open(client: &Client) -> Live {
        let session = client.open("pump-12", false, None).await.unwrap();
        let id = session.session_id.clone();
        let (local, remote) = tokio::io::duplex(64 * 1024);
        let (lr, lw) = tokio::io::split(local);
        let run = tokio::spawn(session.run(lr, lw));
        let (r, w) = tokio::io::split(remote);
        let mut live = Live { id, run, r, w };
        live.w.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), live.r.read_exact(&mut back))
            .await
            .expect("the echo came back")
            .unwrap();
        assert_eq!(&back, b"hello");
        live
    }

    /// The gateway's `Closed` reason (bounded wait).
    async fn closed_by_gateway(self) -> String {
        let end = tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .expect("the session ended")
            .unwrap();
        match end {
            SessionEnd::ClosedByGateway(reason) => reason,
            other => panic!("expected the gateway to end the session, got {other:?}"),
        }
    }
}

/// The `session_close` event of session `id` (bounded wait: the audit writer is asynchronous).
async fn session_close(state_dir: &Path, id: &str) -> serde_json::Value {
    let find = || {
        audit_events(state_dir)
            .into_iter()
            .find(|e| e["event"] == "session_close" && e["session_id"] == id)
    };
    assert!(
        eventually(Duration::from_secs(10), || find().is_some()).await,
        "no session_close for {id}:\n{:#?}",
        audit_events(state_dir)
    );
    find().unwrap()
}

/// The end reason in session `id`'s sealed recording (bounded wait).
async fn recorded_end(state_dir: &Path, id: &str) -> String {
    let key = ward_server::review::public_key(state_dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(bytes) = ward_server::review::read_recording(state_dir, id) {
            let report = ward_recording::verify(&bytes, &key);
            if report.status != ward_recording::SealStatus::Unsealed {
                assert!(report.ok, "recording {id}: {:?}", report.first_error);
                return ward_recording::Reader::new(&bytes)
                    .filter_map(|r| r.ok())
                    .find_map(|(_, rec)| match rec {
                        ward_recording::Record::End { info, .. } => Some(info.reason),
                        _ => None,
                    })
                    .expect("a sealed recording has an end record");
            }
        }
        assert!(Instant::now() < deadline, "recording {id} was never sealed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one reason, told three times: to the client, in `session_close` (text and short name) and
/// in the recording's end record.
async fn told_everywhere(state_dir: &Path, live: Live, want: &EndReason) {
    let id = live.id.clone();
    let text = want.to_string();
    assert_eq!(
        live.closed_by_gateway().await,
        text,
        "the client's Closed frame"
    );
    let ev = session_close(state_dir, &id).await;
    assert_eq!(ev["reason"], text.as_str(), "{ev}");
    assert_eq!(ev["detail"]["end"], want.as_str(), "{ev}");
    assert_eq!(
        recorded_end(state_dir, &id).await,
        text,
        "the recording's end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_the_rule_ends_the_session_with_one_typed_reason() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let tg = start_gateway(pki.clone(), &pump().await, ACME_RULE, "", clock()).await;
    let gw = tg.gw.as_ref().unwrap();
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let client = tg.client(&vendor, Transport::Quic);
    let live = Live::open(&client).await;
    let second = Live::open(&client).await;
    assert_eq!(tg.live_sessions(), 2);

    let text = std::fs::read_to_string(&tg.config).unwrap();
    std::fs::write(&tg.config, text.replace(ACME_RULE, "")).unwrap();
    let report = gw.reload(&tg.config).unwrap();
    assert_eq!(report.rules, 0);
    assert_eq!(report.sessions_cut, 2, "{report:?}");

    let want = EndReason::PolicyChanged("no rule lets vendor acme/jdoe reach pump-12".into());
    told_everywhere(&tg.state_dir(), live, &want).await;
    assert_eq!(second.closed_by_gateway().await, want.to_string());
    assert!(eventually(Duration::from_secs(5), || tg.live_sessions() == 0).await);
    // A reload that changes nothing a session depends on ends nothing.
    std::fs::write(&tg.config, &text).unwrap();
    assert_eq!(gw.reload(&tg.config).unwrap().sessions_cut, 0);
    let live = Live::open(&client).await;
    assert_eq!(gw.reload(&tg.config).unwrap().sessions_cut, 0);
    assert_eq!(tg.live_sessions(), 1);
    drop(live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_ends_their_live_session_and_refuses_their_next() {
    init_logs();
    let pki = Arc::new(Pki::new());
    let tg = start_gateway(pki.clone(), &pump().await, ACME_RULE, "", clock()).await;
    let state_dir = tg.state_dir();
    // The user store the running gateway reads, written on the host like `ward user disable`.
    let db = ward_store::store::SqliteStore::open(&state_dir).unwrap();
    for name in ["jdoe", "kim"] {
        db.add_user(&User {
            name: name.into(),
            kind: Kind::Vendor,
            org: Some("acme".into()),
            roles: vec![],
            password_phc: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            totp_secret: None,
            totp_last_step: None,
            disabled: false,
            created_unix: now().unix_timestamp(),
            disabled_unix: None,
            must_change_password: false,
        })
        .unwrap();
    }
    let jdoe = tg.client(
        &pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]),
        Transport::Quic,
    );
    let kim = tg.client(
        &pki.person(Kind::Vendor, "kim", Some("acme"), &[]),
        Transport::Tcp,
    );
    let live = Live::open(&jdoe).await;
    let other = Live::open(&kim).await;

    assert!(db.disable_user("jdoe", now()).unwrap());
    // The gateway's store refresh (every 400 ms) publishes the change; the session ends itself.
    told_everywhere(&state_dir, live, &EndReason::UserDisabled).await;
    // Nobody else's session noticed, and the disabled user's certificate opens nothing more.
    assert_eq!(tg.live_sessions(), 1);
    let err = jdoe.open("pump-12", false, None).await.err().unwrap();
    assert!(err.to_string().contains("user disabled"), "{err:#}");
    drop(other);
}
