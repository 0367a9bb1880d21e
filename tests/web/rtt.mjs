// The web terminal's keystroke-to-echo round trip, measured in the browser (issue 17's benchmark
// row): sign in, open the echoing device's terminal, then inside the page time each key from the
// keydown the terminal handles to the next screen drawn (WebSocket up, the gateway's session
// pipeline, the device's echo, the server-side emulator, the screen down, the draw). Keys are
// paced (WARD_RTT_GAP_MS after each echo, as a person types) so the screen coalescing
// (16 ms) does not merge them. Run by `ward-bench --web-rtt`, which answers `rtt` with nothing
// but keeps the samples.
//
// WARD_WEB_CASE: {device, samples, warmup, gap_ms}

import { URL_BASE, USERS, CASE, launch, newPage, signIn, go, waitText, step, check, ask, closeAsk, exitCode, log } from './lib.mjs';

const browser = await launch();
log(`chromium ${browser.version()} against ${URL_BASE}`);
try {
  await step('sign in and measure the terminal round trip', 600_000, async () => {
    const { page } = await newPage(browser);
    await signIn(page, USERS.clinician);
    await go(page, `#/terminal/${CASE.device}`);
    await waitText(page, '#term-status', 'Connected', 10_000);
    const samples = await page.evaluate(async ({ n, warmup, gap }) => {
      const screen = document.querySelector('#term-screen');
      const input = document.querySelector('#term-input');
      input.focus();
      const out = [];
      const chars = 'abcdefghijklmnopqrstuvwxyz';
      for (let i = 0; i < warmup + n; i++) {
        const drawn = new Promise((resolve) => {
          const mo = new MutationObserver(() => { mo.disconnect(); resolve(performance.now()); });
          mo.observe(screen, { childList: true, subtree: true, characterData: true });
        });
        const key = chars[i % chars.length];
        const t0 = performance.now();
        input.dispatchEvent(new KeyboardEvent('keydown', { key, bubbles: true, cancelable: true }));
        const t1 = await Promise.race([drawn, new Promise((r) => setTimeout(() => r(null), 5000))]);
        if (t1 == null) throw new Error(`no screen drawn within 5 s of key ${i}`);
        if (i >= warmup) out.push(t1 - t0);
        await new Promise((r) => setTimeout(r, gap));
      }
      return out;
    }, { n: CASE.samples, warmup: CASE.warmup, gap: CASE.gap_ms });
    check(samples.length === CASE.samples, `got ${samples.length} samples`);
    await ask('rtt', { ms: samples }, 60_000);
  });
} finally {
  closeAsk();
  await browser.close().catch(() => {});
}
process.exit(exitCode());
