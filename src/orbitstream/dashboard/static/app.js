/* OrbitStream live dashboard.
 *
 * Plain ES2020, no framework, no network access beyond our own service:
 *   GET api/pipelines                      (every running pipeline; the thresholds)
 *   GET api/dashboard/summary              (the satellites view, while that pipeline runs)
 *   GET api/dashboard/series?satellite_id=…&minutes=…
 * (relative URLs, so the page also works when mounted under a path prefix).
 *
 * Test hooks: KPI elements, table cells and pipeline fields carry data-raw with the exact
 * JSON value (strings as-is, everything else JSON-encoded); #status has data-state; chart
 * containers have data-points and data-threshold; body.dataset.refreshes counts successful
 * refreshes, body.dataset.thresholds holds the rules read from the service and
 * body.dataset.satellites is "on" or "off".
 */
(() => {
  "use strict";

  const REFRESH_MS = 2000;
  const REQUEST_TIMEOUT_MS = 4500;
  const SUMMARY_URL = "api/dashboard/summary";
  const SERIES_URL = "api/dashboard/series";
  const PIPELINES_URL = "api/pipelines";
  // The satellites pipeline's rules as the service reports them (api/pipelines `info`):
  // { op, threshold } per chart, null until known. Nothing is assumed here.
  const RULES = { battery: null, storage: null, signal: null };
  const RULE_FIELDS = {
    battery_charge_percent: "battery",
    storage_usage_mb: "storage",
    signal_strength_dbm: "signal",
  };
  const COMPARE = {
    "<": (v, t) => v < t,
    "<=": (v, t) => v <= t,
    ">": (v, t) => v > t,
    ">=": (v, t) => v >= t,
  };
  const breaches = (key, v) => {
    const r = RULES[key];
    return r !== null && v !== null && COMPARE[r.op] !== undefined && COMPARE[r.op](v, r.threshold);
  };
  const STATUS_RANK = { anomaly: 0, stale: 1, ok: 2 };
  // Above this many rows, rows scrolled out of view skip rendering (CSS content-visibility).
  const LARGE_FLEET = 150;
  const FIELDS = ["status", "last_seen", "points", "anomalies", "battery", "storage", "signal"];

  // ---------------------------------------------------------------- formatting
  const nfInt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const nf1 = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const nf2 = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

  // Numbers may arrive as JSON strings (e.g. 64-bit integers from the store): accept both.
  const toNum = (v) => {
    if (typeof v === "number") return Number.isFinite(v) ? v : null;
    if (typeof v === "string" && v.trim() !== "") {
      const n = Number(v);
      return Number.isFinite(n) ? n : null;
    }
    return null;
  };
  const fmtWith = (nf, v) => {
    const n = toNum(v);
    return n === null ? "—" : nf.format(n);
  };
  const fmtInt = (v) => fmtWith(nfInt, v);
  const fmt1 = (v) => fmtWith(nf1, v);
  const fmtPct = (fraction) => {
    const n = toNum(fraction);
    return n === null ? "—" : `${nf2.format(n * 100)}%`;
  };
  const rawOf = (v) => (typeof v === "string" ? v : JSON.stringify(v === undefined ? null : v));

  function parseTime(iso) {
    if (typeof iso !== "string" || !iso) return NaN;
    return Date.parse(iso);
  }

  function fmtClockUTC(ms) {
    if (!Number.isFinite(ms)) return "—";
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, "0");
    return `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} UTC`;
  }

  function fmtAgo(ms) {
    if (!Number.isFinite(ms)) return "—";
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s ago`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ago`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min ago`;
    return `${Math.floor(h / 24)} d ago`;
  }

  // ---------------------------------------------------------------- DOM helpers
  const $ = (sel) => document.querySelector(sel);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function setRaw(node, value, text) {
    const raw = rawOf(value);
    if (node.dataset.raw !== raw) node.dataset.raw = raw;
    setText(node, text);
  }

  // ---------------------------------------------------------------- state
  const state = {
    refreshes: 0,
    failures: 0,
    lastOk: NaN, // client clock of the last successful refresh
    serverNow: NaN, // generated_at of the last summary
    selected: null, // satellite id shown in the charts
    minutes: 60,
    sortKey: "id",
    sortDir: 1,
    filter: "",
    rows: new Map(), // id -> { tr, cells: {field: td}, data }
    order: [], // ids in current DOM order
    optionIds: "", // ids in the <select>, joined, to rebuild only on change
    series: { t: [], anomalies: [], bucket: null },
    seriesSeq: 0,
    inflight: false,
    pipes: new Map(), // name -> { card, cells }
  };

  const dom = {};

  // ---------------------------------------------------------------- network
  async function getJSON(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), REQUEST_TIMEOUT_MS);
    try {
      const res = await fetch(url, {
        signal: ctl.signal,
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (!res.ok) {
        const reason = res.statusText ? ` ${res.statusText}` : "";
        const err = new Error(`HTTP ${res.status}${reason}`);
        err.status = res.status;
        throw err;
      }
      return await res.json();
    } catch (err) {
      if (err && err.name === "AbortError") throw new Error("request timed out");
      if (err instanceof TypeError) throw new Error("service unreachable");
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  function seriesUrl(id) {
    const q = new URLSearchParams({ satellite_id: id, minutes: String(state.minutes) });
    return `${SERIES_URL}?${q}`;
  }

  // ---------------------------------------------------------------- status
  function setStatus(ok, message) {
    const st = dom.status;
    const next = ok ? "ok" : "error";
    if (st.dataset.state !== next) st.dataset.state = next;
    setText(dom.statusText, message);
    st.title = message;
    document.body.classList.toggle("is-stale", !ok);
  }

  // ---------------------------------------------------------------- KPIs
  function renderKpis(s) {
    setRaw(dom.totalPoints, s.total_points, fmtInt(s.total_points));
    setRaw(dom.totalAnomalies, s.total_anomalies, fmtInt(s.total_anomalies));
    setRaw(dom.ingestRate, s.ingest_rate, fmt1(s.ingest_rate));
    setRaw(dom.anomalyRate, s.anomaly_rate, fmtPct(s.anomaly_rate));
    const alerts = Array.isArray(s.active_alerts) ? s.active_alerts : [];
    setRaw(dom.alertsCount, alerts.length, fmtInt(alerts.length));
    dom.kpiAlerts.classList.toggle("is-firing", alerts.length > 0);
    if (toNum(s.window_seconds) !== null) {
      for (const w of dom.windowSeconds) setText(w, fmtInt(s.window_seconds));
    }
    const gen = parseTime(s.generated_at);
    setRaw(dom.lastUpdated, s.generated_at, fmtClockUTC(Number.isFinite(gen) ? gen : Date.now()));
    if (typeof s.generated_at === "string") dom.lastUpdated.setAttribute("datetime", s.generated_at);
  }

  // ---------------------------------------------------------------- alerts
  function renderAlerts(alerts) {
    const frag = document.createDocumentFragment();
    for (const a of alerts) {
      const li = el("li", "alert");
      li.dataset.entityId = a.entity_id ?? "";
      li.dataset.rule = a.rule ?? "";
      if (state.rows.has(a.entity_id)) li.classList.add("is-link");

      const top = el("div", "alert-top");
      top.append(el("span", "alert-entity", a.entity_id ?? "—"), el("span", "alert-rule", a.rule ?? ""));
      const since = parseTime(a.since);
      const when = el("span", "alert-since", fmtClockUTC(since));
      when.title = `since ${a.since ?? "?"}`;
      top.append(when);

      const bottom = el("div", "alert-bottom");
      const val = el("span", "alert-value");
      val.append(el("b", "", fmt1(a.value)), document.createTextNode(" vs threshold "), el("b", "", fmt1(a.threshold)));
      bottom.append(val);
      const age = Number.isFinite(state.serverNow) ? state.serverNow - since : NaN;
      if (Number.isFinite(age)) bottom.append(el("span", "alert-age", `firing ${fmtAgo(age).replace(" ago", "")}`));

      li.append(top, bottom);
      if (a.message) {
        li.append(el("div", "alert-msg", a.message));
      }
      frag.append(li);
    }
    dom.alerts.replaceChildren(frag);
    dom.alertsEmpty.hidden = alerts.length > 0;
    setText(dom.alertsPanelCount, fmtInt(alerts.length));
  }

  // ---------------------------------------------------------------- table
  function statusClass(status) {
    return STATUS_RANK[status] === undefined ? "badge badge-unknown" : `badge badge-${status}`;
  }

  function createRow(id) {
    const tr = document.createElement("tr");
    tr.dataset.satelliteId = id;
    tr.tabIndex = 0;
    tr.setAttribute("role", "row"); // the table is styled as grid rows; keep its semantics
    const idCell = el("th", "sat-id", id);
    idCell.scope = "row";
    idCell.setAttribute("role", "rowheader");
    tr.append(idCell);
    const cells = {};
    for (const f of FIELDS) {
      const td = document.createElement("td");
      td.setAttribute("role", "cell");
      td.dataset.field = f;
      if (f === "status") {
        td.append(el("span", "badge"));
      } else if (f !== "last_seen") {
        td.className = "num";
      }
      tr.append(td);
      cells[f] = td;
    }
    return { tr, cells, data: null, search: id.toLowerCase() };
  }

  function updateRow(row, sat) {
    const c = row.cells;
    const status = typeof sat.status === "string" ? sat.status : "unknown";
    if (c.status.dataset.raw !== rawOf(sat.status)) {
      c.status.dataset.raw = rawOf(sat.status);
      const badge = c.status.firstChild;
      badge.className = statusClass(status);
      badge.textContent = status;
      row.tr.classList.toggle("row-anomaly", status === "anomaly");
      row.tr.classList.toggle("row-stale", status === "stale");
    }
    const seen = parseTime(sat.last_seen);
    const ref = Number.isFinite(state.serverNow) ? state.serverNow : Date.now();
    setRaw(c.last_seen, sat.last_seen, fmtAgo(ref - seen));
    if (c.last_seen.title !== (sat.last_seen ?? "")) c.last_seen.title = sat.last_seen ?? "";
    setRaw(c.points, sat.points, fmtInt(sat.points));
    setRaw(c.anomalies, sat.anomalies, fmtInt(sat.anomalies));
    const battery = toNum(sat.battery);
    const storage = toNum(sat.storage);
    const signal = toNum(sat.signal);
    setRaw(c.battery, sat.battery, fmt1(battery));
    c.battery.classList.toggle("breach", breaches("battery", battery));
    setRaw(c.storage, sat.storage, fmt1(storage));
    c.storage.classList.toggle("breach", breaches("storage", storage));
    setRaw(c.signal, sat.signal, fmt1(signal));
    c.signal.classList.toggle("breach", breaches("signal", signal));
    row.data = sat;
    row.search = `${sat.satellite_id} ${status}`.toLowerCase();
  }

  function sortValue(row, key) {
    const d = row.data || {};
    switch (key) {
      case "id":
        return d.satellite_id ?? "";
      case "status":
        return STATUS_RANK[d.status] ?? 3;
      case "last_seen": {
        const t = parseTime(d.last_seen);
        return Number.isFinite(t) ? t : -Infinity;
      }
      default:
        return toNum(d[key]);
    }
  }

  const collator = new Intl.Collator("en", { numeric: true, sensitivity: "base" });

  function compareRows(a, b) {
    const key = state.sortKey;
    const dir = state.sortDir;
    const va = sortValue(a, key);
    const vb = sortValue(b, key);
    let r;
    if (va === null || vb === null) {
      r = va === vb ? 0 : va === null ? 1 : -1; // missing values always last
      if (r !== 0) return r;
    } else if (typeof va === "string") {
      r = collator.compare(va, vb) * dir;
    } else {
      r = (va - vb) * dir;
    }
    if (r !== 0 && !Number.isNaN(r)) return r;
    return collator.compare(a.data?.satellite_id ?? "", b.data?.satellite_id ?? "");
  }

  function applyOrder() {
    const rows = Array.from(state.rows.values());
    rows.sort(compareRows);
    const ids = rows.map((r) => r.tr.dataset.satelliteId);
    const same = ids.length === state.order.length && ids.every((id, i) => id === state.order[i]);
    if (!same) {
      const frag = document.createDocumentFragment();
      for (const r of rows) frag.append(r.tr);
      dom.tbody.append(frag); // moves existing rows, no re-creation
      state.order = ids;
    }
  }

  function applyFilter() {
    const f = state.filter;
    let shown = 0;
    for (const row of state.rows.values()) {
      const hide = f !== "" && !row.search.includes(f);
      if (row.tr.hidden !== hide) row.tr.hidden = hide;
      if (!hide) shown += 1;
    }
    const total = state.rows.size;
    const large = total > LARGE_FLEET;
    if (dom.table.classList.contains("is-large") !== large) dom.table.classList.toggle("is-large", large);
    setText(dom.satCount, f ? `${fmtInt(shown)} of ${fmtInt(total)}` : fmtInt(total));
    dom.satEmpty.hidden = total > 0 && shown > 0;
    setText(dom.satEmpty, total === 0 ? "No satellites reporting yet" : "No satellite matches the filter");
  }

  function renderTable(sats) {
    const seen = new Set();
    const fresh = [];
    for (const sat of sats) {
      const id = sat && sat.satellite_id;
      if (typeof id !== "string" || seen.has(id)) continue;
      seen.add(id);
      let row = state.rows.get(id);
      if (!row) {
        row = createRow(id);
        state.rows.set(id, row);
        fresh.push(row);
      }
      updateRow(row, sat);
    }
    for (const [id, row] of state.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        state.rows.delete(id);
      }
    }
    if (fresh.length || state.order.length !== state.rows.size) state.order = [];
    applyOrder();
    applyFilter();
    markSelectedRow();
  }

  function markSelectedRow() {
    for (const [id, row] of state.rows) {
      const sel = id === state.selected;
      if (row.tr.classList.contains("is-selected") !== sel) row.tr.classList.toggle("is-selected", sel);
    }
  }

  function updateSortIndicators() {
    for (const th of dom.sortHeaders) {
      const active = th.dataset.sort === state.sortKey;
      th.classList.toggle("sorted", active);
      if (active) th.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  // ---------------------------------------------------------------- satellite chooser
  function renderSelect(sats) {
    const ids = sats
      .map((s) => s && s.satellite_id)
      .filter((id) => typeof id === "string")
      .sort(collator.compare);
    const key = ids.join("\n");
    if (key !== state.optionIds) {
      const frag = document.createDocumentFragment();
      for (const id of ids) {
        const o = document.createElement("option");
        o.value = id;
        o.textContent = id;
        frag.append(o);
      }
      dom.select.replaceChildren(frag);
      state.optionIds = key;
    }
    if (state.selected === null || !ids.includes(state.selected)) {
      // First load: honour #sat=… from the URL; otherwise (or if the satellite went away)
      // fall back to the first one. With no satellites at all, keep what we have.
      let next = null;
      if (state.selected === null) {
        const fromHash = readHash();
        if (fromHash && ids.includes(fromHash)) next = fromHash;
      }
      if (next === null && ids.length) next = ids[0];
      if (next !== null && next !== state.selected) {
        state.selected = next;
        writeHash();
        clearCharts();
      }
    }
    if (state.selected !== null && dom.select.value !== state.selected) dom.select.value = state.selected;
    renderSelectedBadge();
  }

  function renderSelectedBadge() {
    const row = state.selected !== null ? state.rows.get(state.selected) : undefined;
    const b = dom.selectedStatus;
    if (!row || !row.data) {
      b.hidden = true;
      return;
    }
    const status = typeof row.data.status === "string" ? row.data.status : "unknown";
    b.hidden = false;
    b.className = statusClass(status);
    setText(b, status);
  }

  function readHash() {
    const m = /(?:^#|&)sat=([^&]+)/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function writeHash() {
    if (state.selected === null) return;
    const h = `#sat=${encodeURIComponent(state.selected)}`;
    if (location.hash !== h) history.replaceState(null, "", h);
  }

  function selectSatellite(id) {
    if (!id || id === state.selected) return;
    state.selected = id;
    if (dom.select.value !== id) dom.select.value = id;
    writeHash();
    markSelectedRow();
    renderSelectedBadge();
    clearCharts();
    loadSeries().catch(() => {
      /* the periodic refresh reports errors */
    });
  }

  // ---------------------------------------------------------------- charts
  const charts = {};
  const threshold = (key) => (RULES[key] === null ? null : RULES[key].threshold);
  const CHART_DEFS = [
    { key: "battery", label: "Battery", unit: "%", color: "#3ddc97", fill: "rgba(61,220,151,0.10)", fixed: [0, 100] },
    { key: "storage", label: "Storage", unit: "MB", color: "#7aa2ff", fill: "rgba(122,162,255,0.10)" },
    { key: "signal", label: "Signal", unit: "dBm", color: "#ffb547", fill: "rgba(255,181,71,0.08)" },
  ];
  const CHART_HEIGHT = 170;
  const AXIS_FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

  function rangeWithThreshold(def) {
    return (u, min, max) => {
      const limit = threshold(def.key);
      if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max)) {
        if (limit === null) return [0, 1];
        const pad = Math.abs(limit) * 0.1 || 1;
        return [limit - pad, limit + pad];
      }
      let lo = limit === null ? min : Math.min(min, limit);
      let hi = limit === null ? max : Math.max(max, limit);
      const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.05 || 1;
      lo -= pad;
      hi += pad;
      return [lo, hi];
    };
  }

  function bucketWidthPx(u) {
    const t = u.data[0];
    if (!t.length) return 6 * devicePixelRatio;
    // Prefer the server's bucket size; else the mean spacing of the points.
    let step = state.series.bucket;
    if (!(step > 0)) {
      if (t.length < 2) return 6 * devicePixelRatio;
      step = (t[t.length - 1] - t[0]) / (t.length - 1);
    }
    const px = Math.abs(u.valToPos(t[0] + step, "x", true) - u.valToPos(t[0], "x", true));
    return Math.max(2 * devicePixelRatio, px);
  }

  function overlayPlugin(def) {
    return {
      hooks: {
        // Anomalous buckets: translucent red bands, drawn under the series.
        drawClear: [
          (u) => {
            const t = u.data[0];
            const an = state.series.anomalies;
            if (!t.length || !an || an.length !== t.length) return;
            const { top, height, left, width } = u.bbox;
            const w = bucketWidthPx(u);
            const ctx = u.ctx;
            ctx.save();
            ctx.fillStyle = "rgba(255, 77, 90, 0.22)";
            for (let i = 0; i < t.length; i++) {
              if (!(an[i] > 0)) continue;
              const x = u.valToPos(t[i], "x", true);
              const x0 = Math.max(left, x - w / 2);
              const x1 = Math.min(left + width, x + w / 2);
              if (x1 > x0) ctx.fillRect(x0, top, x1 - x0, height);
            }
            ctx.restore();
          },
        ],
        // Anomaly threshold: dashed horizontal line with a small label.
        draw: [
          (u) => {
            const limit = threshold(def.key);
            if (limit === null) return;
            const { top, height, left, width } = u.bbox;
            const y = Math.round(u.valToPos(limit, "y", true)) + 0.5;
            if (!(y >= top && y <= top + height)) return;
            const ctx = u.ctx;
            const dpr = devicePixelRatio;
            ctx.save();
            ctx.strokeStyle = "rgba(255, 99, 99, 0.85)";
            ctx.lineWidth = dpr;
            ctx.setLineDash([5 * dpr, 4 * dpr]);
            ctx.beginPath();
            ctx.moveTo(left, y);
            ctx.lineTo(left + width, y);
            ctx.stroke();
            ctx.setLineDash([]);
            ctx.font = `${10 * dpr}px system-ui, sans-serif`;
            ctx.textAlign = "right";
            ctx.textBaseline = "middle";
            const label = `limit ${nfInt.format(limit)} ${def.unit}`;
            const tw = ctx.measureText(label).width;
            const th = 14 * dpr;
            // Label sits just above the line, or just below it when the line hugs the top.
            const cy = y - th / 2 - 2 * dpr < top ? y + th / 2 + 2 * dpr : y - th / 2 - 2 * dpr;
            const rx = left + width - 4 * dpr;
            ctx.fillStyle = "rgba(15, 22, 34, 0.85)";
            ctx.fillRect(rx - tw - 6 * dpr, cy - th / 2, tw + 8 * dpr, th);
            ctx.fillStyle = "rgba(255, 130, 130, 0.95)";
            ctx.fillText(label, rx - 2 * dpr, cy);
            ctx.restore();
          },
        ],
      },
    };
  }

  // 24-hour UTC clock on the time axis (ranges are at most a few hours).
  function timeAxisValues(u, splits, axisIdx, foundSpace, foundIncr) {
    const withSeconds = foundIncr < 60;
    return splits.map((v) => {
      if (v === null) return "";
      const d = new Date(v * 1000);
      const p = (n) => String(n).padStart(2, "0");
      const hm = `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}`;
      return withSeconds ? `${hm}:${p(d.getUTCSeconds())}` : hm;
    });
  }

  function axisValues(def) {
    const f = new Intl.NumberFormat("en-US", { maximumFractionDigits: def.key === "storage" ? 0 : 1 });
    return (u, splits) => splits.map((v) => (v === null ? "" : f.format(v)));
  }

  function makeChart(def) {
    const container = dom.charts[def.key];
    const grid = { stroke: "rgba(148, 163, 184, 0.10)", width: 1 };
    const ticks = { stroke: "rgba(148, 163, 184, 0.18)", width: 1, size: 4 };
    const opts = {
      width: Math.max(200, container.clientWidth),
      height: CHART_HEIGHT,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      legend: { show: false },
      cursor: {
        sync: { key: "orbitstream-series" },
        drag: { x: false, y: false },
        points: { size: 6 },
      },
      padding: [8, 30, 0, 0],
      scales: {
        x: { time: true },
        y: def.fixed ? { range: def.fixed } : { range: rangeWithThreshold(def) },
      },
      axes: [
        { stroke: "#8a97ab", font: AXIS_FONT, grid, ticks, space: 70, values: timeAxisValues },
        { stroke: "#8a97ab", font: AXIS_FONT, grid, ticks, size: 62, values: axisValues(def) },
      ],
      series: [
        {},
        {
          label: def.label,
          stroke: def.color,
          width: 1.6,
          fill: def.fill,
          spanGaps: false,
          points: { show: false },
          value: (u, v) => (v === null ? "—" : `${fmt1(v)} ${def.unit}`),
        },
      ],
      plugins: [overlayPlugin(def), tooltipPlugin(def)],
    };
    const u = new uPlot(opts, [[], []], container);
    return u;
  }

  // Small hover read-out in the chart's corner (the uPlot legend is off to save space).
  function tooltipPlugin(def) {
    let tip;
    return {
      hooks: {
        init: [
          (u) => {
            tip = el("div", "chart-tip");
            tip.hidden = true;
            u.over.append(tip);
          },
        ],
        setCursor: [
          (u) => {
            const i = u.cursor.idx;
            if (i === null || i === undefined || !u.data[0].length) {
              tip.hidden = true;
              return;
            }
            const v = u.data[1][i];
            const an = state.series.anomalies[i];
            const when = fmtClockUTC(u.data[0][i] * 1000).replace(" UTC", "");
            tip.textContent = `${when} · ${v === null || v === undefined ? "—" : fmt1(v)} ${def.unit}${an > 0 ? ` · ${an} anomal${an === 1 ? "y" : "ies"}` : ""}`;
            tip.hidden = false;
          },
        ],
      },
    };
  }

  function initCharts() {
    if (typeof uPlot === "undefined") {
      for (const def of CHART_DEFS) setText(dom.charts[def.key].querySelector(".chart-empty"), "Chart library failed to load");
      return;
    }
    for (const def of CHART_DEFS) charts[def.key] = makeChart(def);
    const ro = new ResizeObserver(() => {
      for (const def of CHART_DEFS) {
        const u = charts[def.key];
        const w = Math.max(200, dom.charts[def.key].clientWidth);
        if (u && u.width !== w) u.setSize({ width: w, height: CHART_HEIGHT });
      }
    });
    for (const def of CHART_DEFS) ro.observe(dom.charts[def.key]);
  }

  function numArray(a, n) {
    const out = new Array(n);
    for (let i = 0; i < n; i++) {
      out[i] = Array.isArray(a) ? toNum(a[i]) : null;
    }
    return out;
  }

  function setSeries(data) {
    const t = Array.isArray(data.t) ? numArray(data.t, data.t.length) : [];
    const n = t.length;
    state.series = {
      t,
      anomalies: numArray(data.anomalies, n).map((v) => v ?? 0),
      bucket: toNum(data.bucket_seconds),
    };
    for (const def of CHART_DEFS) {
      const values = numArray(data[def.key], n);
      const box = dom.charts[def.key];
      const u = charts[def.key];
      if (u) u.setData([t, values]);
      box.dataset.points = String(n);
      box.classList.toggle("is-empty", n === 0);
      let latest = null;
      for (let i = n - 1; i >= 0; i--) {
        if (values[i] !== null) {
          latest = values[i];
          break;
        }
      }
      setText(dom.latest[def.key], latest === null ? "—" : `${fmt1(latest)} ${def.unit}`);
      dom.latest[def.key].classList.toggle("breach", breaches(def.key, latest));
    }
  }

  function clearCharts() {
    state.seriesSeq += 1;
    setSeries({ t: [] });
  }

  async function loadSeries() {
    const id = state.selected;
    if (id === null) {
      setSeries({ t: [] });
      return;
    }
    const seq = ++state.seriesSeq;
    const data = await getJSON(seriesUrl(id));
    // Ignore answers for a satellite (or range) no longer on screen.
    if (seq !== state.seriesSeq || id !== state.selected) return;
    if (data && data.satellite_id !== undefined && data.satellite_id !== id) return;
    setSeries(data || {});
  }

  // ---------------------------------------------------------------- thresholds
  // The satellites pipeline's rules, from api/pipelines: what the service was configured
  // with (ANOMALY_THRESHOLD_* / [pipelines.satellites]), never a copy kept here.
  function applyRules(pipelines) {
    const sat = pipelines.find((p) => p && p.name === "satellites");
    const rules = sat && sat.info && Array.isArray(sat.info.thresholds) ? sat.info.thresholds : [];
    const next = { battery: null, storage: null, signal: null };
    for (const r of rules) {
      const key = RULE_FIELDS[r.field];
      const t = toNum(r.threshold);
      if (key && t !== null && COMPARE[r.op]) next[key] = { op: r.op, threshold: t, rule: r.rule };
    }
    const raw = JSON.stringify(next);
    if (document.body.dataset.thresholds === raw) return;
    document.body.dataset.thresholds = raw;
    Object.assign(RULES, next);
    for (const def of CHART_DEFS) {
      const box = dom.charts[def.key];
      box.dataset.threshold = next[def.key] === null ? "" : String(next[def.key].threshold);
      const u = charts[def.key];
      if (u) {
        u.setData(u.data); // re-run the range with the new limit
        u.redraw();
      }
    }
    for (const row of state.rows.values()) if (row.data) updateRow(row, row.data);
  }

  // ---------------------------------------------------------------- pipelines
  const PIPE_FIELDS = [
    ["rows_per_s", "rows/s", (v) => fmt1(v)],
    ["errors_per_s", "errors/s", (v) => fmt1(v)],
    ["lag", "lag", (v) => (v === null || v === undefined ? "—" : fmtInt(v))],
    ["buffered_rows", "buffered", (v) => fmtInt(v)],
    ["rows_total", "committed", (v) => fmtInt(v)],
  ];

  function createPipe(name) {
    const card = el("article", "pipe");
    card.dataset.pipeline = name;
    const head = el("div", "pipe-head");
    const title = el("span", "pipe-name", name);
    const badge = el("span", "badge");
    badge.dataset.field = "status";
    const meta = el("span", "pipe-meta");
    meta.dataset.field = "source";
    head.append(title, badge, meta);
    const body = el("dl", "pipe-figures");
    const cells = { status: badge, source: meta };
    for (const [field, label] of PIPE_FIELDS) {
      const item = el("div", "pipe-figure");
      const dd = el("dd", "", "—");
      dd.dataset.field = field;
      item.append(el("dt", "", label), dd);
      body.append(item);
      cells[field] = dd;
    }
    card.append(head, body);
    return { card, cells };
  }

  function renderPipelines(pipelines) {
    const seen = new Set();
    for (const p of pipelines) {
      if (!p || typeof p.name !== "string") continue;
      seen.add(p.name);
      let row = state.pipes.get(p.name);
      if (!row) {
        row = createPipe(p.name);
        state.pipes.set(p.name, row);
        dom.pipelines.append(row.card);
      }
      const c = row.cells;
      const status = p.status === "healthy" ? "ok" : p.status === "unhealthy" ? "anomaly" : "unknown";
      c.status.className = statusClass(status);
      setRaw(c.status, p.status, typeof p.status === "string" ? p.status : "unknown");
      const where = p.namespace ? ` → ${p.namespace}` : "";
      setRaw(c.source, p.source, `${p.source ?? "?"}${where}`);
      for (const [field, , fmt] of PIPE_FIELDS) setRaw(c[field], p[field], fmt(p[field]));
      row.card.classList.toggle("is-failing", toNum(p.errors_per_s) > 0 || p.status === "unhealthy");
      row.card.title = p.description ?? "";
    }
    for (const [name, row] of state.pipes) {
      if (!seen.has(name)) {
        row.card.remove();
        state.pipes.delete(name);
      }
    }
    setText(dom.pipelinesCount, fmtInt(state.pipes.size));
    dom.pipelines.dataset.count = String(state.pipes.size);
  }

  // The satellites view shows while that pipeline runs (its summary answers).
  function showSatellites(on) {
    const value = on ? "on" : "off";
    if (document.body.dataset.satellites === value) return;
    document.body.dataset.satellites = value;
    for (const node of document.querySelectorAll("[data-view='satellites']")) node.hidden = !on;
    if (on) for (const u of Object.values(charts)) if (u) u.setSize({ width: Math.max(200, u.root.parentNode.clientWidth), height: CHART_HEIGHT });
  }

  // ---------------------------------------------------------------- refresh loop
  async function refresh() {
    if (state.inflight) return;
    state.inflight = true;
    try {
      const hadSelection = state.selected;
      const pipes = await getJSON(PIPELINES_URL);
      const list = pipes && Array.isArray(pipes.pipelines) ? pipes.pipelines : [];
      // The satellites view is asked for only while that pipeline runs (no 404 every
      // refresh in the console of a Starlink-only or Kafka-only service).
      const satellites = list.some((p) => p && p.name === "satellites");
      const summaryP = satellites
        ? getJSON(SUMMARY_URL).catch((err) => {
            if (err && err.status === 404) return null; // stopped since the list was read
            throw err;
          })
        : Promise.resolve(null);
      // Fetch the series in parallel when we already know which satellite is shown.
      const seriesP = satellites && hadSelection !== null ? loadSeries() : null;
      if (seriesP) seriesP.catch(() => {}); // awaited below; avoid an unhandled rejection
      applyRules(list);
      renderPipelines(list);
      const s = await summaryP;
      showSatellites(s !== null);
      if (s === null) {
        if (seriesP) await seriesP.catch(() => {});
        const now = new Date().toISOString();
        setRaw(dom.lastUpdated, now, fmtClockUTC(Date.now()));
        dom.lastUpdated.setAttribute("datetime", now);
        finishRefresh();
        return;
      }
      if (!s || typeof s !== "object") throw new Error("bad summary payload");
      const gen = parseTime(s.generated_at);
      state.serverNow = Number.isFinite(gen) ? gen : Date.now();
      const sats = Array.isArray(s.satellites) ? s.satellites : [];
      renderKpis(s);
      renderTable(sats);
      renderAlerts(Array.isArray(s.active_alerts) ? s.active_alerts : []);
      renderSelect(sats);
      if (seriesP) await seriesP;
      if (state.selected !== hadSelection && state.selected !== null) await loadSeries();
      finishRefresh();
    } catch (err) {
      state.failures += 1;
      const why = err && err.message ? err.message : String(err);
      const since = Number.isFinite(state.lastOk) ? ` · last OK ${fmtAgo(Date.now() - state.lastOk)}` : "";
      setStatus(false, `Update failed: ${why} · retrying${since}`);
    } finally {
      state.inflight = false;
    }
  }

  function finishRefresh() {
    state.refreshes += 1;
    state.failures = 0;
    state.lastOk = Date.now();
    document.body.dataset.refreshes = String(state.refreshes);
    setStatus(true, "Live");
  }

  function loop() {
    const started = Date.now();
    refresh().finally(() => {
      // Fixed cadence: the next refresh starts REFRESH_MS after this one started.
      setTimeout(loop, Math.max(250, REFRESH_MS - (Date.now() - started)));
    });
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    dom.status = $("#status");
    dom.statusText = $("#status-text");
    dom.lastUpdated = $("#last-updated");
    dom.totalPoints = $("#total-points");
    dom.totalAnomalies = $("#total-anomalies");
    dom.ingestRate = $("#ingest-rate");
    dom.anomalyRate = $("#anomaly-rate");
    dom.alertsCount = $("#active-alerts-count");
    dom.kpiAlerts = $("#kpi-alerts");
    dom.windowSeconds = document.querySelectorAll(".window-seconds");
    dom.alerts = $("#active-alerts");
    dom.alertsEmpty = $("#alerts-empty");
    dom.alertsPanelCount = $("#alerts-panel-count");
    dom.table = $("#satellites");
    dom.tbody = dom.table.tBodies[0];
    dom.sortHeaders = dom.table.querySelectorAll("th[data-sort]");
    dom.satCount = $("#satellites-count");
    dom.satEmpty = $("#satellites-empty");
    dom.filter = $("#satellite-filter");
    dom.select = $("#satellite-select");
    dom.range = $("#range-select");
    dom.selectedStatus = $("#selected-status");
    dom.charts = { battery: $("#chart-battery"), storage: $("#chart-storage"), signal: $("#chart-signal") };
    dom.latest = { battery: $("#latest-battery"), storage: $("#latest-storage"), signal: $("#latest-signal") };
    dom.pipelines = $("#pipelines");
    dom.pipelinesCount = $("#pipelines-count");

    document.body.dataset.refreshes = "0";
    state.minutes = Number(dom.range.value) || 60;

    dom.select.addEventListener("change", () => selectSatellite(dom.select.value));
    dom.range.addEventListener("change", () => {
      state.minutes = Number(dom.range.value) || 60;
      clearCharts();
      loadSeries().catch(() => {});
    });
    dom.tbody.addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr[data-satellite-id]");
      if (tr) selectSatellite(tr.dataset.satelliteId);
    });
    dom.tbody.addEventListener("keydown", (ev) => {
      if (ev.key !== "Enter" && ev.key !== " ") return;
      const tr = ev.target.closest("tr[data-satellite-id]");
      if (!tr) return;
      ev.preventDefault();
      selectSatellite(tr.dataset.satelliteId);
    });
    dom.alerts.addEventListener("click", (ev) => {
      const li = ev.target.closest("li[data-entity-id]");
      if (li && state.rows.has(li.dataset.entityId)) selectSatellite(li.dataset.entityId);
    });
    const sortBy = (th) => {
      const key = th.dataset.sort;
      if (state.sortKey === key) state.sortDir = -state.sortDir;
      else {
        state.sortKey = key;
        state.sortDir = 1;
      }
      updateSortIndicators();
      applyOrder();
    };
    dom.table.tHead.addEventListener("click", (ev) => {
      const th = ev.target.closest("th[data-sort]");
      if (th) sortBy(th);
    });
    dom.table.tHead.addEventListener("keydown", (ev) => {
      const th = ev.target.closest("th[data-sort]");
      if (!th || (ev.key !== "Enter" && ev.key !== " ")) return;
      ev.preventDefault();
      sortBy(th);
    });
    let filterTimer = 0;
    dom.filter.addEventListener("input", () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => {
        state.filter = dom.filter.value.trim().toLowerCase();
        applyFilter();
      }, 80);
    });

    updateSortIndicators();
    initCharts();
    loop();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
