// foo-proxy status page: polls /stats and /ready once a second and draws them.
// Everything shown comes from those two answers; a field the proxy does not
// report reads "not reported", and a field this page does not know is listed
// under "Other fields", so an older or newer proxy never breaks the page.
'use strict';

(function () {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 2500;
  const WINDOW_MS = 60000;
  const ABSENT = 'not reported';

  const count = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const one = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const three = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });
  const byId = (id) => document.getElementById(id);

  /** Successful polls inside the chart's window: {t, req, resp} (per second). */
  const samples = [];
  let previous = null;
  let lastOk = 0;
  let everOk = false;

  // Shown elsewhere, so not repeated under "Other fields".
  const shown = new Set([
    'request_rate_1s', 'request_rate_10s', 'response_rate_1s', 'response_rate_10s',
    'response_latency_ms', 'response_latency_buckets_ms', 'response_latency_histogram',
    'connections_closed', 'upstream_queue_wait_histogram',
  ]);
  document.querySelectorAll('[data-key]').forEach((cell) => shown.add(cell.dataset.key));

  function isNum(v) {
    return typeof v === 'number' && Number.isFinite(v);
  }

  function bytes(v) {
    const units = ['KiB', 'MiB', 'GiB', 'TiB'];
    if (v < 1024) return count.format(v) + ' B';
    let scaled = v;
    let unit = 'B';
    for (const u of units) {
      if (scaled < 1024) break;
      scaled /= 1024;
      unit = u;
    }
    return one.format(scaled) + ' ' + unit + ' (' + count.format(v) + ' B)';
  }

  function duration(secs) {
    let s = Math.floor(secs);
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    const parts = [];
    if (d) parts.push(count.format(d) + ' d');
    if (d || h) parts.push(h + ' h');
    if (d || h || m) parts.push(m + ' min');
    parts.push(s + ' s');
    return parts.join(' ');
  }

  function ms(v) {
    if (v === null) return '— (no answers)';
    if (!isNum(v)) return ABSENT;
    return (v < 10 ? three : one).format(v) + ' ms';
  }

  function rate(v) {
    return isNum(v) ? one.format(v) + ' /s' : ABSENT;
  }

  function plain(v) {
    if (isNum(v)) return Number.isInteger(v) ? count.format(v) : three.format(v);
    if (v === null) return '—';
    if (Array.isArray(v)) return v.map(plain).join(', ');
    if (typeof v === 'object') return Object.keys(v).map((k) => k + ': ' + plain(v[k])).join('; ');
    return String(v);
  }

  function format(v, unit) {
    if (!isNum(v)) return ABSENT;
    switch (unit) {
      case 'bytes': return bytes(v);
      case 'duration': return duration(v);
      default: return count.format(v);
    }
  }

  function label(key) {
    return key.replace(/_/g, ' ');
  }

  function setCell(cell, text, absent) {
    cell.textContent = text;
    cell.classList.toggle('absent', absent);
  }

  function row(cells) {
    const tr = document.createElement('tr');
    cells.forEach(([tag, text, cls, scope]) => {
      const c = document.createElement(tag);
      c.textContent = text;
      if (cls) c.className = cls;
      if (scope) c.scope = scope;
      tr.appendChild(c);
    });
    return tr;
  }

  function fillTable(id, rows) {
    const body = byId(id).tBodies[0];
    body.replaceChildren(...rows);
  }

  function showSection(tableId, noteId, present, note) {
    byId(tableId).hidden = !present;
    const p = byId(noteId);
    p.textContent = note;
    p.hidden = note === '';
  }

  function drawFixed(report) {
    document.querySelectorAll('[data-key]').forEach((cell) => {
      const v = report[cell.dataset.key];
      setCell(cell, format(v, cell.dataset.unit), !isNum(v));
      if (isNum(v)) cell.dataset.value = String(v);
      else delete cell.dataset.value;
    });
  }

  function drawLatency(report) {
    const lat = report.response_latency_ms;
    if (!lat || typeof lat !== 'object') {
      showSection('latency', 'latency-note', false, ABSENT + ' by this proxy');
      return;
    }
    const rows = Object.keys(lat).filter((k) => k !== 'count').map((k) => {
      const tr = row([['th', k, '', 'row'], ['td', ms(lat[k]), 'num']]);
      tr.lastChild.dataset.quantile = k;
      return tr;
    });
    fillTable('latency', rows);
    const n = isNum(lat.count) ? count.format(lat.count) + ' answers matched in the last 10 s' : 'answer count ' + ABSENT;
    showSection('latency', 'latency-note', true, n);
  }

  function drawClosed(report) {
    const closed = report.connections_closed;
    if (!closed || typeof closed !== 'object') {
      showSection('closed', 'closed-note', false, ABSENT + ' by this proxy');
      return;
    }
    let total = 0;
    const rows = Object.keys(closed).map((k) => {
      if (isNum(closed[k])) total += closed[k];
      const tr = row([['th', label(k), '', 'row'], ['td', format(closed[k], 'count'), 'num']]);
      tr.lastChild.dataset.reason = k;
      return tr;
    });
    rows.push(row([['th', 'all reasons', 'total', 'row'], ['td', count.format(total), 'num total']]));
    fillTable('closed', rows);
    showSection('closed', 'closed-note', true, '');
  }

  function drawHistogram(report) {
    const hist = report.response_latency_histogram;
    if (!hist || typeof hist !== 'object') {
      showSection('hist', 'hist-note', false, ABSENT + ' by this proxy');
      return;
    }
    const bounds = Array.isArray(report.response_latency_buckets_ms) ? report.response_latency_buckets_ms : [];
    const kinds = Object.keys(hist).filter((k) => Array.isArray(hist[k]));
    const length = Math.max(0, ...kinds.map((k) => hist[k].length));
    const sums = [];
    for (let i = 0; i < length; i++) {
      sums.push(kinds.reduce((a, k) => a + (isNum(hist[k][i]) ? hist[k][i] : 0), 0));
    }
    const biggest = Math.max(1, ...sums);
    const head = byId('hist').tHead.rows[0];
    head.replaceChildren(...row([
      ['th', 'Answered within', '', 'col'],
      ...kinds.map((k) => ['th', k.toUpperCase(), 'num', 'col']),
      ['th', 'Share of the busiest bucket', '', 'col'],
    ]).children);
    const rows = [];
    for (let i = 0; i < length; i++) {
      const bound = i < bounds.length ? '≤ ' + three.format(bounds[i]) + ' ms'
        : bounds.length ? '> ' + three.format(bounds[bounds.length - 1]) + ' ms' : 'bucket ' + (i + 1);
      const tr = row([['th', bound, '', 'row'], ...kinds.map((k) => ['td', format(hist[k][i], 'count'), 'num'])]);
      const cell = document.createElement('td');
      const meter = document.createElement('meter');
      meter.min = 0;
      meter.max = biggest;
      meter.value = sums[i];
      meter.textContent = count.format(sums[i]);
      meter.setAttribute('aria-label', bound + ': ' + count.format(sums[i]) + ' answers');
      cell.appendChild(meter);
      tr.appendChild(cell);
      rows.push(tr);
    }
    fillTable('hist', rows);
    showSection('hist', 'hist-note', true, 'Counts of answers per latency bucket (upper bounds in milliseconds), not cumulative.');
  }

  function drawPool(report) {
    const size = report.upstream_pool_size;
    const note = !isNum(size) ? ABSENT + ' by this proxy (no pooling)'
      : size === 0 && !report.upstream_connections_opened
        ? 'Off: one fresh upstream connection per client (no --upstream-pool, --max-upstream-connections).'
        : 'Connections to the server kept between clients; spares are part of the pool.';
    byId('pool-note').textContent = note;
    const waits = report.upstream_queue_wait_histogram;
    const counts = waits && Array.isArray(waits.counts) ? waits.counts : null;
    if (!counts) {
      byId('queue-waits').textContent = 'Queue waits: ' + ABSENT + '.';
      return;
    }
    const bounds = Array.isArray(report.response_latency_buckets_ms) ? report.response_latency_buckets_ms : [];
    const total = counts.reduce((a, n) => a + (isNum(n) ? n : 0), 0);
    const parts = counts.map((n, i) => [n, i < bounds.length ? '≤ ' + three.format(bounds[i]) + ' ms' : '> ' + three.format(bounds[bounds.length - 1] || 0) + ' ms'])
      .filter(([n]) => isNum(n) && n > 0).map(([n, b]) => b + ': ' + count.format(n));
    byId('queue-waits').textContent = 'Queue waits of served clients: ' + count.format(total) +
      (parts.length ? ' (' + parts.join(', ') + ').' : '.');
    byId('queue-waits').dataset.total = String(total);
  }

  function drawOther(report) {
    const keys = Object.keys(report).filter((k) => !shown.has(k));
    fillTable('other', keys.map((k) => row([['th', k, '', 'row'], ['td', plain(report[k]), 'num']])));
    byId('other-note').textContent = keys.length ? 'Every field of the report not shown above.' : 'None: every field is shown above.';
  }

  function sample(report, now) {
    let req = report.request_rate_1s;
    let resp = report.response_rate_1s;
    if ((!isNum(req) || !isNum(resp)) && previous && now > previous.t) {
      const dt = (now - previous.t) / 1000;
      const answers = (r) => (r.msg_ack || 0) + (r.msg_nak || 0);
      req = Math.max(0, ((report.msg_req || 0) - (previous.report.msg_req || 0)) / dt);
      resp = Math.max(0, (answers(report) - answers(previous.report)) / dt);
    }
    previous = { t: now, report };
    if (isNum(req) && isNum(resp)) samples.push({ t: now, req, resp });
    while (samples.length && samples[0].t < now - WINDOW_MS) samples.shift();
    byId('rate-req').textContent = rate(report.request_rate_1s) + ' (10 s: ' + rate(report.request_rate_10s) + ')';
    byId('rate-resp').textContent = rate(report.response_rate_1s) + ' (10 s: ' + rate(report.response_rate_10s) + ')';
  }

  /** A round ceiling for the y axis: 1, 2 or 5 times a power of ten. */
  function ceiling(v) {
    if (v <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function place(id, attrs) {
    const el = byId(id);
    Object.keys(attrs).forEach((k) => el.setAttribute(k, String(attrs[k])));
  }

  /** Redraws the chart at the SVG's own pixel width, so text keeps its size. */
  function drawChart(now) {
    const svg = byId('chart');
    const width = Math.max(240, Math.round(svg.getBoundingClientRect().width) || 400);
    const height = 180;
    const [x0, x1, top, bottom] = [70, width - 6, 10, height - 26];
    svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
    const middle = (top + bottom) / 2;
    place('grid-max', { x1: x0, x2: x1, y1: top, y2: top });
    place('grid-mid', { x1: x0, x2: x1, y1: middle, y2: middle });
    place('grid-zero', { x1: x0, x2: x1, y1: bottom, y2: bottom });
    place('chart-max', { x: x0 - 4, y: top + 4 });
    place('chart-mid', { x: x0 - 4, y: middle + 4 });
    place('chart-zero', { x: x0 - 4, y: bottom + 4 });
    place('chart-start', { x: x0, y: height - 6 });
    place('chart-now', { x: x1, y: height - 6 });
    const max = ceiling(Math.max(0, ...samples.map((s) => Math.max(s.req, s.resp))));
    const points = (key) => samples.map((s) => {
      const x = x0 + (x1 - x0) * (1 - (now - s.t) / WINDOW_MS);
      const y = bottom - (bottom - top) * (s[key] / max);
      return x.toFixed(1) + ',' + y.toFixed(1);
    }).join(' ');
    byId('line-req').setAttribute('points', points('req'));
    byId('line-resp').setAttribute('points', points('resp'));
    svg.dataset.samples = String(samples.length);
    byId('chart-max').textContent = count.format(max) + '/s';
    byId('chart-mid').textContent = one.format(max / 2) + '/s';
    byId('chart-note').textContent = 'Drawn from the ' + count.format(samples.length) +
      ' samples this page has polled in the last minute (at most one a second).';
  }

  function setState(state, text, icon) {
    if (document.body.dataset.state !== state || byId('state-text').textContent !== text) {
      document.body.dataset.state = state;
      byId('state-text').textContent = text;
      byId('state').querySelector('.icon').textContent = icon;
    }
  }

  function clock(t) {
    return new Date(t).toLocaleTimeString();
  }

  function onSuccess(report, ready, server, now) {
    lastOk = now;
    everOk = true;
    document.body.dataset.lastOk = String(now);
    drawFixed(report);
    drawLatency(report);
    drawClosed(report);
    drawHistogram(report);
    drawPool(report);
    drawOther(report);
    sample(report, now);
    drawChart(now);
    const version = server && server.startsWith('foo-proxy/') ? server.slice('foo-proxy/'.length) : null;
    byId('version').textContent = version || ABSENT;
    byId('readiness').textContent = ready === 200 ? 'Ready: accepting clients.'
      : ready === 503 ? 'Not ready: draining, new clients are refused.'
        : 'Readiness: ' + ABSENT + '.';
    byId('readiness').dataset.ready = ready === 200 ? 'ready' : ready === 503 ? 'draining' : 'unknown';
    setState('live', 'Live: figures update every second.', '✓');
    byId('updated').textContent = 'Last update ' + clock(now) + '.';
  }

  function onFailure(why, now) {
    const text = everOk
      ? 'Unreachable: the proxy stopped answering (' + why + '). The figures below are the last ones it reported.'
      : 'Unreachable: no answer from the proxy yet (' + why + ').';
    setState('unreachable', text, '✕');
    byId('updated').textContent = everOk
      ? 'Last success ' + clock(lastOk) + ', ' + duration((now - lastOk) / 1000) + ' ago; retrying every second.'
      : 'Retrying every second.';
    byId('readiness').textContent = 'Readiness: unknown while unreachable.';
    byId('readiness').dataset.ready = 'unknown';
    drawChart(now);
  }

  async function poll() {
    const started = Date.now();
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    const get = (path) => fetch(path, { cache: 'no-store', signal: abort.signal });
    try {
      const [stats, ready] = await Promise.all([get('/stats'), get('/ready').catch(() => null)]);
      if (!stats.ok) throw new Error('HTTP ' + stats.status + ' from /stats');
      const report = await stats.json();
      if (!report || typeof report !== 'object') throw new Error('/stats is not a JSON object');
      onSuccess(report, ready ? ready.status : null, stats.headers.get('Server'), Date.now());
    } catch (e) {
      const why = e && e.name === 'AbortError' ? 'no answer within ' + TIMEOUT_MS / 1000 + ' s'
        : e && e.message === 'Failed to fetch' ? 'connection failed' : String(e && e.message || e);
      onFailure(why, Date.now());
    } finally {
      clearTimeout(timer);
      setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
    }
  }

  drawChart(Date.now());
  window.addEventListener('resize', () => drawChart(Date.now()));
  poll();
})();
