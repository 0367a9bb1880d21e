//! Telnet login injection and password rotation (issue 14), driven by `ward_server::device_login`
//! against the simulated pump and against a real telnet daemon (`busybox telnetd`, Debian's
//! `busybox-static`, with a small login program this test writes: `login:`/`Password:` on a real
//! pty, a password file, `Login incorrect`, a `$ ` shell with `passwd`).
//!
//! Everything talks to 127.0.0.1 only; every test is bounded in time and kills what it started.
//! Under CI (CI set) a missing busybox telnetd fails its test; locally it is skipped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use ward_ca::SystemClock;
use ward_core::inject::{Credential, LoginProfile};
use ward_core::secret::Secret;
use ward_server::device_login::{self, RotatePhase, TranscriptItem};

/// Upper bound for any one test's device dialogue.
const LIMIT: Duration = Duration::from_secs(60);

fn cred(user: &str, pw: &str) -> Credential {
    Credential {
        account: "service".into(),
        username: user.into(),
        secret: Secret::new(pw.to_string()),
    }
}

fn profile() -> LoginProfile {
    let mut p = LoginProfile::generic_telnet();
    p.timeout = Duration::from_secs(5);
    p
}

/// Every byte of a transcript, events included, as text: for "no secret in it" checks.
fn transcript_text(t: &[TranscriptItem]) -> String {
    let mut s = String::new();
    for item in t {
        match item {
            TranscriptItem::Down(b) | TranscriptItem::Up(b) => {
                s.push_str(&String::from_utf8_lossy(b));
            }
            TranscriptItem::Event(e) => s.push_str(&format!("{e:?}")),
        }
    }
    s
}

fn down(t: &[TranscriptItem]) -> Vec<u8> {
    t.iter()
        .filter_map(|i| match i {
            TranscriptItem::Down(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

async fn pump() -> (SocketAddr, ward::sim::PumpAccounts) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let accounts = ward::sim::factory_accounts();
    let dev = ward::sim::telnet_console_with(l, accounts.clone()).unwrap();
    (dev.addr, accounts)
}

#[tokio::test]
async fn pump_login_lands_at_the_prompt() {
    tokio::time::timeout(LIMIT, async {
        let (addr, _) = pump().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let c = cred("service", ward::sim::SERVICE_PASSWORD);
        let ok = device_login::login(&mut s, "pump-12", &c, &profile(), &SystemClock)
            .await
            .unwrap();
        let leftover = String::from_utf8_lossy(&ok.leftover).into_owned();
        assert!(leftover.ends_with("pump> "), "{leftover:?}");
        assert!(leftover.contains("Welcome, service."), "{leftover:?}");
        let text = transcript_text(&ok.transcript);
        assert!(!text.contains(ward::sim::SERVICE_PASSWORD), "{text}");
        assert!(text.contains("login: "), "{text}");
        let Some(TranscriptItem::Event(ev)) = ok.transcript.last() else {
            panic!("{:?}", ok.transcript)
        };
        assert_eq!(ev.kind, "credential_injected");
        let field = |k: &str| ev.fields.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(field("device"), "pump-12");
        assert_eq!(field("account"), "service");
        assert_eq!(
            field("length"),
            ward::sim::SERVICE_PASSWORD.len().to_string()
        );
        assert_eq!(field("outcome"), "ok");
        // The session is live: the user's command reaches the console.
        s.write_all(b"status\r\n").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !String::from_utf8_lossy(&got).contains("status: RUNNING") {
            let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                .await
                .unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pump_wrong_password_fails_with_a_reason_and_no_secret() {
    tokio::time::timeout(LIMIT, async {
        let (addr, _) = pump().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let c = cred("service", "Wrong-Vaulted-Value");
        let err = device_login::login(&mut s, "pump-12", &c, &profile(), &SystemClock)
            .await
            .unwrap_err();
        assert!(
            err.reason
                .starts_with("device login failed: the device refused the vaulted credential"),
            "{}",
            err.reason
        );
        assert!(!err.reason.contains("Wrong-Vaulted-Value"));
        assert!(err.password_sent);
        let text = transcript_text(&err.transcript);
        assert!(!text.contains("Wrong-Vaulted-Value"), "{text}");
        assert!(text.contains("Login incorrect"), "{text}");
        // And a device that never shows a prompt: the reason names what was awaited.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (_s, _) = silent.accept().await.unwrap();
            tokio::time::sleep(LIMIT).await;
        });
        let mut p = profile();
        p.timeout = Duration::from_millis(300);
        let err = device_login::login_check(silent_addr, "pump-12", &c, &p, &SystemClock)
            .await
            .unwrap_err();
        assert!(
            err.reason
                .starts_with("device login failed: user-name prompt not seen within 0.3 s"),
            "{}",
            err.reason
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pump_rotation_then_new_works_and_old_fails() {
    tokio::time::timeout(LIMIT, async {
        let (addr, accounts) = pump().await;
        let old = cred("service", ward::sim::SERVICE_PASSWORD);
        let new = Secret::new("Rotated-7fQ2-xK9p".to_string());
        device_login::rotate(addr, "pump-12", &old, &new, &profile(), &SystemClock)
            .await
            .unwrap();
        assert_eq!(
            accounts.lock().unwrap().get("service").unwrap(),
            "Rotated-7fQ2-xK9p"
        );
        let with_new = cred("service", "Rotated-7fQ2-xK9p");
        device_login::login_check(addr, "pump-12", &with_new, &profile(), &SystemClock)
            .await
            .unwrap();
        let err = device_login::login_check(addr, "pump-12", &old, &profile(), &SystemClock)
            .await
            .unwrap_err();
        assert!(
            err.reason.starts_with("device login failed"),
            "{}",
            err.reason
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pump_refusing_the_new_password_keeps_the_old() {
    tokio::time::timeout(LIMIT, async {
        let (addr, _) = pump().await;
        let old = cred("service", ward::sim::SERVICE_PASSWORD);
        // The pump refuses passwords shorter than 8 characters.
        let new = Secret::new("short1".to_string());
        let err = device_login::rotate(addr, "pump-12", &old, &new, &profile(), &SystemClock)
            .await
            .unwrap_err();
        assert_eq!(err.phase, RotatePhase::Procedure);
        assert!(
            err.reason
                .starts_with("password rotation failed: the device refused the password change"),
            "{}",
            err.reason
        );
        let text = format!("{} {}", err.reason, transcript_text(&err.transcript));
        assert!(!text.contains("short1"), "{text}");
        assert!(!text.contains(ward::sim::SERVICE_PASSWORD), "{text}");
        device_login::login_check(addr, "pump-12", &old, &profile(), &SystemClock)
            .await
            .unwrap();
        let err = device_login::login_check(
            addr,
            "pump-12",
            &cred("service", "short1"),
            &profile(),
            &SystemClock,
        )
        .await
        .unwrap_err();
        assert!(err.reason.starts_with("device login failed"));
        // A wrong old value: the login phase fails, nothing changed.
        let err = device_login::rotate(
            addr,
            "pump-12",
            &cred("service", "not-the-password"),
            &Secret::new("Another-Long-One".to_string()),
            &profile(),
            &SystemClock,
        )
        .await
        .unwrap_err();
        assert_eq!(err.phase, RotatePhase::Login);
        assert!(!err.device_may_have_changed());
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// A real telnet daemon: busybox telnetd with a login program of ours.

/// Whether `busybox telnetd` is available. Under CI its absence is a failure, never a skip.
fn require_busybox_telnetd() -> bool {
    if !ward_tests::require_peer("busybox") {
        return false;
    }
    let ok = std::process::Command::new("busybox")
        .args(["telnetd", "--help"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("busybox has no telnetd applet: install Debian's busybox-static (.ci/run does)");
        }
        eprintln!("SKIPPED: busybox has no telnetd applet (install busybox-static)");
    }
    ok
}

/// The login program telnetd runs on its pty: prompts like login(1), checks `$DIR/passwd`
/// (`user:password` lines), then a `$ ` shell with `passwd` (as Debian's: "Current password:",
/// "New password:", "Retype new password:"; refuses fewer than 8 characters). With `$DIR/echo`
/// present it leaves the terminal's echo on while the password is typed (a console that echoes
/// it).
const LOGIN_SCRIPT: &str = r#"#!/bin/sh
DIR="$(dirname "$0")"
noecho() { [ -e "$DIR/echo" ] || stty -echo; }
check() { grep -qxF "$1:$2" "$DIR/passwd"; }
printf 'Debian GNU/Linux 12 (test)\n\n'
n=0
while [ $n -lt 3 ]; do
  printf 'login: '
  IFS= read -r user || exit 0
  noecho
  printf 'Password: '
  IFS= read -r pass || exit 0
  stty echo
  printf '\n'
  if check "$user" "$pass"; then
    printf 'Linux test 6.1.0 x86_64\n'
    while :; do
      printf '$ '
      IFS= read -r cmd || exit 0
      case "$cmd" in
        passwd)
          noecho
          printf 'Changing password for %s.\nCurrent password: ' "$user"
          IFS= read -r cur || exit 0
          printf '\nNew password: '
          IFS= read -r new1 || exit 0
          printf '\nRetype new password: '
          IFS= read -r new2 || exit 0
          stty echo
          printf '\n'
          if ! check "$user" "$cur"; then
            printf 'passwd: Authentication token manipulation error\npasswd: password unchanged\n'
          elif [ "$new1" != "$new2" ]; then
            printf 'Sorry, passwords do not match.\npasswd: Authentication token manipulation error\n'
          elif [ ${#new1} -lt 8 ]; then
            printf 'BAD PASSWORD: The password is shorter than 8 characters\npasswd: Authentication token manipulation error\n'
          else
            grep -v "^$user:" "$DIR/passwd" > "$DIR/passwd.new"
            printf '%s:%s\n' "$user" "$new1" >> "$DIR/passwd.new"
            mv "$DIR/passwd.new" "$DIR/passwd"
            printf 'passwd: password updated successfully\n'
          fi ;;
        exit|logout) exit 0 ;;
        '') ;;
        *) printf '%s: command not found\n' "$cmd" ;;
      esac
    done
  fi
  sleep 1
  printf 'Login incorrect\n'
  n=$((n+1))
done
"#;

/// A running `busybox telnetd`, killed when dropped.
struct Telnetd {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl Telnetd {
    async fn start(accounts: &[(&str, &str)]) -> Telnetd {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-login");
        std::fs::write(&script, LOGIN_SCRIPT).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let passwd: String = accounts.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
        std::fs::write(dir.path().join("passwd"), passwd).unwrap();
        let issue = dir.path().join("issue");
        std::fs::write(&issue, "").unwrap();
        // A free port on loopback (telnetd binds it itself right after).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new("busybox")
            .arg("telnetd")
            .arg("-F")
            .args(["-p", &port.to_string()])
            .args(["-b", "127.0.0.1"])
            .arg("-l")
            .arg(&script)
            .arg("-f")
            .arg(&issue)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start busybox telnetd");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = std::time::Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "busybox telnetd did not listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Telnetd {
            addr,
            dir,
            _child: child,
        }
    }

    fn passwd_file(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("passwd")).unwrap()
    }

    fn echo_passwords(&self, on: bool) {
        let p = self.dir.path().join("echo");
        if on {
            std::fs::write(p, "").unwrap();
        } else {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn assert_absent(haystack: &[u8], secret: &str, what: &str) {
    assert!(
        !haystack
            .windows(secret.len())
            .any(|w| w == secret.as_bytes()),
        "{what} holds the secret: {:?}",
        String::from_utf8_lossy(haystack)
    );
}

#[tokio::test]
async fn busybox_telnetd_login_refusal_and_echo_masking() {
    if !require_busybox_telnetd() {
        return;
    }
    tokio::time::timeout(LIMIT, async {
        let d = Telnetd::start(&[("maint", "Factory-Pw-1234")]).await;
        let p = profile();

        let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
        let ok = device_login::login(
            &mut s,
            "vent-3",
            &cred("maint", "Factory-Pw-1234"),
            &p,
            &SystemClock,
        )
        .await
        .unwrap_or_else(|f| panic!("{}: {}", f.reason, transcript_text(&f.transcript)));
        let leftover = String::from_utf8_lossy(&ok.leftover).into_owned();
        assert!(leftover.trim_end().ends_with('$'), "{leftover:?}");
        assert!(leftover.contains("Linux test"), "{leftover:?}");
        assert_absent(&down(&ok.transcript), "Factory-Pw-1234", "the transcript");
        // The real daemon negotiated options: its output held IAC commands.
        assert!(down(&ok.transcript).contains(&255));
        drop(s);

        // A wrong password: refused, reason without the secret.
        let err = device_login::login_check(
            d.addr,
            "vent-3",
            &cred("maint", "Wrong-Pw-5678"),
            &p,
            &SystemClock,
        )
        .await
        .unwrap_err();
        assert!(
            err.reason
                .starts_with("device login failed: the device refused the vaulted credential"),
            "{}",
            err.reason
        );
        assert!(!err.reason.contains("Wrong-Pw-5678"));
        assert_absent(&down(&err.transcript), "Wrong-Pw-5678", "the transcript");

        // A console that echoes the password: the echo is masked in the record and the leftover.
        d.echo_passwords(true);
        let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
        let ok = device_login::login(
            &mut s,
            "vent-3",
            &cred("maint", "Factory-Pw-1234"),
            &p,
            &SystemClock,
        )
        .await
        .unwrap_or_else(|f| panic!("{}: {}", f.reason, transcript_text(&f.transcript)));
        let record = down(&ok.transcript);
        assert_absent(&record, "Factory-Pw-1234", "the transcript");
        assert_absent(&ok.leftover, "Factory-Pw-1234", "the leftover");
        assert!(
            String::from_utf8_lossy(&ok.leftover).contains("***************"),
            "{:?}",
            String::from_utf8_lossy(&ok.leftover)
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn busybox_telnetd_rotation() {
    if !require_busybox_telnetd() {
        return;
    }
    tokio::time::timeout(LIMIT, async {
        let d = Telnetd::start(&[("maint", "Factory-Pw-1234"), ("nurse", "Nurse-Pw-0000")]).await;
        let p = profile();
        let old = cred("maint", "Factory-Pw-1234");

        // Refused by the device (too short): the old value still works.
        let err = device_login::rotate(
            d.addr,
            "vent-3",
            &old,
            &Secret::new("tiny".to_string()),
            &p,
            &SystemClock,
        )
        .await
        .unwrap_err();
        assert_eq!(err.phase, RotatePhase::Procedure, "{}", err.reason);
        assert!(
            err.reason
                .contains("the device refused the password change"),
            "{}",
            err.reason
        );
        assert!(d.passwd_file().contains("maint:Factory-Pw-1234\n"));
        device_login::login_check(d.addr, "vent-3", &old, &p, &SystemClock)
            .await
            .unwrap();

        // Rotated: the new value logs in, the old one no longer does.
        let new = Secret::new("Vaulted-Q8r!2mZx".to_string());
        device_login::rotate(d.addr, "vent-3", &old, &new, &p, &SystemClock)
            .await
            .unwrap_or_else(|f| panic!("{}: {}", f.reason, transcript_text(&f.transcript)));
        assert!(
            d.passwd_file().contains("maint:Vaulted-Q8r!2mZx\n"),
            "{}",
            d.passwd_file()
        );
        device_login::login_check(
            d.addr,
            "vent-3",
            &cred("maint", "Vaulted-Q8r!2mZx"),
            &p,
            &SystemClock,
        )
        .await
        .unwrap();
        let err = device_login::login_check(d.addr, "vent-3", &old, &p, &SystemClock)
            .await
            .unwrap_err();
        assert!(err.reason.starts_with("device login failed"));
        // The other account was untouched.
        assert!(d.passwd_file().contains("nurse:Nurse-Pw-0000\n"));
    })
    .await
    .unwrap();
}

/// The whole flow through a real gateway and the CLI, against the real telnet daemon: an admin
/// vaults the factory password, a vendor lands at the daemon's shell without typing it, the
/// admin rotates it (the daemon's password file changes to a value nobody is shown) and the vendor
/// still gets in.
#[tokio::test]
async fn busybox_telnetd_through_the_gateway_lands_at_its_shell_and_rotates() {
    use std::sync::Arc;
    use ward_ca::Kind;
    use ward_tests::process::{run_with, ward, Input, COMMAND_TIMEOUT};
    use ward_tests::{ChildGateway, DeviceSpec, Pki};

    if !require_busybox_telnetd() {
        return;
    }
    const FACTORY: &str = "Factory-pw-31";
    let telnetd = Telnetd::start(&[("maint", FACTORY)]).await;
    let pki = Arc::new(Pki::new());
    let vendor = pki.person(Kind::Vendor, "jdoe", Some("acme"), &[]);
    let admin = pki.person(Kind::Admin, "root", None, &[]);
    let devices = [DeviceSpec::new(
        "ct-1",
        telnetd.addr,
        "telnet",
        &[("vendor", "acme")],
    )];
    let rules = r#"
[[rule]]
name = "acme-consoles"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
inject = "service"

[[rule]]
name = "admins"
who = { kind = "admin" }
devices = { all = true }
"#;
    let gw = ChildGateway::start(pki.clone(), &devices, rules, "", None);
    let as_admin = |args: &[&str], input: Input| {
        let mut cmd = ward(args);
        cmd.args(["--gateway", &gw.addr, "--identity"])
            .arg(&admin)
            .arg("--ca")
            .arg(pki.root());
        run_with(&mut cmd, input, COMMAND_TIMEOUT)
    };
    let set = as_admin(
        &[
            "vault", "set", "ct-1", "service", "--user", "maint", "--stdin",
        ],
        Input::Bytes(format!("{FACTORY}\n").into_bytes()),
    );
    assert!(set.status.success(), "{set:?}");
    // Types a line, waits for the shell's answer, then `exit` (telnetd hangs up at the client's
    // end of input, so the input stays open until the answer is in).
    let connect = || {
        let mut cmd = ward(&["connect", "ct-1", "--gateway", &gw.addr, "--identity"]);
        cmd.arg(&vendor).arg("--ca").arg(pki.root());
        let mut p = ward_tests::process::Proc::spawn(&mut cmd, Input::Pipe);
        p.send(b"whoami-7\n");
        p.wait_for("the shell's answer", COMMAND_TIMEOUT, |out, _| {
            out.contains("command not found")
        });
        p.send(b"exit\n");
        p.finish(COMMAND_TIMEOUT)
    };
    let out = connect();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("whoami-7: command not found"),
        "the vendor's line did not reach the daemon's shell: {out:?}"
    );
    assert!(!out.stdout.contains("login:"), "{out:?}");
    assert_absent(out.stdout.as_bytes(), FACTORY, "the vendor's output");

    let rotated = as_admin(&["vault", "rotate", "ct-1", "service"], Input::Null);
    assert!(rotated.status.success(), "{rotated:?}");
    let passwd = telnetd.passwd_file();
    assert!(
        passwd.starts_with("maint:") && !passwd.contains(FACTORY),
        "the daemon's password did not change: {passwd}"
    );
    let new_pw = passwd.trim().trim_start_matches("maint:").to_string();
    assert!(new_pw.len() >= 20, "{passwd}");
    let out = connect();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("whoami-7: command not found"),
        "{out:?}"
    );
    for text in [
        out.stdout.as_bytes(),
        out.stderr.as_bytes(),
        rotated.stdout.as_bytes(),
        rotated.stderr.as_bytes(),
    ] {
        assert_absent(text, &new_pw, "client output");
    }
    let audit = std::fs::read(gw.state_dir.join("audit.log")).unwrap();
    assert_absent(&audit, &new_pw, "the audit log");
    assert_absent(&audit, FACTORY, "the audit log");
}
