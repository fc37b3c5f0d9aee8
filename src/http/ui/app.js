// The dflockd dashboard: plain JavaScript, no library. It reads the
// server's JSON views (spec/http.md §8) and draws tables and SVG plots.
//
// * Overview (#/): the busiest keys (one request a second for the longest
//   queues, answered from an index; every 5 s for the lists that need a scan
//   of every key), counters, histograms, history, connections and signal
//   channels (/v1/activity, once a second).
// * Key page (#/key/<key>): /v1/keys/<key>, once a second.
// * Search: /v1/stats?sort=key&prefix=…, when the box changes.
//
// Every request carries the bearer token kept in sessionStorage, if any; a
// 401 stops the polling and shows the token form. Text from the server is
// always set as text, never parsed as HTML.
'use strict';

(() => {
  const TOKEN = 'dflockd-token';
  const SVG = 'http://www.w3.org/2000/svg';
  const POLL_MS = 1000;
  const SCAN_EVERY_MS = 5000;
  const TOP = 15;

  const $ = (id) => document.getElementById(id);

  const state = {
    sort: 'waiters',
    keysAt: 0,
    timer: null,
    stopped: false,
    searchTimer: null,
  };

  class AuthError extends Error {}

  // ----- requests -----------------------------------------------------------

  async function api(path) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN);
    if (token) headers.Authorization = 'Bearer ' + token;
    const r = await fetch(path, { headers, cache: 'no-store' });
    if (r.status === 401) throw new AuthError('unauthorized');
    let body = null;
    try {
      body = await r.json();
    } catch (e) {
      body = null;
    }
    if (!r.ok) {
      const why = body && body.error ? body.error : 'HTTP ' + r.status;
      const err = new Error(why);
      err.status = r.status;
      err.body = body;
      throw err;
    }
    return body;
  }

  // ----- formatting -----------------------------------------------------------

  function secs(s) {
    if (s === null || s === undefined) return '–';
    if (s < 1) return Math.round(s * 1000) + ' ms';
    if (s < 60) return (Number.isInteger(s) ? String(s) : s.toFixed(s < 10 ? 1 : 0)) + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' m' + (s % 60 >= 1 ? ' ' + Math.floor(s % 60) + ' s' : '');
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + (m % 60) + ' m';
    return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
  }

  function count(n) {
    if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + 'M';
    if (n >= 1e4) return (n / 1e3).toFixed(0) + 'k';
    return String(n);
  }

  function plural(n, one) {
    return n + ' ' + one + (n === 1 ? '' : 's');
  }

  function rate(r) {
    if (r === null || r === undefined) return '–';
    return r >= 100 ? r.toFixed(0) : r.toFixed(1);
  }

  // ----- DOM helpers ------------------------------------------------------------

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('data-')) e.setAttribute(k, String(v));
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function keyHref(key) {
    return '#/key/' + encodeURIComponent(key);
  }

  function keyLink(key) {
    return el('a', { href: keyHref(key), text: key });
  }

  function fill(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  function show(node, on) {
    node.hidden = !on;
  }

  // ----- status and auth ----------------------------------------------------------

  function setStatus(text, cls) {
    const s = $('status');
    s.textContent = text;
    s.className = 'status ' + (cls || '');
  }

  function askToken(refused) {
    state.stopped = true;
    clearTimeout(state.timer);
    setStatus('token needed', 'error');
    show($('auth'), true);
    show($('auth-refused'), refused);
    show($('overview'), false);
    show($('keypage'), false);
    $('token').focus();
  }

  $('auth').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN, t);
    $('token').value = '';
    show($('auth'), false);
    state.stopped = false;
    route();
  });

  // ----- plots -------------------------------------------------------------------

  const W = 600;
  const H = 180;
  const PAD = { l: 44, r: 10, t: 22, b: 24 };

  // Lines over the last N seconds; `series` is [{name, values}].
  function lineChart(node, series, unit) {
    const n = Math.max(2, ...series.map((s) => s.values.length));
    const max = Math.max(1, ...series.flatMap((s) => s.values));
    const x = (i) => PAD.l + (i * (W - PAD.l - PAD.r)) / (n - 1);
    const y = (v) => H - PAD.b - (v * (H - PAD.t - PAD.b)) / max;
    const parts = [
      svg('line', { class: 'axis', x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b }),
      svg('line', { class: 'grid', x1: PAD.l, y1: PAD.t, x2: W - PAD.r, y2: PAD.t }),
      svg('text', { x: 4, y: PAD.t + 4 }, count(Math.round(max)) + unit),
      svg('text', { x: 4, y: H - PAD.b }, '0'),
      svg('text', { x: PAD.l, y: H - 6 }, '-' + secs(n - 1)),
      svg('text', { x: W - PAD.r - 22, y: H - 6 }, 'now'),
    ];
    let total = 0;
    series.forEach((s, k) => {
      const off = n - s.values.length;
      const pts = s.values.map((v, i) => x(i + off).toFixed(1) + ',' + y(v).toFixed(1));
      total += s.values.reduce((a, b) => a + b, 0);
      if (pts.length > 0) {
        parts.push(svg('polyline', { class: 'series-' + k, points: pts.join(' '), 'data-name': s.name }));
      }
      const last = s.values.length ? s.values[s.values.length - 1] : 0;
      parts.push(svg('rect', { class: 'legend-' + k, x: PAD.l + 8 + k * 150, y: 6, width: 10, height: 10 }));
      parts.push(svg('text', { x: PAD.l + 22 + k * 150, y: 15 }, s.name + ' ' + count(last)));
    });
    node.setAttribute('data-max', String(max));
    node.setAttribute('data-total', String(total));
    node.replaceChildren(...parts);
  }

  // Bars per histogram bucket: locks dark, semaphores light, stacked.
  function histogram(node, bounds, lock, sem) {
    const labels = bounds.map((b) => '≤' + secs(b)).concat(['more']);
    const totals = lock.map((v, i) => v + sem[i]);
    const max = Math.max(1, ...totals);
    const n = totals.length;
    const bw = (W - PAD.l - PAD.r) / n;
    const h = (v) => (v * (H - PAD.t - PAD.b)) / max;
    const parts = [
      svg('line', { class: 'axis', x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b }),
      svg('text', { x: 4, y: PAD.t + 4 }, count(max)),
      svg('text', { x: 4, y: H - PAD.b }, '0'),
    ];
    for (let i = 0; i < n; i++) {
      const x0 = PAD.l + i * bw + 1;
      const hl = h(lock[i]);
      const hs = h(sem[i]);
      parts.push(svg('rect', {
        class: 'bar', x: x0.toFixed(1), y: (H - PAD.b - hl).toFixed(1),
        width: (bw - 2).toFixed(1), height: hl.toFixed(1), 'data-count': lock[i],
      }));
      parts.push(svg('rect', {
        class: 'bar sem', x: x0.toFixed(1), y: (H - PAD.b - hl - hs).toFixed(1),
        width: (bw - 2).toFixed(1), height: hs.toFixed(1), 'data-count': sem[i],
      }));
      if (i % 2 === 0 || i === n - 1) {
        parts.push(svg('text', { x: x0.toFixed(1), y: H - 6 }, labels[i]));
      }
    }
    parts.push(svg('rect', { class: 'bar', x: W - 150, y: 6, width: 10, height: 10 }));
    parts.push(svg('text', { x: W - 136, y: 15 }, 'locks'));
    parts.push(svg('rect', { class: 'bar sem', x: W - 90, y: 6, width: 10, height: 10 }));
    parts.push(svg('text', { x: W - 76, y: 15 }, 'semaphores'));
    node.setAttribute('data-total', String(totals.reduce((a, b) => a + b, 0)));
    node.replaceChildren(...parts);
  }

  // "p50 ≤ x, p99 ≤ y" from bucket counts.
  function quantiles(bounds, counts) {
    const total = counts.reduce((a, b) => a + b, 0);
    if (total === 0) return 'no observations yet';
    const at = (q) => {
      let acc = 0;
      for (let i = 0; i < counts.length; i++) {
        acc += counts[i];
        if (acc >= q * total) return i < bounds.length ? '≤ ' + secs(bounds[i]) : '> ' + secs(bounds[bounds.length - 1]);
      }
      return '?';
    };
    return count(total) + ' observed, p50 ' + at(0.5) + ', p99 ' + at(0.99);
  }

  // ----- overview -------------------------------------------------------------------

  function holderCell(k) {
    if (k.holder) {
      const h = k.holder;
      return 'conn ' + h.conn + ', lease ' + secs(h.lease_expires_in_s) + ' left, fence ' + h.fence;
    }
    if (k.kind === 'semaphore' && k.holders > 0) return k.holders + ' of ' + k.limit + ' slots';
    return '–';
  }

  function queueCell(k) {
    if (k.queue.length === 0) return '–';
    const first = k.queue.map((w) => 'conn ' + w.conn + ' (' + secs(w.waiting_for_s) + (w.two_phase ? ', two-phase' : '') + ')');
    const more = k.waiters - k.queue.length;
    return first.join(', ') + (more > 0 ? ', +' + more + ' more' : '');
  }

  function keyRow(k) {
    const full = k.holders >= k.limit;
    return el('tr', { 'data-key': k.key, 'data-waiters': k.waiters, 'data-kind': k.kind },
      el('td', {}, keyLink(k.key)),
      el('td', { text: k.kind }),
      el('td', { class: 'num' + (full ? ' full' : ''), text: k.holders + ' / ' + k.limit }),
      el('td', { class: 'num waiters' + (k.waiters > 0 ? ' hot' : ''), text: String(k.waiters) }),
      el('td', { text: secs(k.held_for_s) }),
      el('td', { text: holderCell(k) }),
      el('td', { text: queueCell(k) }));
  }

  const EMPTY = {
    waiters: 'No key has waiters: nothing is contended right now.',
    held_for: 'No lock or semaphore is held.',
    fill: 'No semaphore is held.',
  };

  async function loadKeys() {
    let path = '/v1/stats?top=' + TOP + '&sort=' + state.sort;
    if (state.sort === 'fill') path += '&kind=semaphore';
    const data = await api(path);
    let keys = data.keys;
    if (state.sort === 'fill') keys = keys.filter((k) => k.holders >= k.limit);
    fill($('keys').tBodies[0], keys.map(keyRow));
    const empty = $('keys-empty');
    empty.textContent = state.sort === 'fill' && data.keys.length > 0
      ? 'No semaphore is at its limit.' : EMPTY[state.sort];
    show(empty, keys.length === 0);
    $('busiest-note').textContent = data.scanned > 0
      ? 'From a scan of ' + count(data.scanned) + ' items, refreshed every 5 s.'
      : 'From the index of contended keys, refreshed every second.';
    state.keysAt = Date.now();
  }

  function drawActivity(a) {
    const c = a.connections;
    $('summary').textContent = plural(c.total, 'connection') + ' (' + c.tcp + ' TCP, ' +
      plural(c.http_sessions, 'HTTP session') + ') · up ' + secs(a.uptime_s) +
      (a.draining ? ' · draining' : '');
    const h = a.history;
    lineChart($('rates-plot'), [
      { name: 'grants/s', values: h.grants },
      { name: 'timeouts/s', values: h.acquire_timeouts },
      { name: 'expiries/s', values: h.lease_expiries },
    ], '/s');
    const b = a.histograms.bounds_s;
    histogram($('wait-plot'), b, a.histograms.acquire_wait.lock, a.histograms.acquire_wait.semaphore);
    histogram($('hold-plot'), b, a.histograms.hold.lock, a.histograms.hold.semaphore);
    const sum = (x) => x.lock.map((v, i) => v + x.semaphore[i]);
    $('wait-summary').textContent = quantiles(b, sum(a.histograms.acquire_wait));
    $('hold-summary').textContent = quantiles(b, sum(a.histograms.hold));
    lineChart($('conns-plot'), [
      { name: 'TCP', values: h.tcp },
      { name: 'HTTP sessions', values: h.http_sessions },
    ], '');
    const s = a.signals;
    $('signals-count').textContent = plural(s.subscriptions, 'subscription') + ' (pattern, group)';
    fill($('signals-table').tBodies[0], s.top.map((ch) => el('tr', {},
      el('td', {}, el('code', { text: ch.pattern })),
      el('td', { text: ch.group || '–' }),
      el('td', { class: 'num', text: String(ch.listeners) }),
      el('td', { class: 'num', text: count(ch.pushes) }),
      el('td', { class: 'num', text: rate(ch.pushes_per_s) }))));
    show($('signals-empty'), s.top.length === 0);
    const cl = a.cluster;
    show($('cluster-table'), !!cl);
    if (cl) {
      $('cluster-text').textContent = 'Leader: ' + (cl.leader || 'none') + ', term ' + cl.term;
      const known = (v) => (v === null || v === undefined ? '–' : String(v));
      fill($('cluster-table').tBodies[0], cl.members.map((m) => el('tr', {},
        el('td', { text: m.id + (m.addr ? ' · ' + m.addr : '') + (m.self ? ' (this member)' : '') }),
        el('td', { text: m.role }),
        el('td', { class: 'num', text: known(m.commit_index) }),
        el('td', { class: 'num', text: known(m.applied_index) }))));
    } else {
      $('cluster-text').textContent = 'Single node (not clustered).';
    }
  }

  async function overview() {
    const scan = state.sort !== 'waiters';
    const due = !scan || Date.now() - state.keysAt >= SCAN_EVERY_MS;
    const jobs = [api('/v1/activity').then(drawActivity)];
    if (due) jobs.push(loadKeys());
    await Promise.all(jobs);
  }

  for (const b of document.querySelectorAll('.tabs button')) {
    b.addEventListener('click', () => {
      state.sort = b.dataset.sort;
      state.keysAt = 0;
      for (const o of document.querySelectorAll('.tabs button')) o.classList.toggle('on', o === b);
      poll();
    });
  }

  // ----- search ---------------------------------------------------------------------

  async function search() {
    const q = $('q').value;
    if (!q) {
      show($('results'), false);
      return;
    }
    try {
      const data = await api('/v1/stats?sort=key&top=20&prefix=' + encodeURIComponent(q));
      $('results-title').textContent = 'Keys starting with “' + q + '”';
      fill($('results-table').tBodies[0], data.keys.map((k) => el('tr', { 'data-key': k.key },
        el('td', {}, keyLink(k.key)),
        el('td', { text: k.kind }),
        el('td', { class: 'num', text: k.holders + ' / ' + k.limit }),
        el('td', { class: 'num', text: String(k.waiters) }),
        el('td', { text: k.idle_s !== null ? 'idle ' + secs(k.idle_s) : secs(k.held_for_s) }))));
      show($('results-empty'), data.keys.length === 0);
      show($('results'), true);
      if (location.hash.startsWith('#/key/')) location.hash = '#/';
    } catch (e) {
      if (e instanceof AuthError) askToken(true);
      else setStatus('search failed: ' + e.message, 'error');
    }
  }

  $('search').addEventListener('submit', (ev) => {
    ev.preventDefault();
    search();
  });
  $('q').addEventListener('input', () => {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(search, 300);
  });

  // ----- key page ----------------------------------------------------------------------

  function facts(pairs) {
    return el('dl', { class: 'facts' }, ...pairs.map(([k, v]) => el('div', {}, el('dt', { text: k }), el('dd', { text: v }))));
  }

  function table(head, rows, emptyText) {
    if (rows.length === 0) return el('p', { class: 'empty', text: emptyText });
    return el('table', {},
      el('thead', {}, el('tr', {}, ...head.map((h) => el('th', { text: h })))),
      el('tbody', {}, ...rows));
  }

  function eventText(e) {
    switch (e.event) {
      case 'granted': return e.seconds > 0 ? 'after waiting ' + secs(e.seconds) : 'at once';
      case 'released': return 'held ' + secs(e.seconds);
      case 'expired': return 'lease ran out after ' + secs(e.seconds);
      case 'timed_out': return 'waited ' + secs(e.seconds);
      case 'left_queue': return 'connection closed after waiting ' + secs(e.seconds);
      case 'disconnected': return e.count + ' slot' + (e.count > 1 ? 's' : '') + ' released, held up to ' + secs(e.seconds);
      default: return '';
    }
  }

  function resourceView(r) {
    return el('div', { class: 'resource', 'data-kind': r.kind },
      el('h3', { text: r.kind === 'lock' ? 'Lock' : 'Semaphore' }),
      facts([
        ['holders', r.holders + ' / ' + r.limit],
        ['waiters', String(r.waiters)],
        ['state', r.idle_s !== null ? 'idle for ' + secs(r.idle_s) : 'in use'],
      ]),
      el('h3', { text: 'Holders, longest held first' }),
      table(['Connection', 'Fence', 'Held for', 'Lease left'], r.holder_list.map((h) => el('tr', {},
        el('td', { text: 'conn ' + h.conn }), el('td', { text: String(h.fence) }),
        el('td', { text: secs(h.held_for_s) }), el('td', { text: secs(h.lease_expires_in_s) }))), 'Nobody holds it.'),
      el('h3', { text: 'Waiters, in FIFO order' }),
      table(['#', 'Connection', 'Waiting for', 'Times out in', 'Two-phase'], r.queue.map((w, i) => el('tr', {},
        el('td', { text: String(i + 1) }), el('td', { text: 'conn ' + w.conn }),
        el('td', { text: secs(w.waiting_for_s) }),
        el('td', { text: w.timeout_in_s === null ? 'not waiting yet' : secs(w.timeout_in_s) }),
        el('td', { text: w.two_phase ? 'yes' : 'no' }))), 'Nobody waits.'),
      el('h3', { text: 'Recent events, newest first' }),
      table(['When', 'Event', 'Connection', 'Fence', 'Detail'], r.events.map((e) => el('tr', { 'data-event': e.event },
        el('td', { text: secs(e.ago_s) + ' ago' }), el('td', { text: e.event.replace('_', ' ') }),
        el('td', { text: 'conn ' + e.conn }), el('td', { text: e.fence ? String(e.fence) : '–' }),
        el('td', { text: eventText(e) }))), 'No recent events kept for this key.'));
  }

  async function keyPage(key) {
    $('key-name').textContent = key;
    try {
      const data = await api('/v1/keys/' + encodeURIComponent(key));
      show($('key-missing'), false);
      $('key-resources').replaceChildren(...data.resources.map(resourceView));
    } catch (e) {
      if (e.status === 404) {
        show($('key-missing'), true);
        $('key-resources').replaceChildren();
        return;
      }
      throw e;
    }
  }

  // ----- the loop ---------------------------------------------------------------------

  function currentKey() {
    const m = location.hash.match(/^#\/key\/(.+)$/);
    return m ? decodeURIComponent(m[1]) : null;
  }

  async function poll() {
    clearTimeout(state.timer);
    if (state.stopped) return;
    const key = currentKey();
    try {
      if (key === null) await overview();
      else await keyPage(key);
      setStatus('live', 'live');
    } catch (e) {
      if (e instanceof AuthError) {
        askToken(!!sessionStorage.getItem(TOKEN));
        return;
      }
      setStatus(e.status === 503 ? 'server draining' : 'cannot reach the server (' + e.message + ')', 'error');
    }
    if (!state.stopped) state.timer = setTimeout(poll, POLL_MS);
  }

  function route() {
    const key = currentKey();
    show($('overview'), key === null);
    show($('keypage'), key !== null);
    state.keysAt = 0;
    poll();
  }

  window.addEventListener('hashchange', route);
  route();
})();
