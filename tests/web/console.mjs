// The web console end to end in a real browser (issue 16, "Show"): sign in with password + TOTP,
// the overview, a search by text inside a recording, the player (play, seek, keystrokes), live
// watch within 1 s, approving a request, ending a live session and locking a principal (the CLI
// client sees why), a vendor gets 403, and nothing works after sign-out. Screenshots of each main
// page. Run by tests/tests/web_browser.rs, which holds the gateway, the devices and the CLI
// clients and answers this script's `ask`s (see lib.mjs).
//
// WARD_WEB_CASE: {status_session, needle, expect, console_device, request_id, other_request,
//                 lock_principal, vendor_cert, vendor_key}

import crypto from 'node:crypto';
import {
  URL_BASE, USERS, CASE, launch, newPage, signIn, go, shot, apiFetch, text, waitText, errorText,
  step, check, ask, closeAsk, exitCode, log, sleep,
} from './lib.mjs';

const nonce = crypto.randomBytes(4).toString('hex');
const sec = USERS.security;
const approver = USERS.approver;
const vendor = USERS.vendor;

const browser = await launch();
log(`chromium ${browser.version()} against ${URL_BASE}`);

let main; // the security user's context and page
let csrf;
let live1; // the session watched, then ended
let live2; // the session a lock ends

try {
  await step('sign-in page renders; sign in as security with password + TOTP', 40_000, async () => {
    main = await newPage(browser);
    const { page } = main;
    await page.goto(`${URL_BASE}/`, { waitUntil: 'domcontentloaded' });
    // Without a session the app shows the sign-in form.
    await page.waitForFunction(() => location.hash.startsWith('#/signin'), null, { timeout: 10_000 })
      .catch(async () => { throw new Error(`an unauthenticated visit did not land on #/signin (hash ${await page.evaluate(() => location.hash)})`); });
    await page.locator('#signin-user').waitFor({ state: 'visible' });
    check(await page.locator('#signin-totp').isVisible(), 'the sign-in form has no visible TOTP field (#signin-totp): MFA on every path');
    await shot(page, '01-signin');
    await signIn(page, sec);
    const who = await apiFetch(page, 'GET', '/api/v1/whoami');
    check(who.status === 200, `GET /api/v1/whoami after sign-in: ${who.status} ${JSON.stringify(who.body)}`);
    check(who.body.via === 'password', `whoami.via is ${JSON.stringify(who.body.via)}, expected "password"`);
    check(who.body.kind === 'security', `whoami.kind is ${JSON.stringify(who.body.kind)}, expected "security"`);
    check(typeof who.body.csrf === 'string' && who.body.csrf.length >= 16, `whoami.csrf is not a token: ${JSON.stringify(who.body.csrf)}`);
    csrf = who.body.csrf;
    const cookies = await main.context.cookies();
    const c = cookies.find((k) => k.name === 'ward_session');
    check(c, `no ward_session cookie after sign-in (cookies: ${cookies.map((k) => k.name).join(', ')})`);
    check(c.httpOnly, 'the ward_session cookie is not HttpOnly');
    check(c.secure, 'the ward_session cookie is not Secure');
    check(c.sameSite === 'Strict', `the ward_session cookie is SameSite=${c.sameSite}, expected Strict`);
  }, { fatal: true });

  await step('overview renders charts whose bars link to sessions', 30_000, async () => {
    const { page } = main;
    await go(page, '#/overview');
    await page.locator('#nav-overview').waitFor({ state: 'visible' });
    await page.waitForSelector('svg', { timeout: 10_000 }).catch(() => { throw new Error('the overview drew no <svg> chart'); });
    // Each bar links to the sessions behind it.
    const links = await page.evaluate(() => [...document.querySelectorAll('svg a')].map((a) => a.getAttribute('href') || a.getAttribute('xlink:href') || ''));
    check(links.some((h) => h.includes('#/sessions')), `no chart bar links to #/sessions (links in svg: ${JSON.stringify(links.slice(0, 10))})`);
    const err = await errorText(page);
    check(!err, `#error shows: ${err}`);
    await shot(page, '02-overview');
  });

  await step('find the session by text inside it (grep)', 30_000, async () => {
    const { page } = main;
    await go(page, '#/sessions');
    await page.locator('#search-grep').fill(CASE.needle);
    await page.locator('#search-submit').click();
    const row = page.locator(`#sessions-table tr[data-session-id="${CASE.status_session}"]`);
    await row.waitFor({ state: 'visible', timeout: 15_000 }).catch(async () => {
      throw new Error(`no row for session ${CASE.status_session} after searching ${JSON.stringify(CASE.needle)}; table: ${JSON.stringify((await text(page, '#sessions-table')).slice(0, 1000))}; #error: ${await errorText(page)}`);
    });
    const ids = await page.evaluate(() => [...document.querySelectorAll('#sessions-table tr[data-session-id]')].map((r) => r.dataset.sessionId));
    check(ids.length === 1, `the search for ${JSON.stringify(CASE.needle)} (only in ${CASE.status_session}) listed ${ids.length} sessions: ${ids.join(', ')}`);
    await shot(page, '03-sessions');
    await row.locator('a.session-link').click();
    await page.waitForFunction((id) => location.hash.startsWith(`#/session/${id}`), CASE.status_session, { timeout: 10_000 });
  });

  await step('sessions list pages through the index (per_page=2, next, previous)', 30_000, async () => {
    const { page } = main;
    const ids = () => page.evaluate(() => [...document.querySelectorAll('#sessions-table tr[data-session-id]')].map((r) => r.dataset.sessionId));
    await go(page, '#/sessions?per_page=2');
    await page.locator('#sessions-table tr[data-session-id]').first().waitFor({ state: 'visible' });
    const first = await ids();
    check(first.length === 2, `page 1 with per_page=2 lists ${first.length} sessions`);
    check(await page.locator('#pager-next').isEnabled(), '#pager-next is disabled with more sessions than one page');
    check(await page.locator('#pager-prev').isDisabled(), '#pager-prev is enabled on page 1');
    await page.locator('#pager-next').click();
    await page.waitForFunction((f) => {
      const now = [...document.querySelectorAll('#sessions-table tr[data-session-id]')].map((r) => r.dataset.sessionId);
      return now.length > 0 && !now.some((id) => f.includes(id));
    }, first, { timeout: 10_000 }).catch(async () => { throw new Error(`page 2 shows ${JSON.stringify(await ids())} after page 1 showed ${JSON.stringify(first)}`); });
    await page.locator('#pager-prev').click();
    await page.waitForFunction((f) => {
      const now = [...document.querySelectorAll('#sessions-table tr[data-session-id]')].map((r) => r.dataset.sessionId);
      return JSON.stringify(now) === JSON.stringify(f);
    }, first, { timeout: 10_000 }).catch(async () => { throw new Error(`back on page 1 it shows ${JSON.stringify(await ids())}, before ${JSON.stringify(first)}`); });
  });

  await step('session detail: metadata, verification, exports', 20_000, async () => {
    const { page } = main;
    if (!(await page.evaluate(() => location.hash)).startsWith(`#/session/${CASE.status_session}`)) {
      await go(page, `#/session/${CASE.status_session}`);
    }
    await waitText(page, 'body', CASE.console_device, 10_000);
    const hrefs = await page.evaluate(() => [...document.querySelectorAll('a[href]')].map((a) => a.getAttribute('href')));
    for (const fmt of ['asciicast', 'pcap']) {
      check(hrefs.some((h) => h.includes('/export') && h.includes(`format=${fmt}`)), `no download link for the ${fmt} export (links: ${JSON.stringify(hrefs.filter((h) => h.includes('export')))})`);
    }
    const exp = await apiFetch(page, 'GET', `/api/v1/sessions/${CASE.status_session}/export?format=asciicast`);
    check(exp.status === 200, `asciicast export: ${exp.status} ${JSON.stringify(exp.body).slice(0, 300)}`);
    check(JSON.stringify(exp.body).includes(CASE.expect), `the asciicast export does not contain ${JSON.stringify(CASE.expect)}`);
  });

  await step('player: play and read the expected text off #screen', 45_000, async () => {
    const { page } = main;
    await page.locator('#screen').waitFor({ state: 'attached' });
    await page.locator('#play').click();
    await waitText(page, '#screen', CASE.expect, 30_000);
    await shot(page, '04-player');
  });

  await step('player: seek back to 0 and the text is gone, seek to the end and it is back', 30_000, async () => {
    const { page } = main;
    if (await page.locator('#pause').isVisible()) await page.locator('#pause').click();
    await seek(page, '0');
    await waitText(page, '#screen', CASE.expect, 10_000, { absent: true });
    check(await page.locator('#time').count() === 1, 'the player has no #time');
    await seek(page, 'max');
    await waitText(page, '#screen', CASE.expect, 10_000);
    // The speed control offers a choice.
    const speeds = await page.locator('#speed option').count();
    check(speeds >= 2, `#speed offers ${speeds} options`);
  });

  await step('player: the keystrokes toggle shows what the vendor typed', 15_000, async () => {
    const { page } = main;
    await page.locator('#keys-toggle').click();
    await waitText(page, '#keys', 'status', 10_000);
  });

  await step('live watch: new output appears within 1 s', 60_000, async () => {
    const { page } = main;
    live1 = await ask('live-start', { device: CASE.console_device });
    await go(page, `#/watch/${live1.id}`);
    await waitText(page, '#watch-screen', 'pump>', 15_000);
    // Give the stream a moment to be established before measuring.
    await sleep(300);
    const marker = `live-${nonce}-one`;
    const wrote = await ask('live-write', { id: live1.id, text: marker });
    await waitText(page, '#watch-screen', marker, 5_000);
    const lag = Date.now() - wrote.written_ms;
    log(`  live watch lag: ${lag} ms`);
    check(lag <= 1000, `new output took ${lag} ms to show on #watch-screen (at most 1000)`);
    await shot(page, '05-watch');
  });

  await step('live now: end the watched session with a reason; the CLI client sees it', 40_000, async () => {
    check(live1, 'no live session (the watch step failed)');
    const { page } = main;
    await go(page, '#/live');
    const row = page.locator(`#live-table tr[data-session-id="${live1.id}"]`);
    await row.waitFor({ state: 'visible', timeout: 10_000 }).catch(async () => {
      throw new Error(`live session ${live1.id} is not in #live-table: ${JSON.stringify((await text(page, '#live-table')).slice(0, 800))}`);
    });
    await shot(page, '06-live');
    const reason = `browser test ends ${nonce}`;
    await row.locator('button.end-session').click();
    await page.locator('#end-reason').fill(reason);
    await page.locator('#end-confirm').click();
    await row.waitFor({ state: 'detached', timeout: 10_000 }).catch(() => { throw new Error(`session ${live1.id} is still listed 10 s after #end-confirm`); });
    await ask('live-ended', { id: live1.id, reason, by: sec.user }, 20_000);
  });

  await step('live now: lock a principal (reason required); its live session ends; then unlock', 60_000, async () => {
    const { page } = main;
    live2 = await ask('live-start', { device: CASE.console_device });
    await go(page, '#/live');
    const row = page.locator(`#live-table tr[data-session-id="${live2.id}"]`);
    await row.waitFor({ state: 'visible', timeout: 10_000 });
    const reason = `browser test locks ${nonce}`;
    await page.locator('#lock-kind').selectOption('principal');
    await page.locator('#lock-value').fill(CASE.lock_principal);
    await page.locator('#lock-reason').fill(reason);
    await page.locator('#lock-submit').click();
    await row.waitFor({ state: 'detached', timeout: 10_000 }).catch(() => { throw new Error(`session ${live2.id} of ${CASE.lock_principal} is still listed 10 s after the lock`); });
    await ask('live-ended', { id: live2.id, reason }, 20_000);
    await ask('locked', { principal: CASE.lock_principal, reason }, 30_000);
    await go(page, '#/devices');
    await page.locator('#devices-table').waitFor({ state: 'visible' });
    await waitText(page, '#devices-table', CASE.console_device, 10_000);
    await waitText(page, '#locks-table', reason, 10_000);
    await shot(page, '07-devices');
    const lockRow = page.locator('#locks-table tr', { hasText: reason });
    page.once('dialog', (d) => d.accept().catch(() => {}));
    await lockRow.locator('button.unlock').click();
    await lockRow.waitFor({ state: 'detached', timeout: 10_000 }).catch(() => { throw new Error('the lock is still listed 10 s after unlock'); });
    await ask('unlocked', { principal: CASE.lock_principal }, 30_000);
  });

  await step('audit log lists the console\'s own events and the chain status', 20_000, async () => {
    const { page } = main;
    await go(page, '#/audit');
    await waitText(page, 'body', 'web_signin', 10_000);
    await waitText(page, 'body', 'session_watched', 10_000);
    const audit = await apiFetch(page, 'GET', '/api/v1/audit?event=session_watched');
    check(audit.status === 200, `GET /api/v1/audit: ${audit.status}`);
    check(audit.body.chain && audit.body.chain.ok === true, `the audit chain is not shown as ok: ${JSON.stringify(audit.body.chain)}`);
    check(audit.body.events.some((e) => e.session_id === live1.id), `no session_watched event for ${live1 && live1.id}`);
    await shot(page, '08-audit');
  });

  await step('approve a pending request as an approver', 45_000, async () => {
    const ap = await newPage(browser);
    try {
      const { page } = ap;
      await signIn(page, approver);
      await go(page, '#/requests');
      const row = page.locator(`#requests-table tr[data-request-id="${CASE.request_id}"]`);
      await row.waitFor({ state: 'visible', timeout: 10_000 }).catch(async () => {
        throw new Error(`request ${CASE.request_id} is not in #requests-table: ${JSON.stringify((await text(page, '#requests-table')).slice(0, 800))}`);
      });
      await shot(page, '09-requests');
      await row.locator('input.reason').fill(`approved in the browser ${nonce}`);
      await row.locator('button.approve').click();
      await page.waitForFunction(async (id) => {
        const r = await fetch('/api/v1/requests?all=true', { credentials: 'same-origin' });
        if (!r.ok) return false;
        const j = await r.json();
        const it = j.requests.find((x) => x.id === id);
        return !!it && it.state_now === 'approved';
      }, CASE.request_id, { timeout: 10_000, polling: 250 }).catch(() => { throw new Error(`request ${CASE.request_id} is not approved 10 s after button.approve`); });
      await ask('approved', { request: CASE.request_id, by: approver.user }, 30_000);
    } finally {
      await ap.context.close();
    }
  });

  await step('a vendor identity gets 403 (client certificate and password sign-in)', 60_000, async () => {
    // A client certificate from Ward's CA, kind vendor.
    const certCtx = await newPage(browser, {
      clientCertificates: [{ origin: URL_BASE, certPath: CASE.vendor_cert, keyPath: CASE.vendor_key }],
    });
    try {
      const { page } = certCtx;
      const who = await page.goto(`${URL_BASE}/api/v1/whoami`);
      // The requester cannot approve its own request (nor is a vendor an approver).
      const whoCsrf = (await who.json()).csrf;
      const self = await apiFetch(page, 'POST', `/api/v1/requests/${CASE.other_request}/approve`, { body: { reason: 'my own' }, csrf: whoCsrf });
      check(self.status === 403, `the requester approving its own request ${CASE.other_request} with its certificate: ${self.status} (expected 403) ${JSON.stringify(self.body).slice(0, 200)}`);
      check(who.status() === 200, `whoami with the vendor's certificate: ${who.status()} ${await who.text()}`);
      const wj = await who.json();
      check(wj.via === 'certificate' && wj.kind === 'vendor', `whoami with the vendor's certificate: ${JSON.stringify(wj)}`);
      for (const p of ['/api/v1/sessions', '/api/v1/live', '/api/v1/audit', '/api/v1/overview', `/api/v1/sessions/${CASE.status_session}`]) {
        const r = await page.goto(`${URL_BASE}${p}`);
        check(r.status() === 403, `GET ${p} with the vendor's certificate: ${r.status()} (expected 403) ${(await r.text()).slice(0, 200)}`);
      }
    } finally {
      await certCtx.context.close();
    }
    // A vendor user with password + TOTP.
    const pw = await newPage(browser);
    try {
      const { page } = pw;
      await signIn(page, vendor);
      for (const p of ['/api/v1/sessions', '/api/v1/live', '/api/v1/audit', `/api/v1/live/${CASE.status_session}/watch`]) {
        const r = await apiFetch(page, 'GET', p, { statusOnly: true });
        check(r.status === 403, `GET ${p} as vendor ${vendor.user}: ${r.status} (expected 403) ${JSON.stringify(r.body).slice(0, 200)}`);
      }
      const who = await apiFetch(page, 'GET', '/api/v1/whoami');
      const appr = await apiFetch(page, 'POST', `/api/v1/requests/${CASE.other_request}/approve`, { body: { reason: 'not mine to approve' }, csrf: who.body.csrf });
      check(appr.status === 403, `vendor ${vendor.user} approving ${CASE.other_request}: ${appr.status} (expected 403)`);
      const end = await apiFetch(page, 'POST', `/api/v1/locks`, { body: { target: { kind: 'org', value: 'acme' }, reason: 'vendor tries' }, csrf: who.body.csrf });
      check(end.status === 403, `POST /api/v1/locks as vendor: ${end.status} (expected 403)`);
      await go(page, '#/sessions');
      await page.waitForFunction(() => {
        const el = document.querySelector('#error');
        return el && el.textContent.trim().length > 0;
      }, null, { timeout: 10_000 }).catch(() => { throw new Error('the sessions page shows no #error to a vendor'); });
      await shot(page, '10-vendor-forbidden');
    } finally {
      await pw.context.close();
    }
  });

  await step('sign out: no page or API call works afterwards', 30_000, async () => {
    const { page, context } = main;
    const before = (await context.cookies()).filter((c) => c.name === 'ward_session');
    check(before.length === 1, 'no session cookie before sign-out');
    await page.locator('#signout').click();
    await page.waitForFunction(() => location.hash.startsWith('#/signin'), null, { timeout: 10_000 })
      .catch(() => { throw new Error('sign-out did not return to #/signin'); });
    for (const p of ['/api/v1/whoami', '/api/v1/sessions', '/api/v1/live', '/api/v1/audit']) {
      const r = await apiFetch(page, 'GET', p);
      check(r.status === 401, `GET ${p} after sign-out: ${r.status} (expected 401)`);
    }
    const post = await apiFetch(page, 'POST', '/api/v1/locks', { body: { target: { kind: 'org', value: 'acme' }, reason: 'after sign-out' }, csrf });
    check(post.status === 401 || post.status === 403, `POST /api/v1/locks after sign-out with the old CSRF token: ${post.status}`);
    for (const h of ['#/sessions', '#/live', `#/session/${CASE.status_session}`]) {
      await go(page, h);
      await page.waitForFunction(() => location.hash.startsWith('#/signin'), null, { timeout: 10_000 })
        .catch(async () => { throw new Error(`${h} after sign-out did not go back to #/signin (hash ${await page.evaluate(() => location.hash)})`); });
    }
    await page.locator('#signin-user').waitFor({ state: 'visible' });
    // The old cookie is dead on the server, not only deleted in this browser.
    const replay = await newPage(browser);
    try {
      await replay.context.addCookies(before);
      const r = await replay.page.goto(`${URL_BASE}/api/v1/sessions`);
      check(r.status() === 401, `the signed-out session cookie replayed: ${r.status()} (expected 401)`);
    } finally {
      await replay.context.close();
    }
    check(main.page.events.pageErrors.length === 0, `page errors during the run: ${main.page.events.pageErrors.join(' | ')}`);
  });
} catch (e) {
  log(String(e));
} finally {
  if (main && main.page.events.consoleErrors.length) {
    log(`  (browser console errors, for information: ${[...new Set(main.page.events.consoleErrors)].slice(0, 10).join(' | ')})`);
  }
  await browser.close().catch(() => {});
  closeAsk();
}
process.exit(exitCode());

/** Seek the player: `to` is '0' or 'max'. */
async function seek(page, to) {
  await page.locator('#seek').evaluate((el, to) => {
    el.value = to === 'max' ? el.max : to;
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
  }, to);
}
