//! Simulated legacy devices for `ward quickstart` and the tests: a telnet-style infusion-pump console
//! with the factory logins `admin`/`admin` and `service`/[`SERVICE_PASSWORD`] (accounts shared by
//! every connection, changeable with its `passwd` command), and an HTTP patient-monitor status page
//! behind Basic auth. They are deliberately as naive as the devices Ward protects.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Telnet IAC WILL ECHO / WILL SUPPRESS-GO-AHEAD, as old consoles send on connect.
const NEGOTIATION: &[u8] = &[255, 251, 1, 255, 251, 3];

/// A running simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How many TCP connections it has accepted.
    pub connections: Arc<AtomicUsize>,
}

/// The next connection. A failed accept (a connection reset while still queued, a descriptor
/// limit hit for a moment) is logged and retried after a short pause: before, the first error
/// ended the accept loop and dropped the listener, which reset every connection still queued.
pub async fn accept_next(listener: &TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => return sock,
            Err(e) => {
                tracing::warn!(event = "sim_accept_failed", reason = %e, "simulated device: accept failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// The pump's accounts (user name → password), shared by every connection to one console: a
/// password changed with `passwd` holds for the next login.
pub type PumpAccounts = Arc<Mutex<HashMap<String, String>>>;

/// The factory password of the pump's `service` account.
pub const SERVICE_PASSWORD: &str = "acme-service";

/// The shortest password the pump's `passwd` accepts.
pub const PUMP_MIN_PASSWORD: usize = 8;

/// The factory accounts: `admin`/`admin` and `service`/[`SERVICE_PASSWORD`].
pub fn factory_accounts() -> PumpAccounts {
    let mut m = HashMap::new();
    m.insert("admin".to_string(), "admin".to_string());
    m.insert("service".to_string(), SERVICE_PASSWORD.to_string());
    Arc::new(Mutex::new(m))
}

fn password_of(accounts: &PumpAccounts, user: &str) -> Option<String> {
    accounts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(user)
        .cloned()
}

/// Start the telnet-style pump console on `addr` (port 0 picks one), with the factory accounts.
pub async fn telnet_console(addr: SocketAddr) -> std::io::Result<SimDevice> {
    telnet_console_on(TcpListener::bind(addr).await?)
}

/// The telnet-style pump console on a listener already bound (e.g. inside a network namespace),
/// with the factory accounts.
pub fn telnet_console_on(listener: TcpListener) -> std::io::Result<SimDevice> {
    telnet_console_with(listener, factory_accounts())
}

/// The telnet-style pump console on a listener already bound, with `accounts` (keep a clone to
/// see or change them; `passwd` on the console changes them).
pub fn telnet_console_with(
    listener: TcpListener,
    accounts: PumpAccounts,
) -> std::io::Result<SimDevice> {
    let dev = SimDevice {
        addr: listener.local_addr()?,
        connections: Arc::new(AtomicUsize::new(0)),
    };
    let count = dev.connections.clone();
    tokio::spawn(async move {
        loop {
            let sock = accept_next(&listener).await;
            count.fetch_add(1, Ordering::Relaxed);
            let accounts = accounts.clone();
            tokio::spawn(async move {
                let _ = telnet_session(sock, accounts).await;
            });
        }
    });
    Ok(dev)
}

/// Strip telnet IAC sequences (3-byte option negotiation, 2-byte commands) from a line, and
/// apply the line-editing keys a console honours: backspace and DEL erase a character, ^U the
/// line, ^W a word (as Ward's telnet decoder erases a refused line).
fn strip_iac(line: &[u8]) -> String {
    let mut out = Vec::with_capacity(line.len());
    let mut it = line.iter().copied();
    while let Some(b) = it.next() {
        match b {
            255 => match it.next() {
                Some(251..=254) => {
                    it.next();
                }
                Some(255) => out.push(255),
                _ => {}
            },
            0x08 | 0x7f => {
                out.pop();
            }
            0x15 => out.clear(),
            0x17 => {
                while out.last() == Some(&b' ') {
                    out.pop();
                }
                while out.last().is_some_and(|&c| c != b' ') {
                    out.pop();
                }
            }
            _ => out.push(b),
        }
    }
    String::from_utf8_lossy(&out)
        .trim_matches(|c: char| c == '\r' || c == '\n' || c == '\0')
        .trim()
        .to_string()
}

async fn telnet_session(
    sock: tokio::net::TcpStream,
    accounts: PumpAccounts,
) -> std::io::Result<()> {
    let _ = sock.set_nodelay(true);
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(NEGOTIATION).await?;
    w.write_all(b"\r\nAcme InfuPump 3000 service console (fw 2.1.4)\r\n\r\n")
        .await?;
    let mut line = Vec::new();
    for _attempt in 0..3 {
        w.write_all(b"login: ").await?;
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let user = strip_iac(&line);
        // The password is not echoed (the console said WILL ECHO and echoes nothing).
        w.write_all(b"Password: ").await?;
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let pass = strip_iac(&line);
        if password_of(&accounts, &user).is_some_and(|p| p == pass) {
            w.write_all(format!("\r\nWelcome, {user}. Type 'help' for commands.\r\n").as_bytes())
                .await?;
            return pump_shell(&mut r, &mut w, &user, &accounts).await;
        }
        w.write_all(b"\r\nLogin incorrect\r\n").await?;
    }
    w.shutdown().await
}

async fn pump_shell(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    user: &str,
    accounts: &PumpAccounts,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        w.write_all(b"pump> ").await?;
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let reply: &[u8] = match strip_iac(&line).as_str() {
            "help" => b"commands: status, rate, log, passwd, exit\r\n",
            "status" => b"status: RUNNING  channel A 12.5 mL/h  battery 87%  occlusion none\r\n",
            "rate" => b"rate: 12.5 mL/h (limit 50.0)\r\n",
            "log" => b"2026-11-02 03:14 alarm cleared: air-in-line\r\n",
            "passwd" => {
                let Some(answer) = passwd(r, w, user, accounts).await? else {
                    return Ok(());
                };
                answer
            }
            "exit" | "quit" | "logout" => {
                w.write_all(b"bye\r\n").await?;
                w.shutdown().await?;
                return Ok(());
            }
            "" => b"",
            _ => b"unknown command; try 'help'\r\n",
        };
        w.write_all(reply).await?;
    }
}

/// The pump's `passwd`: old password, new password twice. Refuses a wrong old password, a
/// mismatch, and a new password shorter than [`PUMP_MIN_PASSWORD`] or equal to the old one.
/// `None`: the connection closed.
async fn passwd(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    user: &str,
    accounts: &PumpAccounts,
) -> std::io::Result<Option<&'static [u8]>> {
    let mut answers = Vec::new();
    for prompt in [
        &b"Old password: "[..],
        b"\r\nNew password: ",
        b"\r\nRetype new password: ",
    ] {
        w.write_all(prompt).await?;
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        answers.push(strip_iac(&line));
    }
    w.write_all(b"\r\n").await?;
    let [old, new, again] = answers.as_slice() else {
        return Ok(Some(b"passwd: internal error\r\n"));
    };
    let mut map = accounts.lock().unwrap_or_else(PoisonError::into_inner);
    let current = map.get(user).cloned().unwrap_or_default();
    let answer: &'static [u8] = if *old != current {
        b"passwd: Authentication failure (old password incorrect); password unchanged\r\n"
    } else if new != again {
        b"passwd: password mismatch; password unchanged\r\n"
    } else if new.len() < PUMP_MIN_PASSWORD || *new == current {
        b"passwd: password change denied: the new password must be 8 characters or more and differ from the old one\r\n"
    } else {
        map.insert(user.to_string(), new.clone());
        b"passwd: password changed\r\n"
    };
    Ok(Some(answer))
}

/// Start the HTTP status console (Basic auth `admin`/`admin`) on `addr`.
pub async fn http_console(addr: SocketAddr) -> std::io::Result<SimDevice> {
    http_console_on(TcpListener::bind(addr).await?)
}

/// The HTTP status console on a listener already bound (e.g. inside a network namespace).
pub fn http_console_on(listener: TcpListener) -> std::io::Result<SimDevice> {
    let dev = SimDevice {
        addr: listener.local_addr()?,
        connections: Arc::new(AtomicUsize::new(0)),
    };
    let count = dev.connections.clone();
    tokio::spawn(async move {
        loop {
            let sock = accept_next(&listener).await;
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = http_session(sock).await;
            });
        }
    });
    Ok(dev)
}

async fn http_session(sock: tokio::net::TcpStream) -> std::io::Result<()> {
    let _ = sock.set_nodelay(true);
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:admin")
    );
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut authorized = false;
        let mut close = false;
        let mut content_length = 0usize;
        let mut headers = 0;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            headers += 1;
            let h = h.trim_end();
            if h.is_empty() || headers > 100 {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                match name.as_str() {
                    "authorization" => authorized = value == expected,
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    "content-length" => content_length = value.parse().unwrap_or(0).min(1 << 20),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; content_length];
        r.read_exact(&mut body).await?;
        let response = if authorized {
            let page = "<html><head><title>VitalView 900 monitor</title></head><body>\n<h1>VitalView 900 bedside monitor</h1>\n<p>Bed ICU-3 &middot; HR 72 bpm &middot; SpO2 98% &middot; NIBP 118/76</p>\n</body></html>\n";
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
                page.len()
            )
        } else {
            let page = "401 login required\n";
            format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"VitalView\"\r\nContent-Length: {}\r\n\r\n{page}",
                page.len()
            )
        };
        w.write_all(response.as_bytes()).await?;
        if close || request_line.contains("HTTP/1.0") {
            return w.shutdown().await;
        }
    }
}

/// An echo device (raw protocol): everything it reads comes straight back; used by tests and the
/// benchmark harness.
pub async fn echo(addr: SocketAddr) -> std::io::Result<SimDevice> {
    let listener = TcpListener::bind(addr).await?;
    let dev = SimDevice {
        addr: listener.local_addr()?,
        connections: Arc::new(AtomicUsize::new(0)),
    };
    let count = dev.connections.clone();
    tokio::spawn(async move {
        loop {
            let sock = accept_next(&listener).await;
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let (mut r, mut w) = sock.into_split();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let Some(chunk) = buf.get(..n) else { break };
                            if w.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iac_is_stripped() {
        assert_eq!(
            strip_iac(&[255, 253, 1, b'a', b'd', 255, 241, b'\r', b'\n']),
            "ad"
        );
        assert_eq!(strip_iac(b"admin\r\n"), "admin");
        // Line editing: a refused line erased by Ward never reaches the shell as text.
        assert_eq!(strip_iac(b"passwd\x08\x08\x08\x08\x08\x08rate\r\n"), "rate");
        assert_eq!(strip_iac(b"rx\x7fate\r\n"), "rate");
        assert_eq!(strip_iac(b"factory reset\x15status\r\n"), "status");
        assert_eq!(strip_iac(b"log now \x17\x17rate\r\n"), "rate");
    }

    #[tokio::test]
    async fn telnet_console_accepts_default_login() {
        let dev = telnet_console("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut s = tokio::net::TcpStream::connect(dev.addr).await.unwrap();
        s.write_all(b"admin\r\nadmin\r\nstatus\r\nexit\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("status: RUNNING"), "{text}");
        assert!(text.ends_with("bye\r\n"));
    }

    async fn dialogue(addr: SocketAddr, input: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(input).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn passwd_changes_the_shared_account() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let accounts = factory_accounts();
        let dev = telnet_console_with(l, accounts.clone()).unwrap();
        // Refused: too short; wrong old; mismatch.
        let t = dialogue(
            dev.addr,
            b"service\r\nacme-service\r\npasswd\r\nacme-service\r\nshort\r\nshort\r\npasswd\r\nnope\r\nLongEnough1\r\nLongEnough1\r\npasswd\r\nacme-service\r\nLongEnough1\r\nLongEnough2\r\nexit\r\n",
        )
        .await;
        assert!(t.contains("password change denied"), "{t}");
        assert!(t.contains("Authentication failure"), "{t}");
        assert!(t.contains("password mismatch"), "{t}");
        assert!(!t.contains("password changed"), "{t}");
        assert_eq!(password_of(&accounts, "service").unwrap(), SERVICE_PASSWORD);
        // Changed, then the new one works on a new connection and the old one does not.
        let t = dialogue(
            dev.addr,
            b"service\r\nacme-service\r\npasswd\r\nacme-service\r\nLongEnough1\r\nLongEnough1\r\nexit\r\n",
        )
        .await;
        assert!(t.contains("Old password: "), "{t}");
        assert!(t.contains("Retype new password: "), "{t}");
        assert!(t.contains("passwd: password changed\r\npump> "), "{t}");
        assert!(
            !t.contains("LongEnough1"),
            "the pump echoed a password: {t}"
        );
        let t = dialogue(dev.addr, b"service\r\nLongEnough1\r\nexit\r\n").await;
        assert!(t.contains("pump> "), "{t}");
        let t = dialogue(dev.addr, b"service\r\nacme-service\r\nx\r\nx\r\nx\r\nx\r\n").await;
        assert!(t.contains("Login incorrect"), "{t}");
        assert!(!t.contains("pump> "), "{t}");
    }
}
