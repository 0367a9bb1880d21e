// A real OpenID provider on loopback for Ward's SSO tests: the certified `oidc-provider` package
// (npm), over HTTPS with a certificate the Rust test made, with Ward's static clients, a few
// accounts with claims (groups, amr with and without "mfa"), and a plain login form of its own
// that a browser (or a test) fills in. Consent is given for Ward's first-party clients.
//
// Environment (set by tests/tests/web_sso.rs):
//   IDP_PORT             the port on 127.0.0.1
//   IDP_TLS_CERT/KEY     PEM files of the server certificate (for 127.0.0.1)
//   IDP_CLIENTS          JSON [{client_id, client_secret, redirect_uri}]
//
// Test knobs (HTTPS, loopback only): POST /test/tamper?what=nonce|aud|exp|sig makes the next ID
// token the token endpoint returns carry a wrong nonce, a wrong audience, an expiry in the past,
// or a broken signature — re-signed with the provider's own key where that applies, so only the
// named check can refuse it.
//
// Prints "idp listening on https://127.0.0.1:PORT" once it serves.

import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

const port = Number(process.env.IDP_PORT);
const issuer = `https://127.0.0.1:${port}`;
const clients = JSON.parse(process.env.IDP_CLIENTS);
const PASSWORD = 'correct horse battery staple';

// Accounts: login name → claims and how the login counts (amr, acr).
const ACCOUNTS = {
  nina: { claims: { preferred_username: 'nina', name: 'Nina Nurse', email: 'nina@st-mary.example', groups: ['icu-nurses', 'oncall'] }, amr: ['pwd', 'mfa'], acr: 'urn:st-mary:loa:2' },
  tina: { claims: { preferred_username: 'tina', name: 'Tina Tech', groups: ['acme-field'] }, amr: ['pwd', 'otp', 'mfa'], acr: 'urn:st-mary:loa:2' },
  victor: { claims: { preferred_username: 'victor', name: 'Victor Visitor', groups: ['visitors'] }, amr: ['pwd', 'mfa'], acr: 'urn:st-mary:loa:2' },
  nora: { claims: { preferred_username: 'nora', name: 'Nora No-MFA', groups: ['icu-nurses'] }, amr: ['pwd'], acr: 'urn:st-mary:loa:1' },
  walt: { claims: { preferred_username: 'walt', name: 'Walt Ward-TOTP', groups: ['icu-nurses'] }, amr: ['pwd'], acr: 'urn:st-mary:loa:1' },
};

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'idp-test-1', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients: clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: [c.redirect_uri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  jwks: { keys: [jwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  // How the user signed in (amr, acr) rides with the openid scope, so every ID token has it.
  claims: {
    sid: null,
    iss: null,
    openid: ['sub', 'amr', 'acr', 'auth_time'],
    profile: ['preferred_username', 'name'],
    email: ['email'],
    groups: ['groups'],
  },
  scopes: ['openid', 'profile', 'email', 'groups'],
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, id) => {
    const a = ACCOUNTS[id];
    if (!a) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...a.claims }) };
  },
  // Ward is a first-party client: consent is implied for the scopes it asks for.
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const g = await ctx.oidc.provider.Grant.find(grantId);
      if (g) return g;
    }
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile email groups');
    await grant.save();
    return grant;
  },
  ttl: { Session: 60, Interaction: 600, Grant: 600, AccessToken: 600, AuthorizationCode: 60, IdToken: 600 },
  renderError: async (ctx, out) => {
    ctx.type = 'text/plain';
    ctx.body = `idp error: ${out.error}: ${out.error_description || ''}`;
  },
});
provider.proxy = false;

// ---- test knob: tamper with the next ID token ----
let tamper = null;
const b64u = (buf) => Buffer.from(buf).toString('base64url');
function resign(idToken, what) {
  const [h, p] = idToken.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const claims = JSON.parse(Buffer.from(p, 'base64url'));
  if (what === 'nonce') claims.nonce = 'not-the-nonce-ward-sent';
  if (what === 'aud') claims.aud = 'some-other-client';
  if (what === 'exp') { claims.iat -= 7200; claims.exp = Math.floor(Date.now() / 1000) - 3600; }
  const input = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(claims))}`;
  let sig = crypto.sign('sha256', Buffer.from(input), privateKey);
  if (what === 'sig') sig = Buffer.from(sig.map((b, i) => (i === 7 ? b ^ 0x55 : b)));
  return `${input}.${b64u(sig)}`;
}
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/token' && tamper && ctx.body && typeof ctx.body === 'object' && ctx.body.id_token) {
    log(`tampering with the ID token: ${tamper}`);
    ctx.body = { ...ctx.body, id_token: resign(ctx.body.id_token, tamper) };
    tamper = null;
  }
});

function log(...a) { console.log('[idp]', ...a); }

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
function loginPage(uid, client, error) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>St Mary's sign-in</title></head><body>
<h1>St Mary's Hospital — sign in</h1><p>to continue to <b id="idp-client">${esc(client)}</b></p>
${error ? `<p id="idp-error" style="color:#b00">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label>User <input id="idp-login" name="login" required></label>
<label>Password <input id="idp-password" name="password" type="password" required></label>
<button id="idp-submit" type="submit">Sign in</button></form></body></html>`;
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 10_000) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

async function interactions(req, res) {
  const url = new URL(req.url, issuer);
  const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!m) return false;
  try {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== m[1]) throw new Error('interaction mismatch');
    if (req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(loginPage(details.uid, details.params.client_id));
      return true;
    }
    if (req.method === 'POST' && m[2]) {
      const form = await readForm(req);
      const login = form.get('login') || '';
      const account = ACCOUNTS[login];
      if (!account || form.get('password') !== PASSWORD) {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end(loginPage(details.uid, details.params.client_id, 'Wrong user or password.'));
        return true;
      }
      log(`login ${login} amr=${account.amr.join(',')}`);
      await provider.interactionFinished(req, res, {
        login: { accountId: login, amr: account.amr, acr: account.acr, remember: false },
      }, { mergeWithLastSubmission: false });
      return true;
    }
  } catch (e) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    res.end(`interaction failed: ${e.message}`);
    return true;
  }
  return false;
}

const callback = provider.callback();
const server = https.createServer({
  cert: fs.readFileSync(process.env.IDP_TLS_CERT),
  key: fs.readFileSync(process.env.IDP_TLS_KEY),
}, async (req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname === '/test/tamper' && req.method === 'POST') {
    tamper = url.searchParams.get('what');
    log(`next ID token: ${tamper}`);
    res.writeHead(204);
    res.end();
    return;
  }
  if (await interactions(req, res)) return;
  callback(req, res);
});
server.listen(port, '127.0.0.1', () => log(`idp listening on ${issuer}`));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => { server.close(); process.exit(0); });
