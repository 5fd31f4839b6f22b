// Keeps the server-rendered page current from the dashboard's event stream
// and sends admin actions. No build step, nothing loaded from elsewhere.
(() => {
  'use strict';
  const body = document.body;
  const base = body.dataset.base;
  let after = body.dataset.after;
  const topicsEl = document.getElementById('topics');
  const tpl = document.getElementById('row-template').content;
  const statusEl = document.getElementById('status');
  const errorEl = document.getElementById('error');
  const fTopic = document.getElementById('f-topic');
  const fState = document.getElementById('f-state');
  const tokenEl = document.getElementById('token');
  const dialog = document.getElementById('reason-dialog');
  // For people reading the console, and for the browser test.
  const stats = (window.svckitDashboard = { events: 0, snapshots: 0, opens: 0, drops: 0, figures: 0 });

  const rows = new Map(); // "topic/host" -> <tr>
  const sections = new Map(); // topic -> <section>
  for (const s of topicsEl.querySelectorAll('section.topic')) sections.set(s.dataset.topic, s);
  for (const r of topicsEl.querySelectorAll('tr.member')) rows.set(r.dataset.topic + '/' + r.dataset.host, r);

  const setText = (el, text) => {
    if (el.textContent !== text) el.textContent = text;
  };

  // As format_age in Rust: 42s, 5m, 3h12m, 4d.
  const age = (at, now) => {
    const then = Date.parse(at);
    if (Number.isNaN(then)) return '-';
    const s = Math.max(0, Math.floor((now - then) / 1000));
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm';
    if (s < 86400) return Math.floor(s / 3600) + 'h' + Math.floor((s % 3600) / 60) + 'm';
    return Math.floor(s / 86400) + 'd';
  };

  const hidden = (action, m) =>
    ({
      disable: m.disabled,
      enable: !m.disabled,
      'force-down': m.forced_down,
      'clear-force-down': !m.forced_down,
      delete: m.state === 'up',
    })[action];

  const shown = (tr) => {
    switch (fState.value) {
      case 'up':
      case 'down':
        return tr.dataset.state === fState.value;
      case 'disabled':
        return tr.dataset.disabled === 'true';
      case 'forced':
        return tr.dataset.forced === 'true';
      default:
        return true;
    }
  };

  const fill = (tr, m) => {
    const d = tr.dataset;
    d.topic = m.topic;
    d.host = m.host;
    d.state = m.state;
    d.disabled = String(m.disabled);
    d.forced = String(m.forced_down);
    const cell = (name) => tr.querySelector('td.' + name);
    setText(cell('host'), m.host);
    const badge = cell('state').firstElementChild;
    badge.className = 'badge ' + m.state;
    setText(badge, m.state);
    setText(cell('disabled'), m.disabled ? (m.disabled_reason ? 'disabled: ' + m.disabled_reason : 'disabled') : '');
    setText(cell('forced'), m.forced_down ? 'forced down' : '');
    setText(cell('version'), m.version);
    setText(cell('workers'), String(m.workers));
    setText(cell('services'), m.services.join(' '));
    setText(cell('endpoint'), m.endpoint || '-');
    const since = cell('since');
    since.dataset.at = m.updated_at;
    since.title = m.updated_at;
    setText(since, age(m.updated_at, Date.now()));
    for (const b of tr.querySelectorAll('button[data-action]')) b.hidden = hidden(b.dataset.action, m);
    tr.hidden = !shown(tr);
  };

  // Inserts `el` among `parent`'s children ordered by `keyOf`.
  const insertSorted = (parent, el, keyOf) => {
    const kids = parent.children;
    const key = keyOf(el);
    let lo = 0;
    let hi = kids.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (keyOf(kids[mid]) < key) lo = mid + 1;
      else hi = mid;
    }
    parent.insertBefore(el, kids[lo] || null);
  };

  const sectionFor = (topic) => {
    let s = sections.get(topic);
    if (s) return s;
    s = tpl.querySelector('section.topic').cloneNode(true);
    s.dataset.topic = topic;
    s.querySelector('.name').textContent = topic;
    s.hidden = fTopic.value !== '' && fTopic.value !== topic;
    sections.set(topic, s);
    insertSorted(topicsEl, s, (e) => e.dataset.topic);
    const option = document.createElement('option');
    option.value = topic;
    option.textContent = topic;
    const options = [...fTopic.options].slice(1);
    fTopic.insertBefore(option, options.find((o) => o.value > topic) || null);
    return s;
  };

  // Topic headers are counted once per frame, however many events came.
  const dirty = new Set();
  let counting = false;
  const recount = () => {
    counting = false;
    for (const topic of dirty) {
      const s = sections.get(topic);
      if (!s) continue;
      const trs = s.querySelectorAll('tr.member');
      if (trs.length === 0) {
        s.remove();
        sections.delete(topic);
        const option = [...fTopic.options].find((o) => o.value === topic);
        if (option && !option.selected) option.remove();
        continue;
      }
      let up = 0;
      for (const tr of trs) if (tr.dataset.state === 'up') up++;
      setText(s.querySelector('.count'), up + ' of ' + trs.length + ' up');
    }
    dirty.clear();
  };
  const markDirty = (topic) => {
    dirty.add(topic);
    if (!counting) {
      counting = true;
      requestAnimationFrame(recount);
    }
  };

  const upsert = (m) => {
    const key = m.topic + '/' + m.host;
    let tr = rows.get(key);
    if (tr) {
      fill(tr, m);
    } else {
      tr = tpl.querySelector('tr.member').cloneNode(true);
      fill(tr, m);
      rows.set(key, tr);
      insertSorted(sectionFor(m.topic).querySelector('tbody'), tr, (e) => e.dataset.host);
    }
    markDirty(m.topic);
  };

  const remove = (m) => {
    const key = m.topic + '/' + m.host;
    const tr = rows.get(key);
    if (!tr) return;
    tr.remove();
    rows.delete(key);
    markDirty(m.topic);
  };

  const snapshot = (members) => {
    const keep = new Set();
    for (const m of members) {
      keep.add(m.topic + '/' + m.host);
      upsert(m);
    }
    for (const [key, tr] of [...rows]) {
      if (!keep.has(key)) remove({ topic: tr.dataset.topic, host: tr.dataset.host });
    }
  };

  const setStatus = (text, state) => {
    setText(statusEl, text);
    statusEl.dataset.state = state;
  };

  let everOpen = false;
  const connect = () => {
    const es = new EventSource(base + '/api/events?after=' + encodeURIComponent(after));
    es.onopen = () => {
      stats.opens++;
      if (everOpen) setStatus('live (reconnected at ' + new Date().toLocaleTimeString() + ')', 'reconnected');
      else setStatus('live', 'live');
      everOpen = true;
    };
    es.onerror = () => {
      stats.drops++;
      setStatus('event stream dropped; reconnecting…', 'reconnecting');
      // The browser retries by itself unless the answer was not a stream
      // (the dashboard restarting behind a proxy): then it is up to us.
      if (es.readyState === EventSource.CLOSED) {
        es.close();
        setTimeout(connect, 1000);
      }
    };
    es.addEventListener('member', (e) => {
      stats.events++;
      after = e.lastEventId;
      const d = JSON.parse(e.data);
      if (d.event === 'delete') remove(d.member);
      else upsert(d.member);
    });
    es.addEventListener('snapshot', (e) => {
      stats.snapshots++;
      after = e.lastEventId;
      snapshot(JSON.parse(e.data).members);
    });
  };

  const applyFilters = () => {
    for (const [topic, s] of sections) s.hidden = fTopic.value !== '' && fTopic.value !== topic;
    for (const tr of rows.values()) tr.hidden = !shown(tr);
    const q = new URLSearchParams(location.search);
    for (const [k, el] of [['topic', fTopic], ['state', fState]]) {
      if (el.value) q.set(k, el.value);
      else q.delete(k);
    }
    const search = q.toString();
    history.replaceState(null, '', location.pathname + (search ? '?' + search : ''));
  };
  const initial = new URLSearchParams(location.search);
  if (initial.get('state')) fState.value = initial.get('state');
  fTopic.addEventListener('change', applyFilters);
  fState.addEventListener('change', applyFilters);
  applyFilters();

  const showError = (text) => {
    setText(errorEl.querySelector('.text'), text);
    errorEl.hidden = false;
  };
  document.getElementById('error-close').addEventListener('click', () => {
    errorEl.hidden = true;
  });

  const act = async (action, topic, host, reason) => {
    const headers = { 'Content-Type': 'application/json' };
    const token = tokenEl ? tokenEl.value.trim() : '';
    // Only ever in a header: URLs are logged and kept in history.
    if (token) headers.Authorization = 'Bearer ' + token;
    try {
      const r = await fetch(base + '/api/admin', {
        method: 'POST',
        headers,
        body: JSON.stringify({ action, topic, host, reason }),
      });
      const answer = await r.json().catch(() => ({}));
      if (!r.ok) {
        showError(action + ' ' + topic + '/' + host + ' failed (' + r.status + '): ' + (answer.error || r.statusText));
        return;
      }
      errorEl.hidden = true;
      if (answer.member) upsert(answer.member);
    } catch (e) {
      showError(action + ' ' + topic + '/' + host + ' failed: ' + e);
    }
  };

  let pending = null;
  topicsEl.addEventListener('click', (e) => {
    const button = e.target.closest('button[data-action]');
    if (!button) return;
    const tr = button.closest('tr.member');
    const { topic, host } = tr.dataset;
    const action = button.dataset.action;
    if (action === 'disable' && dialog) {
      pending = { topic, host };
      setText(dialog.querySelector('.who'), topic + '/' + host);
      document.getElementById('reason').value = '';
      dialog.showModal();
      return;
    }
    act(action, topic, host, null);
  });
  if (dialog) {
    dialog.addEventListener('close', () => {
      if (dialog.returnValue === 'ok' && pending) {
        act('disable', pending.topic, pending.host, document.getElementById('reason').value);
      }
      pending = null;
    });
  }

  // How each node is doing: the dashboard asks the nodes, the page asks
  // the dashboard.
  const BARS = '\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588';
  const sparkline = (values) => {
    const max = Math.max(0, ...values);
    return values.map((v) => BARS[max > 0 ? Math.min(7, Math.floor((v / max) * 7.999)) : 0]).join('');
  };
  const figure = (v, digits) => (v == null ? '-' : v >= 100 ? String(Math.round(v)) : v.toFixed(digits));
  const showFigures = (nodes) => {
    for (const [key, tr] of rows) {
      const cells = {};
      for (const td of tr.querySelectorAll('td.fig')) cells[td.classList[1]] = td;
      if (!cells.calls) continue;
      const f = tr.dataset.state === 'up' ? nodes[key] : null;
      const sick = Boolean(f && f.error);
      cells.calls.classList.toggle('sick', sick);
      cells.calls.title = sick ? f.error : '';
      if (!f) {
        for (const td of Object.values(cells)) setText(td, '');
        if (tr.dataset.state === 'up') setText(cells.calls, 'asking…');
        continue;
      }
      if (sick) {
        setText(cells.calls, f.error);
        for (const name of ['errors', 'p99', 'inflight']) setText(cells[name], '-');
      } else {
        setText(cells.calls, figure(f.calls_per_sec, 1));
        setText(cells.errors, figure(f.errors_per_sec, 1));
        setText(cells.p99, f.p99_ms == null ? '-' : figure(f.p99_ms, 1) + ' ms');
        setText(cells.inflight, f.in_flight == null ? '-' : String(f.in_flight));
      }
      setText(cells.spark, sparkline(f.history));
      cells.errors.classList.toggle('bad', (f.errors_per_sec || 0) > 0);
    }
  };
  let figuresEvery = 5000;
  const pollFigures = async () => {
    try {
      const r = await fetch(base + '/api/figures');
      if (r.ok) {
        const d = await r.json();
        stats.figures++;
        figuresEvery = Math.max(1000, d.interval_s * 1000);
        showFigures(d.nodes);
      }
    } catch (e) {
      // The event stream's status line says when the dashboard is away.
    }
    setTimeout(pollFigures, figuresEvery);
  };
  if (body.dataset.figures === 'true') pollFigures();

  // Served by an xDS control plane: each topic's clients and the calls
  // they reported (LRS), refilled every few seconds.
  const LOAD_FIELDS = ['issued', 'succeeded', 'failed', 'dropped', 'in_progress'];
  const showLoads = (topics) => {
    for (const [topic, s] of sections) {
      const tbody = s.querySelector('table.xds-loads tbody');
      if (!tbody) continue;
      const rowsNow = (topics[topic] || []).map((c) => {
        const tr = document.createElement('tr');
        const cell = (cls, text) => {
          const td = document.createElement('td');
          td.className = cls;
          td.textContent = String(text);
          tr.appendChild(td);
        };
        cell('client', c.client);
        for (const f of LOAD_FIELDS) cell(f, c[f]);
        tr.querySelector('td.failed').classList.toggle('bad', c.failed > 0);
        return tr;
      });
      tbody.replaceChildren(...rowsNow);
    }
  };
  const pollLoads = async () => {
    try {
      const r = await fetch(base + '/api/xds-loads');
      if (r.ok) {
        stats.loads = (stats.loads || 0) + 1;
        showLoads((await r.json()).topics);
      }
    } catch (e) {
      // As for the figures: the status line says when the page is cut off.
    }
    setTimeout(pollLoads, 5000);
  };
  if (body.dataset.xds === 'true') pollLoads();

  setInterval(() => {
    const now = Date.now();
    for (const td of topicsEl.querySelectorAll('td.since')) setText(td, age(td.dataset.at, now));
  }, 1000);

  connect();
  performance.mark('svckit-dashboard-ready');
})();
