// Ward console: the session player (screens emulated on the gateway, drawn here as text), the hex
// view for other protocols, and live watch.
import { h, fill, api, enc, clock, bytes } from './util.js';

// The only classes a screen run may carry (the API's fixed set); anything else is dropped.
const CLS = /^(fg([0-9]|1[0-5])|bg([0-9]|1[0-5])|b|u|inv|dim|it)$/;

function runCls(cls) {
  return String(cls || '').split(/\s+/).filter((c) => CLS.test(c)).join(' ');
}

// Draws a Screen ({cols, rows, lines: [[{text, cls}]], cursor}) into el: one text line per row,
// each run a <span> whose text is set with textContent.
export function drawScreen(el, scr) {
  const frag = document.createDocumentFragment();
  const lines = Array.isArray(scr.lines) ? scr.lines : [];
  const cur = scr.cursor && scr.cursor.visible ? scr.cursor : null;
  lines.forEach((runs, r) => {
    frag.append(drawRow(runs, r, cur));
    if (r < lines.length - 1) frag.append('\n');
  });
  el.replaceChildren(frag);
  if (scr.cols) el.style.setProperty('--cols', String(Number(scr.cols) || 80));
}

// One row's runs (row `r`) as a fragment of <span>s (textContent, classes from the fixed set),
// with the cursor `cur` ({row, col}, or null when hidden) drawn if it is on this row.
export function drawRow(runs, r, cur) {
  const frag = document.createDocumentFragment();
  let col = 0;
  let placed = false;
  for (const run of Array.isArray(runs) ? runs : []) {
    const text = String(run == null || run.text == null ? '' : run.text);
    const cls = runCls(run && run.cls);
    const chars = Array.from(text);
    if (cur && !placed && cur.row === r && cur.col >= col && cur.col < col + chars.length) {
      const at = cur.col - col;
      if (at) frag.append(span(chars.slice(0, at).join(''), cls));
      frag.append(span(chars[at], (cls + ' cur').trim()));
      if (at + 1 < chars.length) frag.append(span(chars.slice(at + 1).join(''), cls));
      placed = true;
    } else if (text) {
      frag.append(span(text, cls));
    }
    col += chars.length;
  }
  if (cur && !placed && cur.row === r) {
    if (cur.col > col) frag.append(document.createTextNode(' '.repeat(Math.min(500, cur.col - col))));
    frag.append(span(' ', 'cur'));
  }
  return frag;
}

function span(text, cls) {
  const e = document.createElement('span');
  if (cls) e.className = cls;
  e.textContent = text;
  return e;
}

// The player for terminal sessions. Returns a cleanup function.
// A recording that fails verification is replayed only when asked (`force`, audited): offer it.
function offerForce(box, e, again) {
  const go = h('button', { type: 'button', class: 'danger', id: 'force-replay' }, 'Replay anyway (audited)');
  go.addEventListener('click', again);
  fill(box, h('p', { class: 'error', role: 'alert' }, e.message), h('p', null,
    'The recording may have been altered; what it shows cannot be trusted. ', go));
}

const refusedUnverified = (e, force) => !force && e.status === 400 && /verif/i.test(e.message);

// 409: the recording is encrypted at rest and the gateway holds no key for it ([review]
// identity_file unset, by design): nothing to play here. Say so, and how to replay it with the CLI.
const encrypted = (e) => e && e.status === 409;
export function encryptedPanel(box, e, id) {
  fill(box, h('div', { class: 'notice', id: 'encrypted', role: 'status' },
    h('h3', null, 'This recording is encrypted at rest'),
    h('p', null, 'The gateway cannot read it, so the console cannot play or export it. Replay it on your machine with the identity key it is encrypted to:'),
    h('pre', null, 'ward replay ' + String(id) + ' --gateway HOST:PORT --identity-key FILE'),
    h('p', { class: 'muted small' }, e.message)));
}

export function player(box, id, report, force) {
  const base = '/sessions/' + enc(id);
  const f = force ? '&force=true' : '';
  let inner = null;
  const screen = h('pre', { id: 'screen', class: 'term', 'aria-label': 'Terminal screen (space: play or pause, arrows: 5 s back or forward)', tabindex: '0' });
  const play = h('button', { id: 'play', type: 'button' }, '▶ Play');
  const pause = h('button', { id: 'pause', type: 'button' }, '❚❚ Pause');
  const seek = h('input', { id: 'seek', type: 'range', min: 0, max: 0, step: 0.1, value: 0, 'aria-label': 'Position (seconds)' });
  const speed = h('select', { id: 'speed', 'aria-label': 'Speed' },
    ['0.5', '1', '2', '4', '8'].map((v) => h('option', { value: v, selected: v === '1' }, v + '×')));
  const time = h('output', { id: 'time', 'aria-live': 'off' }, '0:00.0');
  const keysBtn = h('button', { id: 'keys-toggle', type: 'button', 'aria-expanded': 'false', 'aria-controls': 'keys' }, 'Show keystrokes');
  const keys = h('ol', { id: 'keys', class: 'keys', hidden: true, 'aria-label': 'Keystrokes up to now' });
  const info = h('p', { class: 'muted' }, 'Loading the timeline…');
  // The controls appear once the timeline is known (a seek before that would have no range).
  fill(box, info);

  let dead = false, tl = null, marks = [], keyEls = [], shownKeys = 0;
  let t = 0, playing = false, wallBase = 0, tBase = 0, raf = 0, next = 0;
  let inflight = false, want = null;

  // One screen request at a time; the newest wanted time wins.
  async function pump() {
    if (inflight || want == null || dead) return;
    const at = want;
    want = null;
    inflight = true;
    try {
      const scr = await api(base + '/screen?t=' + at.toFixed(3) + f);
      if (!dead) drawScreen(screen, scr);
    } catch (e) {
      if (!dead) { stop(); report(e); }
    } finally {
      inflight = false;
    }
    pump();
  }
  function ask(at) { want = at; pump(); }

  // Index of the first device-output mark after time x.
  function after(x) {
    let lo = 0, hi = marks.length;
    while (lo < hi) { const m = (lo + hi) >> 1; if (marks[m] <= x) lo = m + 1; else hi = m; }
    return lo;
  }

  function show() {
    seek.value = String(t);
    time.textContent = clock(t) + ' / ' + clock(tl ? tl.duration_s : 0);
    // The list holds the keystrokes up to t, and only those.
    let n = shownKeys;
    while (n < keyEls.length && keyEls[n].t <= t) keys.append(keyEls[n++].el);
    while (n > 0 && keyEls[n - 1].t > t) keyEls[--n].el.remove();
    if (n > shownKeys && !keys.hidden) keys.scrollTop = keys.scrollHeight;
    shownKeys = n;
  }

  function tick(now) {
    if (!playing || dead) return;
    t = Math.min(tl.duration_s, tBase + ((now - wallBase) / 1000) * Number(speed.value));
    if (next < marks.length && marks[next] <= t) {
      next = after(t);
      ask(t);
    }
    show();
    if (t >= tl.duration_s) { stop(); ask(t); return; }
    raf = requestAnimationFrame(tick);
  }

  function start() {
    if (!tl || playing) return;
    if (t >= tl.duration_s) { t = 0; next = after(-1); ask(0); }
    playing = true;
    wallBase = performance.now();
    tBase = t;
    mark();
    raf = requestAnimationFrame(tick);
  }
  function stop() {
    playing = false;
    cancelAnimationFrame(raf);
    mark();
  }
  // Both buttons stay enabled (pausing while paused is harmless); the state shows as pressed.
  function mark() {
    play.setAttribute('aria-pressed', String(playing));
    pause.setAttribute('aria-pressed', String(!playing));
  }
  function seekTo(x) {
    t = Math.max(0, Math.min(tl.duration_s, x));
    next = after(t);
    tBase = t;
    wallBase = performance.now();
    show();
    ask(t);
  }

  play.addEventListener('click', start);
  pause.addEventListener('click', () => { stop(); show(); });
  seek.addEventListener('input', () => { if (tl) seekTo(Number(seek.value)); });
  // On the screen: space plays/pauses, arrows step 5 s.
  screen.addEventListener('keydown', (ev) => {
    if (!tl) return;
    if (ev.key === ' ') { ev.preventDefault(); if (playing) { stop(); show(); } else start(); }
    else if (ev.key === 'ArrowLeft' || ev.key === 'ArrowRight') { ev.preventDefault(); seekTo(t + (ev.key === 'ArrowLeft' ? -5 : 5)); }
  });
  speed.addEventListener('change', () => { tBase = t; wallBase = performance.now(); });
  keysBtn.addEventListener('click', () => {
    keys.hidden = !keys.hidden;
    keysBtn.setAttribute('aria-expanded', String(!keys.hidden));
    keysBtn.textContent = keys.hidden ? 'Show keystrokes' : 'Hide keystrokes';
  });

  api(base + '/timeline' + (force ? '?force=true' : '')).then((data) => {
    if (dead) return;
    tl = data;
    tl.duration_s = Math.max(0, Number(tl.duration_s) || 0);
    const all = Array.isArray(tl.marks) ? tl.marks : [];
    marks = all.filter((m) => m.dir !== 'up').map((m) => Number(m.t)).sort((a, b) => a - b);
    seek.max = String(tl.duration_s);
    fill(box, data.verified === false ? h('p', { class: 'error', role: 'alert' }, 'This recording fails verification: what it shows may have been altered.') : null,
      h('div', { class: 'controls' }, play, pause, seek, time, h('label', null, 'Speed ', speed), keysBtn), info, screen, keys);
    keyEls = (Array.isArray(tl.keys) ? tl.keys : []).map((k) => {
      return { t: Number(k.t), el: h('li', { title: clock(k.t) }, String(k.text)) };
    });
    fill(info, `${tl.cols}×${tl.rows} terminal, ${clock(tl.duration_s)} long, ${bytes(tl.up_bytes)} typed, ${bytes(tl.down_bytes)} shown`
      + (keyEls.length ? '' : '; no keystrokes recorded'));
    next = after(0);
    mark();
    show();
    ask(0);
  }).catch((e) => {
    if (dead) return;
    if (encrypted(e)) encryptedPanel(box, e, id);
    else if (refusedUnverified(e, force)) offerForce(box, e, () => { inner = player(box, id, report, true); });
    else { fill(info, 'The player is not available.'); report(e); }
  });

  return () => { dead = true; stop(); if (inner) inner(); };
}

// Hex/ASCII views of both directions, 1 KiB a page.
export function hexView(box, id, report, force) {
  const PAGE = 1024;
  let dead = false, inner = null, offered = false;
  const panes = ['up', 'down'].map((dir) => {
    const body = h('div', { class: 'hexbody' });
    const where = h('span', { class: 'muted' });
    const prev = h('button', { type: 'button', class: 'hex-prev' }, '◀ Earlier');
    const nextB = h('button', { type: 'button', class: 'hex-next' }, 'Later ▶');
    const pane = { dir, offset: 0, total: 0 };
    async function load(off) {
      try {
        const d = await api(`/sessions/${enc(id)}/hex?dir=${dir}&offset=${off}&limit=${PAGE}` + (force ? '&force=true' : ''));
        if (dead) return;
        pane.offset = Number(d.offset) || 0;
        pane.total = Number(d.total) || 0;
        const rows = Array.isArray(d.rows) ? d.rows : [];
        fill(body, h('table', { class: 'hex' }, h('tbody', null, rows.map((r) =>
          h('tr', null, h('th', { scope: 'row' }, Number(r.offset).toString(16).padStart(8, '0')),
            h('td', { class: 'hx' }, String(r.hex)), h('td', { class: 'asc' }, String(r.ascii)))))));
        if (!rows.length) body.append(h('p', { class: 'muted' }, 'No bytes this way.'));
        const end = Math.min(pane.total, pane.offset + PAGE);
        fill(where, pane.total ? `bytes ${pane.offset}–${end} of ${pane.total}` : '');
        prev.disabled = pane.offset <= 0;
        nextB.disabled = end >= pane.total;
      } catch (e) {
        if (dead || offered) return;
        if (encrypted(e)) { offered = true; encryptedPanel(box, e, id); }
        else if (refusedUnverified(e, force)) { offered = true; offerForce(box, e, () => { inner = hexView(box, id, report, true); }); } else report(e);
      }
    }
    prev.addEventListener('click', () => load(Math.max(0, pane.offset - PAGE)));
    nextB.addEventListener('click', () => load(pane.offset + PAGE));
    load(0);
    return h('section', { class: 'card hexpane' },
      h('h3', null, dir === 'up' ? 'Client → device' : 'Device → client'),
      h('div', { class: 'controls' }, prev, nextB, where), body);
  });
  fill(box, h('div', { class: 'hexgrid' }, panes));
  return () => { dead = true; if (inner) inner(); };
}

// Live watch: the gateway streams screens as server-sent events.
export function watch(box, id, report) {
  const scr = h('pre', { id: 'watch-screen', class: 'term', 'aria-label': 'Live terminal screen', tabindex: '0' });
  const status = h('p', { class: 'status', role: 'status' }, 'Connecting…');
  fill(box, status, scr);
  const es = new EventSource('/api/v1/live/' + enc(id) + '/watch');
  let ended = false;
  es.addEventListener('open', () => { if (!ended) fill(status, 'Watching live. Output appears within a second.'); });
  es.addEventListener('screen', (ev) => {
    try { drawScreen(scr, JSON.parse(ev.data)); } catch (e) { report(new Error('a screen event could not be read')); }
  });
  es.addEventListener('end', (ev) => {
    ended = true;
    let why = '', sealed = false;
    try { const d = JSON.parse(ev.data); why = d.reason || ''; sealed = d.encrypted === true; } catch (e) { why = ''; }
    status.classList.add('ended');
    // An encrypted recording the gateway cannot open: the watch stops, the session goes on.
    fill(status, (sealed ? 'Live watch stopped: ' : 'Session ended') + (why ? (sealed ? '' : ': ') + why : '.'));
    es.close();
  });
  es.addEventListener('error', () => {
    if (ended) return;
    if (es.readyState === EventSource.CLOSED) {
      fill(status, 'The live stream was refused or closed. The session may have ended, or you may need to sign in again.');
      api('/whoami').catch(() => {});
    } else {
      fill(status, 'Connection lost; reconnecting…');
    }
  });
  return () => { ended = true; es.close(); };
}
