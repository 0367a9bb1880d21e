//! Logging in to a telnet device for the user, and changing a device's password through its
//! console: the I/O around the pure dialogues in `ward_core::inject::telnet`.
//!
//! What callers use:
//!
//! - [`login`]`(device, device_id, cred, profile, clock)`: on a connected device stream, before
//!   any of the user's bytes flow. `Ok(`[`LoginOutcome`]`)`: send `leftover` to the client (the
//!   device's greeting and shell prompt; already in the transcript) and start proxying.
//!   `Err(`[`LoginFailure`]`)`: refuse the session with `reason` (never a secret). Either way,
//!   record the `transcript` (it holds no secret: the password's span is left out and a
//!   `credential_injected` event closes it; an echoed password is masked with `*`).
//! - [`login_check`]`(addr, device_id, cred, profile, clock)`: connect, log in, disconnect; `Ok`
//!   when the device accepted the credential (the vault's verification after a rotation).
//! - [`rotate`]`(addr, device_id, cred, new, profile, clock)`: connect, log in with `cred`, run
//!   the profile's [`RotateProcedure`](ward_core::inject::RotateProcedure) to change it to `new`.
//!   `Ok` when the device said the password changed; still verify with [`login_check`] before
//!   dropping the old value. On `Err`, [`RotateFailure::device_may_have_changed`] says whether
//!   the device saw the new value (keep both until one of them logs in).
//!
//! The whole dialogue (connecting included, for `login_check` and `rotate`) has the profile's
//! timeout; times come from the caller's `Clock`, waits from tokio's timer.

use std::net::SocketAddr;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use ward_ca::Clock;
use ward_core::inject::telnet::{
    DialogueError, LoginState, Progress, RotateState, TelnetLogin, TelnetRotate,
};
use ward_core::inject::{Credential, LoginProfile};
use ward_core::secret::Secret;
use ward_core::stage::RecordedEvent;

/// One item of what passed between the gateway and the device during a login or rotation, for
/// the recording. Nothing in it is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranscriptItem {
    /// Device output, as received (telnet commands included), any echo of a secret masked.
    Down(Vec<u8>),
    /// What the gateway sent that is not secret: the user name, option answers, the line end
    /// after a password, the rotation command.
    Up(Vec<u8>),
    /// An event in place of the secrets (`credential_injected`: device, account, length,
    /// outcome; `credential_rotation`: device, account, outcome).
    Event(RecordedEvent),
}

/// A login that succeeded.
#[derive(Debug)]
pub struct LoginOutcome {
    /// What the device showed after the password (greeting and shell prompt, telnet commands
    /// removed, a data byte 255 as `IAC IAC`): send it to the client. It is already part of the
    /// transcript's device output; do not record it again.
    pub leftover: Vec<u8>,
    /// The dialogue, for the recording.
    pub transcript: Vec<TranscriptItem>,
}

/// A login that failed.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct LoginFailure {
    /// Why, for the client, the audit log and the operator: "device login failed: …". Never
    /// holds a secret.
    pub reason: String,
    /// The dialogue up to the failure, for the recording.
    pub transcript: Vec<TranscriptItem>,
    /// Whether the device was sent the password (so it may have logged a failed attempt).
    pub password_sent: bool,
}

/// Which part of a rotation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotatePhase {
    /// Connecting to the device.
    Connect,
    /// Logging in with the current value: nothing was changed.
    Login,
    /// The password-change dialogue: the device may or may not have taken the new value.
    Procedure,
}

/// A rotation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct RotateFailure {
    /// Why ("password rotation failed: …"); never holds a secret.
    pub reason: String,
    /// Where it failed.
    pub phase: RotatePhase,
    /// The dialogue, for the audit trail or a recording.
    pub transcript: Vec<TranscriptItem>,
}

impl RotateFailure {
    /// Whether the device saw the new password (then it may have changed it even though the
    /// dialogue failed: try the new value, and keep the old one until a login succeeds).
    pub fn device_may_have_changed(&self) -> bool {
        self.phase == RotatePhase::Procedure
    }
}

/// How long from `now` until `deadline` (zero when past).
fn remaining(deadline: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(deadline - now).unwrap_or(Duration::ZERO)
}

/// Write what a step produced and add it to the transcript.
async fn apply<S: AsyncWrite + Unpin>(
    device: &mut S,
    progress: Progress,
    transcript: &mut Vec<TranscriptItem>,
) -> std::io::Result<()> {
    if !progress.record.is_empty() {
        transcript.push(TranscriptItem::Down(progress.record));
    }
    if progress.send.is_empty() {
        return Ok(());
    }
    for send in &progress.send {
        device.write_all(&send.bytes).await?;
        let public = send.public_bytes();
        if !public.is_empty() {
            transcript.push(TranscriptItem::Up(public));
        }
    }
    device.flush().await
}

/// What one wait on the device gave.
enum Read {
    Bytes(usize),
    Closed,
    TimedOut,
}

async fn read_until<S: AsyncRead + Unpin>(
    device: &mut S,
    buf: &mut [u8],
    deadline: OffsetDateTime,
    clock: &dyn Clock,
) -> std::io::Result<Read> {
    let wait = remaining(deadline, clock.now());
    if wait.is_zero() {
        return Ok(Read::TimedOut);
    }
    match tokio::time::timeout(wait, device.read(buf)).await {
        Err(_) => Ok(Read::TimedOut),
        Ok(Ok(0)) => Ok(Read::Closed),
        Ok(Ok(n)) => Ok(Read::Bytes(n)),
        Ok(Err(e)) => Err(e),
    }
}

fn injected_event(device_id: &str, cred: &Credential, outcome: &str) -> TranscriptItem {
    let length = cred.secret.expose().len().to_string();
    TranscriptItem::Event(RecordedEvent::new(
        "credential_injected",
        &[
            ("device", device_id),
            ("account", &cred.account),
            ("length", &length),
            ("outcome", outcome),
        ],
    ))
}

/// Log in to the telnet console on `device` with `cred`, as `profile` says. See the module
/// documentation. Reads the device only as far as the end of the read that held its shell
/// prompt (that read's remainder is in `leftover`).
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    device: &mut S,
    device_id: &str,
    cred: &Credential,
    profile: &LoginProfile,
    clock: &dyn Clock,
) -> Result<LoginOutcome, LoginFailure> {
    let machine = TelnetLogin::new(cred, profile, clock.now());
    run_login(device, device_id, cred, machine, clock).await
}

async fn run_login<S: AsyncRead + AsyncWrite + Unpin>(
    device: &mut S,
    device_id: &str,
    cred: &Credential,
    mut machine: TelnetLogin,
    clock: &dyn Clock,
) -> Result<LoginOutcome, LoginFailure> {
    let mut transcript = Vec::new();
    let mut buf = vec![0u8; 4096];
    let io_error = |e: std::io::Error, machine: &TelnetLogin, transcript: Vec<TranscriptItem>| {
        let mut transcript = transcript;
        transcript.push(injected_event(device_id, cred, "io_error"));
        LoginFailure {
            reason: format!(
                "device login failed: the connection to the device broke ({e}); check the device's network"
            ),
            transcript,
            password_sent: machine.password_sent(),
        }
    };
    while !machine.is_done() {
        let progress = match read_until(device, &mut buf, machine.deadline(), clock).await {
            Ok(Read::Bytes(n)) => {
                let chunk = buf.get(..n).unwrap_or_default();
                machine.feed(chunk, clock.now())
            }
            Ok(Read::Closed) => machine.closed(),
            Ok(Read::TimedOut) => machine.tick(machine.deadline()),
            Err(e) => return Err(io_error(e, &machine, transcript)),
        };
        if let Err(e) = apply(device, progress, &mut transcript).await {
            return Err(io_error(e, &machine, transcript));
        }
    }
    match machine.state() {
        LoginState::LoggedIn { leftover } => {
            transcript.push(injected_event(device_id, cred, "ok"));
            Ok(LoginOutcome {
                leftover: leftover.clone(),
                transcript,
            })
        }
        LoginState::Failed(e) => {
            transcript.push(injected_event(device_id, cred, e.as_str()));
            Err(LoginFailure {
                reason: format!("device login failed: {e}"),
                transcript,
                password_sent: machine.password_sent(),
            })
        }
        // Not reached: the loop runs until the login is done.
        _ => Err(LoginFailure {
            reason: "device login failed: the login dialogue stopped early".to_string(),
            transcript,
            password_sent: machine.password_sent(),
        }),
    }
}

async fn connect(
    addr: SocketAddr,
    profile: &LoginProfile,
) -> Result<TcpStream, (String, std::io::Error)> {
    let what = format!("connecting to the device at {addr}");
    match tokio::time::timeout(profile.timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err((what, e)),
        Err(_) => Err((
            what,
            std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
        )),
    }
}

/// Connect to `addr`, log in with `cred`, disconnect. `Ok` when the device accepted it.
pub async fn login_check(
    addr: SocketAddr,
    device_id: &str,
    cred: &Credential,
    profile: &LoginProfile,
    clock: &dyn Clock,
) -> Result<(), LoginFailure> {
    let mut stream = connect(addr, profile)
        .await
        .map_err(|(what, e)| LoginFailure {
            reason: format!("device login failed: {what}: {e}"),
            transcript: Vec::new(),
            password_sent: false,
        })?;
    login(&mut stream, device_id, cred, profile, clock).await?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Connect to `addr`, log in with `cred`, and change its password to `new` with the profile's
/// rotation procedure. See the module documentation.
pub async fn rotate(
    addr: SocketAddr,
    device_id: &str,
    cred: &Credential,
    new: &Secret<String>,
    profile: &LoginProfile,
    clock: &dyn Clock,
) -> Result<(), RotateFailure> {
    let fail = |phase, reason: String, transcript| RotateFailure {
        reason: format!("password rotation failed: {reason}"),
        phase,
        transcript,
    };
    let Some(procedure) = profile.rotate.as_ref() else {
        return Err(fail(
            RotatePhase::Connect,
            format!(
                "the login profile {:?} has no rotate procedure; add `rotate = {{ command = …, steps = […] }}` to it",
                profile.name
            ),
            Vec::new(),
        ));
    };
    let mut stream = connect(addr, profile)
        .await
        .map_err(|(what, e)| fail(RotatePhase::Connect, format!("{what}: {e}"), Vec::new()))?;
    let mut transcript = match login(&mut stream, device_id, cred, profile, clock).await {
        Ok(outcome) => outcome.transcript,
        Err(f) => {
            return Err(fail(
                RotatePhase::Login,
                format!("{}; the current value was not changed", f.reason),
                f.transcript,
            ))
        }
    };
    let mut machine = TelnetRotate::new(
        procedure,
        &cred.username,
        &cred.secret,
        new,
        profile.timeout,
        clock.now(),
    );
    let event = |outcome: &str| {
        TranscriptItem::Event(RecordedEvent::new(
            "credential_rotation",
            &[
                ("device", device_id),
                ("account", &cred.account),
                ("outcome", outcome),
            ],
        ))
    };
    let broke = |e: std::io::Error, mut transcript: Vec<TranscriptItem>| {
        transcript.push(event("io_error"));
        fail(
            RotatePhase::Procedure,
            format!("the connection to the device broke during the password change ({e}); the device may or may not have the new value"),
            transcript,
        )
    };
    let progress = machine.start();
    if let Err(e) = apply(&mut stream, progress, &mut transcript).await {
        return Err(broke(e, transcript));
    }
    let mut buf = vec![0u8; 4096];
    while !machine.is_done() {
        let progress = match read_until(&mut stream, &mut buf, machine.deadline(), clock).await {
            Ok(Read::Bytes(n)) => machine.feed(buf.get(..n).unwrap_or_default(), clock.now()),
            Ok(Read::Closed) => machine.closed(),
            Ok(Read::TimedOut) => machine.tick(machine.deadline()),
            Err(e) => return Err(broke(e, transcript)),
        };
        if let Err(e) = apply(&mut stream, progress, &mut transcript).await {
            return Err(broke(e, transcript));
        }
    }
    let _ = stream.shutdown().await;
    match machine.state() {
        RotateState::Changed => Ok(()),
        RotateState::Failed(e) => {
            transcript.push(event(e.as_str()));
            Err(fail(RotatePhase::Procedure, describe(e), transcript))
        }
        _ => Err(fail(
            RotatePhase::Procedure,
            "the password-change dialogue stopped early".to_string(),
            transcript,
        )),
    }
}

fn describe(e: &DialogueError) -> String {
    match e {
        DialogueError::Refused { pattern } => format!(
            "the device refused the password change (it said {pattern:?}); the current value still applies"
        ),
        other => format!("{other}; the device may or may not have the new value"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;
    use time::macros::datetime;
    use ward_ca::FixedClock;

    fn cred(pw: &str) -> Credential {
        Credential {
            account: "service".into(),
            username: "admin".into(),
            secret: Secret::new(pw.to_string()),
        }
    }

    #[tokio::test]
    async fn silent_device_times_out_with_a_reason() {
        let clock = FixedClock::new(datetime!(2026-01-01 00:00 UTC));
        let (mut gw, mut dev) = tokio::io::duplex(1024);
        let mut profile = LoginProfile::generic_telnet();
        profile.timeout = Duration::from_millis(200);
        dev.write_all(b"login: ").await.unwrap();
        let started = std::time::Instant::now();
        let err = login(&mut gw, "pump-12", &cred("Sekr1t"), &profile, &clock)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            err.reason,
            "device login failed: password prompt not seen within 0.2 s; check the device's login profile (prompts) and that the console answers"
        );
        assert!(!err.password_sent);
        let mut sent = vec![0u8; 64];
        let n = dev.read(&mut sent).await.unwrap();
        assert_eq!(&sent[..n], b"admin\r\n");
        let Some(TranscriptItem::Event(ev)) = err.transcript.last() else {
            panic!("{:?}", err.transcript)
        };
        assert_eq!(ev.kind, "credential_injected");
        assert!(ev.fields.contains(&("outcome".into(), "timeout".into())));
    }

    #[tokio::test]
    async fn secret_stays_out_of_the_transcript() {
        let clock = FixedClock::new(datetime!(2026-01-01 00:00 UTC));
        let (mut gw, mut dev) = tokio::io::duplex(1024);
        let profile = LoginProfile::generic_telnet();
        let device = tokio::spawn(async move {
            let mut buf = vec![0u8; 256];
            dev.write_all(b"\xff\xfb\x01login: ").await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"admin\r\n") {
                let n = dev.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            dev.write_all(b"Password: ").await.unwrap();
            let n = dev.read(&mut buf).await.unwrap();
            // A console that echoes the password.
            dev.write_all(&buf[..n]).await.unwrap();
            dev.write_all(b"Welcome\r\n# ").await.unwrap();
            (got, buf[..n].to_vec(), dev)
        });
        let ok = login(&mut gw, "pump-12", &cred("Sekr1t-pw"), &profile, &clock)
            .await
            .unwrap();
        let (first, pw_line, _dev) = device.await.unwrap();
        assert_eq!(first, b"\xff\xfd\x01admin\r\n");
        assert_eq!(pw_line, b"Sekr1t-pw\r\n");
        let all = format!("{:?}", ok.transcript);
        assert!(!all.contains("Sekr1t"), "{all}");
        let down: Vec<u8> = ok
            .transcript
            .iter()
            .filter_map(|t| match t {
                TranscriptItem::Down(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(down.windows(9).all(|w| w != b"Sekr1t-pw"));
        assert!(down.ends_with(b"*********\r\nWelcome\r\n# "));
        // The options the device turned on (WILL ECHO), for the client's telnet program, then
        // its output with the echoed password masked.
        assert_eq!(ok.leftover, b"\xff\xfb\x01*********\r\nWelcome\r\n# ");
    }
}
