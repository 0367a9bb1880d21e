// Ward console: the router and the pages. Plain modules, no build step, no third-party code.
import { h, fill, api, qs, enc, bytes, dur, when, ago, badge, field, table, who, session } from './util.js';
import { columns, bars } from './charts.js';
import { player, hexView, watch } from './player.js';
import { terminal } from './term.js';
import { ssoState, ssoButtons, ssoTotpForm } from './sso.js';

const main = document.getElementById('main');
const errBox = document.getElementById('error');
const whoami = document.getElementById('whoami');
const nav = document.getElementById('nav');
const dialog = document.getElementById('end-dialog');

let lastActivity = Date.now();
for (const t of ['keydown', 'pointerdown']) addEventListener(t, () => { lastActivity = Date.now(); }, { capture: true, passive: true });
let gen = 0;            // bumped on every route change: late answers for an old page are dropped
let cleanups = [];      // timers, streams and players of the current page

function report(e) {
  if (e && e.status === 401) return;
  errBox.textContent = (e && e.message) || String(e);
  errBox.hidden = false;
}
function clearError() { errBox.hidden = true; errBox.textContent = ''; }

// Runs an action, showing its failure in #error. Returns false on failure.
async function attempt(fn) {
  try { await fn(); return true; } catch (e) { report(e); return false; }
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query] = raw.split('?', 2);
  const [page, ...rest] = path.split('/');
  let arg = rest.join('/');
  try { arg = decodeURIComponent(arg); } catch (e) { /* keep it as typed */ }
  return { page: page || '', arg, q: new URLSearchParams(query || '') };
}

function go(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}

function isStaff() {
  const k = session.me && session.me.kind;
  return k === 'security' || k === 'admin';
}

function isVendor() {
  return !!(session.me && session.me.kind === 'vendor');
}

// Where a signed-in person starts: staff at the overview, everybody else at their devices.
function home() {
  return isStaff() ? '#/overview' : '#/my';
}

async function loadMe() {
  if (session.me) return session.me;
  session.me = await api('/whoami');
  return session.me;
}

function showHeader() {
  const me = session.me;
  nav.hidden = !me;
  for (const id of ['nav-overview', 'nav-live', 'nav-sessions', 'nav-audit']) document.getElementById(id).hidden = !isStaff();
  // Vendors have their own devices and requests only (the staff pages answer them 403).
  for (const id of ['nav-requests', 'nav-devices']) document.getElementById(id).hidden = isVendor();
  // A client certificate signs every request: there is no browser session to end.
  document.getElementById('signout').hidden = !me || me.via === 'certificate';
  fill(whoami, me ? [h('strong', null, me.principal || me.name || ''), ' ',
    h('span', { class: 'muted' }, 'via ' + (me.via === 'certificate' ? 'certificate' : 'password + TOTP'))] : '');
  const { page } = parseHash();
  for (const a of nav.querySelectorAll('a')) {
    if (a.id === 'nav-' + page || (page === 'session' && a.id === 'nav-sessions') || (page === 'watch' && a.id === 'nav-live') || (page === 'terminal' && a.id === 'nav-my')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

const pages = { signin, overview, live, sessions: sessionsPage, session: detail, watch: watchPage, audit, requests, devices, my: myDevices, terminal: terminalPage,
  sso: (r, alive) => import('./cli.js').then((m) => m.cliPage(r, alive)) }; // #/sso/cli/<poll>: ward login --sso

async function route(ev) {
  const my = ++gen;
  for (const c of cleanups) c();
  cleanups = [];
  clearError();
  if (dialog.open) dialog.close();
  const r = parseHash();
  if (r.page !== 'signin') {
    try { await loadMe(); } catch (e) { if (my === gen) report(e); return; }
    if (my !== gen) return;
  }
  if (!pages[r.page] || (r.page === 'requests' && isVendor())) {
    go(r.page === 'signin' || !session.me ? '#/signin' : home());
    return;
  }
  showHeader();
  main.replaceChildren();
  main.setAttribute('aria-busy', 'true');
  try {
    await pages[r.page](r, () => my === gen);
  } catch (e) {
    if (my === gen) report(e);
  } finally {
    if (my === gen) {
      main.removeAttribute('aria-busy');
      // After a navigation, move focus to the new page's heading (screen readers announce it).
      const h1 = main.querySelector('h1');
      if (ev && ev.type === 'hashchange' && h1 && !main.contains(document.activeElement)) h1.focus();
    }
  }
}

function title(text, ...extra) {
  document.title = text + ' — Ward';
  main.append(h('div', { class: 'pagehead' }, h('h1', { tabindex: '-1' }, text), extra));
}

// ---- sign-in / sign-out ----

async function signin() {
  session.me = null;
  showHeader();
  document.title = 'Sign in — Ward';
  const landing = home;
  const onward = () => {
    const next = sessionStorage.getItem('ward-next');
    sessionStorage.removeItem('ward-next');
    go(next && !next.startsWith('#/signin') ? next : landing());
  };
  const sso = await ssoState();
  // Signed in by the IdP, Ward's own TOTP code still owed (a provider with mfa = "ward").
  if (sso.totp && parseHash().page === 'signin') {
    main.append(ssoTotpForm(sso.totp, (me, then) => {
      session.me = me;
      sessionStorage.removeItem('ward-next');
      go(then && then !== '/' ? '#' + then : landing());
    }));
    return;
  }
  const user = h('input', { id: 'signin-user', name: 'user', autocomplete: 'username', required: true });
  const pass = h('input', { id: 'signin-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const totp = h('input', { id: 'signin-totp', name: 'totp', inputmode: 'numeric', autocomplete: 'one-time-code', pattern: '[0-9]{6,8}', required: true });
  const err = h('p', { id: 'signin-error', role: 'alert', class: 'error', hidden: true });
  const submit = h('button', { id: 'signin-submit', type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', { class: 'card signin', novalidate: true },
    h('h1', null, 'Sign in to Ward'),
    ssoButtons(sso.providers, sessionStorage.getItem('ward-next')),
    h('p', { class: 'muted' }, 'Your Ward user, password and the code from your authenticator app. A client certificate from Ward\'s CA signs you in without this form.'),
    field('User', user), field('Password', pass), field('TOTP code', totp), err, submit);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    if (!user.value || !pass.value || !totp.value) {
      err.textContent = 'Enter your user, password and the 6-digit code from your authenticator.';
      err.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      session.me = await api('/signin', 'POST', { user: user.value, password: pass.value, totp: totp.value.trim() });
      onward();
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
      totp.value = '';
      totp.focus();
    } finally {
      submit.disabled = false;
    }
  });
  main.append(form);
  // Already signed in (a certificate, or a live cookie)? Go on.
  try {
    const me = await fetch('/api/v1/whoami', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (me.ok && parseHash().page === 'signin') {
      session.me = await me.json();
      go(landing());
      return;
    }
  } catch (e) { /* stay on the form */ }
  user.focus();
}

document.getElementById('signout').addEventListener('click', async () => {
  await attempt(() => api('/signout', 'POST'));
  session.me = null;
  go('#/signin');
});

// ---- overview ----

async function overview(r, live) {
  const n = ['7', '14', '30', '90'].includes(r.q.get('days')) ? r.q.get('days') : '14';
  const pick = h('select', { id: 'overview-days', 'aria-label': 'Period', onchange: (ev) => go('#/overview?days=' + ev.target.value) },
    ['7', '14', '30', '90'].map((v) => h('option', { value: v, selected: v === n }, 'last ' + v + ' days')));
  title('Overview', pick);
  const d = await api('/overview?days=' + n);
  if (!live()) return;
  const days = Array.isArray(d.days) ? d.days : [];
  const since = (i) => days[i] + 'T00:00:00Z';
  const until = (i) => new Date(Date.parse(days[i] + 'T00:00:00Z') + 86400000).toISOString().replace('.000Z', 'Z');
  const range = (i) => ({ since: since(i), until: until(i) });
  const arr = (x) => (Array.isArray(x) ? x : []);
  const one = (key, counts) => [{ key, counts: arr(counts) }];
  const grid = h('div', { class: 'charts' },
    columns({
      title: 'Sessions per day by organisation', labels: days, series: arr(d.sessions_by_org), yLabel: 'sessions',
      href: (k, i) => '#/sessions' + qs({ org: d.sessions_by_org[k].key, ...range(i) }),
      tip: (k, i, n) => `${d.sessions_by_org[k].key || 'no org'}, ${days[i]}: ${n} sessions`,
    }),
    columns({
      title: 'Sessions per day by device class', labels: days, series: arr(d.sessions_by_class), yLabel: 'sessions',
      href: (k, i) => '#/sessions' + qs(range(i)),
      tip: (k, i, n) => `${d.sessions_by_class[k].key}, ${days[i]}: ${n} sessions`,
    }),
    columns({
      title: 'Denied connections per day', labels: days, series: one('', d.denials), yLabel: 'denials',
      href: (k, i) => '#/audit' + qs({ event: 'session_deny', ...range(i) }),
      tip: (k, i, n) => `${days[i]}: ${n} denied`,
    }),
    columns({
      title: 'Failed sign-ins per day', labels: days, series: one('', d.failed_logins), yLabel: 'failures',
      href: (k, i) => '#/audit' + qs({ event: 'login,web_signin', outcome: 'denied', ...range(i) }),
      tip: (k, i, n) => `${days[i]}: ${n} failed sign-ins`,
    }),
    columns({
      title: 'Break-glass sessions per day', labels: days, series: one('', d.break_glass), yLabel: 'sessions',
      href: (k, i) => '#/sessions' + qs(range(i)),
      tip: (k, i, n) => `${days[i]}: ${n} break-glass`,
    }),
    bars({
      title: 'Busiest devices', unit: 'sessions',
      items: arr(d.busiest_devices).map((x) => ({ label: String(x.device), n: Number(x.sessions) || 0, href: '#/sessions' + qs({ device: x.device, since: days.length ? since(0) : '' }) })),
    }));
  const failing = arr(d.failing_verification);
  main.append(grid, h('section', { class: 'card' },
    h('h2', null, 'Recordings failing verification'),
    table('failing-table', [{ label: 'Session', cls: 'c-id' }, { label: 'Device' }, { label: 'Principal' }, { label: 'Verification', cls: 'c-wide' }],
      failing.map((f) => h('tr', { 'data-session-id': f.id },
        h('td', null, h('a', { href: '#/session/' + enc(f.id), class: 'session-link' }, f.id)),
        h('td', null, f.device), h('td', null, f.principal), h('td', null, badge(f.verification)))),
      'Every recording in this period verifies.'),
    failing.length ? h('p', null, h('a', { href: '#/sessions?verification=failed' }, 'All failing recordings →')) : null));
}

// ---- live ----

function lockForm(after) {
  const kind = h('select', { id: 'lock-kind' }, ['principal', 'device', 'org'].map((k) => h('option', { value: k }, k)));
  const value = h('input', { id: 'lock-value', required: true, placeholder: 'serial, name, device id or org' });
  const reason = h('input', { id: 'lock-reason', required: true, placeholder: 'shown to the locked-out user' });
  const ttl = h('input', { id: 'lock-ttl', placeholder: 'e.g. 2h (empty: until unlocked)' });
  const force = h('input', { id: 'lock-force', type: 'checkbox' });
  const submit = h('button', { id: 'lock-submit', type: 'submit', class: 'danger' }, 'Lock');
  const out = h('p', { class: 'status', role: 'status' });
  const form = h('form', { class: 'card inline', id: 'lock-form' },
    h('h2', null, 'Lock a principal, device or organisation'),
    h('div', { class: 'row' }, field('Kind', kind), field('Value', value), field('Reason', reason), field('Lasts', ttl), h('label', { class: 'check' }, force, ' even if Ward has not seen it yet'), submit), out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError();
    if (!value.value.trim() || !reason.value.trim()) { report(new Error('A lock needs a value and a reason.')); return; }
    const body = { target: { kind: kind.value, value: value.value.trim() }, reason: reason.value.trim() };
    if (ttl.value.trim()) {
      const m = /^(\d+)\s*([smhd]?)$/.exec(ttl.value.trim());
      if (!m) { report(new Error('Lasts: a number with s, m, h or d (e.g. 2h), or empty for until unlocked.')); return; }
      body.ttl = Number(m[1]) * { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2]];
    }
    if (force.checked) body.force = true;
    submit.disabled = true;
    await attempt(async () => {
      const res = await api('/locks', 'POST', body);
      const ended = res && res.ended_sessions;
      const n = Array.isArray(ended) ? ended.length : Number(ended) || 0;
      fill(out, `Locked ${body.target.kind} ${body.target.value}; ${n} live session${n === 1 ? '' : 's'} ended.`);
      value.value = ''; reason.value = ''; ttl.value = ''; force.checked = false;
      if (after) after();
    });
    submit.disabled = false;
  });
  return form;
}

async function live(r, alive) {
  const paused = h('span', { class: 'muted', role: 'status' });
  title('Live now', h('span', { class: 'muted' }, 'refreshed every 2 s'), paused);
  const box = h('div', { class: 'card' });
  main.append(box, lockForm(() => refresh()));
  const cols = [{ label: 'Who', cls: 'c-who' }, { label: 'Device', cls: 'c-dev' }, { label: 'Since', cls: 'c-time' },
    { label: '↑ up', cls: 'c-num' }, { label: '↓ down', cls: 'c-num' }, { label: 'Break-glass', cls: 'c-flag' }, { label: '', cls: 'c-act' }];
  let timer = 0;
  async function refresh() {
    clearTimeout(timer);
    try {
      const d = await api('/live');
      if (!alive()) return;
      const list = Array.isArray(d.sessions) ? d.sessions : [];
      // Keep keyboard focus on the same row's control across refreshes.
      const f = document.activeElement;
      const fr = f && f.closest && f.closest('tr[data-session-id]');
      const keep = fr && box.contains(fr) ? [fr.dataset.sessionId, f.className] : null;
      fill(box, table('live-table', cols, list.map((s) => h('tr', { 'data-session-id': s.id, class: s.break_glass ? 'bg' : null },
        h('td', null, s.principal, h('div', { class: 'muted small' }, s.source || '')),
        h('td', null, s.device, ' ', h('span', { class: 'muted' }, s.protocol || '')),
        h('td', { title: s.since }, when(s.since), h('div', { class: 'muted small' }, ago(s.since_unix))),
        h('td', { class: 'num' }, bytes(s.bytes_up)), h('td', { class: 'num' }, bytes(s.bytes_down)),
        h('td', null, s.break_glass ? h('span', { class: 'badge bad' }, 'yes') : 'no'),
        h('td', null, h('div', { class: 'actions' },
          h('a', { href: '#/watch/' + enc(s.id), class: 'watch-link button' }, 'Watch'),
          h('button', { type: 'button', class: 'end-session danger', onclick: () => askEnd(s, refresh) }, 'End session'))))),
        'No sessions in progress.'));
      if (keep) {
        const row = [...box.querySelectorAll('tr[data-session-id]')].find((x) => x.dataset.sessionId === keep[0]);
        const el = row && keep[1] && row.getElementsByClassName(keep[1].split(' ')[0])[0];
        if (el) el.focus();
      }
    } catch (e) {
      if (!alive()) return;
      report(e);
      if (e.status === 401 || e.status === 403) return;
    }
    if (!alive()) return;
    // Polling is not activity: after the sign-in's idle timeout without a key or click, stop, so
    // an unattended console still times out.
    const idle = (Number(session.me && session.me.idle_timeout_s) || 900) * 1000;
    if (Date.now() - lastActivity > idle) {
      fill(paused, 'Refresh paused: no activity for a while. ', h('button', { type: 'button', onclick: () => { lastActivity = Date.now(); fill(paused); refresh(); } }, 'Resume'));
      return;
    }
    timer = setTimeout(refresh, 2000);
  }
  cleanups.push(() => clearTimeout(timer));
  await refresh();
}

// The end-session dialog (in the page; never window.prompt).
function askEnd(s, after) {
  const reason = document.getElementById('end-reason');
  const confirmB = document.getElementById('end-confirm');
  const msg = document.getElementById('end-error');
  fill(document.getElementById('end-what'), `${s.principal} on ${s.device} (session ${s.id})`);
  reason.value = '';
  msg.hidden = true;
  confirmB.disabled = false;
  confirmB.onclick = async () => {
    if (!reason.value.trim()) {
      msg.textContent = 'Give a reason: the user sees it.';
      msg.hidden = false;
      reason.focus();
      return;
    }
    confirmB.disabled = true;
    try {
      await api('/live/' + enc(s.id) + '/end', 'POST', { reason: reason.value.trim() });
      dialog.close();
      after();
    } catch (e) {
      msg.textContent = e.message;
      msg.hidden = false;
      confirmB.disabled = false;
    }
  };
  dialog.showModal();
  reason.focus();
}
document.getElementById('end-cancel').addEventListener('click', () => dialog.close());
document.getElementById('end-form').addEventListener('submit', (ev) => { ev.preventDefault(); document.getElementById('end-confirm').click(); });

// ---- sessions ----

const SESSION_FILTERS = ['principal', 'device', 'org', 'since', 'until', 'end_reason', 'verification', 'grep', 'op'];

// A page navigator: prev/next links keep the filters in the hash.
function pager(route, q, d) {
  const page = Math.max(1, Number(d.page) || 1);
  const per = Math.max(1, Number(d.per_page) || 50);
  const total = Math.max(0, Number(d.total) || 0);
  const pages = Math.max(page, Math.ceil(total / per), 1) + (d.has_more && page * per >= total ? 1 : 0);
  const to = (p) => { const n = new URLSearchParams(q); n.set('page', String(p)); return '#/' + route + '?' + n.toString(); };
  const prev = h('button', { id: 'pager-prev', type: 'button', disabled: page <= 1, onclick: () => go(to(page - 1)) }, '◀ Previous');
  const next = h('button', { id: 'pager-next', type: 'button', disabled: !d.has_more, onclick: () => go(to(page + 1)) }, 'Next ▶');
  return h('nav', { class: 'pager', 'aria-label': 'Pages' }, prev,
    h('span', { class: 'pageno' }, `page ${page} of ${pages}`, h('span', { class: 'muted' }, ` · ${total} result${total === 1 ? '' : 's'}`)), next);
}

// A filter form whose submit puts the filters in the hash (so links and back/forward work).
function filterForm(route, q, inputs, submitId) {
  const form = h('form', { class: 'card filters', role: 'search' },
    h('div', { class: 'row' }, inputs.map(([name, label, el]) => {
      el.name = name;
      if (!el.id) el.id = 'f-' + name;
      el.value = q.get(name) || '';
      return field(label, el);
    }), h('button', { id: submitId, type: 'submit', class: 'primary' }, 'Search'),
    h('button', { type: 'reset', class: 'link' }, 'Clear')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const n = new URLSearchParams();
    for (const [name, , el] of inputs) if (el.value.trim()) n.set(name, el.value.trim());
    n.set('page', '1');
    go('#/' + route + '?' + n.toString());
  });
  form.addEventListener('reset', (ev) => { ev.preventDefault(); go('#/' + route); });
  return form;
}

const timeHint = 'RFC 3339 (2026-11-14T08:00:00Z) or Unix seconds';
const sel = (opts) => h('select', null, opts.map(([v, l]) => h('option', { value: v }, l)));

async function sessionsPage(r, alive) {
  title('Sessions');
  const q = r.q;
  main.append(filterForm('sessions', q, [
    ['principal', 'Principal', h('input', { placeholder: 'name, serial or org/name' })],
    ['device', 'Device', h('input')],
    ['org', 'Organisation', h('input')],
    ['since', 'Since', h('input', { placeholder: timeHint })],
    ['until', 'Until', h('input', { placeholder: timeHint })],
    ['end_reason', 'End reason', h('input', { placeholder: 'completed, locked, …' })],
    ['verification', 'Verification', sel([['', 'any'], ['ok', 'ok'], ['failed', 'failed'], ['open', 'open'], ['interrupted', 'interrupted']])],
    ['grep', 'Text in the recording', h('input', { id: 'search-grep', placeholder: 'e.g. password' })],
    ['op', 'Operation', h('input', { placeholder: 'dicom:C-STORE' })],
  ], 'search-submit'));
  const filters = {};
  for (const k of SESSION_FILTERS) if (q.get(k)) filters[k] = q.get(k);
  const out = h('section', { class: 'card' }, h('p', { class: 'muted' }, 'Searching…'));
  main.append(out);
  const d = await api('/sessions' + qs({ ...filters, page: q.get('page') || 1, per_page: q.get('per_page') }));
  if (!alive()) return;
  const list = Array.isArray(d.sessions) ? d.sessions : [];
  fill(out, table('sessions-table', [{ label: 'Session', cls: 'c-id' }, { label: 'Start', cls: 'c-time' }, { label: 'Principal', cls: 'c-who' },
    { label: 'Device', cls: 'c-dev' }, { label: 'Length', cls: 'c-num' }, { label: '↑/↓', cls: 'c-num' }, { label: 'End', cls: 'c-wide' }, { label: 'Verification', cls: 'c-ver' }],
  list.map((s) => h('tr', { 'data-session-id': s.id, class: s.break_glass ? 'bg' : null },
    h('td', null, h('a', { href: '#/session/' + enc(s.id), class: 'session-link' }, s.id), s.break_glass ? h('span', { class: 'badge bad' }, 'BG') : null),
    h('td', null, when(s.start)), h('td', null, s.principal), h('td', null, s.device, ' ', h('span', { class: 'muted' }, s.protocol)),
    h('td', { class: 'num' }, dur(s.duration_s)), h('td', { class: 'num' }, '↑ ' + bytes(s.bytes_up), h('br'), '↓ ' + bytes(s.bytes_down)),
    h('td', null, s.end_reason, Array.isArray(s.ops) && s.ops.length ? h('div', { class: 'muted small' }, s.ops.join(', ')) : null),
    h('td', null, badge(s.verification)))),
  'No session matches. Widen the filters.'), pager('sessions', q, d));
}

async function detail(r, alive) {
  const id = r.arg;
  title('Session ' + id);
  const d = await api('/sessions/' + enc(id));
  if (!alive()) return;
  const s = d.session || {};
  const kv = (k, v) => [h('dt', null, k), h('dd', null, v == null || v === '' ? '—' : v)];
  const failed = String(s.verification || '').startsWith('FAILED');
  const fmts = [['asciicast', 'asciicast (.cast)', 'cast'], ['pcap', 'pcap', 'pcap'], ['raw&dir=down', 'raw, device → client', 'down.bin'],
    ['raw&dir=up', 'raw, client → device', 'up.bin'], ['json', 'JSON', 'json']];
  const base = '/api/v1/sessions/' + enc(id) + '/export?format=';
  const force = failed ? '&force=true' : '';
  main.append(h('div', { class: 'split' },
    h('section', { class: 'card' }, h('h2', null, 'Metadata'), h('dl', { class: 'kv' },
      kv('Principal', s.principal), kv('Serial', s.serial), kv('Device', s.device + ' (' + (s.protocol || '?') + ')'),
      kv('Source', s.source), kv('Start', when(s.start)), kv('Length', dur(s.duration_s)),
      kv('Bytes', '↑ ' + bytes(s.bytes_up) + '  ↓ ' + bytes(s.bytes_down)),
      kv('Decision', s.rule ? h('span', null, 'permitted by rule ', h('code', null, s.rule)) : null),
      kv('Break-glass', s.break_glass ? h('span', { class: 'badge bad' }, 'yes') : 'no'),
      kv('End', s.end_reason), kv('Verification', badge(s.verification)),
      Array.isArray(s.ops) && s.ops.length ? kv('Operations', s.ops.join(', ') + (s.ops_truncated ? ' …' : '')) : null,
      s.denied_ops ? kv('Refused operations', s.denied_ops) : null,
      s.undecodable ? kv('Undecodable', s.undecodable) : null)),
    h('section', { class: 'card' }, h('h2', null, 'Exports'),
      h('p', { class: failed ? 'error' : 'muted' }, failed ? 'This recording fails verification: the exports hold only its verified records. Each download is audited.' : 'Each download is audited.'),
      h('ul', { class: 'exports' }, fmts.map(([f, l, ext]) => h('li', null, h('a', { href: base + f + force, download: `${id}.${ext}`, class: 'button' }, l)))),
      s.end_reason === 'open' ? h('p', null, h('a', { href: '#/watch/' + enc(id) }, 'Watch live →')) : null)));
  const view = h('section', { class: 'card' }, h('h2', null, d.terminal ? 'Player' : 'Bytes'));
  const box = h('div');
  view.append(box);
  main.append(view);
  cleanups.push(d.terminal ? player(box, id, report) : hexView(box, id, report));
  main.append(h('section', { class: 'card' }, h('h2', null, 'Audit events'), auditTable(Array.isArray(d.audit) ? d.audit : [], 'session-audit')));
}

async function watchPage(r) {
  title('Watching ' + r.arg, h('a', { href: '#/session/' + enc(r.arg) }, 'session details'));
  const box = h('section', { class: 'card' });
  main.append(box);
  cleanups.push(watch(box, r.arg, report));
}

// ---- audit ----

function auditTable(events, id) {
  const known = new Set(['time', 'event', 'outcome', 'severity', 'principal', 'source', 'device', 'session_id', 'session', 'reason', 'detail', 'chain', 'seq']);
  return table(id, [{ label: 'Time', cls: 'c-time' }, { label: 'Event', cls: 'c-ev' }, { label: 'Outcome', cls: 'c-flag' }, { label: 'Who', cls: 'c-who' },
    { label: 'Device', cls: 'c-dev' }, { label: 'Session', cls: 'c-id' }, { label: 'Reason and details', cls: 'c-wide' }],
  events.map((e) => {
    const extra = Object.assign({}, e.detail && typeof e.detail === 'object' ? e.detail : {});
    for (const [k, v] of Object.entries(e)) if (!known.has(k)) extra[k] = v;
    const sid = e.session_id || e.session;
    return h('tr', { class: 'sev-' + String(e.severity || '').replace(/[^a-z]/g, '') },
      h('td', null, when(e.time)), h('td', null, e.event, h('div', { class: 'muted small' }, e.severity)),
      h('td', null, h('span', { class: 'badge ' + (e.outcome === 'success' ? 'ok' : 'bad') }, e.outcome)),
      h('td', null, who(e.principal), e.source ? h('div', { class: 'muted small' }, e.source) : null),
      h('td', null, e.device), h('td', null, sid ? h('a', { href: '#/session/' + enc(sid) }, sid) : ''),
      h('td', null, e.reason || '', Object.keys(extra).length ? h('div', { class: 'muted small' },
        Object.entries(extra).map(([k, v]) => k + '=' + (typeof v === 'string' ? v : JSON.stringify(v))).join('  ')) : null));
  }), 'No audit events match.');
}

async function audit(r, alive) {
  title('Audit log');
  const q = r.q;
  main.append(filterForm('audit', q, [
    ['event', 'Event', h('input', { placeholder: 'session_open,lock' })],
    ['principal', 'Principal', h('input')],
    ['device', 'Device', h('input')],
    ['session', 'Session', h('input')],
    ['severity', 'Severity', sel([['', 'any'], ['info', 'info'], ['warning', 'warning'], ['medium', 'medium'], ['high', 'high']])],
    ['outcome', 'Outcome', sel([['', 'any'], ['success', 'success'], ['failure', 'failure'], ['denied', 'denied']])],
    ['since', 'Since', h('input', { placeholder: timeHint })],
    ['until', 'Until', h('input', { placeholder: timeHint })],
  ], 'audit-submit'));
  const filters = {};
  for (const k of ['event', 'principal', 'device', 'session', 'severity', 'outcome', 'since', 'until']) if (q.get(k)) filters[k] = q.get(k);
  const d = await api('/audit' + qs({ ...filters, page: q.get('page') || 1, per_page: q.get('per_page') }));
  if (!alive()) return;
  const c = d.chain || {};
  main.insertBefore(h('div', { id: 'chain-status', class: 'chain ' + (c.ok ? 'ok' : 'bad'), role: c.ok ? 'status' : 'alert' },
    h('strong', null, c.ok ? '✔ Audit chain verified' : '✘ Audit chain BROKEN'),
    ` — ${Number(c.lines) || 0} lines, ${Number(c.checkpoints) || 0} signed checkpoints`,
    c.detail ? h('div', null, String(c.detail)) : null), main.children[1] || null);
  main.append(h('section', { class: 'card' }, auditTable(Array.isArray(d.events) ? d.events : [], 'audit-table'), pager('audit', q, d)));
}

// ---- access requests ----

async function requests(r, alive) {
  const all = r.q.get('all') === 'true';
  title('Access requests', h('a', { href: all ? '#/requests' : '#/requests?all=true' }, all ? 'Show open requests only' : 'Show all, including decided'));
  const d = await api('/requests' + qs({ all }));
  if (!alive()) return;
  const me = session.me || {};
  const list = Array.isArray(d.requests) ? d.requests : [];
  const act = (q, verb, input) => attempt(async () => {
    const reason = input.value.trim();
    if (verb === 'deny' && !reason) throw new Error('Give a reason to deny: the requester sees it.');
    await api('/requests/' + enc(q.id) + '/' + verb, 'POST', reason ? { reason } : {});
    if (alive()) route();
  });
  main.append(h('section', { class: 'card' }, table('requests-table',
    [{ label: 'Request', cls: 'c-id' }, { label: 'Requester', cls: 'c-who' }, { label: 'Device', cls: 'c-dev' }, { label: 'Reason', cls: 'c-wide' },
      { label: 'Window', cls: 'c-time' }, { label: 'State', cls: 'c-flag' }, { label: 'Decide', cls: 'c-dec' }],
    list.map((q) => {
      const rq = q.requester || {};
      const mine = rq.name === me.name && rq.kind === me.kind;
      const state = q.state_now || q.state;
      const input = h('input', { class: 'reason', 'aria-label': 'Reason for request ' + q.id, placeholder: 'reason' });
      return h('tr', { 'data-request-id': q.id, class: mine ? 'mine' : null },
        h('td', null, q.id, h('div', { class: 'muted small' }, q.policy ? 'policy ' + q.policy : '')),
        h('td', null, who(rq), mine ? h('span', { class: 'badge warn' }, 'you') : null),
        h('td', null, q.device), h('td', null, q.reason),
        h('td', null, when(q.start), h('div', { class: 'muted small' }, 'to ' + when(q.end))),
        h('td', null, h('span', { class: 'badge ' + (state === 'approved' ? 'ok' : state === 'pending' ? 'warn' : 'bad') }, state),
          Array.isArray(q.approvals) && q.approvals.length ? h('div', { class: 'muted small' }, 'approved by ' + q.approvals.join(', ')) : null),
        h('td', null, state === 'pending' && !mine ? h('div', { class: 'actions' }, input,
          h('button', { type: 'button', class: 'approve primary', onclick: () => act(q, 'approve', input) }, 'Approve'),
          h('button', { type: 'button', class: 'deny danger', onclick: () => act(q, 'deny', input) }, 'Deny')) : '—'));
    }), all ? 'No requests.' : 'No open requests.')));
}

// ---- devices and locks ----

async function devices(r, alive) {
  title('Devices and locks');
  const [dv, lk] = await Promise.all([api('/devices'), isStaff() ? api('/locks') : null]);
  if (!alive()) return;
  const list = Array.isArray(dv.devices) ? dv.devices : [];
  // `reach`: the inventory's [{via, name, who, approvers, until}] (security staff), or for others
  // how they themselves may reach the device (`request`, `break_glass`, …).
  const whoView = (w) => (!w ? '' : typeof w === 'string' ? w : [w.kind || 'anyone', w.org ? 'of ' + w.org : '',
    w.name ? 'named ' + w.name : '', Array.isArray(w.roles) && w.roles.length ? 'with role ' + w.roles.join(' + ') : ''].filter(Boolean).join(' '));
  const reachCell = (d) => {
    if (Array.isArray(d.reach)) {
      if (!d.reach.length) return 'nobody';
      return h('ul', { class: 'reach' }, d.reach.map((r) => h('li', null, h('span', { class: 'muted' }, String(r.via || '').replace(/_/g, '-') + ' '),
        r.name ? h('code', null, r.name) : null, ': ', whoView(r.who),
        Array.isArray(r.approvers) && r.approvers.length ? '; approved by ' + r.approvers.map(whoView).join(' and ') : '',
        r.until ? '; until ' + when(r.until) : '')));
    }
    const how = d.reach && d.reach !== 'open' ? 'you, by ' + String(d.reach).replace(/_/g, ' ') : 'you, now';
    return d.rule ? how + ' (rule ' + d.rule + ')' : how;
  };
  const ops = (o) => {
    if (!o) return '—';
    if (typeof o === 'string') return o;
    const a = Array.isArray(o.allow) && o.allow.length ? 'allow ' + o.allow.join(', ') : 'all operations';
    return a + (Array.isArray(o.deny) && o.deny.length ? '; deny ' + o.deny.join(', ') : '');
  };
  main.append(h('section', { class: 'card' }, h('h2', null, 'Devices'), table('devices-table',
    [{ label: 'Device', cls: 'c-dev' }, { label: 'Protocol', cls: 'c-flag' }, { label: 'Labels', cls: 'c-who' }, { label: 'Who may reach it', cls: 'c-wide' }, { label: 'Operations', cls: 'c-wide' }],
    list.map((d) => h('tr', { 'data-device-id': d.id },
      h('td', null, h('a', { href: '#/sessions' + qs({ device: d.id }) }, d.id), d.tls ? h('span', { class: 'badge ok' }, 'TLS') : null,
        d.address ? h('div', { class: 'muted small' }, d.address) : null),
      h('td', null, d.protocol), h('td', null, Object.entries(d.labels || {}).map(([k, v]) => k + '=' + v).join(', ')),
      h('td', null, reachCell(d)), h('td', null, ops(d.operations)))), 'No devices configured.')));
  if (!lk) return;
  const locks = Array.isArray(lk.locks) ? lk.locks : [];
  main.append(h('section', { class: 'card' }, h('h2', null, 'Active locks'), table('locks-table',
    [{ label: 'Target', cls: 'c-dev' }, { label: 'Reason', cls: 'c-wide' }, { label: 'By', cls: 'c-who' }, { label: 'Until', cls: 'c-time' }, { label: '', cls: 'c-act' }],
    locks.map((l) => {
      const t = l.target || {};
      return h('tr', { 'data-lock': t.kind + ':' + t.value },
        h('td', null, h('span', { class: 'muted' }, t.kind + ' '), t.value), h('td', null, l.reason), h('td', null, l.by),
        h('td', null, l.until ? when(l.until) : 'until unlocked'),
        h('td', null, h('button', { type: 'button', class: 'unlock', onclick: () => attempt(async () => {
          await api('/locks/' + enc(t.kind) + '/' + enc(t.value), 'DELETE');
          if (alive()) route();
        }) }, 'Unlock')));
    }), 'No locks.')), lockForm(() => { if (alive()) route(); }));
}

// ---- my devices and the web terminal ----

// A break-glass justification typed on #/my, handed to the terminal page (never put in the URL).
let pendingBreakGlass = null;
// What the last request form did, shown once on the reloaded #/my.
let myFlash = '';

const ACCESS_TEXT = { open: 'open now', request: 'by request', pending: 'request pending', break_glass: 'break-glass only', none: 'not now' };
const ACCESS_BADGE = { open: 'ok', request: 'warn', pending: 'warn', break_glass: 'bad', none: 'bad' };

async function myDevices(r, alive) {
  title('My devices', h('span', { class: 'muted' }, 'what you may open now, request, or open in an emergency'));
  const d = await api('/my/devices');
  if (!alive()) return;
  const list = Array.isArray(d.devices) ? d.devices : [];
  const origin = typeof d.consoles_origin === 'string' ? d.consoles_origin : null;
  const forms = h('div');
  const out = h('p', { id: 'my-status', class: 'status', role: 'status' }, myFlash);
  myFlash = '';
  const openCell = (x) => {
    if (x.access !== 'open') return null;
    if (x.console === 'terminal') return h('a', { id: 'open-' + x.id, class: 'button primary open', href: '#/terminal/' + enc(x.id) }, 'Open terminal');
    if (x.console === 'http' && origin) return h('a', { id: 'open-' + x.id, class: 'button primary open', href: origin + '/d/' + enc(x.id) + '/', target: '_blank', rel: 'noopener noreferrer' }, 'Open console ↗');
    return h('span', { class: 'muted small' }, 'no browser console for ' + String(x.protocol || 'this protocol') + ': use ward connect');
  };
  const rows = list.map((x) => h('tr', { 'data-device-id': x.id, class: 'access-' + String(x.access || '').replace(/[^a-z_]/g, '') },
    h('td', null, h('strong', null, x.id), h('div', { class: 'muted small' }, Object.entries(x.labels || {}).map(([k, v]) => k + '=' + v).join(', '))),
    h('td', null, x.protocol),
    h('td', null, h('span', { class: 'badge ' + (ACCESS_BADGE[x.access] || 'warn') }, ACCESS_TEXT[x.access] || String(x.access || ''))),
    h('td', { class: 'why' }, String(x.why || ''), x.request_id ? h('div', { class: 'muted small' }, 'request ' + x.request_id) : null),
    h('td', null, h('div', { class: 'actions' },
      openCell(x),
      x.access === 'request' ? h('button', { id: 'request-' + x.id, type: 'button', class: 'request', onclick: () => requestForm(forms, x, out) }, 'Request access') : null,
      x.break_glass_requires && x.console === 'terminal' ? h('button', { id: 'breakglass-' + x.id, type: 'button', class: 'danger breakglass', onclick: () => breakGlassForm(forms, x) }, 'Break glass') : null))));
  main.append(h('section', { class: 'card' }, table('my-devices',
    [{ label: 'Device', cls: 'c-dev' }, { label: 'Protocol', cls: 'c-flag' }, { label: 'Access', cls: 'c-time' }, { label: 'Why', cls: 'c-wide' }, { label: '', cls: 'c-dec' }],
    rows, 'No device is open to you, by request or by break-glass. Ask security staff for a rule.'), out), forms);
}

// The request form for device x (reason, start, duration), answered by the access service.
function requestForm(box, x, out) {
  const reason = h('input', { id: 'my-request-reason', required: true, placeholder: 'e.g. firmware update 2.1', maxlength: 2000 });
  const start = h('input', { id: 'my-request-start', type: 'datetime-local', 'aria-describedby': 'my-request-start-hint' });
  const duration = h('input', { id: 'my-request-duration', required: true, value: '2h', placeholder: '30m, 2h, 1d' });
  const submit = h('button', { id: 'my-request-submit', type: 'submit', class: 'primary' }, 'Send request');
  const err = h('p', { id: 'my-request-error', class: 'error', role: 'alert', hidden: true });
  const form = h('form', { id: 'my-request-form', class: 'card inline', 'data-device': x.id, novalidate: true },
    h('h2', null, 'Request access to ' + x.id),
    h('p', { class: 'muted' }, String(x.why || '')),
    h('div', { class: 'row' }, field('Reason (approvers read it)', reason), field('Start (your local time; empty: now)', start),
      field('Duration', duration), submit), h('small', { id: 'my-request-start-hint', class: 'muted' }, 'The request waits for approval; you can open the device once it is approved, within its window.'), err);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    if (!reason.value.trim() || !duration.value.trim()) {
      err.textContent = 'Give a reason and a duration (e.g. 2h).';
      err.hidden = false;
      return;
    }
    let startUnix = null;
    if (start.value) {
      const t = Date.parse(start.value);
      if (isNaN(t)) { err.textContent = 'The start is not a date and time.'; err.hidden = false; return; }
      startUnix = Math.floor(t / 1000);
    }
    submit.disabled = true;
    try {
      const res = await api('/my/requests', 'POST', { device: x.id, reason: reason.value.trim(), start: startUnix, duration: duration.value.trim() });
      const q = (res && res.request) || {};
      myFlash = 'Request ' + String(q.id || '') + ' for ' + x.id + ' sent; it waits for approval (policy ' + String(q.policy || '') + ').';
      box.replaceChildren();
      route();
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  fill(box, form);
  reason.focus();
}

// The break-glass form for device x: the justification the device's setting requires.
function breakGlassForm(box, x) {
  const reason = h('textarea', { id: 'my-breakglass-reason', required: true, rows: 3, maxlength: 2000 });
  const submit = h('button', { id: 'my-breakglass-submit', type: 'submit', class: 'danger' }, 'Open in an emergency');
  const err = h('p', { id: 'my-breakglass-error', class: 'error', role: 'alert', hidden: true });
  const form = h('form', { id: 'my-breakglass-form', class: 'card', 'data-device': x.id, novalidate: true },
    h('h2', null, 'Break glass: ' + x.id),
    h('p', null, 'Your justification must say ', h('strong', { id: 'my-breakglass-requires' }, String(x.break_glass_requires || '')), '.'),
    field('Justification', reason), err, h('div', { class: 'row end' }, submit));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (!reason.value.trim()) {
      err.textContent = 'Write the justification: break-glass is refused without one.';
      err.hidden = false;
      reason.focus();
      return;
    }
    pendingBreakGlass = { device: x.id, reason: reason.value.trim() };
    go('#/terminal/' + enc(x.id));
  });
  fill(box, form);
  reason.focus();
}

async function terminalPage(r) {
  const device = r.arg;
  if (!device) { go('#/my'); return; }
  const bg = pendingBreakGlass && pendingBreakGlass.device === device ? pendingBreakGlass.reason : null;
  pendingBreakGlass = null;
  title((bg ? 'Break-glass terminal: ' : 'Terminal: ') + device, h('a', { href: '#/my' }, '← My devices'));
  const box = h('section', { class: 'card term-card' + (bg ? ' bg' : '') });
  main.append(box);
  cleanups.push(terminal(box, device, { breakGlass: bg }));
}

window.addEventListener('hashchange', route);
route();
