// A device's HTTP console in a real browser (issue 17): a clinician signs in on the console's
// origin, opens the monitor's console on the consoles' origin (`[web] consoles_listen`), and the
// monitor's pages (nginx behind auth_basic, its password in Ward's vault) render and navigate —
// an absolute link, a redirect, a link back home — without ever leaving /d/<device>/ and
// without a password prompt; the monitor's form is refused by the operation rule; the device's
// page cannot read the console's API; a clinician without a rule sees Ward's denial page. Screenshots of each step. Run by
// tests/tests/web_consoles.rs (the gateway, nginx and the vault are set up there).
//
// WARD_CONSOLES_URL: https://127.0.0.1:PORT of the consoles' origin.
// The device is opened the way a user does: "Open console" on the console's My devices (#/my).
// WARD_WEB_USERS: {clinician, no_rule}
// WARD_WEB_CASE: {device, marker, marker2, device_origin, denial}

import {
  URL_BASE, USERS, CASE, launch, newPage, shot, step, check, log, closeAsk, exitCode, freshTotp,
} from './lib.mjs';

const CONSOLES = (process.env.WARD_CONSOLES_URL || '').replace(/\/$/, '');
if (!CONSOLES) {
  console.error('WARD_CONSOLES_URL is not set: run this through tests/tests/web_consoles.rs');
  process.exit(2);
}
const user = USERS.clinician;
const device = CASE.device;
const root = `${CONSOLES}/d/${device}/`;

const browser = await launch();
log(`chromium ${browser.version()}: console ${URL_BASE}, consoles ${CONSOLES}`);

let ctx;
const statuses = []; // [url, status] of every answer from the consoles' origin

try {
  await step('sign in on the console origin with password + TOTP', 40_000, async () => {
    ctx = await newPage(browser);
    const { page, context } = ctx;
    page.on('response', (r) => {
      if (r.url().startsWith(CONSOLES)) statuses.push([r.url(), r.status()]);
    });
    await page.goto(`${URL_BASE}/#/signin`, { waitUntil: 'domcontentloaded' });
    await page.locator('#signin-user').fill(user.user);
    await page.locator('#signin-password').fill(user.password);
    await page.locator('#signin-totp').fill(await freshTotp(user));
    await page.locator('#signin-submit').click();
    // The console's pages for a clinician belong to another part of issue 17; what matters here
    // is the browser session (its cookie) that the consoles' origin shares.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const cookies = await context.cookies(URL_BASE);
      if (cookies.some((c) => c.name === 'ward_session')) break;
      if (Date.now() > deadline) {
        const err = await page.locator('#signin-error').textContent().catch(() => null);
        throw new Error(`no ward_session cookie after signing in as ${user.user} (#signin-error: ${JSON.stringify(err)})`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }, { fatal: true });

  await step("open the monitor's console on the consoles origin: the page renders", 30_000, async () => {
    const { page, context } = ctx;
    // The console's "My devices" links the device to its console on the consoles' origin.
    await page.goto(`${URL_BASE}/#/my`, { waitUntil: 'domcontentloaded' });
    const link = page.locator(`#open-${device}`);
    await link.waitFor({ state: 'visible', timeout: 10_000 }).catch(async () => {
      throw new Error(`My devices (#/my) shows no #open-${device}; the page shows: ${JSON.stringify((await page.textContent('body').catch(() => '')).slice(0, 500))}`);
    });
    await shot(page, 'consoles-00-my-devices');
    const href = await link.getAttribute('href');
    check(href === root, `My devices links ${device} to ${href}, expected ${root}`);
    const popup = context.waitForEvent('page', { timeout: 5_000 }).catch(() => null);
    await link.click();
    const other = await popup;
    if (other) {
      ctx.page = other;
      other.on('response', (r) => {
        if (r.url().startsWith(CONSOLES)) statuses.push([r.url(), r.status()]);
      });
      other.events = { dialogs: [] };
      other.on('dialog', async (d) => {
        other.events.dialogs.push(`${d.type()}: ${d.message()}`);
        await d.dismiss().catch(() => {});
      });
    }
    await ctx.page.waitForURL(`${root}**`, { timeout: 10_000 });
    log(`  opened through My devices' link ${href}`);
    const p = ctx.page;
    await p.locator('#marker').waitFor({ state: 'visible', timeout: 10_000 }).catch(async () => {
      throw new Error(`the monitor's page did not render; the page shows: ${JSON.stringify((await p.textContent('body').catch(() => '')).slice(0, 500))}`);
    });
    check((await p.textContent('#marker')) === CASE.marker, 'the marker of the monitor\'s home page is missing');
    check(new URL(p.url()).origin === CONSOLES, `the page is at ${p.url()}, not on the consoles' origin`);
    // The style sheet came (its link was absolute) and its own root-relative URL was put under
    // the prefix too.
    const bg = await p.evaluate(() => getComputedStyle(document.body).backgroundImage);
    check(bg.includes(`/d/${device}/bg.png`), `the style sheet's url() is ${bg}`);
    const hrefs = await p.evaluate(() => [...document.querySelectorAll('a, link, form')].map((e) => e.getAttribute('href') || e.getAttribute('action')));
    check(hrefs.every((h) => h.startsWith(`/d/${device}/`)), `links outside /d/${device}/: ${JSON.stringify(hrefs)}`);
    check(!(await p.content()).includes(CASE.device_origin), `the page still names the monitor's own address ${CASE.device_origin}`);
    await shot(p, 'consoles-01-home');
  }, { fatal: true });

  await step('an absolute link stays under /d/<device>/', 20_000, async () => {
    const p = ctx.page;
    await p.locator('#abs').click();
    await p.waitForURL(`${root}page2.html`, { timeout: 10_000 });
    await p.locator('#marker').filter({ hasText: CASE.marker2 }).waitFor({ timeout: 10_000 });
    await shot(p, 'consoles-02-absolute-link');
    await p.locator('#home').click();
    await p.waitForURL(root, { timeout: 10_000 });
    await p.locator('#marker').filter({ hasText: CASE.marker }).waitFor({ timeout: 10_000 });
  });

  await step('the redirect stays under /d/<device>/, its cookie too', 20_000, async () => {
    const p = ctx.page;
    await p.locator('#redir').click();
    await p.waitForURL(`${root}page2.html`, { timeout: 10_000 });
    await p.locator('#marker').filter({ hasText: CASE.marker2 }).waitFor({ timeout: 10_000 });
    const cookies = await p.context().cookies(root);
    const sid = cookies.find((c) => c.name === 'monitor_sid');
    check(sid, `the monitor's cookie was not set (cookies: ${cookies.map((c) => `${c.name}@${c.path}`).join(', ')})`);
    check(sid.path === `/d/${device}/`, `the monitor's cookie has path ${sid.path}`);
    check(sid.secure, "the monitor's cookie is not Secure");
    await shot(p, 'consoles-03-redirect');
  });

  await step("the monitor's page cannot read the console's API", 20_000, async () => {
    const p = ctx.page;
    const got = await p.evaluate(async (web) => {
      const out = {};
      try {
        const r = await fetch(`${web}/api/v1/whoami`, { credentials: 'include' });
        out.console = `read ${r.status}: ${(await r.text()).slice(0, 100)}`;
      } catch (e) {
        out.console = 'blocked';
      }
      const r = await fetch('/api/v1/whoami');
      out.here = r.status;
      return out;
    }, URL_BASE);
    check(got.console === 'blocked', `a device's page read the console's whoami: ${got.console}`);
    check(got.here === 404, `the consoles' origin answered /api/v1/whoami with ${got.here}`);
  });

  await step("the monitor's form is refused by the operation rule", 20_000, async () => {
    const p = ctx.page;
    await p.goto(root, { waitUntil: 'domcontentloaded' });
    const [response] = await Promise.all([
      p.waitForResponse((r) => r.url() === `${root}save`, { timeout: 10_000 }),
      p.locator('#save-button').click(),
    ]);
    check(response.status() === 403, `POST save answered ${response.status()}`);
    const body = await response.text();
    check(body.includes('Ward refused POST /save'), `the refusal does not say why: ${body}`);
    await shot(p, 'consoles-04-refused-form');
  });

  await step('no password prompt, no 401, no dialog', 5_000, async () => {
    const bad = statuses.filter(([, s]) => s === 401);
    check(bad.length === 0, `401 answers: ${JSON.stringify(bad)}`);
    check(statuses.length >= 5, `only ${statuses.length} answers from the consoles' origin were seen`);
    check(ctx.page.events === undefined || ctx.page.events.dialogs.length === 0, `dialogs: ${JSON.stringify(ctx.page.events && ctx.page.events.dialogs)}`);
  });

  await step('a clinician without a rule sees the denial page', 40_000, async () => {
    const other = await newPage(browser);
    const { page, context } = other;
    const u = USERS.no_rule;
    await page.goto(`${URL_BASE}/#/signin`, { waitUntil: 'domcontentloaded' });
    await page.locator('#signin-user').fill(u.user);
    await page.locator('#signin-password').fill(u.password);
    await page.locator('#signin-totp').fill(await freshTotp(u));
    await page.locator('#signin-submit').click();
    const deadline = Date.now() + 10_000;
    while (!(await context.cookies(URL_BASE)).some((c) => c.name === 'ward_session')) {
      check(Date.now() < deadline, `no ward_session cookie after signing in as ${u.user}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const response = await page.goto(root, { waitUntil: 'domcontentloaded' });
    check(response.status() === 403, `${u.user} got ${response.status()} for ${root}`);
    const title = await page.textContent('#ward-title');
    check(title.includes(`Ward refused access to ${device}`), `the page's title is ${JSON.stringify(title)}`);
    const reason = await page.textContent('#ward-reason');
    check(reason.includes(CASE.denial), `the page's reason is ${JSON.stringify(reason)}, expected ${JSON.stringify(CASE.denial)}`);
    const back = await page.getAttribute('#ward-console', 'href');
    check(back === `${URL_BASE}/`, `the way back links ${back}`);
    await shot(page, 'consoles-05-denied');
    await context.close();
  });
} catch (e) {
  log(`stopped: ${e && e.message ? e.message : e}`);
} finally {
  await browser.close().catch(() => {});
  closeAsk();
}
process.exit(exitCode());
