//! An S3-compatible object store for tests, on loopback: moto's server (`moto_server`, PyPI
//! `moto[server]`), and a TCP proxy in front of it that a test can cut to make the object store
//! unreachable without losing what moto holds (moto keeps everything in memory).
//!
//! Why moto and not a real object store such as Garage: Garage from crates.io is a many-minute
//! build on CI's two cores, where moto is a `pip install`. moto speaks the S3 REST API the gateway
//! uses (PUT, multipart, GET, HEAD, LIST, DELETE, user metadata, object lock headers) — it is an
//! emulator, so the tests prove the protocol and the gateway's behaviour, not a storage engine.
//!
//! `moto_server` is found on `PATH`, in `$WARD_CI_VENV/bin`, or in `$HOME/.cache/ward-ci/venv/bin`
//! (where `.ci/run` installs it). Under `CI` a missing one fails the test; otherwise the test says
//! "SKIPPED:" and returns.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::process::{free_port, Input, Proc};

/// The test credentials moto is given (it does not check signatures by default, but the gateway
/// signs every request with them).
pub const ACCESS_KEY_ID: &str = "AKIAWARDTEST00000000";
/// See [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "ward-test-secret-key-not-a-real-one-000000";

/// Where `moto_server` is, if anywhere.
pub fn moto_server() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("moto_server")));
    }
    if let Some(venv) = std::env::var_os("WARD_CI_VENV") {
        candidates.push(PathBuf::from(venv).join("bin/moto_server"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/ward-ci/venv/bin/moto_server"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// moto's server on 127.0.0.1, with a temp dir for its log and the credentials file.
pub struct S3Server {
    proc: Option<Proc>,
    port: u16,
    dir: tempfile::TempDir,
    binary: PathBuf,
}

impl S3Server {
    /// Start moto on a free loopback port and wait (bounded) until it answers. `None` when
    /// moto is not installed outside CI (the test then prints "SKIPPED:" and returns); under
    /// `CI` a missing moto panics with what to install.
    pub fn start() -> Option<S3Server> {
        let Some(binary) = moto_server() else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "moto_server is required under CI: python3 -m venv $HOME/.cache/ward-ci/venv && $HOME/.cache/ward-ci/venv/bin/pip install 'moto[server]' (.ci/run does)"
                );
            }
            eprintln!(
                "SKIPPED: moto_server is not installed (pip install 'moto[server]'; .ci/run does)"
            );
            return None;
        };
        let mut s = S3Server {
            proc: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            binary,
        };
        s.start_again();
        Some(s)
    }

    /// Start moto again on the same port (it is in memory: what it held is gone).
    pub fn start_again(&mut self) {
        assert!(self.proc.is_none(), "moto is already running");
        let mut cmd = Command::new(&self.binary);
        cmd.args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        let mut proc = Proc::spawn(&mut cmd, Input::Null);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.http("GET", "/", &[]) {
                break;
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("moto_server exited ({status}):\n{}", proc.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on 127.0.0.1:{} within 30 s:\n{}",
                self.port,
                proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.proc = Some(proc);
    }

    /// Stop moto (killed and reaped).
    pub fn stop(&mut self) {
        drop(self.proc.take());
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Create `bucket` (with object lock enabled when `object_lock`).
    pub fn create_bucket(&self, bucket: &str, object_lock: bool) {
        let headers: &[(&str, &str)] = if object_lock {
            &[("x-amz-bucket-object-lock-enabled", "true")]
        } else {
            &[]
        };
        let (status, body) = self.http("PUT", &format!("/{bucket}"), headers).unwrap();
        assert_eq!(status, 200, "creating bucket {bucket}: {body}");
    }

    /// A credentials file (mode 0600) for the gateway's `[recording] credentials_file`.
    pub fn credentials_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("s3.env");
        std::fs::write(
            &path,
            format!(
                "# test credentials\nAWS_ACCESS_KEY_ID={ACCESS_KEY_ID}\nAWS_SECRET_ACCESS_KEY=\"{SECRET_ACCESS_KEY}\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// The `[recording]` table for a gateway storing into `s3://bucket/prefix` at `endpoint`.
    pub fn recording_toml(
        &self,
        endpoint: &str,
        bucket: &str,
        prefix: &str,
        spool_limit: &str,
        spool_dir: Option<&Path>,
    ) -> String {
        let mut t = format!(
            "\n[recording]\nstore = \"s3://{bucket}/{prefix}\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nallow_http = true\ncredentials_file = \"{}\"\nspool_limit = \"{spool_limit}\"\n",
            self.credentials_file().display()
        );
        if let Some(d) = spool_dir {
            t.push_str(&format!("spool_dir = \"{}\"\n", d.display()));
        }
        t
    }

    /// The object's bytes at `bucket/key`, or `None` if there is none.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let (status, body) = self
            .http_bytes("GET", &format!("/{bucket}/{key}"), &[])
            .unwrap();
        match status {
            200 => Some(body),
            404 => None,
            other => panic!(
                "GET {bucket}/{key}: {other}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// Overwrite `bucket/key` with `bytes` directly (as someone with bucket access would).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let (status, body) = self
            .request("PUT", &format!("/{bucket}/{key}"), &[], bytes)
            .unwrap();
        assert_eq!(
            status,
            200,
            "PUT {bucket}/{key}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// The keys under `bucket/prefix/` (ListObjectsV2, up to 1000).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, body) = self
            .http(
                "GET",
                &format!("/{bucket}?list-type=2&prefix={prefix}/&max-keys=1000"),
                &[],
            )
            .unwrap();
        assert_eq!(status, 200, "{body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect()
    }

    /// The object lock retention of `bucket/key`, if any: the `x-amz-object-lock-mode` and
    /// `x-amz-object-lock-retain-until-date` headers of a HEAD, as `MODE until DATE`. (Not
    /// GetObjectRetention: moto 5.2 does not implement `GET ?retention` and answers it with the
    /// object itself; S3 returns the same headers on HEAD.)
    pub fn retention(&self, bucket: &str, key: &str) -> Option<String> {
        let (status, head, _) = self
            .exchange("HEAD", &format!("/{bucket}/{key}"), &[], &[])
            .unwrap();
        if status != 200 {
            return None;
        }
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let mode = header("x-amz-object-lock-mode")?;
        let until = header("x-amz-object-lock-retain-until-date").unwrap_or_default();
        Some(format!("{mode} until {until}"))
    }

    fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, String)> {
        self.http_bytes(method, path, headers)
            .map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
    }

    fn http_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.request(method, path, headers, &[])
    }

    /// One HTTP/1.1 request (`Connection: close`). moto does not verify signatures, but a
    /// request with no `Authorization` header is anonymous to it and goes through the ACL check:
    /// a GET of an existing private object (or its `?retention`) is then 403 (a missing one is
    /// still 404). So every request carries a SigV4-shaped header naming [`ACCESS_KEY_ID`]
    /// with a dummy signature: moto takes it as the bucket owner's.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.exchange(method, path, headers, body)
            .map(|(status, _, body)| (status, body))
    }

    /// [`S3Server::request`], with the response's header block too.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, String, Vec<u8>)> {
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr(),
            body.len()
        );
        req.push_str(&format!(
            "Authorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={}\r\n",
            "0".repeat(64)
        ));
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
        let mut body = out[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        Ok((status, head, body))
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

/// A TCP proxy on 127.0.0.1 in front of `target` that a test can cut (every connection reset,
/// new ones refused at once) and restore: the object store "goes down" and "comes back" while
/// moto keeps its data.
pub struct CutProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl CutProxy {
    /// Listen on a free loopback port, forwarding to `target`.
    pub fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        {
            let (cut, stop, conns) = (cut.clone(), stop.clone(), conns.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if cut.load(Ordering::SeqCst) {
                        let _ = client.set_linger_zero();
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                    else {
                        continue;
                    };
                    {
                        let mut c = conns.lock().unwrap();
                        c.retain(|s| s.peer_addr().is_ok());
                        c.push(client.try_clone().unwrap());
                        c.push(server.try_clone().unwrap());
                    }
                    pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                    pipe(server, client);
                }
            });
        }
        CutProxy {
            addr,
            cut,
            stop,
            conns,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Make the object store unreachable: reset every connection, refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Let connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(self.addr);
    }
}

trait LingerZero {
    fn set_linger_zero(&self) -> std::io::Result<()>;
}

impl LingerZero for TcpStream {
    fn set_linger_zero(&self) -> std::io::Result<()> {
        socket2::SockRef::from(self).set_linger(Some(Duration::ZERO))
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
