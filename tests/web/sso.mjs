// Sign-in with the hospital's OpenID provider, in Debian's chromium: the sign-in page's
// "Sign in with …" buttons, the IdP's own login form (tests/web/idp.mjs: oidc-provider on
// loopback), the callback, the mapped identity in whoami, and every refusal: a user no
// [[oidc.map]] rule matches, a user without MFA at the IdP, an unknown or replayed callback, a
// callback carried to another browser, ID tokens with a wrong nonce, audience, expiry or
// signature, and Ward's own TOTP step for a provider with mfa = "ward".
//
// Run by tests/tests/web_sso.rs, which starts the gateway and the IdP and sets:
//   WARD_WEB_URL, WARD_WEB_USERS ({walt: {user, password, totp}}), WARD_IDP_URL, WARD_IDP_PASSWORD

import {
  URL_BASE, USERS, launch, newPage, step, check, exitCode, log, shot, apiFetch, waitText, text,
  freshTotp, closeAsk, ask,
} from './lib.mjs';

const IDP = process.env.WARD_IDP_URL;
const IDP_PASSWORD = process.env.WARD_IDP_PASSWORD;
const T = 30_000;

// From the sign-in page, click "Sign in with <display>" and fill the IdP's form as `login`.
// Returns the page once the browser is back at the gateway (the callback answered).
async function viaIdp(page, provider, login, { then } = {}) {
  await page.goto(`${URL_BASE}/#/signin`, { waitUntil: 'domcontentloaded' });
  if (then) await page.evaluate((t) => sessionStorage.setItem('ward-next', t), then);
  if (then) await page.reload({ waitUntil: 'domcontentloaded' });
  const button = page.locator(`#sso-${provider}`);
  await button.waitFor({ state: 'visible', timeout: 10_000 });
  await button.click();
  await page.waitForURL((u) => u.href.startsWith(IDP), { timeout: 10_000 });
  await page.locator('#idp-login').fill(login);
  await page.locator('#idp-password').fill(IDP_PASSWORD);
  await Promise.all([
    page.waitForURL((u) => u.href.startsWith(URL_BASE), { timeout: 15_000 }),
    page.locator('#idp-submit').click(),
  ]);
  await page.waitForLoadState('domcontentloaded');
}

// The sign-in of `login` through `provider` driven by hand with the context's own cookies (an
// HTTP client that follows redirects itself and posts the IdP's form): returns the callback
// URL the IdP sends the browser to, without going there.
async function callbackByHand(context, provider, login) {
  const req = context.request;
  let url = `${URL_BASE}/api/v1/sso/${provider}/start?then=/`;
  for (let hop = 0; hop < 10; hop++) {
    const r = await req.get(url, { maxRedirects: 0 });
    if (r.status() === 200 && url.includes('/interaction/')) {
      const uid = new URL(url).pathname.split('/')[2];
      const posted = await req.post(`${IDP}/interaction/${uid}/login`, {
        form: { login, password: IDP_PASSWORD },
        maxRedirects: 0,
      });
      check(posted.status() === 303, `IdP login answered ${posted.status()}`);
      url = new URL(posted.headers().location, IDP).href;
      continue;
    }
    check([302, 303].includes(r.status()), `${url} answered ${r.status()}`);
    const next = new URL(r.headers().location, url).href;
    if (next.startsWith(`${URL_BASE}/api/v1/sso/callback`)) return next;
    url = next;
  }
  throw new Error('no callback within 10 redirects');
}

async function whoami(page) {
  const r = await apiFetch(page, 'GET', '/api/v1/whoami');
  return r;
}

// The refusal page's reason (the callback answered with a page of its own).
async function refusal(page) {
  await page.locator('#sso-reason').waitFor({ state: 'attached', timeout: 10_000 });
  return (await text(page, '#sso-reason')).trim();
}

async function tamper(context, what) {
  const r = await context.request.post(`${IDP}/test/tamper?what=${what}`);
  check(r.status() === 204, `the IdP's tamper knob answered ${r.status()}`);
}

const browser = await launch();
try {
  let replayUrl = null;

  await step('the sign-in page offers the configured providers', T, async () => {
    const { context, page } = await newPage(browser);
    await page.goto(`${URL_BASE}/#/signin`, { waitUntil: 'domcontentloaded' });
    await waitText(page, '#sso', "Sign in with St Mary's account", 10_000);
    await waitText(page, '#sso', 'Sign in with St Mary + Ward code', 10_000);
    const list = await apiFetch(page, 'GET', '/api/v1/sso');
    check(list.status === 200, `GET /api/v1/sso: ${list.status}`);
    const names = list.body.providers.map((p) => p.name).join(',');
    check(names === 'hospital,hospital-totp', `providers: ${names}`);
    check(list.body.totp === null, `no TOTP step is owed yet: ${JSON.stringify(list.body.totp)}`);
    // The password form is still there for Ward users.
    check(await page.locator('#signin-user').isVisible(), 'the password form is gone');
    await shot(page, 'sso-signin-page');
    await context.close();
  });

  await step('a nurse signs in through the IdP and gets the mapped identity', T, async () => {
    const { context, page } = await newPage(browser);
    page.on('request', (r) => {
      if (r.url().includes('/api/v1/sso/callback')) replayUrl = r.url();
    });
    // The authorization request carries PKCE S256, a state and a nonce.
    const authReq = page.waitForRequest((r) => r.url().startsWith(`${IDP}/auth`), { timeout: 10_000 });
    const done = viaIdp(page, 'hospital', 'nina', { then: '#/requests' });
    const auth = new URL((await authReq).url());
    for (const [k, want] of [['response_type', 'code'], ['code_challenge_method', 'S256'], ['client_id', 'ward']]) {
      check(auth.searchParams.get(k) === want, `authorization request ${k}=${auth.searchParams.get(k)}`);
    }
    for (const k of ['code_challenge', 'state', 'nonce']) {
      check((auth.searchParams.get(k) || '').length >= 22, `authorization request without a strong ${k}`);
    }
    check(auth.searchParams.get('scope').split(' ').includes('groups'), `scope ${auth.searchParams.get('scope')}`);
    await done;
    await page.waitForFunction(() => location.hash === '#/requests', null, { timeout: 10_000 });
    const me = await whoami(page);
    check(me.status === 200, `whoami after SSO: ${me.status} ${JSON.stringify(me.body)}`);
    const b = me.body;
    check(b.name === 'nina' && b.kind === 'clinician' && b.org === 'st-mary', `whoami ${JSON.stringify(b)}`);
    check(JSON.stringify(b.roles) === JSON.stringify(['icu', 'oncall']), `roles ${JSON.stringify(b.roles)}`);
    check(b.via === 'sso', `via ${b.via}`);
    check(/^sso-[0-9a-f]{12}$/.test(b.serial), `serial ${b.serial}`);
    check(replayUrl && new URL(replayUrl).searchParams.get('code'), `no callback seen: ${replayUrl}`);
    await page.locator('#whoami').filter({ hasText: 'nina' }).waitFor({ state: 'visible', timeout: 10_000 });
    await shot(page, 'sso-signed-in');
    // The session cookie is the console's usual one: HttpOnly, Secure, SameSite=Strict.
    const cookies = await context.cookies(URL_BASE);
    const session = cookies.find((c) => c.name === 'ward_session');
    check(session && session.httpOnly && session.secure && session.sameSite === 'Strict', `cookie ${JSON.stringify(session)}`);
    check(!cookies.find((c) => c.name === 'ward_sso' && c.value), 'the flow cookie is left behind');
    // A state-changing call needs the CSRF token as for any browser session.
    const out = await apiFetch(page, 'POST', '/api/v1/signout', { body: {} });
    check(out.status === 403, `sign-out without CSRF: ${out.status}`);
    const ok = await apiFetch(page, 'POST', '/api/v1/signout', { body: {}, csrf: b.csrf });
    check(ok.status === 204, `sign-out: ${ok.status}`);
    check((await whoami(page)).status === 401, 'still signed in after sign-out');

    // The same callback again (code and state already used): refused, and no session.
    await page.goto(replayUrl, { waitUntil: 'domcontentloaded' });
    const why = await refusal(page);
    check(why.includes('already used'), `replayed callback: ${why}`);
    check((await whoami(page)).status === 401, 'a replayed callback signed the browser in');
    await context.close();
  });

  await step('a vendor technician maps to vendor acme', T, async () => {
    const { context, page } = await newPage(browser);
    await viaIdp(page, 'hospital', 'tina');
    const me = await whoami(page);
    check(me.status === 200, `whoami: ${me.status}`);
    check(me.body.kind === 'vendor' && me.body.org === 'acme' && me.body.roles.join() === 'field', `whoami ${JSON.stringify(me.body)}`);
    await context.close();
  });

  await step('a user no [[oidc.map]] rule matches is refused with the reason', T, async () => {
    const { context, page } = await newPage(browser);
    await viaIdp(page, 'hospital', 'victor');
    const why = await refusal(page);
    check(why.includes('matches no [[oidc.map]] rule'), `refusal: ${why}`);
    check((await whoami(page)).status === 401, 'victor is signed in');
    await shot(page, 'sso-refused-no-rule');
    await context.close();
  });

  await step('a user without MFA at the IdP is refused', T, async () => {
    const { context, page } = await newPage(browser);
    await viaIdp(page, 'hospital', 'nora');
    const why = await refusal(page);
    check(why.includes('"mfa"') && why.includes('multi-factor'), `refusal: ${why}`);
    check((await whoami(page)).status === 401, 'nora is signed in');
    await context.close();
  });

  await step('an unknown state is refused', T, async () => {
    const { context, page } = await newPage(browser);
    await page.goto(`${URL_BASE}/api/v1/sso/callback?code=abc&state=made-up`, { waitUntil: 'domcontentloaded' });
    const why = await refusal(page);
    check(why.includes('unknown, already used or expired'), `refusal: ${why}`);
    check((await whoami(page)).status === 401, 'signed in by a made-up state');
    await context.close();
  });

  await step('a callback carried to another browser is refused (login CSRF)', T, async () => {
    // Browser A starts a sign-in and completes the IdP's form by hand (its own cookies), but
    // does not follow the IdP's last redirect: the callback URL is carried to browser B.
    const a = await newPage(browser);
    const carried = await callbackByHand(a.context, 'hospital', 'nina');
    const b = await newPage(browser);
    await b.page.goto(carried, { waitUntil: 'domcontentloaded' });
    const why = await refusal(b.page);
    check(why.includes('started in another browser'), `refusal: ${why}`);
    check((await whoami(b.page)).status === 401, 'the other browser got signed in');
    // That attempt used the state up: browser A cannot finish with it either.
    await a.page.goto(carried, { waitUntil: 'domcontentloaded' });
    const why2 = await refusal(a.page);
    check(why2.includes('already used'), `first browser after the attempt: ${why2}`);
    check((await whoami(a.page)).status === 401, 'browser A got signed in by a used state');
    await a.context.close();
    await b.context.close();
  });

  for (const [what, needle] of [['nonce', 'nonce'], ['aud', 'audience'], ['exp', 'expired'], ['sig', 'signature']]) {
    await step(`an ID token with a wrong ${what} is refused`, T, async () => {
      const { context, page } = await newPage(browser);
      await tamper(context, what);
      await viaIdp(page, 'hospital', 'nina');
      const why = await refusal(page);
      check(why.includes('the ID token was refused') && why.toLowerCase().includes(needle), `refusal: ${why}`);
      check((await whoami(page)).status === 401, `signed in with a wrong ${what}`);
      await context.close();
    });
  }

  await step('mfa = "ward" asks for Ward\'s TOTP code after the IdP', T * 3, async () => {
    const { context, page } = await newPage(browser);
    await viaIdp(page, 'hospital-totp', 'walt', { then: '#/requests' });
    await page.locator('#sso-totp').waitFor({ state: 'visible', timeout: 10_000 });
    check((await whoami(page)).status === 401, 'signed in before the TOTP code');
    await shot(page, 'sso-totp-step');
    await page.locator('#sso-totp').fill('000000');
    await page.locator('#sso-totp-submit').click();
    await waitText(page, '#sso-totp-error', 'wrong code', 10_000);
    await page.locator('#sso-totp').fill(await freshTotp(USERS.walt));
    await page.locator('#sso-totp-submit').click();
    await page.waitForFunction(() => location.hash === '#/requests', null, { timeout: 10_000 });
    const me = await whoami(page);
    check(me.status === 200 && me.body.name === 'walt' && me.body.via === 'sso' && me.body.kind === 'clinician', `whoami ${JSON.stringify(me.body)}`);
    const list = await apiFetch(page, 'GET', '/api/v1/sso');
    check(list.body.totp === null, 'the TOTP step is still owed after signing in');
    await context.close();
  });

  await step('ward login --sso (headless): approved after signing in through the IdP', T * 3, async () => {
    // The Rust side runs `ward login --sso --no-browser` and hands over the URL and code it printed.
    const cli = await ask('cli-login-start', {});
    const { context, page } = await newPage(browser);
    await page.goto(cli.url, { waitUntil: 'domcontentloaded' });
    // Not signed in: the sign-in page, with the IdP's button; back on the CLI's page afterwards.
    await page.waitForFunction(() => location.hash.startsWith('#/signin'), null, { timeout: 10_000 });
    const button = page.locator('#sso-hospital');
    await button.waitFor({ state: 'visible', timeout: 10_000 });
    await button.click();
    await page.waitForURL((u) => u.href.startsWith(IDP), { timeout: 10_000 });
    await page.locator('#idp-login').fill('tina');
    await page.locator('#idp-password').fill(IDP_PASSWORD);
    await Promise.all([
      page.waitForURL((u) => u.href.startsWith(URL_BASE), { timeout: 15_000 }),
      page.locator('#idp-submit').click(),
    ]);
    const hash = new URL(cli.url).hash;
    await page.waitForFunction((h) => location.hash === h, hash, { timeout: 10_000 });
    await waitText(page, '#cli-code', cli.code, 10_000);
    await shot(page, 'sso-cli-approve');
    await page.locator('#cli-approve').click();
    await waitText(page, '#cli-state', 'approved', 10_000);
    const done = await ask('cli-login-done', {}, 60_000);
    check(done.principal === 'vendor acme/tina', `certificate for ${done.principal}`);
    await context.close();
  });

  await step('the audit log has every outcome', T, async () => {
    await ask('audit-checked', {});
  });
} finally {
  closeAsk();
  await browser.close();
}
process.exit(exitCode());
