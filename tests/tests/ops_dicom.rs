//! Issue 15, DICOM: Ward decodes DICOM operations and enforces a rule's operation list, with real
//! dcmtk peers (echoscu, storescu ↔ storescp) through Ward's local forwarder, all on loopback.
//!
//! - A rule allowing C-ECHO and C-FIND: echoscu works through Ward; storescu is refused (every
//!   storage presentation context is removed, so the gateway rejects the association), storescp's
//!   output dir stays empty, the refusal is audited (`operation_denied`) and in the recording.
//! - A rule allowing C-STORE: storescu sends three files byte for byte, the recording has three
//!   C-STORE operations with their SOP instance UIDs, and tshark's dissection of the pcap export
//!   counts the same C-STORE requests with the same UIDs.
//!
//! Every child process runs under a timeout and is killed when dropped. Under CI a missing peer
//! fails the test (`require_peer`); locally it is skipped with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_ca::{Clock, Kind, SystemClock};
use ward_client::Transport;
use ward_tests::process::*;
use ward_tests::*;

fn rules(allow: &str) -> String {
    format!(
        r#"
[[rule]]
name = "acme-checks-modalities"
who = {{ kind = "vendor", org = "acme" }}
devices = {{ labels = {{ vendor = "acme" }} }}
operations.dicom = {{ allow = [{allow}] }}
"#
    )
}

/// storescp on a free loopback port, writing what it receives to `out`; killed when dropped.
struct Storescp {
    addr: SocketAddr,
    out: tempfile::TempDir,
    _proc: Proc,
}

fn echoscu(addr: SocketAddr) -> Finished {
    run(Command::new("echoscu")
        .args(["-aec", "STORESCP", "-to", "10", "-ta", "10", "-td", "10"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string()))
}

fn start_storescp() -> Storescp {
    let out = tempfile::tempdir().unwrap();
    for _attempt in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut proc = Proc::spawn(
            Command::new("storescp")
                // -B: write datasets exactly as received, so they compare byte for byte.
                .args(["-aet", "STORESCP", "-B", "-od"])
                .arg(out.path())
                .arg(port.to_string()),
            Input::Null,
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            if let Some(status) = proc.child.try_wait().unwrap() {
                let err = proc.stderr();
                if err.contains("cannot listen") || err.contains("in use") {
                    break;
                }
                panic!("storescp exited ({status}): {err}");
            }
            if echoscu(addr).status.success() {
                return Storescp {
                    addr,
                    out,
                    _proc: proc,
                };
            }
            assert!(Instant::now() < deadline, "storescp did not start in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("storescp could not bind a free loopback port in 5 attempts");
}

/// A small Secondary Capture image whose SOP instance UID ends in `n`, written with dump2dcm.
fn image(dir: &Path, n: u32) -> (PathBuf, String) {
    let uid = format!("1.2.826.0.1.3680043.9.7433.15.{n}");
    let dump = format!(
        r#"(0008,0016) UI =SecondaryCaptureImageStorage
(0008,0018) UI [{uid}]
(0008,0060) CS [OT]
(0010,0010) PN [Ward^Ops{n}]
(0010,0020) LO [WARD-OPS-{n}]
(0020,000d) UI [1.2.826.0.1.3680043.9.7433.15.100]
(0020,000e) UI [1.2.826.0.1.3680043.9.7433.15.101]
(0028,0002) US 1
(0028,0004) CS [MONOCHROME2]
(0028,0010) US 4
(0028,0011) US 4
(0028,0100) US 8
(0028,0101) US 8
(0028,0102) US 7
(0028,0103) US 0
(7fe0,0010) OB 00\11\22\33\44\55\66\77\88\99\aa\bb\cc\dd\ee\{n:02x}
"#
    );
    let d = dir.join(format!("image{n}.dump"));
    let f = dir.join(format!("image{n}.dcm"));
    std::fs::write(&d, dump).unwrap();
    run_ok(Command::new("dump2dcm").arg("+te").arg(&d).arg(&f));
    (f, uid)
}

fn storescu(addr: SocketAddr, files: &[PathBuf]) -> Finished {
    run(Command::new("storescu")
        .args(["-aec", "STORESCP", "-to", "10", "-ta", "10", "-td", "10"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files))
}

/// The dataset of a DICOM Part 10 file (after the preamble, `DICM` and the file meta group).
fn dataset_of(file: &[u8]) -> &[u8] {
    assert_eq!(&file[128..132], b"DICM");
    let group_len = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
    &file[144 + group_len..]
}

/// The sealed recordings in `state`, once there are `n`.
async fn sealed(state: &Path, n: usize) -> Vec<ward_server::review::SessionSummary> {
    let key = ward_server::review::public_key(state).unwrap();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        let list = ward_server::review::list(state, &key, &ward_server::review::Filter::default())
            .unwrap();
        if list.len() == n && list.iter().all(|s| s.verification == "ok") {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "recordings not sealed: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `ward export ID --format FORMAT` to stdout.
fn export(state: &Path, id: &str, format: &str) -> Finished {
    let state = state.display().to_string();
    run_ok(&mut ward(&[
        "export",
        id,
        "--format",
        format,
        "--out",
        "-",
        "--state-dir",
        &state,
    ]))
}

/// The recording's events (`ward export --format json`: one record a line, events of type
/// "event" with their `kind` and `fields`).
fn recorded_events(state: &Path, id: &str) -> Vec<serde_json::Value> {
    export(state, id, "json")
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["type"] == "event")
        .collect()
}

/// An event's field `k`.
fn ev_field(ev: &serde_json::Value, k: &str) -> Option<String> {
    ev["fields"][k].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_allowed_store_refused_by_the_operation_list() {
    for tool in ["echoscu", "storescu", "storescp", "dump2dcm"] {
        if !require_peer(tool) {
            return;
        }
    }
    init_logs();
    let scp = tokio::task::spawn_blocking(start_storescp).await.unwrap();
    let pki = Arc::new(Pki::new());
    let devices = [DeviceSpec::new(
        "pacs-1",
        scp.addr,
        "dicom",
        &[("vendor", "acme")],
    )];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let gw = start_gateway(
        pki.clone(),
        &devices,
        &rules(r#""C-ECHO", "C-FIND""#),
        "",
        clock,
    )
    .await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);

    let fwd = forwarder(gw.client(&vendor, Transport::Quic), "pacs-1").await;
    let out = tokio::task::spawn_blocking(move || echoscu(fwd))
        .await
        .unwrap();
    assert!(out.status.success(), "echoscu through Ward: {out:?}");

    let work = tempfile::tempdir().unwrap();
    let (file, uid) = image(work.path(), 1);
    let fwd = forwarder(gw.client(&vendor, Transport::Quic), "pacs-1").await;
    let out = tokio::task::spawn_blocking(move || storescu(fwd, &[file]))
        .await
        .unwrap();
    assert!(
        !out.status.success() || out.stderr.contains("Rejected"),
        "storescu must be refused: {out:?}"
    );
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("Association Rejected"),
        "{out:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored: Vec<_> = std::fs::read_dir(scp.out.path()).unwrap().collect();
    assert!(stored.is_empty(), "the device received {stored:?}");

    // Audited …
    let state = gw.state_dir();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let denied = loop {
        let denied: Vec<_> = audit_events(&state)
            .into_iter()
            .filter(|e| e["event"] == "operation_denied")
            .collect();
        if !denied.is_empty() {
            break denied;
        }
        assert!(Instant::now() < deadline, "no operation_denied audited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = serde_json::to_string(&denied).unwrap();
    assert!(text.contains("C-STORE"), "{text}");
    assert!(text.contains("acme-checks-modalities"), "{text}");

    // … and recorded: the echo session has its C-ECHO, the store session its refusal.
    let sessions = sealed(&state, 2).await;
    let mut all = Vec::new();
    for s in &sessions {
        let (st, id) = (state.clone(), s.id.clone());
        let evs = tokio::task::spawn_blocking(move || recorded_events(&st, &id))
            .await
            .unwrap();
        all.extend(evs);
    }
    let all_text = serde_json::to_string(&all).unwrap();
    assert!(all_text.contains("operation_denied"), "{all_text}");
    assert!(all_text.contains("C-ECHO"), "{all_text}");
    assert!(
        !all_text.contains(&uid),
        "no C-STORE of {uid} was ever decoded: {all_text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stores_allowed_arrive_byte_exact_and_match_tshark() {
    for tool in ["echoscu", "storescu", "storescp", "dump2dcm"] {
        if !require_peer(tool) {
            return;
        }
    }
    init_logs();
    let scp = tokio::task::spawn_blocking(start_storescp).await.unwrap();
    let pki = Arc::new(Pki::new());
    let devices = [DeviceSpec::new(
        "pacs-1",
        scp.addr,
        "dicom",
        &[("vendor", "acme")],
    )];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let gw = start_gateway(
        pki.clone(),
        &devices,
        &rules(r#""C-ECHO", "C-STORE""#),
        "",
        clock,
    )
    .await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);

    let work = tempfile::tempdir().unwrap();
    let images: Vec<(PathBuf, String)> = (1..=3).map(|n| image(work.path(), n)).collect();
    let files: Vec<PathBuf> = images.iter().map(|(f, _)| f.clone()).collect();
    let fwd = forwarder(gw.client(&vendor, Transport::Quic), "pacs-1").await;
    let out = tokio::task::spawn_blocking(move || storescu(fwd, &files))
        .await
        .unwrap();
    assert!(out.status.success(), "storescu through Ward: {out:?}");

    for (file, uid) in &images {
        let got = std::fs::read(scp.out.path().join(format!("SC.{uid}")))
            .unwrap_or_else(|e| panic!("storescp has no SC.{uid}: {e}"));
        let sent = std::fs::read(file).unwrap();
        assert_eq!(sha256(dataset_of(&got)), sha256(dataset_of(&sent)), "{uid}");
    }

    let state = gw.state_dir();
    let sessions = sealed(&state, 1).await;
    let id = sessions[0].id.clone();
    let (st, i) = (state.clone(), id.clone());
    let events = tokio::task::spawn_blocking(move || recorded_events(&st, &i))
        .await
        .unwrap();
    let stores: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "operation" && ev_field(e, "op").as_deref() == Some("C-STORE"))
        .collect();
    let uids: Vec<String> = stores
        .iter()
        .filter_map(|e| ev_field(e, "sop_instance"))
        .collect();
    let want: Vec<String> = images.iter().map(|(_, u)| u.clone()).collect();
    assert_eq!(uids, want, "{events:#?}");
    // Patient data from each data set's first fragment, recorded under phi.* (masked in views).
    let names: Vec<String> = stores
        .iter()
        .filter_map(|e| ev_field(e, "phi.patient_name"))
        .collect();
    assert_eq!(
        names,
        ["Ward^Ops1", "Ward^Ops2", "Ward^Ops3"],
        "{events:#?}"
    );
    assert!(!serde_json::to_string(&events)
        .unwrap()
        .contains("operation_denied"));

    // tshark's dissection of the pcap export: the same C-STORE requests, the same UIDs.
    if !require_peer("tshark") {
        return;
    }
    let pcap = work.path().join("stores.pcap");
    let (st, i, p) = (
        state.display().to_string(),
        id.clone(),
        pcap.display().to_string(),
    );
    let decode_as = format!("tcp.port=={},dicom", scp.addr.port());
    let verbose = tokio::task::spawn_blocking(move || {
        run_ok(&mut ward(&[
            "export",
            &i,
            "--format",
            "pcap",
            "--out",
            &p,
            "--state-dir",
            &st,
        ]));
        run_ok(Command::new("tshark").args(["-r", &p, "-d", &decode_as, "-Y", "dicom", "-V"]))
    })
    .await
    .unwrap();
    let text = verbose.stdout;
    let rq: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(0000,0100)") && l.contains("C-STORE-RQ"))
        .collect();
    assert_eq!(rq.len(), 3, "tshark's C-STORE-RQs: {rq:#?}");
    let mut tshark_uids: Vec<String> = text
        .lines()
        .filter(|l| l.contains("(0000,1000)"))
        .filter_map(|l| {
            want.iter()
                .find(|u| l.contains(&format!("[{u}]")) || l.contains(u.as_str()))
                .cloned()
        })
        .collect();
    // Each UID is in the request and again in its response.
    tshark_uids.dedup();
    assert_eq!(tshark_uids, want, "{text}");
}

/// dcmqrscp (verbose; one child process per association) serving a small archive of one study, on a free port.
struct Dcmqrscp {
    addr: SocketAddr,
    proc: Proc,
    _dir: tempfile::TempDir,
}

const STUDY_UID: &str = "1.2.826.0.1.3680043.9.7433.16.100";

fn start_dcmqrscp() -> Dcmqrscp {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir(&db).unwrap();
    let dump = dir.path().join("study.dump");
    let dcm = dir.path().join("study.dcm");
    std::fs::write(
        &dump,
        format!(
            r#"(0008,0016) UI =SecondaryCaptureImageStorage
(0008,0018) UI [1.2.826.0.1.3680043.9.7433.16.1]
(0008,0020) DA [20261128]
(0008,0030) TM [101010]
(0008,0050) SH [ACC1]
(0008,0060) CS [OT]
(0010,0010) PN [Ward^Query]
(0010,0020) LO [WARD-Q-1]
(0020,000d) UI [{STUDY_UID}]
(0020,000e) UI [1.2.826.0.1.3680043.9.7433.16.101]
(0020,0010) SH [S1]
(0020,0011) IS [1]
(0020,0013) IS [1]
(0028,0002) US 1
(0028,0004) CS [MONOCHROME2]
(0028,0010) US 2
(0028,0011) US 2
(0028,0100) US 8
(0028,0101) US 8
(0028,0102) US 7
(0028,0103) US 0
(7fe0,0010) OB 00\11\22\33
"#
        ),
    )
    .unwrap();
    run_ok(Command::new("dump2dcm").arg("+te").arg(&dump).arg(&dcm));
    run_ok(Command::new("dcmqridx").arg(&db).arg(&dcm));
    for _attempt in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.path().join("dcmqrscp.cfg");
        std::fs::write(
            &cfg,
            format!(
                "NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\
                 HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n\
                 AETable BEGIN\nARCHIVE {} RW (10, 1024mb) ANY\nAETable END\n",
                db.display()
            ),
        )
        .unwrap();
        let mut proc = Proc::spawn(
            Command::new("dcmqrscp").args(["-v", "-c"]).arg(&cfg),
            Input::Null,
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            if let Some(status) = proc.child.try_wait().unwrap() {
                let err = format!("{}{}", proc.stdout(), proc.stderr());
                if err.contains("cannot listen") || err.contains("in use") {
                    break;
                }
                panic!("dcmqrscp exited ({status}): {err}");
            }
            let echo = run(Command::new("echoscu")
                .args(["-aec", "ARCHIVE", "-to", "5", "127.0.0.1"])
                .arg(port.to_string()));
            if echo.status.success() {
                return Dcmqrscp {
                    addr,
                    proc,
                    _dir: dir,
                };
            }
            assert!(Instant::now() < deadline, "dcmqrscp did not start in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("dcmqrscp could not bind a free loopback port in 5 attempts");
}

fn qr_tool(tool: &str, addr: SocketAddr) -> Finished {
    let mut cmd = Command::new(tool);
    cmd.args([
        "-aec", "ARCHIVE", "-to", "10", "-ta", "10", "-td", "10", "-S",
    ])
    .args(["-k", "0008,0052=STUDY", "-k", "0010,0010"])
    .args(["-k", &format!("0020,000d={STUDY_UID}")]);
    if tool == "movescu" {
        cmd.args(["-aem", "ELSEWHERE"]);
    }
    run(cmd.arg(addr.ip().to_string()).arg(addr.port().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_allowed_and_the_move_context_removed_with_dcmqrscp() {
    for tool in [
        "echoscu", "findscu", "movescu", "dcmqrscp", "dcmqridx", "dump2dcm",
    ] {
        if !require_peer(tool) {
            return;
        }
    }
    init_logs();
    let qr = tokio::task::spawn_blocking(start_dcmqrscp).await.unwrap();
    let pki = Arc::new(Pki::new());
    let devices = [DeviceSpec::new(
        "archive-1",
        qr.addr,
        "dicom",
        &[("vendor", "acme")],
    )];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let gw = start_gateway(
        pki.clone(),
        &devices,
        &rules(r#""C-ECHO", "C-FIND""#),
        "",
        clock,
    )
    .await;
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);

    // C-FIND through Ward: the study is found.
    let fwd = forwarder(gw.client(&vendor, Transport::Quic), "archive-1").await;
    let out = tokio::task::spawn_blocking(move || qr_tool("findscu", fwd))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "findscu through Ward: {out:?}\narchive: {}{}",
        qr.proc.stdout(),
        qr.proc.stderr()
    );
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains("Ward^Query"), "{said}");

    // movescu proposes FIND and MOVE: Ward removes the MOVE context, the archive accepts FIND
    // only, movescu has no context to move with; the archive never sees a C-MOVE.
    let fwd = forwarder(gw.client(&vendor, Transport::Quic), "archive-1").await;
    let out = tokio::task::spawn_blocking(move || qr_tool("movescu", fwd))
        .await
        .unwrap();
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(!said.contains("Move Response"), "{said}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = format!("{}{}", qr.proc.stdout(), qr.proc.stderr());
    assert!(log.contains("C-FIND RQ"), "{log}");
    assert!(
        !log.contains("C-MOVE RQ"),
        "the archive received a C-MOVE:\n{log}"
    );

    // Recorded: the find session's C-FIND and its results; the move session's refusal.
    let state = gw.state_dir();
    let sessions = sealed(&state, 2).await;
    let mut all = Vec::new();
    for s in &sessions {
        let (st, id) = (state.clone(), s.id.clone());
        all.extend(
            tokio::task::spawn_blocking(move || recorded_events(&st, &id))
                .await
                .unwrap(),
        );
    }
    let ops: Vec<(String, String)> = all
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_string(),
                ev_field(e, "op").unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        ops.contains(&("operation".into(), "C-FIND".into())),
        "{ops:?}"
    );
    assert!(
        ops.contains(&("operation_result".into(), "C-FIND".into())),
        "{ops:?}"
    );
    assert!(
        ops.contains(&("operation_denied".into(), "C-MOVE".into())),
        "{ops:?}"
    );
    assert!(
        !ops.contains(&("operation".into(), "C-MOVE".into())),
        "{ops:?}"
    );
}
