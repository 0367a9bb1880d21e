// Ward console: SVG bar charts drawn by the page itself (no chart library). Every bar is a link
// to the list behind it and carries a <title> tooltip.
import { h } from './util.js';

const NS = 'http://www.w3.org/2000/svg';

function s(tag, attrs, ...kids) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) e.setAttribute(k, String(v));
  for (const k of kids) if (k != null) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

// A round axis maximum and its tick step.
function scale(max) {
  if (max <= 0) return { top: 1, step: 1 };
  const raw = max / 4;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((x) => x >= raw);
  const st = Math.max(1, step);
  return { top: Math.ceil(max / st) * st, step: st };
}

let uid = 0;

// A stacked column chart. labels: x labels; series: [{key, counts}]; href(seriesIndex, i) → a hash
// link; tip(seriesIndex, i, n) → tooltip text.
export function columns({ title, labels, series, href, tip, yLabel }) {
  const W = 640, H = 230, L = 44, R = 8, T = 10, B = 42;
  const id = 'chart-' + ++uid;
  const totals = labels.map((_, i) => series.reduce((a, se) => a + (Number(se.counts[i]) || 0), 0));
  const { top, step } = scale(Math.max(0, ...totals));
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const bw = (W - L - R) / Math.max(1, labels.length);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': id, class: 'chart' },
    s('title', { id }, title));
  for (let v = 0; v <= top; v += step) {
    svg.append(s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }),
      s('text', { x: L - 6, y: y(v) + 4, class: 'ytick' }, v));
  }
  if (yLabel) svg.append(s('text', { x: 12, y: T + (H - T - B) / 2, class: 'ylabel', transform: `rotate(-90 12 ${T + (H - T - B) / 2})` }, yLabel));
  const every = Math.ceil(labels.length / 10);
  labels.forEach((lab, i) => {
    const x = L + i * bw;
    let acc = 0;
    series.forEach((se, k) => {
      const n = Number(se.counts[i]) || 0;
      if (!n) return;
      const y0 = y(acc), y1 = y(acc + n);
      acc += n;
      const a = s('a', { href: href(k, i), class: 's' + (k % 8) },
        s('title', null, tip(k, i, n)),
        s('rect', { x: x + bw * 0.12, y: y1, width: Math.max(1, bw * 0.76), height: Math.max(1, y0 - y1) }));
      a.setAttribute('aria-label', tip(k, i, n));
      svg.append(a);
    });
    if ((labels.length - 1 - i) % every === 0) svg.append(s('text', { x: x + bw / 2, y: H - B + 16, class: 'xtick' }, String(lab).slice(5)));
  });
  svg.append(s('line', { x1: L, x2: W - R, y1: y(0), y2: y(0), class: 'axis' }));
  const fig = h('figure', { class: 'card' }, h('figcaption', null, title), svg);
  if (!totals.some((t) => t > 0)) fig.append(h('p', { class: 'muted' }, 'Nothing in this period.'));
  if (series.length > 1 || (series[0] && series[0].key)) {
    fig.append(h('ul', { class: 'legend' }, series.map((se, k) =>
      h('li', null, h('span', { class: 'sw s' + (k % 8) }), se.key || '—'))));
  }
  return fig;
}

// A horizontal bar chart: items [{label, n, href}].
export function bars({ title, items, unit }) {
  const W = 640, L = 200, R = 50, row = 24;
  const H = Math.max(1, items.length) * row + 8;
  const id = 'chart-' + ++uid;
  const max = Math.max(1, ...items.map((i) => i.n));
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': id, class: 'chart' },
    s('title', { id }, title));
  items.forEach((it, i) => {
    const yy = 4 + i * row;
    const w = ((W - L - R) * it.n) / max;
    const label = it.label.length > 28 ? it.label.slice(0, 27) + '…' : it.label;
    const tip = it.label + ': ' + it.n + ' ' + unit;
    const a = s('a', { href: it.href, class: 's0', 'aria-label': tip },
      s('title', null, tip),
      s('text', { x: L - 8, y: yy + 15, class: 'ylab' }, label),
      s('rect', { x: L, y: yy + 3, width: Math.max(1, w), height: row - 8 }),
      s('text', { x: L + w + 6, y: yy + 15, class: 'val' }, it.n));
    svg.append(a);
  });
  const fig = h('figure', { class: 'card' }, h('figcaption', null, title), svg);
  if (!items.length) fig.append(h('p', { class: 'muted' }, 'Nothing in this period.'));
  return fig;
}
