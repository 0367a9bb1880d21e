// The web terminal's keystroke-to-echo round trip, measured in the browser (issue 17's benchmark
// row): sign in, open the echoing device's terminal, then inside the page time each key from the
// keydown the terminal handles to the next screen drawn (WebSocket up, the gateway's session
// pipeline, the device's echo, the server-side emulator, the screen down, the draw). Keys are
// paced (WARD_RTT_GAP_MS after each echo, as a person types) so the screen coalescing
// (16 ms) does not merge them. Run by `ward-bench --web-rtt`, which answers `rtt` with nothing
// but keeps the samples. Where the time goes is reported too (the WebSocket wrapped by an init
// script): keydown → the message's arrival (the network, the gateway, the device) and arrival →
// drawn (the page's parse and draw), with the message's size; the medians are logged and, when
// WARD_RTT_DETAIL names a file, written there as JSON.
//
// WARD_WEB_CASE: {device, samples, warmup, gap_ms}

import fs from 'node:fs';
import { URL_BASE, USERS, CASE, launch, newPage, signIn, go, waitText, step, check, ask, closeAsk, exitCode, log } from './lib.mjs';

const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length ? s[Math.floor(s.length / 2)] : null;
};

const browser = await launch();
log(`chromium ${browser.version()} against ${URL_BASE}`);
try {
  await step('sign in and measure the terminal round trip', 600_000, async () => {
    const { page } = await newPage(browser);
    // Every WebSocket message's arrival time and size, seen before the page's own listener.
    await page.addInitScript(() => {
      const Orig = window.WebSocket;
      window.__wsIn = [];
      window.WebSocket = class extends Orig {
        constructor(...a) {
          super(...a);
          this.addEventListener('message', (ev) => window.__wsIn.push([performance.now(), String(ev.data).length]));
        }
      };
    });
    await signIn(page, USERS.clinician);
    await go(page, `#/terminal/${CASE.device}`);
    await waitText(page, '#term-status', 'Connected', 10_000);
    const got = await page.evaluate(async ({ n, warmup, gap }) => {
      const screen = document.querySelector('#term-screen');
      const input = document.querySelector('#term-input');
      input.focus();
      const out = [];
      const net = [], draw = [], size = [];
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
        if (i >= warmup) {
          out.push(t1 - t0);
          const m = window.__wsIn.find(([t]) => t >= t0);
          if (m) { net.push(m[0] - t0); draw.push(t1 - m[0]); size.push(m[1]); }
        }
        await new Promise((r) => setTimeout(r, gap));
      }
      return { out, net, draw, size };
    }, { n: CASE.samples, warmup: CASE.warmup, gap: CASE.gap_ms });
    const samples = got.out;
    const detail = {
      rtt_p50_ms: median(samples),
      keydown_to_message_p50_ms: median(got.net),
      message_to_drawn_p50_ms: median(got.draw),
      message_bytes_p50: median(got.size),
    };
    log(`rtt breakdown (medians): ${JSON.stringify(detail)}`);
    if (process.env.WARD_RTT_DETAIL) fs.writeFileSync(process.env.WARD_RTT_DETAIL, JSON.stringify(detail, null, 2) + '\n');
    check(samples.length === CASE.samples, `got ${samples.length} samples`);
    await ask('rtt', { ms: samples }, 60_000);
  });
} finally {
  closeAsk();
  await browser.close().catch(() => {});
}
process.exit(exitCode());
