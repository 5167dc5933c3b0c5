// The operator page: fetches <prefix>/admin/summary.json and draws it as SVG, by hand.
// No library and nothing from another origin: the page's Content-Security-Policy allows only
// this script, its stylesheet and requests to this origin. Every bar and point carries its figure
// in data-value and in a <title> (the browser's tooltip), exactly as the server computed it.

const API = document.body.dataset.api;
const TOKEN_KEY = 'llm-proxy-admin-token';
const SVG = 'http://www.w3.org/2000/svg';
const PALETTE = ['#2f5bd3', '#e07b39', '#3a9d5d', '#c23b6e', '#8a63d2', '#d4b026', '#2aa3b8', '#7c8795', '#a0522d', '#5f9e3f'];
const W = 560, H = 210, M = { l: 54, r: 10, t: 10, b: 26 };

const $ = (sel) => document.querySelector(sel);
let current = null;  // the query of the summary on screen

function el(name, attrs = {}, ...children) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  for (const c of children) e.append(c);
  return e;
}

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') e.textContent = v; else e.setAttribute(k, String(v));
  }
  for (const c of children) e.append(c);
  return e;
}

function tooltip(text) { const t = el('title'); t.textContent = text; return t; }

// ---- formatting: tooltips and data-value keep the server's exact figures

const fmtInt = (v) => (v == null ? '–' : Number(v).toLocaleString('en-US'));
const fmtUsd = (v) => (v == null ? '–' : `$${Number(v).toFixed(v >= 100 ? 2 : 4)}`);
const fmtRate = (v) => (v == null ? '–' : `${(v * 100).toFixed(1)}%`);
const fmtMs = (v) => (v == null ? '–' : `${v} ms`);

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function axisLabel(v, unit) {
  if (unit === 'usd') return v >= 1 ? `$${v.toFixed(v < 10 ? 1 : 0)}` : `$${v.toPrecision(2)}`;
  if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(2)}`;
}

function shortBucket(b) { return b.length > 10 ? b.slice(11, 16) : b.slice(5); }  // "13:00" or "11-20"

// ---- charts

function frame(buckets, max, unit) {
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
  const ph = H - M.t - M.b;
  const axis = el('g', { class: 'axis' });
  for (const f of [0, 0.5, 1]) {
    const y = M.t + ph - f * ph;
    axis.append(el('line', { class: 'grid', x1: M.l, x2: W - M.r, y1: y, y2: y }));
    axis.append(el('text', { x: M.l - 6, y: y + 3, 'text-anchor': 'end' }, axisLabel(max * f, unit)));
  }
  const band = (W - M.l - M.r) / buckets.length;
  const every = Math.max(1, Math.ceil(buckets.length / 8));
  buckets.forEach((b, i) => {
    const last = i === buckets.length - 1;
    if (last || (i % every === 0 && buckets.length - 1 - i >= every)) {  // no label crowds the last one
      axis.append(el('text', { x: M.l + band * (i + 0.5), y: H - 8, 'text-anchor': 'middle' }, shortBucket(b)));
    }
  });
  svg.append(axis);
  return { svg, band, y: (v) => M.t + ph - (v / max) * ph, ph };
}

function legend(series) {
  const box = h('div', { class: 'legend' });
  for (const s of series) {
    const sw = h('span', { class: 'sw' });
    sw.style.background = s.color;  // CSSOM, which the policy allows (no inline style attribute)
    box.append(h('span', {}, sw, s.name));
  }
  return box;
}

function mount(name, svg, series, note) {
  const fig = document.querySelector(`figure[data-chart="${name}"]`);
  for (const old of fig.querySelectorAll('svg, .legend, .empty-note')) old.remove();
  fig.append(svg);
  if (series && series.length) fig.append(legend(series));
  if (note) fig.append(h('div', { class: 'legend empty-note', text: note }));
}

// series: [{name, color, values: [number per bucket]}]; one rect per non-zero value
function barChart(name, buckets, series, { unit = 'count', fmt = fmtInt, label = '' } = {}) {
  const totals = buckets.map((_, i) => series.reduce((a, s) => a + (s.values[i] || 0), 0));
  const f = frame(buckets, niceMax(Math.max(0, ...totals)), unit);
  const bars = el('g', { class: 'bars' });
  buckets.forEach((b, i) => {
    let base = 0;
    for (const s of series) {
      const v = s.values[i] || 0;
      if (v <= 0) continue;
      const y0 = f.y(base), y1 = f.y(base + v);
      base += v;
      bars.append(el('rect', {
        class: 'bar', x: M.l + f.band * i + f.band * 0.15, width: Math.max(1, f.band * 0.7), y: y1,
        height: Math.max(0.5, y0 - y1), fill: s.color, 'data-bucket': b, 'data-series': s.name, 'data-value': v,
      }, tooltip(`${b} · ${s.name}: ${fmt(v)}${label}`)));
    }
  });
  f.svg.append(bars);
  mount(name, f.svg, series.length > 1 ? series : null, totals.every((t) => t === 0) ? 'nothing in this range' : null);
}

// series: [{name, color, values: [number|null per bucket]}]; one circle per value, a line through them
function pointChart(name, buckets, series, { fmt = fmtMs } = {}) {
  const all = series.flatMap((s) => s.values.filter((v) => v != null));
  const f = frame(buckets, niceMax(Math.max(0, ...all)), 'ms');
  const g = el('g', { class: 'points' });
  for (const s of series) {
    const pts = [];
    s.values.forEach((v, i) => { if (v != null) pts.push([M.l + f.band * (i + 0.5), f.y(v), v, buckets[i]]); });
    if (pts.length > 1) {
      g.append(el('path', { class: 'line', stroke: s.color, d: pts.map((p, j) => `${j ? 'L' : 'M'}${p[0].toFixed(1)},${p[1].toFixed(1)}`).join('') }));
    }
    for (const [x, y, v, b] of pts) {
      g.append(el('circle', { class: 'point', cx: x, cy: y, r: 3, fill: s.color, 'data-bucket': b, 'data-series': s.name, 'data-value': v },
        tooltip(`${b} · ${s.name}: ${fmt(v)}`)));
    }
  }
  f.svg.append(g);
  mount(name, f.svg, series, all.length ? null : 'no timings in this range');
}

// ---- the page

function colorsFor(names) { return Object.fromEntries(names.map((n, i) => [n, PALETTE[i % PALETTE.length]])); }

function render(s) {
  const rows = s.range.grain === 'hour' ? s.by_hour : s.by_day;
  const buckets = rows.map((r) => r.bucket);
  for (const g of document.querySelectorAll('.grain')) g.textContent = s.range.grain;
  $('#range-label').textContent = `${s.range.since} – ${s.range.until} (UTC), ${rows.length} ${s.range.grain}s · ledger: ${s.ledger}`;

  const kpis = [
    ['requests', 'Requests', s.requests, fmtInt], ['active_users', 'Active users', s.active_users, fmtInt],
    ['input_tokens', 'Input tokens', s.input_tokens, fmtInt], ['output_tokens', 'Output tokens', s.output_tokens, fmtInt],
    ['cost_usd', 'Cost (USD)', s.cost_usd, fmtUsd], ['error_rate', 'Error rate', s.error_rate, fmtRate],
    ['cancelled', 'Cancelled', s.cancelled, fmtInt],
  ];
  for (const [p, t] of Object.entries(s.ttfb_by_provider)) {
    kpis.push([`ttfb_p50:${p}`, `First token p50 · ${p}`, t.p50_ms, fmtMs], [`ttfb_p95:${p}`, `First token p95 · ${p}`, t.p95_ms, fmtMs]);
  }
  if (s.cached) kpis.push(['cache_hit_rate', 'Cache hit rate', s.cache_hit_rate, fmtRate]);
  if (s.queue.count) kpis.push(['queue_p95', 'Queue wait p95', s.queue.p95_ms, fmtMs]);
  if (s.worker_lost) kpis.push(['worker_lost', 'Lost with a worker', s.worker_lost, fmtInt]);
  $('#kpis').replaceChildren(...kpis.map(([key, name, v, fmt]) =>
    h('div', { class: 'kpi', 'data-kpi': key, 'data-value': v ?? '' }, h('span', { class: 'v', text: fmt(v) }), h('span', { class: 'k', text: name }))));

  const mc = colorsFor(s.models);
  const byModel = (field) => s.models.map((m) => ({ name: m, color: mc[m], values: rows.map((r) => (r.by_model[m] ? r.by_model[m][field] : 0)) }));
  barChart('requests', buckets, byModel('requests'), { label: ' requests' });
  barChart('tokens', buckets, s.models.map((m) => ({
    name: m, color: mc[m], values: rows.map((r) => (r.by_model[m] ? r.by_model[m].input_tokens + r.by_model[m].output_tokens : 0)),
  })), { label: ' tokens' });
  barChart('cost', buckets, byModel('cost_usd'), { unit: 'usd', fmt: (v) => `${Number(v).toFixed(6)} USD` });
  barChart('users', buckets, [{ name: 'active users', color: PALETTE[0], values: rows.map((r) => r.active_users) }], { label: ' active users' });
  const types = Object.keys(s.errors_by_type);
  const ec = colorsFor(types);
  barChart('errors', buckets, types.map((t) => ({ name: t, color: ec[t], values: rows.map((r) => r.errors_by_type[t] || 0) })), { label: ' errors' });
  const timing = [];
  Object.keys(s.ttfb_by_provider).forEach((p, i) => {
    timing.push({ name: `${p} p50`, color: PALETTE[(2 * i) % PALETTE.length], values: rows.map((r) => (r.ttfb[p] ? r.ttfb[p].p50_ms : null)) });
    timing.push({ name: `${p} p95`, color: PALETTE[(2 * i + 1) % PALETTE.length], values: rows.map((r) => (r.ttfb[p] ? r.ttfb[p].p95_ms : null)) });
  });
  pointChart('ttfb', buckets, timing);
  barChart('cancelled', buckets, [{ name: 'cancelled', color: PALETTE[7], values: rows.map((r) => r.cancelled) }], { label: ' cancelled' });
  // these light up once the records carry them (a response cache, a request queue, write-ahead records)
  optional('cached', s.cached > 0, () => barChart('cached', buckets, [{ name: 'cache hits', color: PALETTE[2], values: rows.map((r) => r.cached) }], { label: ' cache hits' }));
  optional('queue', s.queue.count > 0, () => pointChart('queue', buckets, [
    { name: 'queue p50', color: PALETTE[4], values: rows.map((r) => r.queue.p50_ms) },
    { name: 'queue p95', color: PALETTE[5], values: rows.map((r) => r.queue.p95_ms) },
  ]));
  optional('worker_lost', s.worker_lost > 0, () => barChart('worker_lost', buckets, [{ name: 'worker lost', color: PALETTE[3], values: rows.map((r) => r.worker_lost) }], { label: ' lost' }));

  renderTopUsers(s);
  renderModels(s, mc);
  renderTable(s.table);
  const notes = [];
  if (s.unpriced) notes.push(`${fmtInt(s.unpriced)} requests used a model without a price (counted as $0).`);
  if (s.estimated) notes.push(`${fmtInt(s.estimated)} requests have estimated token counts (their stream was cut).`);
  $('#footnote').textContent = notes.join(' ');
}

function optional(name, shown, draw) {
  const fig = document.querySelector(`figure[data-chart="${name}"]`);
  fig.hidden = !shown;
  if (shown) draw();
  else for (const old of fig.querySelectorAll('svg, .legend')) old.remove();  // nothing of an earlier range stays
}

function shareBar(share) {
  const bar = h('span', { class: 'share' });
  bar.style.width = `${Math.round(Math.min(1, share || 0) * 60)}px`;
  return bar;
}

function renderTopUsers(s) {
  const head = h('tr', {}, ...['User', 'Requests', 'Tokens', 'Cost (USD)', 'Share of cost', 'Budget used'].map((t) => h('th', { text: t })));
  const body = s.top_users.map((u) => {
    const budget = u.budget ? Object.entries(u.budget).map(([k, b]) => `${k} ${fmtRate(b.share)} of ${b.limit}`).join(', ') : 'no budget';
    const used = h('td', { 'data-value': u.budget_share ?? '', title: budget, text: u.budget_share == null ? '–' : fmtRate(u.budget_share) });
    if (u.budget_share != null && u.budget_share >= 1) used.classList.add('over');
    return h('tr', { 'data-identity': u.identity },
      h('td', { text: u.identity }), h('td', { 'data-value': u.requests, text: fmtInt(u.requests) }),
      h('td', { 'data-value': u.tokens, text: fmtInt(u.tokens) }), h('td', { 'data-value': u.cost_usd, text: Number(u.cost_usd).toFixed(6) }),
      h('td', { 'data-value': u.share_of_cost ?? '' }, fmtRate(u.share_of_cost), shareBar(u.share_of_cost)), used);
  });
  $('#top-users').replaceChildren(h('thead', {}, head), h('tbody', {}, ...body));
}

function renderModels(s, colors) {
  const head = h('tr', {}, ...['Model', 'Requests', 'Input tokens', 'Output tokens', 'Cost (USD)', 'Share of cost'].map((t) => h('th', { text: t })));
  const body = s.by_model.map((m) => {
    const sw = h('span', { class: 'sw' });
    sw.style.background = colors[m.model];
    return h('tr', { 'data-model': m.model },
      h('td', { class: 'model' }, sw, m.model), h('td', { text: fmtInt(m.requests) }), h('td', { text: fmtInt(m.input_tokens) }),
      h('td', { text: fmtInt(m.output_tokens) }), h('td', { text: Number(m.cost_usd).toFixed(6) }), h('td', { text: fmtRate(m.share_of_cost) }));
  });
  $('#models').replaceChildren(h('thead', {}, head), h('tbody', {}, ...body));
}

function renderTable(t) {
  const head = h('tr', {}, ...t.columns.map((c) => h('th', { 'data-column': c, text: c })));
  const body = t.rows.map((row) => h('tr', {}, ...row.map((v, i) => h('td', { 'data-column': t.columns[i], text: v == null ? '' : String(v) }))));
  $('#table').replaceChildren(h('thead', {}, head), h('tbody', {}, ...body));
}

// ---- data, sign-in, controls

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function setStatus(text, state) {
  const st = $('#status');
  st.textContent = text;
  st.dataset.state = state;
}

async function fetchSummary(query, path = 'summary.json') {
  return fetch(`${API}/${path}?${query}`, { headers: headers(), credentials: 'same-origin', cache: 'no-store' });
}

async function errorOf(resp) {
  try { return (await resp.json()).error || resp.statusText; } catch { return resp.statusText; }
}

async function load(query) {
  current = query;
  const params = new URLSearchParams(query);
  for (const b of document.querySelectorAll('#ranges [data-range]')) b.setAttribute('aria-pressed', String(b.dataset.range === params.get('range')));
  history.replaceState(null, '', `#${query}`);
  setStatus('Loading…', 'loading');
  let resp;
  try {
    resp = await fetchSummary(query);
  } catch (e) {
    setStatus(`The proxy could not be reached: ${e.message}`, 'error');
    return;
  }
  if (resp.status === 401 || resp.status === 403) {
    const why = await errorOf(resp);
    $('#report').hidden = true;
    $('#csv').disabled = true;
    $('#signin').hidden = false;
    $('#forget').hidden = !sessionStorage.getItem(TOKEN_KEY);
    $('#signin-msg').textContent = resp.status === 401
      ? `Sign in: paste an operator's access token (a JWT with the admin claim); it stays in this tab only. (${why})`
      : `This token does not open the operator page: ${why}. Paste another one.`;
    setStatus(resp.status === 401 ? 'Not signed in.' : 'Access refused.', resp.status === 401 ? 'signin' : 'refused');
    return;
  }
  if (!resp.ok) {
    setStatus(`Error ${resp.status}: ${await errorOf(resp)}`, 'error');
    return;
  }
  const summary = await resp.json();
  $('#signin').hidden = true;
  $('#forget').hidden = !sessionStorage.getItem(TOKEN_KEY);
  render(summary);
  $('#report').hidden = false;
  $('#csv').disabled = false;
  setStatus(`Updated ${summary.generated_at}.`, 'ready');
}

async function exportCsv() {
  const resp = await fetchSummary(current, 'summary.csv');
  if (!resp.ok) { setStatus(`CSV export failed: ${await errorOf(resp)}`, 'error'); return; }
  const name = (/filename="([^"]+)"/.exec(resp.headers.get('Content-Disposition') || '') || [])[1] || 'llm-proxy.csv';
  const url = URL.createObjectURL(await resp.blob());
  const a = h('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function init() {
  for (const b of document.querySelectorAll('#ranges [data-range]')) b.addEventListener('click', () => load(`range=${b.dataset.range}`));
  $('#custom').addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams({ since: $('#since').value });
    if ($('#until').value) q.set('until', $('#until').value);
    load(q.toString());
  });
  $('#token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('#token').value.trim().replace(/^Bearer\s+/i, '');
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    $('#token').value = '';
    load(current);
  });
  $('#forget').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); load(current); });
  $('#csv').addEventListener('click', exportCsv);
  const initial = location.hash.slice(1);
  load(/^(range|since)=/.test(initial) ? initial : 'range=7d').finally(() => { document.body.dataset.ready = '1'; });
}

init();
