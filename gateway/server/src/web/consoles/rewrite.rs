//! The pure part of devices' HTTP consoles ([`super`]): where a request on the consoles' origin
//! goes, and how requests and responses are rewritten so that a device's pages, served under
//! `/d/<device>/`, keep the browser under that prefix. No I/O, no clock: bytes and headers in,
//! bytes and headers out.
//!
//! What is rewritten:
//! - **Requests** (browser → device): the path loses its `/d/<device>` prefix; `Host` names the
//!   device; Ward's own session cookie, any `Authorization`/`Proxy-Authorization` (the vault
//!   injects the device's credential in the session pipeline), hop-by-hop headers and
//!   `X-Forwarded-*`/`Forwarded` are removed; `Origin` and `Referer` that point at this device's
//!   prefix are turned into the device's own origin, others are removed; `Accept-Encoding` asks
//!   for `identity`, so bodies come uncompressed and can be rewritten.
//! - **Responses** (device → browser): `Location`, `Content-Location`, `Refresh` and `Link` are
//!   put under the prefix; `Set-Cookie` gets `Path=/d/<device>/…`, loses `Domain`, gains `Secure`,
//!   and a cookie named like Ward's own is dropped; `WWW-Authenticate`/`Proxy-Authenticate` are
//!   removed (the user must never be asked for a device password); headers that would act on
//!   the whole host rather than on one device (`Strict-Transport-Security`, `Clear-Site-Data`,
//!   `Service-Worker-Allowed`, `Alt-Svc`, CORS grants) are removed.
//! - **Bodies**: in HTML the URL-valued attributes (`href`, `src`, `action`, `srcset`, …, a
//!   `<meta http-equiv="refresh">`'s `content`, `style` attributes and `<style>` elements), in CSS
//!   `url(…)` and `@import "…"`. Script bodies are left alone (URLs a script builds at run time
//!   cannot be found reliably; docs/web.md says so). Bytes, not text: any ASCII-compatible
//!   charset (UTF-8, Latin-1, Windows-1252) is rewritten correctly.
//!
//! A URL is the device's when it is root-relative (`/x`), or absolute or protocol-relative with
//! the device's own authority (`http://10.1.2.3:8080/x`, `//10.1.2.3:8080/x`, the port left out
//! when it is the scheme's default). Relative URLs (`x`, `../x`, `?q`, `#f`) already resolve
//! under the prefix; other hosts' URLs are left as they are.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Where a path on the consoles' origin goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// Not a device console's path (answered 404).
    Elsewhere,
    /// `/d/<device>` without the slash (answered with a redirect to `/d/<device>/`).
    Bare(&'a str),
    /// `/d/<device>/<rest>`: the device and its path (`/` + rest, as the device sees it).
    Device {
        /// The device id as written in the path (not decoded).
        device: &'a str,
        /// The device's path, starting with `/` (not decoded: sent as the browser wrote it).
        path: &'a str,
    },
}

/// Where `path` (the request target's path, undecoded) goes.
pub fn route(path: &str) -> Route<'_> {
    let Some(rest) = path.strip_prefix("/d/") else {
        return Route::Elsewhere;
    };
    match rest.find('/') {
        None if rest.is_empty() => Route::Elsewhere,
        None => Route::Bare(rest),
        Some(0) => Route::Elsewhere,
        Some(i) => match (rest.get(..i), rest.get(i..)) {
            (Some(device), Some(path)) => Route::Device { device, path },
            _ => Route::Elsewhere,
        },
    }
}

/// The name of Ward's own session cookie: never forwarded to a device, never set by one.
pub const WARD_COOKIE: &str = crate::web::auth::COOKIE;

/// HTML attributes whose value is one URL.
const URL_ATTRS: &[&[u8]] = &[
    b"href",
    b"src",
    b"action",
    b"formaction",
    b"poster",
    b"background",
    b"cite",
    b"data",
    b"longdesc",
    b"manifest",
    b"icon",
    b"lowsrc",
    b"xlink:href",
];

/// Elements whose content is not markup: skipped to their end tag (`<style>` is rewritten as
/// CSS, the others left alone).
const RAW_TEXT: &[&[u8]] = &[
    b"script",
    b"style",
    b"textarea",
    b"title",
    b"xmp",
    b"iframe",
    b"noembed",
    b"noframes",
    b"plaintext",
];

/// Response headers removed: they would ask the user for a device password, or act on the whole
/// host (every device, and the console on its other port) rather than on one device's pages.
const DROPPED_RESPONSE: &[&str] = &[
    "www-authenticate",
    "proxy-authenticate",
    "strict-transport-security",
    "clear-site-data",
    "service-worker-allowed",
    "alt-svc",
    "public-key-pins",
    "public-key-pins-report-only",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-expose-headers",
    "access-control-max-age",
    "timing-allow-origin",
    "origin-agent-cluster",
    "set-login",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers removed before a request goes to the device.
const DROPPED_REQUEST: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "expect",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// What kind of body can be rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `text/html`, `application/xhtml+xml`.
    Html,
    /// `text/css`.
    Css,
}

/// The rewritable kind of a response with these headers: HTML or CSS in no content coding (or
/// `identity`); anything else streams through untouched.
pub fn body_kind(headers: &HeaderMap) -> Option<BodyKind> {
    let coded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if coded {
        return None;
    }
    let ct = headers.get(header::CONTENT_TYPE)?.as_bytes();
    let essence = ct.split(|&b| b == b';').next()?.trim_ascii();
    if essence.eq_ignore_ascii_case(b"text/html")
        || essence.eq_ignore_ascii_case(b"application/xhtml+xml")
    {
        Some(BodyKind::Html)
    } else if essence.eq_ignore_ascii_case(b"text/css") {
        Some(BodyKind::Css)
    } else {
        None
    }
}

/// One device's rewriting: its prefix on the consoles' origin and the authorities its own URLs
/// carry.
#[derive(Debug, Clone)]
pub struct Rewriter {
    /// `/d/<device>`.
    prefix: String,
    /// `scheme://authority` of the device's own absolute URLs, lower case (the port left out too
    /// when it is the scheme's default).
    origins: Vec<Vec<u8>>,
    /// `//authority` forms of the same (protocol-relative URLs).
    authorities: Vec<Vec<u8>>,
    /// The `Host` header the device gets.
    host: String,
    /// `http` or `https`: how the device is reached by the gateway.
    scheme: &'static str,
}

impl Rewriter {
    /// The rewriter for device `device` reached at `host` (an IPv6 address in brackets) and
    /// `port`, over TLS when `tls`.
    pub fn new(device: &str, host: &str, port: u16, tls: bool) -> Self {
        let scheme = if tls { "https" } else { "http" };
        let default_port = if tls { 443 } else { 80 };
        let host = host.to_ascii_lowercase();
        let with_port = format!("{host}:{port}");
        let mut auths = vec![with_port.clone()];
        if port == default_port {
            auths.push(host.clone());
        }
        let mut origins = Vec::new();
        let mut authorities = Vec::new();
        for a in &auths {
            // A page may name its own address with either scheme (an HTTP device redirecting to
            // its https:// URL, or the reverse): both stay on the device.
            origins.push(format!("http://{a}").into_bytes());
            origins.push(format!("https://{a}").into_bytes());
            authorities.push(format!("//{a}").into_bytes());
        }
        Rewriter {
            prefix: format!("/d/{device}"),
            origins,
            authorities,
            host: if port == default_port {
                host
            } else {
                with_port
            },
            scheme,
        }
    }

    /// `/d/<device>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The `Host` header the device gets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The device's own origin (`http://host:port`), as `Origin` and `Referer` name it.
    fn device_origin(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    /// `url` put under the prefix when it is the device's (see the module docs); `None` when it
    /// stays as it is. Leading and trailing whitespace (which browsers ignore) is kept.
    pub fn url(&self, url: &[u8]) -> Option<Vec<u8>> {
        let start = url
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(url.len());
        let (lead, rest) = (url.get(..start)?, url.get(start..)?);
        let tail = self.device_tail(rest)?;
        let mut out = Vec::with_capacity(url.len() + self.prefix.len() + 1);
        out.extend_from_slice(lead);
        out.extend_from_slice(self.prefix.as_bytes());
        if !tail.starts_with(b"/") {
            out.push(b'/');
        }
        out.extend_from_slice(tail);
        Some(out)
    }

    /// The part of `url` after the device's origin (empty, or starting with `/`, `?` or `#`) when
    /// `url` is the device's; root-relative URLs are their own tail.
    fn device_tail<'u>(&self, url: &'u [u8]) -> Option<&'u [u8]> {
        let second = url.get(1).copied();
        match url.first() {
            Some(b'/') if !matches!(second, Some(b'/') | Some(b'\\')) => return Some(url),
            _ => {}
        }
        let forms = self.origins.iter().chain(self.authorities.iter());
        for form in forms {
            let Some(head) = url.get(..form.len()) else {
                continue;
            };
            if !head.eq_ignore_ascii_case(form) {
                continue;
            }
            let tail = url.get(form.len()..)?;
            match tail.first() {
                None | Some(b'/') | Some(b'?') | Some(b'#') => return Some(tail),
                // `http://host:80` vs `http://host:8080`, or `http://host.evil`: not ours.
                _ => continue,
            }
        }
        None
    }

    /// A `Location` or `Content-Location` value.
    pub fn location(&self, value: &[u8]) -> Vec<u8> {
        self.url(value).unwrap_or_else(|| value.to_vec())
    }

    /// A `Refresh` header or `<meta http-equiv="refresh">` content: `5; url=/x` (the URL may be
    /// quoted).
    pub fn refresh(&self, value: &[u8]) -> Vec<u8> {
        let lower = value.to_ascii_lowercase();
        let Some(at) = find(&lower, 0, b"url") else {
            return value.to_vec();
        };
        let mut p = at + 3;
        while lower.get(p).is_some_and(u8::is_ascii_whitespace) {
            p += 1;
        }
        if lower.get(p) != Some(&b'=') {
            return value.to_vec();
        }
        p += 1;
        while lower.get(p).is_some_and(u8::is_ascii_whitespace) {
            p += 1;
        }
        let quote = match value.get(p) {
            Some(&q @ (b'\'' | b'"')) => {
                p += 1;
                Some(q)
            }
            _ => None,
        };
        let end = match quote {
            Some(q) => find_byte(value, p, q).unwrap_or(value.len()),
            None => value.len(),
        };
        self.splice(value, &[(p, end, Edit::Url)])
    }

    /// A `Link` header: every `<URL>` in it.
    pub fn link(&self, value: &[u8]) -> Vec<u8> {
        let mut edits = Vec::new();
        let mut p = 0;
        while let Some(lt) = find_byte(value, p, b'<') {
            let Some(gt) = find_byte(value, lt + 1, b'>') else {
                break;
            };
            edits.push((lt + 1, gt, Edit::Url));
            p = gt + 1;
        }
        self.splice(value, &edits)
    }

    /// A `Set-Cookie` value: `Path` under the prefix (added when missing), `Domain` removed,
    /// `Secure` added; `None` for a cookie named like Ward's own (dropped).
    pub fn set_cookie(&self, value: &str) -> Option<String> {
        let mut parts = value.split(';');
        let pair = parts.next()?;
        let name = pair.split('=').next().unwrap_or("").trim();
        if name.is_empty() || name.eq_ignore_ascii_case(WARD_COOKIE) {
            return None;
        }
        let mut out = pair.trim().to_owned();
        let mut path = None;
        let mut secure = false;
        for attr in parts {
            let attr = attr.trim();
            let key = attr.split('=').next().unwrap_or("").trim();
            if key.eq_ignore_ascii_case("path") {
                let v = attr.split_once('=').map_or("", |(_, v)| v.trim());
                path = Some(v.to_owned());
            } else if key.eq_ignore_ascii_case("domain") || attr.is_empty() {
                // The device's domain means nothing on the consoles' origin: host-only it is.
            } else {
                secure |= key.eq_ignore_ascii_case("secure");
                out.push_str("; ");
                out.push_str(attr);
            }
        }
        // A missing or relative path defaults (RFC 6265 §5.1.4) to the device's root here.
        let path = match path.as_deref() {
            Some(p) if p.starts_with('/') => format!("{}{p}", self.prefix),
            _ => format!("{}/", self.prefix),
        };
        out.push_str("; Path=");
        out.push_str(&path);
        if !secure {
            out.push_str("; Secure");
        }
        Some(out)
    }

    /// The request headers the device gets, from the browser's `headers` on the consoles'
    /// origin `consoles_origin` (`https://host:port`).
    pub fn request_headers(&self, headers: &HeaderMap, consoles_origin: &str) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(headers.len());
        let listed = connection_listed(headers);
        for (name, value) in headers {
            let n = name.as_str();
            if HOP_BY_HOP.contains(&n)
                || DROPPED_REQUEST.contains(&n)
                || listed.iter().any(|l| l == n)
                || name == header::HOST
                || name == header::ACCEPT_ENCODING
            {
                continue;
            }
            let value = match n {
                "cookie" => match without_ward_cookie(value.as_bytes()) {
                    Some(v) => v,
                    None => continue,
                },
                "origin" => match self.origin(value.as_bytes(), consoles_origin) {
                    Some(v) => v,
                    None => continue,
                },
                "referer" => match self.referer(value.as_bytes(), consoles_origin) {
                    Some(v) => v,
                    None => continue,
                },
                _ => value.clone(),
            };
            out.append(name.clone(), value);
        }
        if let Ok(host) = HeaderValue::from_str(&self.host) {
            out.insert(header::HOST, host);
        }
        out.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        out
    }

    /// The browser's `Origin`, as the device would have seen it from its own page.
    fn origin(&self, value: &[u8], consoles_origin: &str) -> Option<HeaderValue> {
        if value.eq_ignore_ascii_case(consoles_origin.as_bytes()) {
            HeaderValue::from_str(&self.device_origin()).ok()
        } else {
            None
        }
    }

    /// The browser's `Referer` when it is one of this device's pages, as the device's own URL.
    fn referer(&self, value: &[u8], consoles_origin: &str) -> Option<HeaderValue> {
        let ours = format!("{consoles_origin}{}", self.prefix);
        let head = value.get(..ours.len())?;
        if !head.eq_ignore_ascii_case(ours.as_bytes()) {
            return None;
        }
        let tail = value.get(ours.len()..)?;
        if !matches!(tail.first(), None | Some(b'/') | Some(b'?')) {
            return None; // `/d/monitor-30` is another device's page.
        }
        let mut v = self.device_origin().into_bytes();
        if !tail.starts_with(b"/") {
            v.push(b'/');
        }
        v.extend_from_slice(tail);
        HeaderValue::from_bytes(&v).ok()
    }

    /// Rewrites the device's response headers in place (the body's length is the caller's).
    pub fn response_headers(&self, headers: &mut HeaderMap) {
        let listed = connection_listed(headers);
        let old = std::mem::take(headers);
        let mut current: Option<HeaderName> = None;
        for (name, value) in old {
            // `HeaderMap::into_iter` names only a key's first value.
            if let Some(n) = name {
                current = Some(n);
            }
            let Some(name) = current.clone() else {
                continue;
            };
            let n = name.as_str();
            if HOP_BY_HOP.contains(&n)
                || DROPPED_RESPONSE.contains(&n)
                || listed.iter().any(|l| l == n)
            {
                continue;
            }
            let value = match n {
                "location" | "content-location" => {
                    HeaderValue::from_bytes(&self.location(value.as_bytes())).ok()
                }
                "refresh" => HeaderValue::from_bytes(&self.refresh(value.as_bytes())).ok(),
                "link" => HeaderValue::from_bytes(&self.link(value.as_bytes())).ok(),
                "set-cookie" => value
                    .to_str()
                    .ok()
                    .and_then(|v| self.set_cookie(v))
                    .and_then(|v| HeaderValue::from_str(&v).ok()),
                _ => Some(value),
            };
            if let Some(v) = value {
                headers.append(name, v);
            }
        }
    }

    /// Rewrites a body of `kind`.
    pub fn body(&self, kind: BodyKind, body: &[u8]) -> Vec<u8> {
        match kind {
            BodyKind::Html => self.html(body),
            BodyKind::Css => self.css(body),
        }
    }

    /// Rewrites the URLs of an HTML document (see the module docs).
    pub fn html(&self, src: &[u8]) -> Vec<u8> {
        let mut edits: Vec<(usize, usize, Edit)> = Vec::new();
        let mut p = 0;
        while let Some(lt) = find_byte(src, p, b'<') {
            if src.get(lt..lt + 4) == Some(b"<!--") {
                p = find(src, lt + 4, b"-->").map_or(src.len(), |e| e + 3);
                continue;
            }
            if !src.get(lt + 1).is_some_and(u8::is_ascii_alphabetic) {
                // An end tag, a doctype, a processing instruction, or a lone `<`.
                p = lt + 1;
                continue;
            }
            let Some(tag) = parse_tag(src, lt + 1) else {
                break; // An unterminated tag at the end: left as it is.
            };
            let is_meta_refresh = tag.name.eq_ignore_ascii_case(b"meta")
                && tag.attrs.iter().any(|a| {
                    a.name.eq_ignore_ascii_case(b"http-equiv")
                        && a.value
                            .and_then(|(s, e)| src.get(s..e))
                            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"refresh"))
                });
            for a in &tag.attrs {
                let Some((s, e)) = a.value else { continue };
                let edit = if URL_ATTRS.iter().any(|n| a.name.eq_ignore_ascii_case(n)) {
                    Edit::Url
                } else if a.name.eq_ignore_ascii_case(b"srcset")
                    || a.name.eq_ignore_ascii_case(b"imagesrcset")
                {
                    Edit::Srcset
                } else if a.name.eq_ignore_ascii_case(b"style") {
                    Edit::Css
                } else if is_meta_refresh && a.name.eq_ignore_ascii_case(b"content") {
                    Edit::Refresh
                } else {
                    continue;
                };
                edits.push((s, e, edit));
            }
            p = tag.end;
            if let Some(raw) = RAW_TEXT.iter().find(|n| tag.name.eq_ignore_ascii_case(n)) {
                if tag.self_closing && !raw.eq_ignore_ascii_case(b"script") {
                    continue;
                }
                let end = find_end_tag(src, p, raw).unwrap_or(src.len());
                if raw.eq_ignore_ascii_case(b"style") {
                    edits.push((p, end, Edit::Css));
                }
                p = end;
            }
        }
        self.splice(src, &edits)
    }

    /// Rewrites the URLs of a style sheet: `url(…)` and `@import "…"`.
    pub fn css(&self, src: &[u8]) -> Vec<u8> {
        let lower = src.to_ascii_lowercase();
        let mut edits = Vec::new();
        let mut p = 0;
        while p < src.len() {
            let next_url = find(&lower, p, b"url(");
            let next_import = find(&lower, p, b"@import");
            match (next_url, next_import) {
                (Some(u), i) if i.is_none_or(|i| u < i) => {
                    let mut s = u + 4;
                    while src.get(s).is_some_and(u8::is_ascii_whitespace) {
                        s += 1;
                    }
                    let (s, e) = match src.get(s) {
                        Some(&q @ (b'\'' | b'"')) => {
                            let e = find_byte(src, s + 1, q).unwrap_or(src.len());
                            (s + 1, e)
                        }
                        _ => {
                            let e = find_byte(src, s, b')').unwrap_or(src.len());
                            let mut t = e;
                            while t > s && src.get(t - 1).is_some_and(u8::is_ascii_whitespace) {
                                t -= 1;
                            }
                            (s, t)
                        }
                    };
                    edits.push((s, e, Edit::Url));
                    p = e.max(u + 4);
                }
                (_, Some(i)) => {
                    let mut s = i + 7;
                    while src.get(s).is_some_and(u8::is_ascii_whitespace) {
                        s += 1;
                    }
                    if let Some(&q @ (b'\'' | b'"')) = src.get(s) {
                        let e = find_byte(src, s + 1, q).unwrap_or(src.len());
                        edits.push((s + 1, e, Edit::Url));
                        p = e;
                    } else {
                        p = s; // `@import url(…)`: the url( branch takes it.
                    }
                }
                _ => break,
            }
        }
        self.splice(src, &edits)
    }

    /// `src` with each `(start, end, edit)` range (in order, not overlapping) replaced.
    fn splice(&self, src: &[u8], edits: &[(usize, usize, Edit)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(src.len() + edits.len() * (self.prefix.len() + 1));
        let mut copied = 0;
        for &(s, e, edit) in edits {
            let (Some(before), Some(value)) = (src.get(copied..s), src.get(s..e)) else {
                continue;
            };
            out.extend_from_slice(before);
            match edit {
                Edit::Url => out.extend_from_slice(&self.location(value)),
                Edit::Css => out.extend_from_slice(&self.css(value)),
                Edit::Refresh => out.extend_from_slice(&self.refresh(value)),
                Edit::Srcset => out.extend_from_slice(&self.srcset(value)),
            }
            copied = e;
        }
        out.extend_from_slice(src.get(copied..).unwrap_or_default());
        out
    }

    /// A `srcset`: `url 1x, url 2x`.
    fn srcset(&self, value: &[u8]) -> Vec<u8> {
        let mut edits = Vec::new();
        let mut p = 0;
        while p < value.len() {
            while value
                .get(p)
                .is_some_and(|b| b.is_ascii_whitespace() || *b == b',')
            {
                p += 1;
            }
            let s = p;
            while value.get(p).is_some_and(|b| !b.is_ascii_whitespace()) {
                p += 1;
            }
            // A URL may end in a comma when no descriptor follows.
            let mut e = p;
            if e > s && value.get(e - 1) == Some(&b',') {
                e -= 1;
            }
            if e > s {
                edits.push((s, e, Edit::Url));
            }
            p = find_byte(value, p, b',').map_or(value.len(), |c| c + 1);
        }
        self.splice(value, &edits)
    }
}

/// What to do with a range of a document.
#[derive(Debug, Clone, Copy)]
enum Edit {
    Url,
    Css,
    Refresh,
    Srcset,
}

/// One start tag: its name, attributes and where it ends (after `>`).
struct Tag<'a> {
    name: &'a [u8],
    attrs: Vec<Attr<'a>>,
    end: usize,
    self_closing: bool,
}

/// An attribute: its name and its value's range (inside quotes when quoted).
struct Attr<'a> {
    name: &'a [u8],
    value: Option<(usize, usize)>,
}

/// Parses the start tag whose name begins at `p` (just after `<`); `None` when it does not end.
fn parse_tag(src: &[u8], mut p: usize) -> Option<Tag<'_>> {
    let name_start = p;
    while src
        .get(p)
        .is_some_and(|b| !b.is_ascii_whitespace() && *b != b'/' && *b != b'>')
    {
        p += 1;
    }
    let name = src.get(name_start..p)?;
    let mut attrs = Vec::new();
    let mut self_closing = false;
    loop {
        while src
            .get(p)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == b'/')
        {
            self_closing = src.get(p) == Some(&b'/');
            p += 1;
        }
        match src.get(p)? {
            b'>' => {
                return Some(Tag {
                    name,
                    attrs,
                    end: p + 1,
                    self_closing,
                })
            }
            _ => self_closing = false,
        }
        let n = p;
        // The first character may be `=` (HTML's tokenizer takes it into the name).
        p += 1;
        while src
            .get(p)
            .is_some_and(|b| !b.is_ascii_whitespace() && !matches!(b, b'/' | b'>' | b'='))
        {
            p += 1;
        }
        let attr_name = src.get(n..p)?;
        let mut q = p;
        while src.get(q).is_some_and(u8::is_ascii_whitespace) {
            q += 1;
        }
        if src.get(q) != Some(&b'=') {
            attrs.push(Attr {
                name: attr_name,
                value: None,
            });
            continue;
        }
        q += 1;
        while src.get(q).is_some_and(u8::is_ascii_whitespace) {
            q += 1;
        }
        let value = match src.get(q)? {
            &quote @ (b'"' | b'\'') => {
                let e = find_byte(src, q + 1, quote)?;
                p = e + 1;
                (q + 1, e)
            }
            _ => {
                let s = q;
                while src
                    .get(q)
                    .is_some_and(|b| !b.is_ascii_whitespace() && *b != b'>')
                {
                    q += 1;
                }
                p = q;
                (s, q)
            }
        };
        attrs.push(Attr {
            name: attr_name,
            value: Some(value),
        });
    }
}

/// Where `</name` (any case, followed by whitespace, `/` or `>`) starts at or after `from`.
fn find_end_tag(src: &[u8], from: usize, name: &[u8]) -> Option<usize> {
    let mut p = from;
    while let Some(lt) = find(src, p, b"</") {
        let after = lt + 2 + name.len();
        let matches = src
            .get(lt + 2..after)
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
            && src
                .get(after)
                .is_none_or(|b| b.is_ascii_whitespace() || matches!(b, b'/' | b'>'));
        if matches {
            return Some(lt);
        }
        p = lt + 2;
    }
    None
}

/// The first `needle` in `hay` at or after `from`.
fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let rest = hay.get(from..)?;
    if needle.is_empty() || rest.len() < needle.len() {
        return None;
    }
    rest.windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The first `b` in `hay` at or after `from`.
fn find_byte(hay: &[u8], from: usize, b: u8) -> Option<usize> {
    hay.get(from..)?
        .iter()
        .position(|&x| x == b)
        .map(|i| i + from)
}

/// Header names listed in `Connection` (hop-by-hop by declaration), lower case.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// A `Cookie` header without Ward's own session cookie; `None` when nothing is left.
pub fn without_ward_cookie(value: &[u8]) -> Option<HeaderValue> {
    let kept: Vec<&[u8]> = value
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|kv| !kv.is_empty())
        .filter(|kv| {
            let name = kv.split(|&b| b == b'=').next().unwrap_or_default();
            !name
                .trim_ascii()
                .eq_ignore_ascii_case(WARD_COOKIE.as_bytes())
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok()
}

/// `text` escaped for HTML text and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn rw() -> Rewriter {
        Rewriter::new("monitor-3", "10.1.2.3", 8080, false)
    }

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn routes() {
        assert_eq!(route("/"), Route::Elsewhere);
        assert_eq!(route("/d/"), Route::Elsewhere);
        assert_eq!(route("/d//x"), Route::Elsewhere);
        assert_eq!(route("/api/v1/whoami"), Route::Elsewhere);
        assert_eq!(route("/dx/m/"), Route::Elsewhere);
        assert_eq!(route("/d/m"), Route::Bare("m"));
        assert_eq!(
            route("/d/m/"),
            Route::Device {
                device: "m",
                path: "/"
            }
        );
        assert_eq!(
            route("/d/monitor-3/a/b%20c"),
            Route::Device {
                device: "monitor-3",
                path: "/a/b%20c"
            }
        );
    }

    /// (input, expected) for `url`; `None`: left as it is.
    #[test]
    fn urls_of_the_device_go_under_the_prefix_and_others_stay() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/", Some("/d/monitor-3/")),
            ("/page2.html?a=1#x", Some("/d/monitor-3/page2.html?a=1#x")),
            ("  /x ", Some("  /d/monitor-3/x ")),
            ("http://10.1.2.3:8080/x", Some("/d/monitor-3/x")),
            ("HTTP://10.1.2.3:8080/x", Some("/d/monitor-3/x")),
            ("https://10.1.2.3:8080/x", Some("/d/monitor-3/x")),
            ("http://10.1.2.3:8080", Some("/d/monitor-3/")),
            ("http://10.1.2.3:8080?q", Some("/d/monitor-3/?q")),
            ("//10.1.2.3:8080/x", Some("/d/monitor-3/x")),
            ("http://10.1.2.3:80/x", None),
            ("http://10.1.2.3:80800/x", None),
            ("http://10.1.2.3:8080.evil/x", None),
            ("http://10.1.2.3/x", None),
            ("http://example.org/x", None),
            ("//example.org/x", None),
            ("/\\example.org/x", None),
            ("\\\\example.org/x", None),
            ("page2.html", None),
            ("../x", None),
            ("?q=1", None),
            ("#top", None),
            ("javascript:alert(1)", None),
            ("mailto:a@b", None),
            ("", None),
        ];
        let r = rw();
        for (input, want) in cases {
            let got = r.url(input.as_bytes()).map(s);
            assert_eq!(got.as_deref(), *want, "{input:?}");
        }
        // The scheme's default port may be left out.
        let r80 = Rewriter::new("m", "Monitor.local", 80, false);
        assert_eq!(r80.host(), "monitor.local");
        assert_eq!(
            r80.url(b"http://monitor.local/x").map(s).as_deref(),
            Some("/d/m/x")
        );
        assert_eq!(
            r80.url(b"http://MONITOR.local:80/x").map(s).as_deref(),
            Some("/d/m/x")
        );
        let tls = Rewriter::new("m", "[fd00::1]", 443, true);
        assert_eq!(tls.host(), "[fd00::1]");
        assert_eq!(
            tls.url(b"https://[fd00::1]/x").map(s).as_deref(),
            Some("/d/m/x")
        );
        assert_eq!(rw().host(), "10.1.2.3:8080");
    }

    #[test]
    fn html_attributes_styles_and_refresh_are_rewritten_scripts_are_not() {
        let page = br#"<!doctype html><html><head>
<base href="http://10.1.2.3:8080/">
<link rel=stylesheet href=/style.css>
<meta http-equiv="Refresh" content="5; url=/next">
<meta name="x" content="/not-a-url">
<style>body { background: url(/bg.png) } @import '/more.css';</style>
<script src="/app.js">var u = "/api/x"; if (a < b) {}</script>
</head><body style="background:url('/a.png')">
<!-- <a href="/in-comment"> -->
<a id=abs href='http://10.1.2.3:8080/page2.html'>abs</a>
<a HREF="/page2.html">root</a> <a href="page2.html">rel</a> <a href="http://example.org/">out</a>
<img srcset="/s1.png 1x, http://10.1.2.3:8080/s2.png 2x" src=/i.png alt="/alt">
<form action="/save" method=post><button formaction="/other">go</button></form>
<textarea><a href="/in-textarea"></textarea>
<p>1 < 2 and a lone <</p>
"#;
        let out = s(rw().html(page));
        for want in [
            r#"<base href="/d/monitor-3/">"#,
            "<link rel=stylesheet href=/d/monitor-3/style.css>",
            r#"content="5; url=/d/monitor-3/next""#,
            r#"content="/not-a-url""#,
            "url(/d/monitor-3/bg.png)",
            "@import '/d/monitor-3/more.css'",
            r#"<script src="/d/monitor-3/app.js">var u = "/api/x";"#,
            "url('/d/monitor-3/a.png')",
            r#"<!-- <a href="/in-comment"> -->"#,
            "href='/d/monitor-3/page2.html'",
            r#"<a HREF="/d/monitor-3/page2.html">"#,
            r#"<a href="page2.html">"#,
            r#"<a href="http://example.org/">"#,
            r#"srcset="/d/monitor-3/s1.png 1x, /d/monitor-3/s2.png 2x""#,
            "src=/d/monitor-3/i.png",
            r#"alt="/alt""#,
            r#"action="/d/monitor-3/save""#,
            r#"formaction="/d/monitor-3/other""#,
            r#"<textarea><a href="/in-textarea"></textarea>"#,
            "<p>1 < 2 and a lone <</p>",
        ] {
            assert!(out.contains(want), "{want}\nnot in\n{out}");
        }
        // Nothing else changed: removing the prefixes gives the page back.
        assert_eq!(
            out.replace("/d/monitor-3", ""),
            s(page.to_vec()).replace("http://10.1.2.3:8080", "")
        );
    }

    #[test]
    fn html_edge_cases_never_panic_and_keep_bytes() {
        let r = rw();
        for page in [
            &b""[..],
            b"<",
            b"<a",
            b"<a href",
            b"<a href=",
            b"<a href='/x",
            b"<a href=/x",
            b"<script>",
            b"<style>url(",
            b"<!--",
            b"<a href=\"/x\"/>",
            b"\xff\xfe<a href=\"/\xe9\">",
            b"<a =\"/x\" href=/y>",
        ] {
            let out = r.html(page);
            // Unterminated tags are left alone; complete ones are rewritten.
            assert!(out.len() >= page.len(), "{page:?}");
        }
        assert_eq!(
            r.html(b"<a href=\"/\xe9\">"),
            b"<a href=\"/d/monitor-3/\xe9\">"
        );
        assert_eq!(
            r.html(b"<a =\"/x\" href=/y>"),
            b"<a =\"/x\" href=/d/monitor-3/y>"
        );
        // A self-closing <script/> still hides its content; a <title/> does not swallow the page.
        assert_eq!(
            s(r.html(b"<title/><a href=/x>")),
            "<title/><a href=/d/monitor-3/x>"
        );
    }

    #[test]
    fn css_urls_and_imports() {
        let r = rw();
        let css = b"@import \"/a.css\"; @import url(/b.css);\n.x{background:URL( \"/c.png\" )}\n.y{src:url(http://10.1.2.3:8080/f.woff) format('woff')}\n.z{background:url(data:image/png;base64,AAAA)}\n.w{background:url(  /w.png  )}";
        let out = s(r.css(css));
        for want in [
            "@import \"/d/monitor-3/a.css\"",
            "@import url(/d/monitor-3/b.css)",
            "URL( \"/d/monitor-3/c.png\" )",
            "url(/d/monitor-3/f.woff)",
            "url(data:image/png;base64,AAAA)",
            "url(  /d/monitor-3/w.png  )",
        ] {
            assert!(out.contains(want), "{want} not in {out}");
        }
        assert_eq!(r.css(b"url("), b"url(");
        assert_eq!(r.css(b"@import"), b"@import");
    }

    #[test]
    fn set_cookie_is_kept_to_the_device_and_wards_own_is_dropped() {
        let r = rw();
        let cases: &[(&str, Option<&str>)] = &[
            (
                "sid=abc; Path=/; HttpOnly",
                Some("sid=abc; HttpOnly; Path=/d/monitor-3/; Secure"),
            ),
            (
                "sid=abc; path=/cgi; Domain=10.1.2.3; Secure; SameSite=Lax",
                Some("sid=abc; Secure; SameSite=Lax; Path=/d/monitor-3/cgi"),
            ),
            ("sid=abc", Some("sid=abc; Path=/d/monitor-3/; Secure")),
            (
                "sid=abc; Path=relative",
                Some("sid=abc; Path=/d/monitor-3/; Secure"),
            ),
            ("ward_session=evil; Path=/", None),
            (" WARD_SESSION =evil", None),
            ("=novalue", None),
        ];
        for (input, want) in cases {
            assert_eq!(r.set_cookie(input).as_deref(), *want, "{input}");
        }
    }

    #[test]
    fn request_headers_reach_the_device_without_wards_secrets() {
        let r = rw();
        let mut h = HeaderMap::new();
        let mut put = |k: &'static str, v: &'static str| {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        };
        put("host", "127.0.0.1:8444");
        put("cookie", "ward_session=SECRETTOKEN; sid=abc");
        put("cookie", "other=1");
        put("authorization", "Basic dXNlcjpwdw==");
        put("proxy-authorization", "x");
        put("connection", "keep-alive, x-hop");
        put("x-hop", "1");
        put("upgrade", "websocket");
        put("accept-encoding", "gzip, br");
        put("x-forwarded-for", "1.2.3.4");
        put("origin", "https://127.0.0.1:8444");
        put("referer", "https://127.0.0.1:8444/d/monitor-3/page?x=1");
        put("accept", "text/html");
        let out = r.request_headers(&h, "https://127.0.0.1:8444");
        assert_eq!(out.get("host").unwrap(), "10.1.2.3:8080");
        let cookies: Vec<_> = out.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["sid=abc", "other=1"]);
        for gone in [
            "authorization",
            "proxy-authorization",
            "connection",
            "x-hop",
            "upgrade",
            "x-forwarded-for",
        ] {
            assert!(out.get(gone).is_none(), "{gone}: {out:?}");
        }
        assert_eq!(out.get("accept-encoding").unwrap(), "identity");
        assert_eq!(out.get("origin").unwrap(), "http://10.1.2.3:8080");
        assert_eq!(out.get("referer").unwrap(), "http://10.1.2.3:8080/page?x=1");
        assert_eq!(out.get("accept").unwrap(), "text/html");
        // Only Ward's cookie: no Cookie header at all. Another device's page or origin: removed.
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("ward_session=x"));
        h.insert("origin", HeaderValue::from_static("https://evil.example"));
        h.insert(
            "referer",
            HeaderValue::from_static("https://127.0.0.1:8444/d/monitor-30/"),
        );
        let out = r.request_headers(&h, "https://127.0.0.1:8444");
        assert!(out.get("cookie").is_none() && out.get("origin").is_none());
        assert!(out.get("referer").is_none());
    }

    #[test]
    fn response_headers_stay_under_the_prefix_and_never_ask_for_a_password() {
        let r = rw();
        let mut h = HeaderMap::new();
        let mut put = |k: &'static str, v: &'static str| {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        };
        put("location", "http://10.1.2.3:8080/page2.html");
        put("www-authenticate", "Basic realm=\"monitor\"");
        put("set-cookie", "a=1; Path=/");
        put("set-cookie", "ward_session=evil; Path=/");
        put("set-cookie", "b=2; Domain=10.1.2.3");
        put(
            "link",
            "</style.css>; rel=preload, <http://example.org/x>; rel=x",
        );
        put("refresh", "0;url=/home");
        put("strict-transport-security", "max-age=1; includeSubDomains");
        put("clear-site-data", "\"cookies\"");
        put("access-control-allow-origin", "*");
        put("connection", "close");
        put("content-type", "text/html");
        let mut out = h.clone();
        r.response_headers(&mut out);
        assert_eq!(out.get("location").unwrap(), "/d/monitor-3/page2.html");
        assert!(out.get("www-authenticate").is_none());
        let cookies: Vec<_> = out.get_all("set-cookie").iter().collect();
        assert_eq!(
            cookies,
            [
                "a=1; Path=/d/monitor-3/; Secure",
                "b=2; Path=/d/monitor-3/; Secure"
            ]
        );
        assert_eq!(
            out.get("link").unwrap(),
            "</d/monitor-3/style.css>; rel=preload, <http://example.org/x>; rel=x"
        );
        assert_eq!(out.get("refresh").unwrap(), "0;url=/d/monitor-3/home");
        for gone in [
            "strict-transport-security",
            "clear-site-data",
            "access-control-allow-origin",
            "connection",
        ] {
            assert!(out.get(gone).is_none(), "{gone}");
        }
        assert_eq!(out.get("content-type").unwrap(), "text/html");
    }

    #[test]
    fn only_uncoded_html_and_css_are_rewritten() {
        let kind = |ct: &'static str, ce: Option<&'static str>| {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static(ct));
            if let Some(ce) = ce {
                h.insert("content-encoding", HeaderValue::from_static(ce));
            }
            body_kind(&h)
        };
        assert_eq!(kind("text/html; charset=utf-8", None), Some(BodyKind::Html));
        assert_eq!(kind("Application/XHTML+XML", None), Some(BodyKind::Html));
        assert_eq!(kind("text/css", Some("identity")), Some(BodyKind::Css));
        assert_eq!(kind("text/html", Some("gzip")), None);
        assert_eq!(kind("application/javascript", None), None);
        assert_eq!(kind("image/png", None), None);
        assert_eq!(body_kind(&HeaderMap::new()), None);
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape_html(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    /// Markup-like input from a small alphabet (tags, quotes, attribute names, URLs).
    fn markup() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let pieces = prop_oneof![
            Just(&b"<a href="[..]),
            Just(&b"<img src='"[..]),
            Just(&b"<style>"[..]),
            Just(&b"</style>"[..]),
            Just(&b"<script>"[..]),
            Just(&b"</script>"[..]),
            Just(&b"<!--"[..]),
            Just(&b"-->"[..]),
            Just(&b"<meta http-equiv=refresh content=\"0;url="[..]),
            Just(&b"srcset=\""[..]),
            Just(&b" style=\"background:url("[..]),
            Just(&b"@import '"[..]),
            Just(&b"url("[..]),
            Just(&b"/x"[..]),
            Just(&b"//"[..]),
            Just(&b"http://"[..]),
            Just(&b"\""[..]),
            Just(&b"'"[..]),
            Just(&b">"[..]),
            Just(&b"<"[..]),
            Just(&b" "[..]),
            Just(&b"="[..]),
            Just(&b","[..]),
            Just(&b")"[..]),
            Just(&b"\xff"[..]),
        ];
        proptest::collection::vec(pieces, 0..64).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Whatever the device sends, rewriting only ever inserts the prefix: taking it out again
        /// gives the input back (for input that names neither the prefix nor the device).
        #[test]
        fn rewriting_only_inserts_the_prefix(
            html in markup(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
        ) {
            let r = rw();
            for input in [&html, &bytes] {
                let text = String::from_utf8_lossy(input);
                if text.contains("/d/monitor-3") || text.contains("10.1.2.3") {
                    continue;
                }
                for out in [r.html(input), r.css(input), r.refresh(input), r.link(input)] {
                    let back = String::from_utf8_lossy(&out).replace("/d/monitor-3", "");
                    proptest::prop_assert_eq!(back, text.to_string());
                }
            }
        }

        /// A rewritten URL always lands under the prefix; a cookie always stays in it.
        #[test]
        fn urls_and_cookies_stay_under_the_prefix(
            url in "[ /\\:a-z0-9.?#]{0,40}",
            cookie in "[a-zA-Z_=; /.]{0,60}",
        ) {
            let r = rw();
            if let Some(out) = r.url(url.as_bytes()) {
                let out = String::from_utf8(out).unwrap();
                proptest::prop_assert!(out.trim_start().starts_with("/d/monitor-3/"), "{}", out);
            }
            if let Some(out) = r.set_cookie(&cookie) {
                let path = out.split("; Path=").nth(1).unwrap_or_default();
                proptest::prop_assert!(path.starts_with("/d/monitor-3/"), "{}", out);
                proptest::prop_assert!(
                    out.split(';').skip(1).all(|a| !a.split('=').next().unwrap_or_default().trim().eq_ignore_ascii_case("domain")),
                    "{}", out
                );
                proptest::prop_assert!(
                    !out.split('=').next().unwrap_or_default().trim().eq_ignore_ascii_case("ward_session"),
                    "{}", out
                );
            }
        }
    }

    #[test]
    fn ward_cookie_is_removed_from_requests() {
        let v = without_ward_cookie(b"a=1;ward_session=T; b=2").unwrap();
        assert_eq!(v, "a=1; b=2");
        assert!(without_ward_cookie(b"ward_session=T").is_none());
        assert!(without_ward_cookie(b" ; ").is_none());
    }
}
