// Ward console: the web terminal. One WebSocket per tab carries one device session through the
// gateway's session pipeline; the gateway emulates the terminal and sends the whole screen
// (`screen`: on open, resize, and when most rows changed) or only the rows that changed (`rows`),
// drawn here in place, row by row (drawRow: textContent only, classes from a fixed set). Keys
// and pastes go up as {"type":"input"}; the window's size as {"type":"resize"}. Copy is the
// browser's own: select text on the screen and press Ctrl+C (or Ctrl+Shift+C).
import { h, fill, session, enc } from './util.js';
import { drawRow } from './player.js';

// Keys that are not text, as a VT100/xterm sends them.
const KEYS = {
  Enter: '\r', Backspace: '\x7f', Tab: '\t', Escape: '\x1b',
  ArrowUp: '\x1b[A', ArrowDown: '\x1b[B', ArrowRight: '\x1b[C', ArrowLeft: '\x1b[D',
  Home: '\x1b[H', End: '\x1b[F', Insert: '\x1b[2~', Delete: '\x1b[3~', PageUp: '\x1b[5~', PageDown: '\x1b[6~',
  F1: '\x1bOP', F2: '\x1bOQ', F3: '\x1bOR', F4: '\x1bOS',
};

const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

function when(unix) {
  const n = Number(unix);
  if (!n) return '';
  return new Date(n * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

// The bytes a key press sends, or null when the key is not ours (copy, the browser's own keys).
export function keyBytes(ev, hasSelection) {
  if (ev.isComposing || ev.metaKey) return null;
  const k = ev.key;
  if (ev.ctrlKey && !ev.altKey) {
    // Ctrl+C with text selected, and Ctrl+Shift+C / Ctrl+Shift+V: the browser's copy and paste.
    if (ev.shiftKey && (k === 'C' || k === 'c' || k === 'V' || k === 'v')) return null;
    if ((k === 'c' || k === 'C') && hasSelection) return null;
    if (k === 'v' || k === 'V') return null; // paste arrives as a paste event
    if (k.length === 1) {
      const c = k.toUpperCase().charCodeAt(0);
      if (c >= 64 && c <= 95) return String.fromCharCode(c - 64);
      if (k === ' ') return '\x00';
      return null;
    }
  }
  if (KEYS[k] !== undefined) {
    if (k === 'Tab' && ev.shiftKey) return '\x1b[Z';
    return KEYS[k];
  }
  if (k.length === 1 && !ev.ctrlKey) return (ev.altKey ? '\x1b' : '') + k;
  return null;
}

// Opens the terminal for `device` in `box`. `breakGlass`: the emergency justification, if any.
// `onEnd(reason)` is called once the session is over. Returns the cleanup (closes the socket:
// the session ends).
export function terminal(box, device, { breakGlass, onEnd } = {}) {
  const status = h('p', { id: 'term-status', class: 'status', role: 'status', 'aria-live': 'polite' }, 'Connecting to ' + device + '…');
  const screen = h('pre', { id: 'term-screen', class: 'term live-term', tabindex: '0', 'aria-label': 'Terminal of ' + device + ' (type to send keys; select text to copy)' });
  const input = h('textarea', { id: 'term-input', class: 'term-input', 'aria-label': 'Keyboard input to ' + device, autocomplete: 'off', autocapitalize: 'off', spellcheck: 'false' });
  const end = h('button', { id: 'term-end', type: 'button', class: 'danger' }, 'End session');
  const info = h('p', { id: 'term-info', class: 'muted small' });
  fill(box, h('div', { class: 'term-bar' }, status, end), h('div', { class: 'term-wrap' }, screen, input), info);

  let ws = null, over = false, cols = 80, rows = 24, resizeTimer = 0;
  const finish = (text, cls) => {
    if (over) return;
    over = true;
    status.className = 'status ' + (cls || 'ended');
    fill(status, text);
    end.disabled = true;
    input.disabled = true;
    screen.classList.add('over');
    if (onEnd) onEnd(text);
  };

  // The size that fits the box: one character's width and height measured in the screen's font.
  function fit() {
    const probe = h('span', { class: 'probe' }, 'MMMMMMMMMM');
    screen.append(probe);
    const r = probe.getBoundingClientRect();
    probe.remove();
    const cw = r.width / 10 || 8.4, ch = r.height || 17;
    const width = screen.clientWidth - 16;
    const height = Math.max(window.innerHeight - screen.getBoundingClientRect().top - 70, ch * 24);
    return [clamp(Math.floor(width / cw), 20, 300), clamp(Math.floor(height / ch), 5, 120)];
  }

  // The screen the page shows: each row a <span> redrawn in place when it (or the cursor on it)
  // changes; the rows between them are separated by newlines (the <pre>'s text is the screen's).
  let rowEls = [], lines = [], cur = null, shownCols = 0;
  const cursorOf = (c) => (c && c.visible ? { row: Number(c.row), col: Number(c.col) } : null);
  const drawAll = (m) => {
    lines = Array.isArray(m.lines) ? m.lines.slice() : [];
    cur = cursorOf(m.cursor);
    shownCols = Number(m.cols) || 80;
    const frag = document.createDocumentFragment();
    rowEls = lines.map((runs, r) => {
      const row = document.createElement('span');
      row.append(drawRow(runs, r, cur));
      frag.append(row);
      if (r < lines.length - 1) frag.append('\n');
      return row;
    });
    screen.replaceChildren(frag);
    screen.style.setProperty('--cols', String(shownCols));
  };
  const drawRows = (m) => {
    // Rows of another size than the screen shown cannot be placed (the gateway sends a whole
    // screen after every resize): ignore them.
    if (!Array.isArray(m.lines) || Number(m.rows) !== rowEls.length || Number(m.cols) !== shownCols) return;
    const redraw = new Set();
    for (const l of m.lines) {
      const r = Number(l && l.row);
      if (Number.isInteger(r) && r >= 0 && r < rowEls.length) {
        lines[r] = Array.isArray(l.runs) ? l.runs : [];
        redraw.add(r);
      }
    }
    const was = cur;
    cur = cursorOf(m.cursor);
    if (was) redraw.add(was.row);
    if (cur) redraw.add(cur.row);
    for (const r of redraw) {
      if (r >= 0 && r < rowEls.length) rowEls[r].replaceChildren(drawRow(lines[r], r, cur));
    }
  };

  const send = (msg) => { if (ws && ws.readyState === WebSocket.OPEN && !over) ws.send(JSON.stringify(msg)); };

  [cols, rows] = fit();
  const q = breakGlass ? '?break_glass=' + enc(breakGlass) : '';
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  ws = new WebSocket(proto + '//' + location.host + '/api/v1/terminal/' + enc(device) + q);
  ws.addEventListener('open', () => {
    ws.send(JSON.stringify({ type: 'hello', csrf: (session.me && session.me.csrf) || '', cols, rows }));
  });
  ws.addEventListener('message', (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch (e) { return; }
    if (!m || typeof m !== 'object') return;
    if (m.type === 'screen') {
      drawAll(m);
    } else if (m.type === 'rows') {
      drawRows(m);
    } else if (m.type === 'opened') {
      status.className = 'status';
      fill(status, 'Connected to ' + device + ' — session ' + String(m.session_id || ''));
      fill(info, 'Permitted by ' + String(m.rule || '') + '; ends at ' + when(m.ends_at) + ' at the latest (' + String(m.end_reason_if_uncut || '') + '). Every key is recorded.');
      screen.dataset.sessionId = String(m.session_id || '');
      input.focus();
    } else if (m.type === 'refused') {
      finish('Refused: ' + String(m.reason || 'the gateway refused the session'));
    } else if (m.type === 'closed') {
      finish('Session ended: ' + String(m.reason || ''));
    }
  });
  ws.addEventListener('close', (ev) => {
    if (!over) finish(ev.code === 1008 ? 'Refused: ' + (ev.reason || 'sign in again') : 'Connection to the gateway lost (' + ev.code + (ev.reason ? ': ' + ev.reason : '') + ')');
  });

  // Keys: typed into the hidden textarea (focused whenever the screen is clicked).
  input.addEventListener('keydown', (ev) => {
    const sel = String(window.getSelection() || '');
    const bytes = keyBytes(ev, sel.length > 0);
    if (bytes == null) return;
    ev.preventDefault();
    send({ type: 'input', data: bytes });
  });
  // Text that arrives without a key event (dictation; an input method once it has composed).
  const flush = () => {
    const v = input.value;
    input.value = '';
    if (v) send({ type: 'input', data: v.replace(/\r?\n/g, '\r') });
  };
  input.addEventListener('input', (ev) => { if (!ev.isComposing) flush(); });
  input.addEventListener('compositionend', flush);
  const paste = (ev) => {
    const t = ev.clipboardData ? ev.clipboardData.getData('text/plain') : '';
    ev.preventDefault();
    if (t) send({ type: 'input', data: t.replace(/\r\n|\n/g, '\r') });
  };
  input.addEventListener('paste', paste);
  screen.addEventListener('paste', paste);
  // Clicking the screen types into it; a drag that selects text leaves the selection for copy.
  screen.addEventListener('mouseup', () => {
    if (!String(window.getSelection() || '')) input.focus({ preventScroll: true });
  });
  screen.addEventListener('keydown', (ev) => {
    const sel = String(window.getSelection() || '');
    const bytes = keyBytes(ev, sel.length > 0);
    if (bytes == null) return;
    ev.preventDefault();
    input.focus({ preventScroll: true });
    send({ type: 'input', data: bytes });
  });

  end.addEventListener('click', () => {
    if (ws) ws.close(1000, 'ended by the user');
    finish('You ended the session.', 'ended');
  });

  const onResize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      const [c, r] = fit();
      if (c !== cols || r !== rows) {
        cols = c; rows = r;
        send({ type: 'resize', cols, rows });
      }
    }, 150);
  };
  window.addEventListener('resize', onResize);

  return () => {
    window.removeEventListener('resize', onResize);
    clearTimeout(resizeTimer);
    over = true;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'page left');
  };
}
