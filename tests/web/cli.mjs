// `ward login --sso` approved in a real browser (issue 17): the user opens the URL the CLI
// printed, is sent to sign in first (any sign-in; here password + TOTP), comes back to the page,
// sees the same code and where the login came from, and approves; the CLI gets its certificate.
// A second login is refused on the page, and the CLI is told so.
// Run by tests/tests/sso_cli.rs.
//
// WARD_WEB_CASE: {url, code, source}; the Rust side answers `second` with {url, code} of a new
// login, and `cli-done` once the CLI exited (ok: whether it did what the case says).

import {
  USERS, CASE, launch, newPage, signIn, shot, text, waitText, step, check, ask, closeAsk,
  exitCode, log,
} from './lib.mjs';

const browser = await launch();
log(`chromium ${browser.version()}`);
const { page } = await newPage(browser);
const user = USERS.vendor;

await step('the login URL asks for a sign-in first, then comes back to the page', 30_000, async () => {
  await page.goto(CASE.url, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(() => location.hash.startsWith('#/signin'), null, { timeout: 10_000 });
  await signIn(page, user);
  await page.waitForFunction(() => location.hash.startsWith('#/sso/cli/'), null, { timeout: 10_000 });
}, { fatal: true });

await step('the page shows the code, the source and the question', 15_000, async () => {
  await waitText(page, '#cli-code', CASE.code, 10_000);
  check((await text(page, '#cli-source')) === CASE.source, `#cli-source is ${await text(page, '#cli-source')}`);
  check((await text(page, '#cli-started')).length > 10, 'no start time');
  check((await text(page, '#cli-state')) === 'pending', `#cli-state is ${await text(page, '#cli-state')}`);
  check((await text(page, 'h2')).includes('Does your terminal show this code?'), 'no question');
  check((await text(page, '#cli-approve')).includes(`${user.user}`), 'the approve button does not say who');
  await shot(page, 'sso-cli-pending');
});

await step('approving signs the terminal in', 20_000, async () => {
  await page.locator('#cli-approve').click();
  await waitText(page, '#cli-result', 'Approved: your terminal is signed in as vendor acme/tech', 10_000);
  check((await text(page, '#cli-state')) === 'approved', 'state not approved');
  check(await page.locator('#cli-approve').isDisabled(), 'approve still enabled');
  await shot(page, 'sso-cli-approved');
  await ask('cli-done', { expect: 'approved' }, 30_000);
});

await step('a second login refused on the page reaches the CLI', 40_000, async () => {
  const second = await ask('second', {}, 30_000);
  await page.goto(second.url, { waitUntil: 'domcontentloaded' });
  await waitText(page, '#cli-code', second.code, 10_000);
  await page.locator('#cli-deny').click();
  await waitText(page, '#cli-result', 'Refused', 10_000);
  check((await text(page, '#cli-state')) === 'refused', 'state not refused');
  await ask('cli-done', { expect: 'refused' }, 30_000);
});

await step('a link to a used login says so', 15_000, async () => {
  await page.goto(CASE.url, { waitUntil: 'domcontentloaded' });
  await waitText(page, '#cli-error', 'no such SSO login', 10_000);
  await shot(page, 'sso-cli-used');
});

await step('no page error, dialog or CSP violation', 5_000, async () => {
  const e = page.events;
  check(!e.pageErrors.length && !e.dialogs.length && !e.csp.length,
    `page errors ${JSON.stringify(e.pageErrors)}, dialogs ${JSON.stringify(e.dialogs)}, csp ${JSON.stringify(e.csp)}`);
});

closeAsk();
await browser.close();
process.exit(exitCode());
