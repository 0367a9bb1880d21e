//! The console's pages: HTML, CSS, JavaScript and the icon, the project's own, embedded in the
//! binary (no build step, no third-party origin). `GET /` is the one page (hash routes inside it);
//! every other file is served at its own path; anything else outside `/api/` is 404 (the router's
//! fallback). Each answer carries its content type, `Cache-Control: no-cache` and an `ETag` (a
//! hash of the content), so a browser revalidates and gets `304` until the binary changes.

use std::sync::OnceLock;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// The URL path it is served at.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every file the console serves (`/` is `index.html`).
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: include_bytes!("static/index.html"),
    },
    Asset {
        path: "/app.css",
        content_type: CSS,
        body: include_bytes!("static/app.css"),
    },
    Asset {
        path: "/app.js",
        content_type: JS,
        body: include_bytes!("static/app.js"),
    },
    Asset {
        path: "/util.js",
        content_type: JS,
        body: include_bytes!("static/util.js"),
    },
    Asset {
        path: "/charts.js",
        content_type: JS,
        body: include_bytes!("static/charts.js"),
    },
    Asset {
        path: "/player.js",
        content_type: JS,
        body: include_bytes!("static/player.js"),
    },
    Asset {
        path: "/term.js",
        content_type: JS,
        body: include_bytes!("static/term.js"),
    },
    Asset {
        path: "/sso.js",
        content_type: JS,
        body: include_bytes!("static/sso.js"),
    },
    Asset {
        path: "/cli.js",
        content_type: JS,
        body: include_bytes!("static/cli.js"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: SVG,
        body: include_bytes!("static/favicon.svg"),
    },
];

/// The asset served at `path`, if any.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The strong `ETag` of each asset, in [`ASSETS`] order: a quoted prefix of the content's
/// SHA-256, computed once.
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                format!(
                    "\"{}\"",
                    hex::encode(digest.get(..12).unwrap_or(&digest[..]))
                )
            })
            .collect()
    })
}

/// The answer for `path` given the request's headers: the asset (200), `304` when the browser's
/// `If-None-Match` names the current `ETag`, or `404`.
pub fn respond(path: &str, headers: &HeaderMap) -> Response {
    let Some((index, asset)) = ASSETS.iter().enumerate().find(|(_, a)| a.path == path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let etag = etags().get(index).map(String::as_str).unwrap_or("\"\"");
    let etag_value = HeaderValue::from_str(etag).unwrap_or(HeaderValue::from_static("\"\""));
    let matches = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let common = [
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (ETAG, etag_value),
    ];
    if matches {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [(CONTENT_TYPE, HeaderValue::from_static(asset.content_type))],
        asset.body,
    )
        .into_response()
}

/// This area's routes: one `GET` (and so `HEAD`) per asset. Generic over the router's state so
/// tests can mount it alone.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        let path = asset.path;
        router.route(
            path,
            get(move |headers: HeaderMap| async move { respond(path, &headers) }),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_path(path: &str, etag: Option<&str>) -> Response {
        let mut req = Request::builder().uri(path);
        if let Some(tag) = etag {
            req = req.header(IF_NONE_MATCH, tag);
        }
        routes::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body_of(resp: Response) -> Vec<u8> {
        axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_type_and_validators() {
        for asset in ASSETS {
            let resp = get_path(asset.path, None).await;
            assert_eq!(resp.status(), StatusCode::OK, "{}", asset.path);
            let h = resp.headers().clone();
            assert_eq!(h[CONTENT_TYPE], asset.content_type, "{}", asset.path);
            assert_eq!(h[CACHE_CONTROL], "no-cache", "{}", asset.path);
            let etag = h[ETAG].to_str().unwrap().to_string();
            assert!(etag.starts_with('"') && etag.len() == 26, "{etag}");
            assert_eq!(body_of(resp).await, asset.body, "{}", asset.path);
            // Revalidation: the same tag is 304 without a body; another tag gets the file.
            let again = get_path(asset.path, Some(&etag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{}", asset.path);
            assert!(body_of(again).await.is_empty());
            let stale = get_path(asset.path, Some("\"0000\"")).await;
            assert_eq!(stale.status(), StatusCode::OK, "{}", asset.path);
        }
        let types: Vec<_> = ["/", "/app.js", "/app.css", "/favicon.svg"]
            .iter()
            .map(|p| find(p).unwrap().content_type)
            .collect();
        assert_eq!(types, [HTML, JS, CSS, SVG]);
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        for path in [
            "/nope",
            "/app.js.map",
            "/static/app.js",
            "/index.html/x",
            "/../Cargo.toml",
        ] {
            let resp = get_path(path, None).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        }
        assert_eq!(
            respond("/missing", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn tags_differ_between_files() {
        let tags = etags();
        assert_eq!(tags.len(), ASSETS.len());
        let mut unique = tags.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), tags.len());
    }

    fn text(asset: &Asset) -> &'static str {
        std::str::from_utf8(asset.body).expect("assets are UTF-8")
    }

    /// The CSP (`script-src 'self'; style-src 'self'`) forbids inline script and style: the
    /// page must not need them. And no script builds markup from strings: every element is made
    /// with `createElement` and filled with `textContent`, so hostile text stays text.
    #[test]
    fn no_inline_script_or_style_and_no_markup_from_strings() {
        let html = text(find("/").unwrap()).to_ascii_lowercase();
        for (i, _) in html.match_indices("<script") {
            let tag_end = html[i..].find('>').unwrap() + i;
            let tag = &html[i..=tag_end];
            assert!(tag.contains(" src=\"/"), "inline script: {tag}");
            assert!(
                html[tag_end + 1..].starts_with("</script>"),
                "script body: {tag}"
            );
        }
        for forbidden in ["<style", " style=", "javascript:", " on"] {
            let hits: Vec<_> = html
                .match_indices(forbidden)
                .filter(|(i, _)| {
                    // ` on…=` attributes only: event handlers.
                    forbidden != " on" || {
                        let rest = &html[i + 3..];
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_alphabetic())
                            .collect();
                        !name.is_empty() && rest[name.len()..].starts_with('=')
                    }
                })
                .collect();
            assert!(hits.is_empty(), "index.html has {forbidden:?}");
        }
        let mut scripts = 0;
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            scripts += 1;
            let js = text(asset);
            for forbidden in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "setTimeout('",
                "setTimeout(\"",
                "setInterval('",
                "setInterval(\"",
                "javascript:",
                "DOMParser",
                "createContextualFragment",
            ] {
                assert!(!js.contains(forbidden), "{} uses {forbidden}", asset.path);
            }
            // Every script the page loads is one of the embedded ones.
            assert!(html.contains(&format!("src=\"{}\"", asset.path)) || js_imported(asset.path));
        }
        assert!(scripts >= 4);
    }

    /// Whether some embedded script imports `path` (`import … from './x.js'`).
    fn js_imported(path: &str) -> bool {
        let needle = format!("'.{path}'");
        ASSETS
            .iter()
            .filter(|a| a.content_type == JS)
            .any(|a| text(a).contains(&needle))
    }

    /// Every element a script looks up by id in the shell (`document.getElementById('x')`) is in
    /// index.html: a rename in one file without the other fails here, not in a browser.
    #[test]
    fn shell_ids_the_scripts_use_exist() {
        let html = text(find("/").unwrap());
        let mut looked_up = 0;
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            for (i, _) in text(asset).match_indices("getElementById('") {
                let rest = &text(asset)[i + "getElementById('".len()..];
                let id = &rest[..rest.find('\'').unwrap()];
                // Ids built by the pages themselves are looked up only after they are built.
                if id.starts_with("nav-") || html.contains(&format!("id=\"{id}\"")) {
                    looked_up += 1;
                    continue;
                }
                let built = ASSETS
                    .iter()
                    .filter(|a| a.content_type == JS)
                    .any(|a| text(a).contains(&format!("id: '{id}'")));
                assert!(
                    built,
                    "{} looks up #{id}, which nothing defines",
                    asset.path
                );
                looked_up += 1;
            }
        }
        assert!(looked_up >= 8, "only {looked_up} lookups found");
        for id in ["nav-overview", "nav-live", "nav-sessions", "nav-audit"] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
        }
    }

    /// The pages keep the element ids the browser tests and docs rely on (docs/web.md).
    #[test]
    fn stable_ids_are_present() {
        let all: String = ASSETS.iter().map(|a| text(a)).collect();
        for id in [
            "signin-user",
            "signin-password",
            "signin-totp",
            "signin-submit",
            "signin-error",
            "nav-overview",
            "nav-live",
            "nav-sessions",
            "nav-audit",
            "nav-requests",
            "nav-devices",
            "signout",
            "whoami",
            "search-grep",
            "search-submit",
            "sessions-table",
            "pager-next",
            "pager-prev",
            "screen",
            "play",
            "pause",
            "seek",
            "speed",
            "keys-toggle",
            "keys",
            "time",
            "watch-screen",
            "live-table",
            "lock-kind",
            "lock-value",
            "lock-reason",
            "lock-submit",
            "end-reason",
            "end-confirm",
            "requests-table",
            "devices-table",
            "locks-table",
            "error",
        ] {
            assert!(
                all.contains(&format!("\"{id}\"")) || all.contains(&format!("'{id}'")),
                "id {id} missing"
            );
        }
    }
}
