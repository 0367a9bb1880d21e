//! Devices for the web console's browser tests (tests/tests/web_browser.rs): a plain line console
//! that answers `status` with a `rate=` reading, and a hostile device whose output is markup and
//! escape sequences aimed at whatever renders it (the XSS test, issue 16 item 5).

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the console answers to `status` (the text the player test reads off the screen).
pub const STATUS_REPLY: &str = "status: RUNNING rate=12.5 mL/h battery=87%";

/// The console's prompt.
pub const CONSOLE_PROMPT: &str = "pump> ";

/// The hostile device's prompt.
pub const HOSTILE_PROMPT: &str = "hostile> ";

/// Lines of the hostile output that a terminal shows as text, exactly (each must be visible as
/// text in the player, never as markup).
pub const HOSTILE_VISIBLE: &[&str] = &[
    "<script>window.__pwned=1</script>",
    "<img src=x onerror=\"window.__pwned=1\">",
    "<a href=\"javascript:window.__pwned=1\">js-link</a>",
    "<svg onload=\"window.__pwned=1\"></svg>",
    "&lt;not-decoded&gt; &amp;",
    "osc8-link",
    "HOSTILE-DONE",
];

/// Marker at the end of the very long line.
pub const LONG_LINE_END: &str = "END-OF-LONG-LINE";

/// The bytes the hostile device prints on connect and after every line it gets: a very long line
/// first (so the markup stays on the final screen), then markup a browser would run if it were
/// inserted as HTML, an OSC 8 hyperlink to `javascript:`, an OSC 52 clipboard write, an OSC 0
/// title, a DCS string, a CSI that moves the cursor far outside the screen, invalid UTF-8, and the
/// marker that ends it.
pub fn hostile_output() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"\r\nhostile device\r\n");
    // A 20,000-character line: wraps on a terminal; must not widen the page.
    out.extend(std::iter::repeat_n(b'L', 20_000));
    out.extend_from_slice(LONG_LINE_END.as_bytes());
    out.extend_from_slice(b"\r\n");
    for line in &HOSTILE_VISIBLE[..5] {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // OSC 8 hyperlink whose target is javascript: (terminals that support it make a link).
    out.extend_from_slice(b"\x1b]8;;javascript:window.__pwned=1\x1b\\osc8-link\x1b]8;;\x1b\\\r\n");
    // OSC 52: write `<script>window.__pwned=1</script>` to the clipboard (base64).
    out.extend_from_slice(b"\x1b]52;c;PHNjcmlwdD53aW5kb3cuX19wd25lZD0xPC9zY3JpcHQ+\x07");
    // OSC 0 / OSC 2: window title with markup.
    out.extend_from_slice(b"\x1b]0;<img src=x onerror=\"window.__pwned=1\">\x07");
    out.extend_from_slice(b"\x1b]2;<script>window.__pwned=1</script>\x1b\\");
    // DCS (device control string) with markup inside; a terminal shows nothing of it.
    out.extend_from_slice(b"\x1bP1$r<script>window.__pwned=1</script>\x1b\\");
    // Cursor moved far outside the screen, then back (CSI with huge parameters).
    out.extend_from_slice(b"\x1b[99999;99999H\x1b[99999C\x1b[s\x1b[1;1H\x1b[u\r\n");
    // Colours and attributes, some bogus.
    out.extend_from_slice(b"\x1b[31;1;4mred-bold\x1b[0m \x1b[38;5;300mbogus-256\x1b[0m \x1b[38;2;1;2;3mtruecolor\x1b[0m\r\n");
    // Invalid UTF-8: a lone continuation byte, a truncated sequence, overlong, and 0xFE.
    out.extend_from_slice(
        b"bad-utf8: \xc3\x28 \xa0\xa1 \xe2\x28\xa1 \xf0\x28\x8c\xbc \xc0\xaf \xfe|\r\n",
    );
    // NUL and other C0 controls.
    out.extend_from_slice(b"controls:\x00\x07\x0b\x0c|\r\n");
    out.extend_from_slice(HOSTILE_VISIBLE[6].as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// A line console on 127.0.0.1: prints a banner and [`CONSOLE_PROMPT`]; `status` answers
/// [`STATUS_REPLY`], `say TEXT` prints TEXT, `exit` says bye and closes; anything else gets
/// `unknown command`. It does not echo what it reads (the client's keystrokes are recorded as
/// input, the answers as output).
pub async fn console_device() -> SocketAddr {
    let banner = b"\r\nAcme InfuPump 3000 (web test console)\r\n".to_vec();
    serve(banner, CONSOLE_PROMPT, |line| match line {
        "status" => Reply::Text(format!("{STATUS_REPLY}\r\n")),
        "exit" => Reply::Close(b"bye\r\n".to_vec()),
        "" => Reply::Text(String::new()),
        other => match other.strip_prefix("say ") {
            Some(text) => Reply::Text(format!("{text}\r\n")),
            None => Reply::Text("unknown command; try status\r\n".into()),
        },
    })
    .await
}

/// The hostile device on 127.0.0.1: prints [`hostile_output`] and [`HOSTILE_PROMPT`] on connect
/// and again after every line; `exit` closes.
pub async fn hostile_device() -> SocketAddr {
    serve(hostile_output(), HOSTILE_PROMPT, |line| match line {
        "exit" => Reply::Close(b"bye\r\n".to_vec()),
        _ => Reply::Bytes(hostile_output()),
    })
    .await
}

/// What a device answers to one line.
enum Reply {
    Text(String),
    Bytes(Vec<u8>),
    Close(Vec<u8>),
}

async fn serve(banner: Vec<u8>, prompt: &'static str, answer: fn(&str) -> Reply) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let sock = ward::sim::accept_next(&listener).await;
            let banner = banner.clone();
            tokio::spawn(async move {
                let _ = session(sock, &banner, prompt, answer).await;
            });
        }
    });
    addr
}

/// One connection: the banner and the prompt, then a reply and the prompt per line read.
async fn session(
    sock: tokio::net::TcpStream,
    banner: &[u8],
    prompt: &str,
    answer: fn(&str) -> Reply,
) -> std::io::Result<()> {
    let _ = sock.set_nodelay(true);
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(banner).await?;
    w.write_all(prompt.as_bytes()).await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_matches(|c: char| c == '\r' || c == '\n' || c == '\0' || c == ' ');
        match answer(text) {
            Reply::Text(t) => w.write_all(t.as_bytes()).await?,
            Reply::Bytes(b) => w.write_all(&b).await?,
            Reply::Close(b) => {
                w.write_all(&b).await?;
                return w.shutdown().await;
            }
        }
        w.write_all(prompt.as_bytes()).await?;
    }
}
