// "My devices" and the web terminal in a real browser (issue 17, "Show"): a clinician signs in
// with password + TOTP, sees My devices, opens the pump's console, types `status` and reads
// `rate=` off the terminal; a device without a rule shows the denial reason; the request form
// files a request; a lock from the Rust side ends the open terminal within a second and the page
// shows why. Run by tests/tests/web_terminal.rs, which holds the gateway and answers this
// script's `ask`s (see lib.mjs). Screenshots: SHOTS/terminal-*.png.
//
// WARD_WEB_USERS: {clinician: {user, password, totp}}
// WARD_WEB_CASE:  {device, prompt, expect, denied_device, request_device, lock_principal}

import {
  URL_BASE, USERS, CASE, launch, newPage, signIn, go, shot, text, waitText, errorText,
  step, check, ask, closeAsk, exitCode, log,
} from './lib.mjs';

const nurse = USERS.clinician;
const browser = await launch();
log(`chromium ${browser.version()} against ${URL_BASE}`);

let main;
let sessionId;

try {
  await step('a clinician signs in with password + TOTP and lands on My devices', 40_000, async () => {
    main = await newPage(browser);
    const { page } = main;
    await signIn(page, nurse);
    await go(page, '#/my');
    await page.locator('#my-devices').waitFor({ state: 'visible' });
    check(await page.locator('#nav-my').isVisible(), 'the nav has no visible "My devices" link (#nav-my)');
    for (const staff of ['#nav-overview', '#nav-live', '#nav-audit']) {
      check(!(await page.locator(staff).isVisible()), `a clinician sees the staff link ${staff}`);
    }
    const row = page.locator(`#my-devices tr[data-device-id="${CASE.device}"]`);
    await row.waitFor({ state: 'visible' }).catch(async () => {
      throw new Error(`no row for ${CASE.device} in #my-devices: ${JSON.stringify((await text(page, '#my-devices')).slice(0, 800))}`);
    });
    const rowText = await row.textContent();
    check(/open now/.test(rowText), `the ${CASE.device} row does not say "open now": ${rowText}`);
    check(await page.locator(`#open-${CASE.device}`).isVisible(), `no #open-${CASE.device}`);
    check(await page.locator(`#request-${CASE.request_device}`).isVisible(), `no #request-${CASE.request_device} for the device open by request`);
    const listed = await page.evaluate(() => [...document.querySelectorAll('#my-devices tr[data-device-id]')].map((r) => r.dataset.deviceId));
    check(!listed.includes(CASE.denied_device), `${CASE.denied_device} (no rule) is listed: ${listed.join(', ')}`);
    const err = await errorText(page);
    check(!err, `#error shows: ${err}`);
    await shot(page, 'terminal-01-my-devices');
  }, { fatal: true });

  await step('the request form files a request (reason, start, duration)', 30_000, async () => {
    const { page } = main;
    await page.locator(`#request-${CASE.request_device}`).click();
    await page.locator('#my-request-form').waitFor({ state: 'visible' });
    await page.locator('#my-request-reason').fill('alarm log review after an occlusion alarm');
    await page.locator('#my-request-duration').fill('1h');
    await page.locator('#my-request-submit').click();
    await waitText(page, '#my-status', 'waits for approval', 10_000);
    await waitText(page, `#my-devices tr[data-device-id="${CASE.request_device}"]`, 'request pending', 10_000);
    await shot(page, 'terminal-02-request');
  });

  await step('open the pump console, type status, read rate= off the terminal', 40_000, async () => {
    const { page } = main;
    await page.locator(`#open-${CASE.device}`).click();
    await page.waitForFunction((d) => location.hash === '#/terminal/' + d, CASE.device, { timeout: 10_000 });
    await waitText(page, '#term-status', 'Connected', 10_000);
    await waitText(page, '#term-screen', CASE.prompt, 10_000);
    sessionId = await page.evaluate(() => document.querySelector('#term-screen').dataset.sessionId);
    check(/^[0-9a-f]{16}$/.test(sessionId || ''), `the terminal shows no session id: ${JSON.stringify(sessionId)}`);
    check(await page.evaluate(() => document.activeElement && document.activeElement.id === 'term-input'), 'the keyboard is not in the terminal (#term-input) once it opened');
    await page.keyboard.type('status');
    await page.keyboard.press('Enter');
    await waitText(page, '#term-screen', CASE.expect, 10_000);
    const screen = await text(page, '#term-screen');
    check(screen.includes('status'), `the screen lacks the typed command: ${screen}`);
    check(await page.locator('#term-screen').getAttribute('aria-label'), '#term-screen has no aria-label');
    await shot(page, 'terminal-03-status');
    await ask('session', { id: sessionId });
  }, { fatal: true });

  await step('copy by selection: the screen is text the browser selects', 15_000, async () => {
    const { page } = main;
    const selected = await page.evaluate((needle) => {
      const el = document.querySelector('#term-screen');
      const range = document.createRange();
      range.selectNodeContents(el);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      const s = String(sel);
      sel.removeAllRanges();
      return s.includes(needle) ? s : '';
    }, CASE.expect);
    check(selected, 'selecting the screen does not give its text');
  });

  await step('a lock from the Rust side ends the terminal within a second and the page says why', 30_000, async () => {
    const { page } = main;
    const reason = 'web terminal test: badge reported lost';
    const { locked_ms } = await ask('lock', { principal: CASE.lock_principal, reason });
    await waitText(page, '#term-status', 'locked', 5_000);
    const seen = Date.now();
    const status = await text(page, '#term-status');
    check(status.includes(reason), `#term-status does not show the lock's reason: ${status}`);
    check(seen - locked_ms <= 1000, `the page showed the lock ${seen - locked_ms} ms after ward lock returned (want ≤ 1000)`);
    check(await page.locator('#term-end').isDisabled(), '#term-end is still enabled after the session ended');
    await shot(page, 'terminal-04-locked');
  });

  await step('a device without a rule: the terminal shows the denial reason', 30_000, async () => {
    const { page } = main;
    await go(page, `#/terminal/${CASE.denied_device}`);
    await waitText(page, '#term-status', 'Refused', 10_000);
    const status = await text(page, '#term-status');
    check(status.includes('no rule lets') && status.includes(CASE.denied_device), `#term-status: ${status}`);
    await shot(page, 'terminal-05-denied');
  });

  const p = main.page.events;
  await step('no page errors, dialogs or CSP violations', 5_000, async () => {
    check(!p.pageErrors.length, `page errors: ${p.pageErrors.join(' | ')}`);
    check(!p.dialogs.length, `dialogs: ${p.dialogs.join(' | ')}`);
    check(!p.csp.length, `CSP violations: ${p.csp.join(' | ')}`);
  });
} catch (e) {
  log(String(e && e.stack ? e.stack : e));
} finally {
  closeAsk();
  await browser.close().catch(() => {});
}
process.exit(exitCode());
