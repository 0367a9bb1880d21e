//! Quickstart tells the truth (issue 12 item 8, security case 24): what it prints about who can
//! reach the simulated devices, and about the just-in-time flow, is what happens; and
//! `quickstart --isolated` puts the devices in a network namespace of their own that only the
//! gateway dials into, so nothing else on the machine reaches them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ward_tests::process::{
    run, run_with, start_quickstart, start_quickstart_args, ward, Input, Proc, COMMAND_TIMEOUT,
};
use ward_tests::require_peer;

/// The pump console's address in a quickstart's `ward.toml` (the first device).
fn pump_address(dir: &Path) -> SocketAddr {
    let toml = std::fs::read_to_string(dir.join("ward.toml")).unwrap();
    let line = toml
        .lines()
        .find(|l| l.starts_with("address = "))
        .expect("a device address in ward.toml");
    line.trim_start_matches("address = ")
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// SIGTERM stops quickstart cleanly.
fn stop(qs: Proc) {
    let pid = qs.child.id().to_string();
    let kill = run(Command::new("kill").args(["-TERM", &pid]));
    assert!(kill.status.success(), "{kill:?}");
    let out = qs.finish(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

#[test]
fn quickstart_says_who_can_reach_the_devices_and_how_jit_works() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs-dev");
    let (qs, port) = start_quickstart(&dir);
    let printed = qs.stdout();

    // The devices are on this machine's loopback: any local user reaches them, and the text says so
    // (it used to say they listen on "ports only Ward is configured to use").
    let pump = pump_address(&dir);
    assert!(reachable(pump), "the demo pump at {pump} is not reachable");
    assert!(
        !printed.contains("only Ward is configured to use"),
        "{printed}"
    );
    assert!(
        printed.contains("any local user of this machine can also reach"),
        "{printed}"
    );
    assert!(printed.contains("quickstart --isolated"), "{printed}");

    // The JIT flow: no second login is needed after approval (the old text said a new login was),
    // and the fixture `tech` needs no --change-password, unlike users from `ward user add`.
    assert!(!printed.contains("now bound to the grant"), "{printed}");
    assert!(
        printed.contains("tech's certificate opens pump-14 as soon as the"),
        "{printed}"
    );
    assert!(printed.contains("needs no --change-password"), "{printed}");

    // SIGHUP reloads ward.toml, as for `ward gateway`; it used to kill quickstart.
    let pid = qs.child.id().to_string();
    let hup = run(Command::new("kill").args(["-HUP", &pid]));
    assert!(hup.status.success(), "{hup:?}");
    let out = run(&mut ward(&[
        "devices",
        "--gateway",
        &format!("127.0.0.1:{port}"),
        "--identity",
        &format!("{}/vendor", dir.display()),
    ]));
    assert!(out.status.success(), "after SIGHUP: {out:?}");
    assert!(out.stdout.contains("pump-12"), "{out:?}");
    stop(qs);
}

/// Root and `ip netns` are what `--isolated` needs; CI runs as root with iproute2 installed.
fn can_isolate() -> bool {
    if !require_peer("ip") {
        return false;
    }
    let uid = run(Command::new("id").arg("-u"));
    let root = uid.stdout.trim() == "0";
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "quickstart --isolated needs root under CI"
        );
        eprintln!("SKIPPED: quickstart --isolated needs root");
    }
    root
}

#[test]
fn isolated_quickstart_devices_are_reachable_only_through_ward() {
    if !can_isolate() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs-dev");
    let d = dir.display().to_string();
    let (qs, port) = start_quickstart_args(&dir, &[], &["--isolated"]);
    let netns = format!("/run/netns/ward-quickstart-{}", qs.child.id());
    assert!(Path::new(&netns).exists(), "{netns} was not made");
    let printed = qs.stdout();
    assert!(
        printed.contains("inside network namespace ward-quickstart-"),
        "{printed}"
    );

    // Nothing in this namespace reaches the pump's console...
    let pump = pump_address(&dir);
    assert!(
        !reachable(pump),
        "the isolated pump at {pump} answered from outside its namespace"
    );

    // ...but Ward does: the vendor's session reaches the console through the gateway.
    let out = run_with(
        &mut ward(&[
            "connect",
            "pump-12",
            "--gateway",
            &format!("127.0.0.1:{port}"),
            "--identity",
            &format!("{d}/vendor"),
        ]),
        Input::Bytes(b"status\r\nexit\r\n".to_vec()),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("status: RUNNING"), "{out:?}");

    // Stopping quickstart deletes the namespace.
    stop(qs);
    assert!(!Path::new(&netns).exists(), "{netns} outlived quickstart");
}

#[test]
fn a_device_namespace_name_cannot_leave_run_netns() {
    // `netns` is joined from /run/netns/NAME: names that would leave it are refused at load.
    for bad in ["../x", "a/b", ".hidden", ""] {
        let text = format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nca = \".\"\ncert = \"c\"\nkey = \"k\"\nstate_dir = \"s\"\n\
             [[device]]\nid = \"pump-1\"\naddress = \"127.0.0.1:23\"\nprotocol = \"telnet\"\nnetns = \"{bad}\"\n"
        );
        let err = ward_core::config::Config::parse(&text, "ward.toml")
            .err()
            .unwrap_or_else(|| panic!("netns {bad:?} was accepted"));
        assert!(err.to_string().contains("device[0].netns"), "{err}");
    }
}
