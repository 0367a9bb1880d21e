//! Sign-in with the hospital's OpenID provider: authorization code flow with PKCE, claims mapped
//! to Ward's principal, for the browser (this file) and for `ward login --sso` (which approves a
//! CLI login with whatever browser sign-in is current).
//!
//! - `GET /api/v1/sso` (no sign-in needed): the `[[oidc]]` providers (`name`, `display`) for the
//!   sign-in page's buttons, and the TOTP step this browser owes, if any.
//! - `GET /api/v1/sso/{name}/start?then=<hash route>`: 303 to the IdP's authorization endpoint
//!   (response type `code`, PKCE S256, a random `state` and `nonce`). The pending sign-in is kept
//!   in the gateway's memory (10 min, bounded) under its `state`, bound to this browser by the
//!   `ward_sso` cookie (random; its SHA-256 is kept), so a callback carried to another browser
//!   (login CSRF) is refused.
//! - `GET /api/v1/sso/callback?code&state`: the pending sign-in is taken (single use: a replayed
//!   callback finds nothing), the code exchanged at the token endpoint with the client secret
//!   read from `client_secret_file` and the PKCE verifier, the ID token verified by
//!   `openidconnect` (signature by the IdP's JWKS, `iss`, `aud`, `exp`, `nonce`), the claims
//!   mapped by the provider's `[[oidc.map]]` rules ([`ward_core::sso`]) and MFA checked
//!   (`require_amr`/`require_acr`), then a browser sign-in starts in the same [`SignIns`] as a
//!   password sign-in ([`Via::Sso`], identity serial `sso-<session>`, audited `web_signin` with
//!   `detail.via = "sso"`, the provider and the subject) and the browser goes to `/#<then>`.
//!   Any refusal is a small page with the reason, audited.
//! - With `mfa = "ward"`, the callback instead keeps the verified sign-in for 5 minutes under the
//!   `ward_sso_totp` cookie and the page asks for Ward's TOTP code of the same-named Ward user:
//!   `POST /api/v1/sso/totp {"code"}` → whoami and the session cookie.
//!
//! The IdP is reached by a small HTTP/1.1 client over hyper and tokio-rustls ([`IdpHttp`]):
//! TLS 1.2/1.3 with the provider's `ca_file` or the public web roots, plain http only to a
//! loopback issuer, bounded bodies, a deadline per request, no redirects followed.
//!
//! SSO users need not exist in Ward's user store (except with `mfa = "ward"`); a Ward user of
//! the same name that is disabled cannot sign in through the IdP either.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AsyncHttpClient, AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpRequest,
    HttpResponse, IssuerUrl, Nonce, OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, TokenResponse as _,
};
use serde::Deserialize;
use sha2::Digest as _;
use time::OffsetDateTime;
use ward_core::config::{OidcProvider, SsoMfa};
use ward_core::sso::{check_mfa, map_claims, Mapped};
use ward_core::PrincipalKind;

use super::auth::{self, SignIns};
use super::{ApiError, ConnInfo, Via, WebState};
use crate::services::login::{SignedIn, SsoSignIn, TOTP_REUSED};
use crate::services::Refusal;

/// Where the IdP sends the browser back (the path of every provider's `redirect_url`).
pub const CALLBACK_PATH: &str = "/api/v1/sso/callback";
/// Where the page posts Ward's TOTP code for a provider with `mfa = "ward"`.
pub const TOTP_PATH: &str = "/api/v1/sso/totp";
/// The cookie binding a pending sign-in to the browser that started it.
const FLOW_COOKIE: &str = "ward_sso";
/// The cookie naming a sign-in waiting for Ward's TOTP code.
const TOTP_COOKIE: &str = "ward_sso_totp";
/// How long a started sign-in waits for the IdP's callback.
pub const PENDING_TTL: time::Duration = time::Duration::minutes(10);
/// How long a verified sign-in waits for Ward's TOTP code.
pub const TOTP_TTL: time::Duration = time::Duration::minutes(5);
/// Most sign-ins in progress at once (started, or waiting for a TOTP code).
pub const MAX_PENDING: usize = 1024;
/// Wrong TOTP codes before a waiting sign-in is dropped.
const MAX_TOTP_TRIES: u32 = 5;
/// How long the IdP's metadata and keys are reused before they are read again.
const METADATA_TTL: time::Duration = time::Duration::minutes(5);
/// Largest answer read from the IdP.
const MAX_IDP_BODY: usize = 1024 * 1024;
/// Deadline of one request to the IdP, connection included.
const IDP_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest TOTP request body.
const MAX_TOTP_BODY: usize = 1024;

/// A started sign-in, waiting for the IdP's callback.
struct Pending {
    provider: String,
    verifier: String,
    nonce: String,
    then: String,
    browser: [u8; 32],
    created: OffsetDateTime,
}

/// A sign-in the IdP vouched for, waiting for Ward's TOTP code.
struct TotpPending {
    who: SsoSignIn,
    mapped: Mapped,
    then: String,
    created: OffsetDateTime,
    tries: u32,
}

/// Sign-ins through the IdP in progress, and the IdPs' metadata, in the gateway's memory.
#[derive(Default)]
pub struct Sso {
    pending: Mutex<HashMap<String, Pending>>,
    totp: Mutex<HashMap<[u8; 32], TotpPending>>,
    /// By provider name (each has its own `ca_file`), with when it was read.
    metadata: Mutex<HashMap<String, (CoreProviderMetadata, OffsetDateTime)>>,
}

impl Sso {
    /// Keeps `p` under `state`, dropping expired ones; refuses when [`MAX_PENDING`] are held.
    fn hold(&self, state: String, p: Pending, now: OffsetDateTime) -> Result<(), ApiError> {
        let mut map = self
            .pending
            .lock()
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
        map.retain(|_, v| now - v.created < PENDING_TTL);
        if map.len() >= MAX_PENDING {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sign-ins through the identity provider are in progress: try again in a few minutes",
            ));
        }
        map.insert(state, p);
        Ok(())
    }

    /// Takes the pending sign-in of `state` (single use).
    fn take(&self, state: &str) -> Option<Pending> {
        self.pending.lock().ok()?.remove(state)
    }

    /// How many sign-ins wait for the IdP (for tests).
    pub fn pending_len(&self) -> usize {
        self.pending.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn hold_totp(
        &self,
        key: [u8; 32],
        p: TotpPending,
        now: OffsetDateTime,
    ) -> Result<(), ApiError> {
        let mut map = self
            .totp
            .lock()
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
        map.retain(|_, v| now - v.created < TOTP_TTL);
        if map.len() >= MAX_PENDING {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sign-ins are waiting for a TOTP code: try again in a few minutes",
            ));
        }
        map.insert(key, p);
        Ok(())
    }
}

/// This area's routes.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/api/v1/sso", get(providers))
        .route("/api/v1/sso/{name}/start", get(start))
        .route(CALLBACK_PATH, get(callback))
        .route(TOTP_PATH, post(totp))
}

/// `GET /api/v1/sso` → `{"providers": [{"name", "display"}], "totp": {"user", "provider"}|null}`.
async fn providers(State(state): State<WebState>, headers: HeaderMap) -> Response {
    let config = state.shared.config();
    let list: Vec<serde_json::Value> = config
        .oidc
        .iter()
        .map(|p| serde_json::json!({"name": p.name, "display": p.display}))
        .collect();
    let now = state.shared.clock.now();
    let waiting = cookie(&headers, TOTP_COOKIE).and_then(|c| {
        let map = state.sso.totp.lock().ok()?;
        let p = map.get(&digest(c))?;
        (now - p.created < TOTP_TTL)
            .then(|| serde_json::json!({"user": p.mapped.name, "provider": p.who.provider}))
    });
    Json(serde_json::json!({"providers": list, "totp": waiting})).into_response()
}

#[derive(Deserialize)]
struct StartQuery {
    then: Option<String>,
}

/// `GET /api/v1/sso/{name}/start?then=` → 303 to the IdP.
async fn start(
    State(state): State<WebState>,
    Path(name): Path<String>,
    Query(q): Query<StartQuery>,
) -> Response {
    let config = state.shared.config();
    let Some(provider) = config.oidc.iter().find(|p| p.name == name) else {
        return page(
            StatusCode::NOT_FOUND,
            "No such identity provider",
            "this gateway has no [[oidc]] provider of that name: go back to the sign-in page and pick one of its buttons",
        );
    };
    let now = state.shared.clock.now();
    let metadata = match state.metadata(provider, now).await {
        Ok(m) => m,
        Err(why) => {
            return page(
                StatusCode::BAD_GATEWAY,
                "Identity provider unreachable",
                &why,
            )
        }
    };
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(provider.client_id.clone()),
        None,
    );
    let redirect = match RedirectUrl::new(provider.redirect_url.clone()) {
        Ok(r) => r,
        Err(e) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Misconfigured provider",
                &format!("redirect_url of [[oidc]] {}: {e}", provider.name),
            )
        }
    };
    let client = client.set_redirect_uri(redirect);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client.authorize_url(
        CoreAuthenticationFlow::AuthorizationCode,
        CsrfToken::new_random,
        Nonce::new_random,
    );
    for s in provider.scopes.iter().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(s.clone()));
    }
    let (url, csrf, nonce) = request.set_pkce_challenge(challenge).url();
    let browser: [u8; 32] = rand::random();
    let browser_token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(browser);
    let pending = Pending {
        provider: provider.name.clone(),
        verifier: verifier.secret().clone(),
        nonce: nonce.secret().clone(),
        then: safe_then(q.then.as_deref()),
        browser: digest(&browser_token),
        created: now,
    };
    if let Err(e) = state.sso.hold(csrf.secret().clone(), pending, now) {
        return page(e.status, "Try again later", &e.reason);
    }
    let mut response = StatusCode::SEE_OTHER.into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        h.insert(header::LOCATION, v);
    }
    // Lax: the IdP's redirect back is a top-level GET from another site, which must carry it.
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{FLOW_COOKIE}={browser_token}; HttpOnly; Secure; SameSite=Lax; Path=/api/v1/sso; Max-Age=600"
    )) {
        h.append(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// RFC 9207: the issuer of the answer, when the IdP says (a defence against mix-up).
    iss: Option<String>,
}

/// Why a callback was refused: the status, the page's text, and whether it is worth a
/// `web_signin` denial (with who was known) or only the unauthenticated noise log.
struct Refused {
    status: StatusCode,
    why: String,
    subject: Option<String>,
    user: Option<String>,
}

impl Refused {
    fn new(status: StatusCode, why: impl Into<String>) -> Self {
        Refused {
            status,
            why: why.into(),
            subject: None,
            user: None,
        }
    }
}

/// `GET /api/v1/sso/callback?code&state` → the browser signed in and sent to `/#<then>`, or a
/// page saying why not.
async fn callback(
    State(state): State<WebState>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(Extension(conn)) = conn else {
        return ApiError::unauthenticated().into_response();
    };
    let peer = conn.peer;
    let now = state.shared.clock.now();
    let Some(pending) = q.state.as_deref().and_then(|s| state.sso.take(s)) else {
        noise(
            &state,
            peer,
            "SSO callback with an unknown, used or expired state",
        );
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in link not valid",
            "this sign-in is unknown, already used or expired: start again from the sign-in page",
        );
    };
    let bound = cookie(&headers, FLOW_COOKIE).is_some_and(|c| same(&digest(c), &pending.browser));
    if !bound {
        noise(
            &state,
            peer,
            "SSO callback from a browser other than the one that started it",
        );
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in link not valid",
            "this sign-in was started in another browser (or its cookie was lost): start again from the sign-in page of this browser",
        );
    }
    let provider_name = pending.provider.clone();
    let outcome = match finish_at_idp(&state, &pending, &q, now).await {
        Ok(done) => done,
        Err(r) => {
            state.services().login.sso_refused(
                peer,
                &provider_name,
                r.subject.as_deref(),
                r.user.as_deref(),
                &r.why,
            );
            let _ = state.shared.audit.commit().await;
            let mut response = page(r.status, "Sign-in refused", &r.why);
            clear_cookie(&mut response, FLOW_COOKIE);
            return response;
        }
    };
    let (who, mapped, mfa) = outcome;
    let mut response = match mfa {
        SsoMfa::Idp => match begin(&state, peer, &who, mapped, "idp").await {
            Ok((token, _)) => {
                let mut r = redirect(&format!("/#{}", pending.then));
                set_session_cookie(&mut r, &token);
                r
            }
            Err(e) => page(e.status, "Sign-in refused", &e.reason),
        },
        SsoMfa::Ward => {
            let token =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
            let waiting = TotpPending {
                who,
                mapped,
                then: pending.then.clone(),
                created: now,
                tries: 0,
            };
            match state.sso.hold_totp(digest(&token), waiting, now) {
                Ok(()) => {
                    let mut r = redirect(&format!("/#{}", pending.then));
                    if let Ok(v) = HeaderValue::from_str(&format!(
                        "{TOTP_COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/api/v1/sso; Max-Age=300"
                    )) {
                        r.headers_mut().append(header::SET_COOKIE, v);
                    }
                    r
                }
                Err(e) => page(e.status, "Try again later", &e.reason),
            }
        }
    };
    clear_cookie(&mut response, FLOW_COOKIE);
    response
}

/// The token exchange, the ID token's verification, the mapping and (with `mfa = "idp"`) the
/// MFA check: who the IdP vouched for, as whom, and which second factor is still owed.
async fn finish_at_idp(
    state: &WebState,
    pending: &Pending,
    q: &CallbackQuery,
    now: OffsetDateTime,
) -> Result<(SsoSignIn, Mapped, SsoMfa), Refused> {
    let config = state.shared.config();
    let Some(provider) = config.oidc.iter().find(|p| p.name == pending.provider) else {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "this identity provider is no longer configured: start again from the sign-in page",
        ));
    };
    if now - pending.created >= PENDING_TTL {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "this sign-in took longer than 10 minutes: start again from the sign-in page",
        ));
    }
    if let Some(iss) = &q.iss {
        if iss.trim_end_matches('/') != provider.issuer {
            return Err(Refused::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "the answer names issuer {:?}, not this provider's: start again from the sign-in page",
                    clip(iss)
                ),
            ));
        }
    }
    if let Some(err) = &q.error {
        let desc = q.error_description.as_deref().unwrap_or("");
        return Err(Refused::new(
            StatusCode::FORBIDDEN,
            format!(
                "the identity provider did not sign you in ({}{}{}): try again, or ask your IT service desk",
                clip(err),
                if desc.is_empty() { "" } else { ": " },
                clip(desc)
            ),
        ));
    }
    let Some(code) = q.code.clone().filter(|c| !c.is_empty() && c.len() <= 4096) else {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "the identity provider sent no authorization code: start again from the sign-in page",
        ));
    };
    let gateway_err = |why: String| Refused::new(StatusCode::BAD_GATEWAY, why);
    let secret = read_secret(provider)
        .await
        .map_err(|why| Refused::new(StatusCode::SERVICE_UNAVAILABLE, why))?;
    let metadata = state.metadata(provider, now).await.map_err(gateway_err)?;
    let redirect = RedirectUrl::new(provider.redirect_url.clone())
        .map_err(|e| gateway_err(format!("redirect_url: {e}")))?;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(provider.client_id.clone()),
        Some(ClientSecret::new(secret)),
    )
    .set_redirect_uri(redirect);
    let http = IdpHttp::new(provider).map_err(gateway_err)?;
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| gateway_err(format!("the identity provider has no token endpoint: {e}")))?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
        .request_async(&http)
        .await
        .map_err(|e| {
            gateway_err(format!(
                "the identity provider refused the authorization code ({}): start again from the sign-in page",
                clip(&error_chain(&e))
            ))
        })?;
    let Some(id_token) = tokens.id_token() else {
        return Err(gateway_err(
            "the identity provider answered without an ID token: is `openid` among the scopes?"
                .into(),
        ));
    };
    let at = chrono::DateTime::from_timestamp(now.unix_timestamp(), 0).unwrap_or_default();
    let verifier = client.id_token_verifier().set_time_fn(move || at);
    let nonce = Nonce::new(pending.nonce.clone());
    let verified = id_token.claims(&verifier, &nonce).map_err(|e| {
        Refused::new(
            StatusCode::FORBIDDEN,
            format!(
                "the ID token was refused ({}): start again from the sign-in page",
                clip(&e.to_string())
            ),
        )
    })?;
    let subject = verified.subject().as_str().to_owned();
    let issuer = verified.issuer().as_str().to_owned();
    // The claims of the token just verified, as JSON (every claim, for the map rules).
    let mut claims = payload(&id_token.to_string())
        .ok_or_else(|| gateway_err("the ID token's claims are not a JSON object".into()))?;
    // Claims only the userinfo endpoint gives (groups, with some IdPs) are added, never
    // replacing the ID token's; the userinfo answer must be about the same subject.
    if let Some(url) = client.user_info_url() {
        match userinfo(&http, url.as_str(), tokens.access_token().secret()).await {
            Ok(info) if info.get("sub").and_then(|s| s.as_str()) == Some(subject.as_str()) => {
                for (k, v) in info {
                    claims.entry(k).or_insert(v);
                }
            }
            Ok(_) => return Err(Refused {
                subject: Some(subject),
                ..Refused::new(
                    StatusCode::FORBIDDEN,
                    "the identity provider's userinfo is about another subject than its ID token",
                )
            }),
            Err(why) => tracing::warn!(provider = %provider.name, "userinfo not read: {why}"),
        }
    }
    let mapped =
        map_claims(&claims, &provider.username_claim, &provider.map).map_err(|e| Refused {
            subject: Some(subject.clone()),
            user: claims
                .get(&provider.username_claim)
                .and_then(|v| v.as_str())
                .map(|s| s.chars().take(64).collect()),
            ..Refused::new(StatusCode::FORBIDDEN, e.to_string())
        })?;
    let refused = |why: String| Refused {
        subject: Some(subject.clone()),
        user: Some(mapped.name.clone()),
        ..Refused::new(StatusCode::FORBIDDEN, why)
    };
    if provider.mfa == SsoMfa::Idp {
        check_mfa(&claims, &provider.require_amr, &provider.require_acr)
            .map_err(|e| refused(e.to_string()))?;
    }
    if state.shared.jit.is_disabled(&mapped.name) {
        return Err(refused(format!(
            "{} is disabled: ask an admin",
            mapped.name
        )));
    }
    let who = SsoSignIn {
        provider: provider.name.clone(),
        subject,
        issuer,
    };
    Ok((who, mapped, provider.mfa))
}

/// Starts the browser session of `mapped` (audited, committed): its cookie token and the
/// sign-in.
async fn begin(
    state: &WebState,
    peer: SocketAddr,
    who: &SsoSignIn,
    mapped: Mapped,
    mfa: &str,
) -> Result<(String, auth::SignIn), ApiError> {
    let signed = SignedIn {
        name: mapped.name,
        kind: ca_kind(mapped.kind),
        org: mapped.org,
        roles: mapped.roles,
    };
    let (token, id) = SignIns::draw();
    let shared = &state.shared;
    state
        .services()
        .login
        .sso_signed_in(peer, who, &signed, &id, mfa);
    let now = shared.clock.now();
    let (signin, ended) = state.signins.insert_via(
        &token,
        &id,
        signed,
        Via::Sso,
        shared.validator.trust_domain(),
        now,
    );
    auth::audit_ended(state, &ended, peer);
    // The session exists only once its start is in the audit log.
    if let Err(e) = shared.audit.commit().await {
        state.signins.remove(&token);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        ));
    }
    Ok((token, signin))
}

#[derive(Deserialize)]
struct TotpBody {
    code: String,
}

/// `POST /api/v1/sso/totp {"code"}` → whoami (with `then`) and the session cookie.
async fn totp(
    State(state): State<WebState>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(Extension(conn)) = conn else {
        return ApiError::unauthenticated().into_response();
    };
    if body.len() > MAX_TOTP_BODY {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request too large").into_response();
    }
    let Ok(req) = serde_json::from_slice::<TotpBody>(&body) else {
        return ApiError::bad_request(
            "send JSON {\"code\": \"123456\"}: the code from your Ward authenticator",
        )
        .into_response();
    };
    let now = state.shared.clock.now();
    let Some(key) = cookie(&headers, TOTP_COOKIE).map(digest) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no sign-in is waiting for a TOTP code in this browser: sign in with your identity provider first",
        )
        .into_response();
    };
    // Taken while the code is checked, so two requests cannot both use one waiting sign-in.
    let waiting = state.sso.totp.lock().ok().and_then(|mut m| m.remove(&key));
    let Some(mut waiting) = waiting.filter(|w| now - w.created < TOTP_TTL) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the sign-in waiting for a TOTP code expired (5 minutes): sign in with your identity provider again",
        )
        .into_response();
    };
    let login = state.services().login;
    match login
        .sso_totp(conn.peer, &waiting.who, &waiting.mapped.name, &req.code)
        .await
    {
        Ok(()) => {}
        Err(r) => {
            let _ = state.shared.audit.commit().await;
            waiting.tries += 1;
            let status = match r {
                Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            };
            let mut why = match r {
                Refusal::TotpReused => TOTP_REUSED.to_owned(),
                other => other.to_string(),
            };
            if waiting.tries < MAX_TOTP_TRIES {
                let _ = state.sso.hold_totp(key, waiting, now);
            } else {
                why.push_str(" (too many wrong codes: sign in with your identity provider again)");
            }
            return ApiError::new(status, why).into_response();
        }
    }
    let then = waiting.then.clone();
    match begin(&state, conn.peer, &waiting.who, waiting.mapped, "ward").await {
        Ok((token, signin)) => {
            let mut body = auth::signin_json(&state, &signin, &token, conn.peer);
            if let Some(o) = body.as_object_mut() {
                o.insert("then".into(), serde_json::Value::String(then));
            }
            let mut response = Json(body).into_response();
            set_session_cookie(&mut response, &token);
            clear_cookie(&mut response, TOTP_COOKIE);
            response
        }
        Err(e) => e.into_response(),
    }
}

impl WebState {
    /// The provider's metadata and keys (read at most every [`METADATA_TTL`]), or why not.
    async fn metadata(
        &self,
        provider: &OidcProvider,
        now: OffsetDateTime,
    ) -> Result<CoreProviderMetadata, String> {
        if let Ok(map) = self.sso.metadata.lock() {
            if let Some((m, at)) = map.get(&provider.name) {
                if now - *at < METADATA_TTL {
                    return Ok(m.clone());
                }
            }
        }
        let issuer = IssuerUrl::new(provider.issuer.clone())
            .map_err(|e| format!("issuer of [[oidc]] {}: {e}", provider.name))?;
        let http = IdpHttp::new(provider)?;
        let m = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| {
                format!(
                    "cannot read the identity provider's configuration at {}/.well-known/openid-configuration ({}): check [[oidc]] {} issuer and ca_file, and that the gateway can reach it",
                    provider.issuer,
                    clip(&error_chain(&e)),
                    provider.name
                )
            })?;
        if let Ok(mut map) = self.sso.metadata.lock() {
            map.insert(provider.name.clone(), (m.clone(), now));
        }
        Ok(m)
    }
}

/// The client secret from `client_secret_file`, trimmed.
async fn read_secret(provider: &OidcProvider) -> Result<String, String> {
    let text = tokio::fs::read_to_string(&provider.client_secret_file)
        .await
        .map_err(|e| {
            format!(
                "the gateway cannot read the client secret of identity provider {} ({}: {e}): tell an admin",
                provider.name,
                provider.client_secret_file.display()
            )
        })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!(
            "the client secret file of identity provider {} is empty: tell an admin",
            provider.name
        ));
    }
    Ok(secret.to_owned())
}

/// The userinfo endpoint's claims (JSON only).
async fn userinfo(
    http: &IdpHttp,
    url: &str,
    access_token: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let req = http::Request::get(url)
        .header(header::AUTHORIZATION, format!("Bearer {access_token}"))
        .header(header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let resp = http.send(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    match serde_json::from_slice(resp.body()) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err("not a JSON object (a signed userinfo is not read)".into()),
    }
}

/// The JSON object in a compact JWS's payload.
fn payload(jwt: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let part = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A hash route the page may go to after sign-in: `/` and path characters only.
fn safe_then(then: Option<&str>) -> String {
    match then {
        Some(t)
            if t.starts_with('/')
                && t.len() <= 200
                && t.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~')
                }) =>
        {
            t.to_owned()
        }
        _ => "/".into(),
    }
}

fn ca_kind(k: PrincipalKind) -> ward_ca::Kind {
    match k {
        PrincipalKind::Vendor => ward_ca::Kind::Vendor,
        PrincipalKind::Clinician => ward_ca::Kind::Clinician,
        PrincipalKind::Security => ward_ca::Kind::Security,
        PrincipalKind::Admin => ward_ca::Kind::Admin,
        PrincipalKind::Gateway => ward_ca::Kind::Gateway,
    }
}

/// An error and its sources, joined (the library's errors put the useful part in a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// Text from the IdP, bounded and without control characters.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

fn noise(state: &WebState, peer: SocketAddr, why: &str) {
    let shared = &state.shared;
    shared.audit_noise(
        peer,
        crate::audit::Event::new(
            crate::services::login::WEB_SIGNIN,
            "denied",
            shared.clock.now(),
        )
        .severity("warning")
        .source(peer)
        .detail("via", "sso")
        .reason(why.to_owned()),
    );
}

fn digest(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name`, if the request carries a well-formed one (43 URL-safe base64
/// characters, as drawn here).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| {
            v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn set_session_cookie(r: &mut Response, token: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}={token}; HttpOnly; Secure; SameSite=Strict; Path=/",
        auth::COOKIE
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn clear_cookie(r: &mut Response, name: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{name}=; HttpOnly; Secure; SameSite=Lax; Path=/api/v1/sso; Max-Age=0"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// A small page with `title` and `why` (escaped) and a link back to the sign-in page.
fn page(status: StatusCode, title: &str, why: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Ward — {t}</title>\
         <link rel=\"stylesheet\" href=\"/app.css\"></head><body><main class=\"card signin sso-result\">\
         <h1>{t}</h1><p id=\"sso-reason\">{w}</p><p><a href=\"/\">Back to the sign-in page</a></p>\
         </main></body></html>",
        t = html(title),
        w = html(why)
    );
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// Ward's HTTP client towards an IdP: HTTP/1.1 over TCP, TLS (tokio-rustls, the provider's
/// `ca_file` or the public web roots) or plain to a loopback host only; one connection per
/// request, a deadline, a bounded body, no redirects followed.
pub struct IdpHttp {
    tls: Arc<rustls::ClientConfig>,
}

/// Why a request to the IdP failed.
#[derive(Debug, thiserror::Error)]
pub enum IdpHttpError {
    /// The URL cannot be used.
    #[error("{0}")]
    Url(String),
    /// Connecting, TLS, or HTTP failed.
    #[error("{0}")]
    Io(String),
    /// No answer within the deadline.
    #[error("the identity provider did not answer within {0:?}")]
    Timeout(Duration),
}

impl IdpHttp {
    /// A client for `provider` (its `ca_file` read now).
    pub fn new(provider: &OidcProvider) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &provider.ca_file {
            Some(path) => {
                let text = std::fs::read(path).map_err(|e| {
                    format!(
                        "cannot read ca_file {} of [[oidc]] {}: {e}",
                        path.display(),
                        provider.name
                    )
                })?;
                let certs = pem::parse_many(&text).map_err(|e| {
                    format!(
                        "ca_file {} of [[oidc]] {} is not PEM: {e}",
                        path.display(),
                        provider.name
                    )
                })?;
                for c in certs.iter().filter(|c| c.tag() == "CERTIFICATE") {
                    roots
                        .add(rustls_pki_types::CertificateDer::from(
                            c.contents().to_vec(),
                        ))
                        .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("ca_file {} holds no certificate", path.display()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider_crypto = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider_crypto)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(IdpHttp { tls: Arc::new(tls) })
    }

    /// Sends `req` and reads the answer, within [`IDP_TIMEOUT`].
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, IdpHttpError> {
        tokio::time::timeout(IDP_TIMEOUT, self.exchange(req))
            .await
            .map_err(|_| IdpHttpError::Timeout(IDP_TIMEOUT))?
    }

    async fn exchange(&self, req: HttpRequest) -> Result<HttpResponse, IdpHttpError> {
        use http_body_util::BodyExt as _;
        let uri = req.uri().clone();
        let host = uri
            .host()
            .ok_or_else(|| IdpHttpError::Url(format!("{uri}: no host")))?;
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if ward_core::config::is_loopback(&bare) => false,
            _ => {
                return Err(IdpHttpError::Url(format!(
                    "{uri}: only https (or http to a loopback address) is used towards an identity provider"
                )))
            }
        };
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.to_owned());
        let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| IdpHttpError::Io(format!("connecting to {authority}: {e}")))?;
        let (mut parts, body) = req.into_parts();
        parts.uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|e| IdpHttpError::Url(format!("{e}")))?;
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, v);
        }
        parts
            .headers
            .insert(header::USER_AGENT, HeaderValue::from_static("ward-gateway"));
        let request =
            http::Request::from_parts(parts, http_body_util::Full::new(Bytes::from(body)));
        let response = if tls {
            let name = rustls_pki_types::ServerName::try_from(bare.clone())
                .map_err(|e| IdpHttpError::Url(format!("{bare}: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| IdpHttpError::Io(format!("TLS with {authority}: {e}")))?;
            round_trip(hyper_util::rt::TokioIo::new(stream), request).await?
        } else {
            round_trip(hyper_util::rt::TokioIo::new(tcp), request).await?
        };
        let (parts, mut body) = response.into_parts();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| IdpHttpError::Io(format!("reading the answer: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > MAX_IDP_BODY {
                    return Err(IdpHttpError::Io(format!(
                        "the identity provider's answer is larger than {MAX_IDP_BODY} bytes"
                    )));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(http::Response::from_parts(parts, out))
    }
}

async fn round_trip<T>(
    io: T,
    request: http::Request<http_body_util::Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, IdpHttpError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| IdpHttpError::Io(format!("HTTP: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| IdpHttpError::Io(format!("HTTP: {e}")))
}

impl<'c> AsyncHttpClient<'c> for IdpHttp {
    type Error = IdpHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, IdpHttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn then_routes_are_plain_paths() {
        assert_eq!(safe_then(Some("/my")), "/my");
        assert_eq!(safe_then(Some("/terminal/pump-1")), "/terminal/pump-1");
        for bad in [
            "my",
            "//evil.example",
            "/a?b",
            "/a#b",
            "/<x>",
            "/a b",
            "https://x",
        ] {
            let got = safe_then(Some(bad));
            assert!(
                got == "/" || (got.starts_with('/') && !got.contains(['?', '#', '<', ' ', ':'])),
                "{bad} -> {got}"
            );
        }
        assert_eq!(safe_then(None), "/");
    }

    #[test]
    fn payload_reads_the_middle_part() {
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"a","groups":["x"]}"#);
        let m = payload(&format!("e30.{p}.sig")).unwrap();
        assert_eq!(m["groups"][0], "x");
        assert!(payload("e30.bm90IGpzb24.sig").is_none());
        assert!(payload("nodots").is_none());
    }

    #[test]
    fn pages_escape_and_cookies_are_strict() {
        let r = page(StatusCode::FORBIDDEN, "T", "<script>alert(1)</script>");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            html("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
        let mut h = HeaderMap::new();
        let token = "a".repeat(43);
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; ward_sso={token}")).unwrap(),
        );
        assert_eq!(cookie(&h, FLOW_COOKIE), Some(token.as_str()));
        assert_eq!(cookie(&h, TOTP_COOKIE), None);
        h.insert(header::COOKIE, HeaderValue::from_static("ward_sso=short"));
        assert_eq!(cookie(&h, FLOW_COOKIE), None);
    }

    #[test]
    fn pending_sign_ins_are_single_use_bounded_and_expire() {
        let sso = Sso::default();
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let p = |created| Pending {
            provider: "h".into(),
            verifier: "v".into(),
            nonce: "n".into(),
            then: "/".into(),
            browser: [0; 32],
            created,
        };
        sso.hold("s1".into(), p(t0), t0).unwrap();
        assert!(sso.take("s1").is_some());
        assert!(sso.take("s1").is_none(), "single use");
        for i in 0..MAX_PENDING {
            sso.hold(format!("s{i}"), p(t0), t0).unwrap();
        }
        let e = sso.hold("over".into(), p(t0), t0).unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        // Ten minutes later the old ones are gone and there is room again.
        let later = t0 + PENDING_TTL;
        sso.hold("new".into(), p(later), later).unwrap();
        assert_eq!(sso.pending_len(), 1);
    }
}
