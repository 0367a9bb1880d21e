// Shared pieces of Ward's browser tests (console.mjs, xss.mjs): Debian's chromium through
// playwright-core, RFC 6238 TOTP codes, sign-in, named steps with timeouts, screenshots, and the
// line protocol with the Rust test that drives the gateway and the devices
// (tests/tests/web_browser.rs).
//
// Configuration comes from the environment (the Rust test sets it):
//   WARD_WEB_URL          https://127.0.0.1:PORT of the console
//   WARD_WEB_USERS        JSON {security|approver|vendor: {user, password, totp}} (totp: base32 secret)
//   WARD_WEB_CASE         JSON with what the gateway holds (session ids, texts to expect, ...)
//   WARD_WEB_SCREENSHOTS  directory for screenshots (created)
//   WARD_WEB_STATE        directory for the TOTP steps already used (codes work once)
//   WARD_CHROMIUM         the browser (default /usr/bin/chromium)

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

export const URL_BASE = required('WARD_WEB_URL').replace(/\/$/, '');
export const USERS = JSON.parse(required('WARD_WEB_USERS'));
export const CASE = JSON.parse(process.env.WARD_WEB_CASE || '{}');
export const SHOTS = process.env.WARD_WEB_SCREENSHOTS || 'target/web-screenshots';
const STATE = process.env.WARD_WEB_STATE || SHOTS;

function required(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set: run this through tests/tests/web_browser.rs (cargo test -p ward-tests --test web_browser)`);
    process.exit(2);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// TOTP (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits), never the same step twice for one user: the
// gateway accepts steps now-1, now and now+1, each once and only ever increasing.

function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const clean = text.toUpperCase().replace(/[\s=]/g, '');
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of clean) {
    const idx = alphabet.indexOf(ch);
    if (idx < 0) throw new Error(`TOTP secret is not base32 (${JSON.stringify(ch)})`);
    value = (value << 5) | idx;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/** The 6-digit code of `secret` (base32) for time step `step`. */
export function totpAt(secret, step) {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(step));
  const mac = crypto.createHmac('sha1', base32Decode(secret)).update(msg).digest();
  const off = mac[mac.length - 1] & 0x0f;
  const bin = ((mac[off] & 0x7f) << 24) | (mac[off + 1] << 16) | (mac[off + 2] << 8) | mac[off + 3];
  return String(bin % 1_000_000).padStart(6, '0');
}

function stateFile() {
  fs.mkdirSync(STATE, { recursive: true });
  return path.join(STATE, 'totp-steps.json');
}

/** A code for `user` that the gateway accepts now and has not seen (waits for the clock when all
 *  acceptable steps are used). */
export async function freshTotp(user) {
  const file = stateFile();
  for (;;) {
    let used = {};
    try {
      used = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch {
      used = {};
    }
    const now = Date.now() / 1000;
    const oldestSafe = Math.floor((now + 3) / 30) - 1;
    const last = used[user.user];
    const step = last === undefined ? oldestSafe : Math.max(oldestSafe, last + 1);
    if (step <= Math.floor(now / 30) + 1) {
      used[user.user] = step;
      fs.writeFileSync(file, JSON.stringify(used));
      return totpAt(user.totp, step);
    }
    const wait = ((Math.floor(now / 30) + 1) * 30 - now) * 1000 + 200;
    log(`  (every acceptable TOTP step of ${user.user} is used; waiting ${Math.round(wait)} ms)`);
    await sleep(wait);
  }
}

// ---------------------------------------------------------------------------------------------
// Output, steps, failures.

export function log(...a) {
  console.log(...a);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let failures = 0;

/** Run `fn` as a named step bounded by `timeoutMs`; a failure is printed with the step's name
 *  and counted (later steps still run unless `fatal`). */
export async function step(name, timeoutMs, fn, { fatal = false } = {}) {
  const started = Date.now();
  let timer;
  try {
    await Promise.race([
      fn(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    log(`ok   ${name} (${Date.now() - started} ms)`);
    return true;
  } catch (e) {
    failures += 1;
    log(`FAIL ${name} (${Date.now() - started} ms): ${e && e.stack ? e.stack : e}`);
    if (fatal) {
      throw new Error(`stopping: "${name}" failed and later steps depend on it`);
    }
    return false;
  } finally {
    clearTimeout(timer);
  }
}

/** Throw `message` unless `cond`. */
export function check(cond, message) {
  if (!cond) throw new Error(message);
}

/** The exit code: 0 when no step failed. */
export function exitCode() {
  log(failures === 0 ? 'all browser steps passed' : `${failures} browser step(s) failed`);
  return failures === 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// The line protocol with the Rust test: `@ask NAME JSON` on stdout, `@answer NAME JSON` on stdin.

let rl;
const pending = [];
const buffered = [];

function lines() {
  if (!rl) {
    rl = readline.createInterface({ input: process.stdin });
    rl.on('line', (line) => {
      const waiter = pending.shift();
      if (waiter) waiter(line);
      else buffered.push(line);
    });
  }
}

function nextLine() {
  lines();
  if (buffered.length) return Promise.resolve(buffered.shift());
  return new Promise((resolve) => pending.push(resolve));
}

/** Ask the Rust side to do `name` with `data`; resolves to its answer (throws on `ok: false`). */
export async function ask(name, data = {}, timeoutMs = 30_000) {
  process.stdout.write(`@ask ${name} ${JSON.stringify(data)}\n`);
  let timer;
  const line = await Promise.race([
    nextLine(),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer to "${name}" from the Rust test within ${timeoutMs} ms`)), timeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
  const prefix = `@answer ${name} `;
  check(line.startsWith(prefix), `expected "${prefix}…" from the Rust test, got ${JSON.stringify(line)}`);
  const answer = JSON.parse(line.slice(prefix.length));
  if (answer.ok === false) throw new Error(`the Rust side says: ${answer.why}`);
  return answer;
}

/** Stop reading stdin so node can exit. */
export function closeAsk() {
  if (rl) rl.close();
}

// ---------------------------------------------------------------------------------------------
// The browser.

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--headless',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Debian's chromium, headless (never a downloaded browser). */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.WARD_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 60_000,
  });
}

/** A fresh context (its own cookies) with a page that records dialogs, page errors, console
 *  errors and CSP violations in `page.events`. */
export async function newPage(browser, contextOptions = {}) {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 900 },
    ...contextOptions,
  });
  context.setDefaultTimeout(10_000);
  const page = await context.newPage();
  page.events = { dialogs: [], pageErrors: [], consoleErrors: [], csp: [] };
  page.on('dialog', async (d) => {
    page.events.dialogs.push(`${d.type()}: ${d.message()}`);
    await d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => page.events.pageErrors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') page.events.consoleErrors.push(m.text());
  });
  // Content-Security-Policy violations: an injected inline script that CSP blocked is still an
  // injection; the page reports them here.
  await page.exposeFunction('__wardCsp', (v) => page.events.csp.push(v));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__wardCsp(`${e.violatedDirective} blocked ${e.blockedURI} at ${e.sourceFile}:${e.lineNumber} sample=${e.sample}`);
    });
  });
  return { context, page };
}

/** Sign in through the page's form with password and a fresh TOTP code; waits until the app has
 *  left #/signin and shows who signed in. */
export async function signIn(page, user) {
  await page.goto(`${URL_BASE}/#/signin`, { waitUntil: 'domcontentloaded' });
  await page.locator('#signin-user').fill(user.user);
  await page.locator('#signin-password').fill(user.password);
  await page.locator('#signin-totp').fill(await freshTotp(user));
  await page.locator('#signin-submit').click();
  try {
    await page.waitForFunction(() => !location.hash.startsWith('#/signin'), null, { timeout: 10_000 });
  } catch (e) {
    const err = await page.locator('#signin-error').textContent().catch(() => null);
    throw new Error(`sign-in as ${user.user} did not leave #/signin (#signin-error: ${JSON.stringify(err)}; hash ${await page.evaluate(() => location.hash)})`);
  }
  await page.locator('#whoami').filter({ hasText: user.user }).waitFor({ state: 'visible', timeout: 10_000 });
}

/** Navigate to `hash` (e.g. '#/live') and wait for the load to settle. */
export async function go(page, hash) {
  await page.goto(`${URL_BASE}/${hash}`, { waitUntil: 'domcontentloaded' });
}

/** Save a full-page screenshot as SHOTS/NAME.png. */
export async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log(`  screenshot ${file}`);
}

/** `fetch` from inside the page (same origin, the page's cookies); `{status, body}` with the
 *  body parsed as JSON when it is JSON. Adds the CSRF header when `csrf` is given; with
 *  `statusOnly` the body is not read (for streams). */
export async function apiFetch(page, method, urlPath, { body, csrf, statusOnly = false } = {}) {
  return page.evaluate(
    async ({ method, urlPath, body, csrf, statusOnly }) => {
      const headers = { Accept: 'application/json' };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      if (csrf) headers['X-Ward-CSRF'] = csrf;
      const r = await fetch(urlPath, {
        method,
        headers,
        credentials: 'same-origin',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (statusOnly) {
        // A stream (server-sent events) never ends: the status is the answer.
        r.body?.cancel().catch(() => {});
        return { status: r.status, body: null };
      }
      const text = await r.text();
      let parsed = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        /* not JSON */
      }
      return { status: r.status, body: parsed };
    },
    { method, urlPath, body, csrf, statusOnly },
  );
}

/** The visible text of `selector` (textContent), or '' when absent. */
export async function text(page, selector) {
  return page.evaluate((s) => {
    const el = document.querySelector(s);
    return el ? el.textContent : '';
  }, selector);
}

/** Wait until `selector`'s textContent includes `needle` (or, with `absent`, no longer does). */
export async function waitText(page, selector, needle, timeoutMs, { absent = false } = {}) {
  try {
    await page.waitForFunction(
      ({ s, needle, absent }) => {
        const el = document.querySelector(s);
        const has = !!el && el.textContent.includes(needle);
        return absent ? !!el && !has : has;
      },
      { s: selector, needle, absent },
      { timeout: timeoutMs, polling: 50 },
    );
  } catch {
    const now = await text(page, selector);
    throw new Error(
      `${selector} ${absent ? 'still shows' : 'did not show'} ${JSON.stringify(needle)} within ${timeoutMs} ms; it shows: ${JSON.stringify(now.slice(0, 2000))}`,
    );
  }
}

/** Whether #error shows something; returns its text. */
export async function errorText(page) {
  return page.evaluate(() => {
    const el = document.querySelector('#error');
    if (!el) return '';
    const style = getComputedStyle(el);
    if (el.hidden || style.display === 'none' || style.visibility === 'hidden') return '';
    return el.textContent.trim();
  });
}
