// The vmvault dashboard (docs/ui.md): reads /api/dashboard and shows it. Plain JavaScript, no
// framework. Everything from the repository (VM names, tags, notes, hosts, messages) is untrusted:
// it goes into the page as text nodes and dataset values only, never as markup.
'use strict';

(function () {
  const REFRESH_MS = 30_000;
  let chart = null;
  let lastData = null;

  // ---- building blocks -------------------------------------------------------------------------

  /** An element with attributes (`class`, `data: {...}`, `title`, others) and text or node children. */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs ?? {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'data') for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = String(dv);
      else e.setAttribute(k, String(v));
    }
    for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) e.append(c);
    return e;
  }

  /** A cell showing `text`, with the raw value in data-field / data-value for scripts and tests. */
  function cell(field, value, text, cls) {
    return el('td', { class: cls, data: { field, value } }, text ?? String(value));
  }

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = n;
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return i === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
  }

  const ratio = (r) => `${Number(r).toFixed(2)}×`;
  const pad = (n) => String(n).padStart(2, '0');

  /** Local time, `YYYY-MM-DD HH:MM`. */
  function time(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function age(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return `${s} s`;
    if (s < 90 * 60) return `${Math.round(s / 60)} min`;
    if (s < 36 * 3600) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86400)} d`;
  }
  const ago = (iso) => `${age(Date.now() - Date.parse(iso))} ago`;
  const short = (id) => String(id).slice(0, 8);

  function section(title, id, ...children) {
    return el('section', { class: 'card', id }, el('h2', {}, title), ...children);
  }

  function table(head, rows, attrs) {
    return el(
      'table',
      attrs ?? {},
      el(
        'thead',
        {},
        el(
          'tr',
          {},
          head.map((h) => el('th', { class: h.cls }, h.label ?? h)),
        ),
      ),
      el('tbody', {}, rows),
    );
  }

  // ---- the parts of the page -------------------------------------------------------------------

  function summary(d) {
    const s = d.stats;
    const check = checkBadge(d.check);
    const item = (label, stat, value, text) =>
      el(
        'div',
        { class: 'stat' },
        el('span', { class: 'label' }, label),
        el('span', { class: 'value', data: { stat, value } }, text),
      );
    return el(
      'div',
      { class: 'stats' },
      item('VMs', 'vms', s.vms, String(s.vms)),
      item('Snapshots', 'snapshots', s.snapshots, String(s.snapshots)),
      item('Stored', 'storedBytes', s.storedBytes, bytes(s.storedBytes)),
      item('Logical data', 'logicalBytes', s.logicalBytes, bytes(s.logicalBytes)),
      item('Unique data', 'uniqueBytes', s.uniqueBytes, bytes(s.uniqueBytes)),
      item('Deduplication', 'dedupRatio', s.dedupRatio, ratio(s.dedupRatio)),
      item('Compression', 'compressionRatio', s.compressionRatio, ratio(s.compressionRatio)),
      el('div', { class: 'stat' }, el('span', { class: 'label' }, 'Last check'), check),
    );
  }

  function checkBadge(check) {
    if (check === null)
      return el(
        'span',
        { class: 'value badge warn', data: { field: 'check-state', value: 'none' } },
        'never',
      );
    if ('damaged' in check)
      return el(
        'span',
        { class: 'value badge bad', data: { field: 'check-state', value: 'damaged' } },
        'unreadable',
      );
    const r = check.record;
    return el(
      'span',
      {
        class: `value badge ${r.ok ? 'ok' : 'bad'}`,
        data: { field: 'check-state', value: r.ok ? 'ok' : 'failed' },
        title: r.finishedAt,
      },
      `${r.ok ? 'clean' : `${r.problems} problem${r.problems === 1 ? '' : 's'}`} · ${ago(r.finishedAt)}`,
    );
  }

  function vmTable(d) {
    const byVm = new Map();
    for (const s of d.snapshots) byVm.set(s.vm, s); // oldest first: the last one wins
    const head = [
      'VM',
      { label: 'Snapshots', cls: 'num' },
      'Last backup',
      'Mode',
      { label: 'Virtual', cls: 'num' },
      { label: 'New in last', cls: 'num' },
      { label: 'Logical', cls: 'num' },
      { label: 'Unique', cls: 'num' },
      { label: 'Dedup', cls: 'num' },
      { label: 'Compression', cls: 'num' },
    ];
    const rows = d.vms.map((v, i) => {
      const last = byVm.get(v.name);
      const stale = last && Date.now() - Date.parse(last.time) > 36 * 3600 * 1000;
      return el(
        'tr',
        { data: { vm: v.name } },
        el(
          'td',
          { data: { field: 'name', value: v.name } },
          el('a', { href: `#vm-${i}`, class: 'vmname' }, v.name),
        ),
        cell('snapshots', v.snapshots, String(v.snapshots), 'num'),
        last
          ? el(
              'td',
              { data: { field: 'lastTime', value: last.time }, title: last.time, class: stale ? 'old' : '' },
              `${time(last.time)} (${ago(last.time)})`,
            )
          : el('td', {}, '—'),
        cell('lastMode', last ? last.mode : '', last ? last.mode : '—'),
        cell('virtualBytes', v.virtualBytes, bytes(v.virtualBytes), 'num'),
        cell('lastNewBytes', last ? last.newBytes : 0, last ? bytes(last.newBytes) : '—', 'num'),
        cell('logicalBytes', v.logicalBytes, bytes(v.logicalBytes), 'num'),
        cell('uniqueBytes', v.uniqueBytes, bytes(v.uniqueBytes), 'num'),
        cell('dedupRatio', v.dedupRatio, ratio(v.dedupRatio), 'num'),
        cell('compressionRatio', v.compressionRatio, ratio(v.compressionRatio), 'num'),
      );
    });
    if (rows.length === 0)
      rows.push(el('tr', {}, el('td', { colspan: head.length, class: 'muted' }, 'No snapshots yet.')));
    return section('Virtual machines', 'vms', table(head, rows, { class: 'vms' }));
  }

  function growthSection() {
    return section(
      'Repository growth',
      'growth',
      el(
        'p',
        { class: 'muted' },
        'After each snapshot: stored bytes (written for new chunks), unique data, and logical data (what full copies would take).',
      ),
      el('div', { id: 'chart', class: 'chart' }),
    );
  }

  function drawChart(d) {
    const box = document.getElementById('chart');
    if (chart) {
      chart.destroy();
      chart = null;
    }
    if (!box) return;
    if (typeof window.uPlot !== 'function') {
      box.append(el('p', { class: 'muted' }, 'The chart library did not load.'));
      return;
    }
    const g = d.growth;
    if (g.length === 0) {
      box.append(el('p', { class: 'muted' }, 'No snapshots yet.'));
      return;
    }
    // uPlot needs increasing x: snapshots in the same second share the last point.
    const xs = [];
    const stored = [];
    const unique = [];
    const logical = [];
    for (const p of g) {
      const x = Math.floor(Date.parse(p.time) / 1000);
      if (xs.length && xs[xs.length - 1] >= x) {
        stored[stored.length - 1] = p.storedBytes;
        unique[unique.length - 1] = p.uniqueBytes;
        logical[logical.length - 1] = p.logicalBytes;
        continue;
      }
      xs.push(x);
      stored.push(p.storedBytes);
      unique.push(p.uniqueBytes);
      logical.push(p.logicalBytes);
    }
    const axisBytes = (_u, vals) => vals.map((v) => (v === null ? '' : bytes(v)));
    const opts = {
      width: Math.max(300, box.clientWidth),
      height: 260,
      scales: {
        x: { time: true },
        y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.05)] },
      },
      axes: [{}, { values: axisBytes, size: 80 }],
      series: [
        {},
        {
          label: 'stored',
          stroke: '#2563eb',
          width: 2,
          fill: 'rgba(37,99,235,0.12)',
          value: (_u, v) => (v === null ? '—' : bytes(v)),
        },
        {
          label: 'unique data',
          stroke: '#16a34a',
          width: 2,
          value: (_u, v) => (v === null ? '—' : bytes(v)),
        },
        {
          label: 'logical data',
          stroke: '#9ca3af',
          width: 1.5,
          dash: [6, 4],
          value: (_u, v) => (v === null ? '—' : bytes(v)),
        },
      ],
    };
    chart = new window.uPlot(opts, [xs, stored, unique, logical], box);
    // One snapshot time alone: a day around it, not uPlot's span of years.
    if (xs.length === 1) chart.setScale('x', { min: xs[0] - 43200, max: xs[0] + 43200 });
  }

  function activity(d) {
    const parts = [];
    const lock = d.maintenanceLock;
    if (lock)
      parts.push(
        el(
          'p',
          { class: `lock ${lock.stale ? 'warn' : 'busy'}`, data: { field: 'maintenanceLock' } },
          `Maintenance lock held by ${lock.command ?? '?'} on ${lock.host ?? '?'} (pid ${lock.pid ?? '?'})`,
          lock.since ? ` since ${time(lock.since)}` : '',
          lock.stale ? ' — stale (its session is gone)' : '',
          lock.damaged ? ` — damaged: ${lock.damaged}` : '',
        ),
      );
    else parts.push(el('p', { class: 'muted', data: { field: 'maintenanceLock' } }, 'No maintenance lock.'));
    if (d.sessions.length === 0)
      parts.push(el('p', { class: 'muted', data: { field: 'sessions' } }, 'No running sessions.'));
    else
      parts.push(
        table(
          ['Session', 'Command', 'Host', { label: 'PID', cls: 'num' }, 'Started', 'Heartbeat', 'State'],
          d.sessions.map((s) =>
            el(
              'tr',
              { data: { session: s.id } },
              el('td', { class: 'mono', title: s.id }, short(s.id)),
              el('td', {}, s.command ?? '—'),
              el('td', {}, s.host ?? '—'),
              el('td', { class: 'num' }, s.pid === null ? '—' : String(s.pid)),
              el('td', {}, s.startedAt ? time(s.startedAt) : '—'),
              el('td', {}, `${age(s.ageMs)} ago`),
              el(
                'td',
                { class: s.stale || s.damaged ? 'old' : '' },
                s.damaged ? `damaged: ${s.damaged}` : s.stale ? 'stale' : 'running',
              ),
            ),
          ),
          { class: 'sessions' },
        ),
      );
    return section('Sessions and locks', 'activity', parts);
  }

  function checkSection(d) {
    const c = d.check;
    let body;
    if (c === null)
      body = [
        el(
          'p',
          { class: 'muted' },
          "No check has been recorded. Run 'vmvault check' (with --read-data now and then).",
        ),
      ];
    else if ('damaged' in c)
      body = [el('p', { class: 'bad' }, `The check record cannot be read: ${c.damaged}`)];
    else {
      const r = c.record;
      const dl = el('dl', { class: 'kv' });
      const kv = (k, v, field) =>
        dl.append(el('dt', {}, k), el('dd', field ? { data: { field, value: v } } : {}, String(v)));
      kv('Result', r.ok ? 'clean' : `${r.problems} problem${r.problems === 1 ? '' : 's'}`, 'check-result');
      kv('Finished', `${time(r.finishedAt)} (${ago(r.finishedAt)}) on ${r.host}`);
      kv(
        'Kind',
        `${r.readData ? `read data${r.subset ? ` (subset ${r.subset})` : ''}` : 'structure only'}${r.repair ? ', repair' : ''}`,
      );
      kv('Snapshots', `${r.snapshots}${r.snapshotsDamaged ? `, ${r.snapshotsDamaged} damaged` : ''}`);
      kv(
        'Chunks',
        `${r.chunksReferenced} referenced, ${r.chunksRead} read, ${r.chunksMissing} missing, ${r.chunksCorrupt} corrupt`,
      );
      body = [dl];
      if (r.lines.length)
        body.push(
          el(
            'ul',
            { class: 'problems' },
            r.lines.map((l) => el('li', {}, l)),
          ),
        );
    }
    return section('Last check', 'check', body);
  }

  /** Each VM's snapshots: a timeline over the repository's time span, then a table, newest first. */
  function vmDetail(d) {
    const t = d.snapshots.map((s) => Date.parse(s.time));
    const t0 = t.reduce((a, b) => Math.min(a, b), Infinity);
    const t1 = t.reduce((a, b) => Math.max(a, b), -Infinity);
    const span = Math.max(1, t1 - t0);
    const out = [];
    d.vms.forEach((v, i) => {
      const snaps = d.snapshots.filter((s) => s.vm === v.name);
      const line = el('div', { class: 'timeline', data: { timeline: v.name } });
      for (const s of snaps) {
        const mark = el('span', {
          class: `mark mode-${/^[a-z-]+$/.test(s.mode) ? s.mode : 'other'}${s.protected ? ' protected' : ''}`,
          title: `${time(s.time)} · ${s.mode} · ${bytes(s.newBytes)} new${s.tags.length ? ` · ${s.tags.join(', ')}` : ''}`,
          data: { snapshotId: s.id },
        });
        mark.style.left = `${t1 === t0 ? 50 : ((Date.parse(s.time) - t0) / span) * 100}%`;
        line.append(mark);
      }
      const axis = el(
        'div',
        { class: 'axis' },
        el('span', {}, time(new Date(t0).toISOString())),
        el('span', {}, time(new Date(t1).toISOString())),
      );
      const rows = [...snaps].reverse().map((s) =>
        el(
          'tr',
          { data: { snapshotId: s.id, vm: s.vm } },
          el('td', { data: { field: 'time', value: s.time }, title: s.time }, time(s.time)),
          el('td', { class: 'mono', title: s.id, data: { field: 'id', value: s.id } }, short(s.id)),
          cell('mode', s.mode, s.mode),
          el(
            'td',
            { data: { field: 'tags', value: s.tags.join(',') } },
            s.tags.map((tag) => el('span', { class: 'tag' }, tag)),
          ),
          el('td', { class: 'note', data: { field: 'note', value: s.note ?? '' } }, s.note ?? ''),
          el(
            'td',
            { data: { field: 'protected', value: s.protected } },
            s.protected ? el('span', { class: 'badge ok' }, 'protected') : '',
          ),
          el(
            'td',
            { class: 'mono', data: { field: 'disks', value: s.disks.map((x) => x.target).join(',') } },
            s.disks.map((x) => x.target).join(', '),
          ),
          cell('virtualBytes', s.virtualBytes, bytes(s.virtualBytes), 'num'),
          cell('newBytes', s.newBytes, bytes(s.newBytes), 'num'),
          cell('storedBytes', s.storedBytes, bytes(s.storedBytes), 'num'),
        ),
      );
      const head = [
        'Time',
        'Snapshot',
        'Mode',
        'Tags',
        'Note',
        '',
        'Disks',
        { label: 'Virtual', cls: 'num' },
        { label: 'New', cls: 'num' },
        { label: 'Stored', cls: 'num' },
      ];
      const title = el('h2', {}, el('span', { class: 'vmname' }, v.name));
      const facts = el(
        'p',
        { class: 'muted' },
        `${v.snapshots} snapshot${v.snapshots === 1 ? '' : 's'} · ${bytes(v.uniqueBytes)} unique · dedup ${ratio(v.dedupRatio)} · compression ${ratio(v.compressionRatio)}`,
      );
      out.push(
        el(
          'section',
          { class: 'card vm', id: `vm-${i}`, data: { vmDetail: v.name } },
          title,
          facts,
          line,
          axis,
          table(head, rows, { class: 'snapshots' }),
        ),
      );
    });
    return out;
  }

  // ---- render and refresh ----------------------------------------------------------------------

  function render(d) {
    lastData = d;
    const repo = document.getElementById('repo');
    repo.replaceChildren(
      el('span', { class: 'mono', data: { field: 'location' } }, d.repository.location),
      el(
        'span',
        { class: 'muted' },
        ` · ${short(d.repository.id)} · ${d.repository.encryption === 'none' ? 'not encrypted' : `encrypted (${d.repository.encryption})`}`,
      ),
    );
    const parts = [summary(d)];
    if (d.warnings.length)
      parts.push(
        el(
          'div',
          { class: 'banner warn', data: { field: 'warnings' } },
          el('strong', {}, 'Warnings: '),
          el(
            'ul',
            {},
            d.warnings.map((w) => el('li', {}, w)),
          ),
        ),
      );
    parts.push(
      vmTable(d),
      growthSection(),
      el('div', { class: 'two' }, activity(d), checkSection(d)),
      ...vmDetail(d),
    );
    document.getElementById('main').replaceChildren(...parts);
    drawChart(d);
    const stale = d.readError ? ` · last read failed: ${d.readError}` : '';
    document.getElementById('updated').textContent =
      `read ${time(d.generatedAt)}:${pad(new Date(d.generatedAt).getSeconds())}${stale}`;
    document.body.dataset.loaded = 'true';
  }

  function banner(text) {
    const b = document.getElementById('banner');
    if (text === null) {
      b.hidden = true;
      b.textContent = '';
    } else {
      b.hidden = false;
      b.textContent = text;
    }
  }

  async function load() {
    try {
      const res = await fetch('/api/dashboard', { credentials: 'same-origin', cache: 'no-store' });
      if (res.status === 401) {
        banner(
          "Not signed in: open this page's address with ?token=TOKEN (the first line of vmvault ui's --token-file).",
        );
        return;
      }
      const body = await res.json();
      if (!res.ok) {
        banner(`The dashboard cannot be read: ${body && body.error ? body.error : res.status}`);
        return;
      }
      banner(null);
      render(body);
    } catch (err) {
      banner(
        `The server does not answer (${err && err.message ? err.message : err}); retrying every ${REFRESH_MS / 1000} s.`,
      );
    }
  }

  let resizeTimer;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => lastData && drawChart(lastData), 150);
  });

  load();
  setInterval(load, REFRESH_MS);
})();
