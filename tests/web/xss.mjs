// Hostile input stays inert (issue 16 item 5): a device printed markup, javascript: links, OSC 8
// hyperlinks, OSC 52, OSC titles, DCS, invalid UTF-8 and a very long line; a lock and an access
// request carry markup in their reasons; the search route carries markup in its query. The
// player, live watch and every list must show all of it as text: no dialog, no script run
// (window.__pwned stays undefined), no Content-Security-Policy violation, no page error, no
// element of the injected kinds, nothing drawn outside the terminal's frame.
// Run by tests/tests/web_browser.rs.
//
// WARD_WEB_CASE: {hostile_session, hostile_live, hostile_device, visible: [texts],
//                 hostile_reason, hostile_request}

import {
  URL_BASE, USERS, CASE, launch, newPage, signIn, go, shot, apiFetch, text, waitText,
  step, check, ask, closeAsk, exitCode, log,
} from './lib.mjs';

const browser = await launch();
log(`chromium ${browser.version()} against ${URL_BASE}`);

/** Everything that would show an injection, checked after each page. */
async function assertInert(page, where) {
  const found = await page.evaluate(() => {
    const bad = [];
    const snip = (el) => el.outerHTML.slice(0, 160);
    // A URL of this page's origin (null when it does not parse: never the app's own).
    const own = (u) => {
      try {
        const url = new URL(u, location.href);
        return url.origin === location.origin && location.origin !== 'null' ? url : null;
      } catch {
        return null;
      }
    };
    if (window.__pwned !== undefined) bad.push(`window.__pwned = ${String(window.__pwned)}`);
    for (const s of document.querySelectorAll('script')) {
      const src = s.getAttribute('src');
      if (!src) bad.push(`inline <script>: ${snip(s)}`);
      else if (!own(src) || !/^\/app\.js$/.test(own(src).pathname)) bad.push(`<script> not the app's own: ${snip(s)}`);
    }
    for (const el of document.querySelectorAll('*')) {
      for (const a of el.attributes) {
        const name = a.name.toLowerCase();
        if (name.startsWith('on')) bad.push(`event-handler attribute ${name}: ${snip(el)}`);
        if (['href', 'src', 'xlink:href', 'action', 'formaction', 'data'].includes(name) && /^\s*(javascript|vbscript|data:text\/html)/i.test(a.value)) {
          bad.push(`${name}=${a.value.slice(0, 60)}: ${snip(el)}`);
        }
      }
    }
    for (const el of document.querySelectorAll('img, iframe, frame, object, embed, base, form[action], meta[http-equiv], link[rel=import]')) {
      // The app draws with text and SVG; an <img> may only be its own (same origin, not "x").
      if (el.tagName === 'IMG') {
        const src = el.getAttribute('src') || '';
        const u = own(src);
        if (u && !/\/x$/.test(u.pathname) && src !== 'x') continue;
      }
      if (el.tagName === 'META' && el.closest('head') && el.getAttribute('http-equiv').toLowerCase() !== 'refresh') continue;
      bad.push(`<${el.tagName.toLowerCase()}>: ${snip(el)}`);
    }
    if (/pwned|<img|<script/i.test(document.title)) bad.push(`document.title was set by the device: ${document.title}`);
    return bad;
  });
  const { dialogs, pageErrors, csp } = page.events;
  const problems = [
    ...found,
    ...dialogs.map((d) => `dialog: ${d}`),
    ...pageErrors.map((e) => `page error: ${e}`),
    ...csp.map((v) => `CSP violation: ${v}`),
  ];
  check(problems.length === 0, `${where}: hostile input was not inert:\n  ${problems.join('\n  ')}`);
  // Nothing drawn outside the frame: the page does not grow sideways with the 20,000-character line.
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 2 * 1280, `${where}: the page is ${width} px wide (viewport 1280): something is drawn outside its frame`);
}

/** The hostile texts, each visible as text in `selector`. */
async function assertVisibleText(page, selector, where) {
  const shown = await text(page, selector);
  const missing = CASE.visible.filter((t) => !shown.includes(t));
  check(missing.length === 0, `${where}: ${selector} does not show these as text: ${JSON.stringify(missing)}; it shows ${JSON.stringify(shown.slice(0, 1500))}`);
}

let ctx;
try {
  await step('self-test: these checks catch an injection when there is one', 20_000, async () => {
    const probe = await newPage(browser);
    try {
      await probe.page.setContent('<div><img src=x onerror="window.__pwned=1"><a href="javascript:void 0">x</a><script>window.__pwned=2</script></div>');
      await probe.page.waitForFunction(() => window.__pwned !== undefined, null, { timeout: 5_000 });
      let caught = '';
      try {
        await assertInert(probe.page, 'self-test');
      } catch (e) {
        caught = String(e);
      }
      for (const want of ['window.__pwned', 'onerror', 'javascript', 'inline <script>', '<img>']) {
        check(caught.includes(want), `the injection checks missed ${JSON.stringify(want)} in a page built to trip them: ${JSON.stringify(caught)}`);
      }
    } finally {
      await probe.context.close();
    }
  });

  await step('sign in (admin: sees sessions, live, audit, requests)', 40_000, async () => {
    ctx = await newPage(browser);
    await signIn(ctx.page, USERS.approver);
  }, { fatal: true });
  const { page } = ctx;

  await step('player of the hostile session renders it as text', 40_000, async () => {
    await go(page, `#/session/${CASE.hostile_session}`);
    await page.locator('#seek').waitFor({ state: 'attached' });
    await page.locator('#seek').evaluate((el) => {
      el.value = el.max;
      el.dispatchEvent(new Event('input', { bubbles: true }));
      el.dispatchEvent(new Event('change', { bubbles: true }));
    });
    await waitText(page, '#screen', 'HOSTILE-DONE', 15_000);
    await assertVisibleText(page, '#screen', 'player');
    // The terminal's frame: no line longer than the recorded width, no more lines than rows.
    const tl = await apiFetch(page, 'GET', `/api/v1/sessions/${CASE.hostile_session}/timeline`);
    check(tl.status === 200, `timeline: ${tl.status}`);
    const lines = (await text(page, '#screen')).replace(/\n$/, '').split('\n');
    const longest = Math.max(...lines.map((l) => [...l].length));
    check(longest <= tl.body.cols, `#screen has a line of ${longest} characters on a ${tl.body.cols}-column terminal`);
    check(lines.length <= tl.body.rows, `#screen has ${lines.length} lines on a ${tl.body.rows}-row terminal`);
    // The OSC 8 link text is plain text, not a link.
    const oscLink = await page.evaluate(() => [...document.querySelectorAll('#screen a')].map((a) => a.outerHTML));
    check(oscLink.length === 0, `#screen contains links: ${oscLink.join(' ')}`);
    // Play through it as well (the frames on the way are rendered the same way).
    await page.locator('#play').click();
    await page.waitForTimeout(1500);
    await page.locator('#keys-toggle').click();
    await assertInert(page, 'player');
    await shot(page, 'xss-01-player');
  });

  await step('live watch of the hostile device renders it as text', 30_000, async () => {
    await go(page, `#/watch/${CASE.hostile_live}`);
    await waitText(page, '#watch-screen', 'HOSTILE-DONE', 15_000);
    await assertVisibleText(page, '#watch-screen', 'live watch');
    await assertInert(page, 'live watch');
    await shot(page, 'xss-02-watch');
  });

  await step('live list', 20_000, async () => {
    await go(page, '#/live');
    await page.locator(`#live-table tr[data-session-id="${CASE.hostile_live}"]`).waitFor({ state: 'visible' });
    await assertInert(page, 'live list');
  });

  await step('sessions list: a search for the markup, and markup in the route', 30_000, async () => {
    await go(page, '#/sessions');
    await page.locator('#search-grep').fill('window.__pwned=1');
    await page.locator('#search-submit').click();
    await page.locator(`#sessions-table tr[data-session-id="${CASE.hostile_session}"]`).waitFor({ state: 'visible', timeout: 15_000 });
    await assertInert(page, 'sessions list (grep)');
    await shot(page, 'xss-03-sessions');
    const hostileQuery = encodeURIComponent('<img src=x onerror="window.__pwned=1">');
    await page.goto(`${URL_BASE}/#/sessions?grep=${hostileQuery}&principal=${encodeURIComponent('<script>window.__pwned=1</script>')}`);
    await page.locator('#sessions-table').waitFor({ state: 'attached' });
    await page.waitForTimeout(1000);
    await assertInert(page, 'sessions list (markup in the route)');
  });

  await step('audit list shows the hostile lock reason as text', 30_000, async () => {
    await go(page, '#/audit');
    await waitText(page, 'body', CASE.hostile_reason, 15_000);
    await assertInert(page, 'audit list');
    await page.goto(`${URL_BASE}/#/audit?principal=${encodeURIComponent('<svg onload="window.__pwned=1">')}`);
    await page.waitForTimeout(1000);
    await assertInert(page, 'audit list (markup in the route)');
    await go(page, '#/audit');
    await waitText(page, 'body', CASE.hostile_reason, 15_000);
    await shot(page, 'xss-04-audit');
  });

  await step('requests list shows the hostile request reason as text', 20_000, async () => {
    await go(page, '#/requests');
    const row = page.locator(`#requests-table tr[data-request-id="${CASE.hostile_request}"]`);
    await row.waitFor({ state: 'visible', timeout: 10_000 });
    const rowText = await row.textContent();
    check(rowText.includes(CASE.hostile_reason), `the request row does not show its reason as text: ${JSON.stringify(rowText)}`);
    await assertInert(page, 'requests list');
  });

  await step('devices and locks show the hostile lock reason as text', 20_000, async () => {
    await go(page, '#/devices');
    await waitText(page, '#locks-table', CASE.hostile_reason, 10_000);
    await waitText(page, '#devices-table', CASE.hostile_device, 10_000);
    await assertInert(page, 'devices and locks');
    await shot(page, 'xss-05-devices');
  });
  await step('end the hostile live session with markup in the reason; every list shows it as text', 40_000, async () => {
    await go(page, '#/live');
    const row = page.locator(`#live-table tr[data-session-id="${CASE.hostile_live}"]`);
    await row.waitFor({ state: 'visible' });
    await row.locator('button.end-session').click();
    await page.locator('#end-reason').fill(CASE.hostile_reason);
    await page.locator('#end-confirm').click();
    await row.waitFor({ state: 'detached', timeout: 10_000 });
    await assertInert(page, 'live list after ending');
    // The client was told the reason, markup and all, as text.
    await ask('live-ended', { id: CASE.hostile_live, reason: CASE.hostile_reason }, 20_000);
    await go(page, `#/session/${CASE.hostile_live}`);
    await waitText(page, 'body', CASE.hostile_reason, 15_000);
    await assertInert(page, 'session detail with a hostile end reason');
    await go(page, '#/sessions');
    await page.locator(`#sessions-table tr[data-session-id="${CASE.hostile_live}"]`).waitFor({ state: 'visible', timeout: 15_000 });
    await assertInert(page, 'sessions list with a hostile end reason');
    await go(page, '#/audit');
    await waitText(page, 'body', CASE.hostile_reason, 15_000);
    await assertInert(page, 'audit list with a hostile end reason');
  });
} catch (e) {
  log(String(e));
} finally {
  await browser.close().catch(() => {});
  closeAsk();
}
process.exit(exitCode());
