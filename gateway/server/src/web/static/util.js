// Ward console: shared helpers. Every element is built with createElement and filled with
// textContent: text from devices, users and peers is never parsed as markup.

// The signed-in caller (GET /api/v1/whoami), or null.
export const session = { me: null };

// An element: h('td', {class: 'x', title: t, onclick: f}, 'text', child, [more]).
export function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'value') e.value = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  add(e, kids);
  return e;
}

function add(e, kids) {
  for (const k of kids) {
    if (k == null || k === false) continue;
    if (Array.isArray(k)) add(e, k);
    else e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
}

// Replace an element's children.
export function fill(e, ...kids) {
  e.replaceChildren();
  add(e, kids);
  return e;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Calls the JSON API. POST/DELETE carry the CSRF token and a JSON body; a 401 sends the browser
// to sign-in; an error answer throws ApiError with the API's reason.
export async function api(path, method = 'GET', body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    if (session.me && session.me.csrf) headers['X-Ward-CSRF'] = session.me.csrf;
  }
  let r;
  try {
    r = await fetch('/api/v1' + path, {
      method,
      headers,
      credentials: 'same-origin',
      body: method === 'GET' ? undefined : JSON.stringify(body === undefined ? {} : body),
    });
  } catch (e) {
    throw new ApiError(0, 'the gateway did not answer (' + e.message + '); check the connection and retry');
  }
  if (r.status === 204) return null;
  let data = null;
  try {
    data = await r.json();
  } catch (e) {
    data = null;
  }
  if (r.status === 401 && path !== '/signin') {
    session.me = null;
    if (!location.hash.startsWith('#/signin')) {
      sessionStorage.setItem('ward-next', location.hash);
      location.hash = '#/signin';
    }
  }
  if (!r.ok) {
    const why = data && typeof data.error === 'string' ? data.error : r.status + ' ' + r.statusText;
    throw new ApiError(r.status, why);
  }
  return data;
}

// URL-encoded query from an object, skipping empty values.
export function qs(o) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(o)) if (v != null && v !== '') p.set(k, String(v));
  const s = p.toString();
  return s ? '?' + s : '';
}

export const enc = encodeURIComponent;

export function bytes(n) {
  n = Number(n) || 0;
  if (n < 1024) return n + ' B';
  const u = ['KiB', 'MiB', 'GiB', 'TiB'];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + ' ' + u[i];
}

export function dur(s) {
  s = Math.max(0, Number(s) || 0);
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = Math.floor(s % 60);
  if (hh) return hh + 'h ' + mm + 'm';
  if (mm) return mm + 'm ' + ss + 's';
  return (s < 10 ? s.toFixed(1) : ss) + 's';
}

// 'm:ss.t' for the player's clock.
export function clock(s) {
  s = Math.max(0, Number(s) || 0);
  const m = Math.floor(s / 60);
  const r = s - m * 60;
  return m + ':' + (r < 10 ? '0' : '') + r.toFixed(1);
}

// An RFC 3339 time shown compactly, in UTC (the audit log's zone).
export function when(t) {
  if (!t) return '';
  const d = new Date(t);
  if (isNaN(d)) return String(t);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function ago(unix) {
  const s = Math.max(0, Date.now() / 1000 - Number(unix));
  return dur(s) + ' ago';
}

// A verification status as a coloured badge.
export function badge(text) {
  const t = String(text || '');
  const cls = t === 'ok' ? 'ok' : t.startsWith('FAILED') || t === 'failed' ? 'bad' : 'warn';
  return h('span', { class: 'badge ' + cls, title: t }, t || '—');
}

// A labelled form field.
export function field(label, input, hint) {
  return h('label', { class: 'field' }, h('span', null, label), input, hint ? h('small', null, hint) : null);
}

// A table: columns [{label, cls}], rows of <tr>.
export function table(id, cols, rows, empty) {
  const t = h('table', { id, class: 'grid' },
    h('colgroup', null, cols.map((c) => h('col', { class: c.cls || null }))),
    h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col' }, c.label)))),
    h('tbody', null, rows));
  if (!rows.length) t.tBodies[0].append(h('tr', { class: 'empty' }, h('td', { colspan: cols.length }, empty || 'Nothing here.')));
  return t;
}

// "principal" cell text from an audit principal object or a plain string.
export function who(p) {
  if (!p) return '';
  if (typeof p === 'string') return p;
  return (p.kind ? p.kind + ' ' : '') + (p.org ? p.org + '/' : '') + (p.name || '');
}
