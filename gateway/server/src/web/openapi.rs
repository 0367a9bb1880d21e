//! The API's OpenAPI 3.0.3 document (`GET /api/v1/openapi.json`, no authentication): hand
//! written in `openapi.json` beside this file and embedded in the binary. [`ROUTES`] lists every
//! route the API serves; a test checks that the document documents each one and nothing else.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::WebState;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Every API route (method, path under `/api/v1`, with `{param}`s as the router spells them):
/// the design's list (docs/web.md). Keep it in step with the areas' routers — the OpenAPI test
/// checks the document against it, and `tests/tests/web_api.rs` checks the router serves each.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/whoami"),
    ("POST", "/signin"),
    ("POST", "/signout"),
    ("GET", "/sessions"),
    ("GET", "/sessions/{id}"),
    ("GET", "/sessions/{id}/export"),
    ("GET", "/sessions/{id}/timeline"),
    ("GET", "/sessions/{id}/screen"),
    ("GET", "/sessions/{id}/hex"),
    ("GET", "/live"),
    ("POST", "/live/{id}/end"),
    ("GET", "/live/{id}/watch"),
    ("GET", "/audit"),
    ("GET", "/overview"),
    ("GET", "/requests"),
    ("POST", "/requests/{id}/approve"),
    ("POST", "/requests/{id}/deny"),
    ("GET", "/locks"),
    ("POST", "/locks"),
    ("DELETE", "/locks/{kind}/{value}"),
    ("GET", "/devices"),
    ("GET", "/my/devices"),
    ("POST", "/my/requests"),
    ("GET", "/terminal/{device}"),
    ("GET", "/sso"),
    ("GET", "/sso/{name}/start"),
    ("GET", "/sso/callback"),
    ("POST", "/sso/totp"),
    ("GET", "/sso/cli/{poll}"),
    ("POST", "/sso/cli/{poll}/approve"),
    ("POST", "/sso/cli/{poll}/deny"),
    ("GET", "/openapi.json"),
];

/// The routes reachable without signing in (everything else answers 401 to an anonymous caller).
pub const PUBLIC: &[(&str, &str)] = &[
    ("POST", "/signin"),
    ("GET", "/openapi.json"),
    ("GET", "/sso"),
    ("GET", "/sso/{name}/start"),
    ("GET", "/sso/callback"),
    ("POST", "/sso/totp"),
];

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new().route("/api/v1/openapi.json", get(document))
}

/// `GET /api/v1/openapi.json`.
async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).unwrap()
    }

    const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

    #[test]
    fn the_document_is_openapi_3_0_3_and_documents_every_route_and_no_other() {
        let d = doc();
        assert_eq!(d["openapi"], "3.0.3");
        assert_eq!(d["servers"][0]["url"], "/api/v1");
        let mut documented = BTreeSet::new();
        for (path, item) in d["paths"].as_object().unwrap() {
            for (method, _) in item.as_object().unwrap() {
                assert!(METHODS.contains(&method.as_str()), "{method} {path}");
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_operation_says_how_to_authenticate_and_its_errors() {
        let d = doc();
        let schemes = d["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes["cookieAuth"]["in"], "cookie");
        assert_eq!(schemes["cookieAuth"]["name"], "ward_session");
        assert_eq!(schemes["csrfHeader"]["name"], "X-Ward-CSRF");
        assert!(d["components"]["x-mutualTLS"]["description"].is_string());
        let mut ids = BTreeSet::new();
        for (method, path) in ROUTES {
            let op = &d["paths"][path][method.to_lowercase()];
            assert!(ids.insert(op["operationId"].as_str().unwrap().to_string()));
            let security = op["security"].as_array().unwrap();
            let public = PUBLIC.contains(&(method, path));
            assert_eq!(security.is_empty(), public, "{method} {path}");
            if !public {
                let needs_csrf = security[0].get("csrfHeader").is_some();
                assert_eq!(needs_csrf, *method != "GET", "{method} {path}");
                assert!(op["responses"]["401"].is_object(), "{method} {path}");
                assert!(op["responses"]["403"].is_object(), "{method} {path}");
            }
            // Path parameters are declared.
            for part in path.split('/').filter(|p| p.starts_with('{')) {
                let name = part.trim_matches(|c| c == '{' || c == '}');
                let declared = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true);
                assert!(declared, "{method} {path}: {name}");
            }
        }
    }

    /// Every `$ref` names a schema that exists, and the schemas the issue names are there.
    #[test]
    fn references_resolve() {
        let d = doc();
        let schemas = d["components"]["schemas"].as_object().unwrap();
        for name in ["SessionSummary", "Screen", "AuditEvent", "Error"] {
            assert!(schemas.contains_key(name), "{name}");
        }
        fn walk(v: &Value, refs: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        refs.push(r.clone());
                    }
                    o.values().for_each(|x| walk(x, refs));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, refs)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(&d, &mut refs);
        assert!(refs.len() > 20);
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.contains_key(name), "{r}");
        }
    }

    /// A summary as the index serialises it has every property the document requires of it.
    #[test]
    fn the_session_summary_schema_matches_the_type() {
        let d = doc();
        let s = &d["components"]["schemas"]["SessionSummary"];
        let summary = crate::session_index::opened(&ward_recording::SessionMeta {
            session_id: "00000000000000aa".into(),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: Some("acme".into()),
            cert_serial: "02".into(),
            source: "127.0.0.1:1".into(),
            device: "pump".into(),
            device_addr: "127.0.0.1:2".into(),
            protocol: "telnet".into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: false,
            started_unix_ms: 1_000,
            recipients: Vec::new(),
            age_header: None,
        })
        .summary;
        let v = serde_json::to_value(summary).unwrap();
        let props = s["properties"].as_object().unwrap();
        for key in v.as_object().unwrap().keys() {
            assert!(props.contains_key(key), "{key} not documented");
        }
        for req in s["required"].as_array().unwrap() {
            assert!(v.get(req.as_str().unwrap()).is_some(), "{req}");
        }
    }
}
