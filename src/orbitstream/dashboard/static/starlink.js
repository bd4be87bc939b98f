/* OrbitStream dashboard: the Starlink view.
 *
 *   GET api/dashboard/starlink?minutes=60   (404 when the starlink pipeline is not running)
 *
 * Shown while the pipeline runs: terminals and routers online, alerts open now (with the
 * list), latency and obstruction trends. Test hooks: values carry data-raw (JSON), chart
 * containers data-points, body.dataset.starlink is "on" or "off", body.dataset.starlinkRefreshes
 * counts successful refreshes.
 */
(() => {
  "use strict";

  const URL = "api/dashboard/starlink?minutes=60";
  const REFRESH_MS = 2000;
  const TIMEOUT_MS = 4500;
  const HEIGHT = 170;
  const $ = (sel) => document.querySelector(sel);
  const nfInt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const nf1 = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const nf3 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 3 });
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const fmt = (nf, v) => (num(v) === null ? "—" : nf.format(v));
  const state = { refreshes: 0, charts: {}, on: null };

  function setRaw(node, value, text) {
    if (!node) return;
    const raw = typeof value === "string" ? value : JSON.stringify(value ?? null);
    if (node.dataset.raw !== raw) node.dataset.raw = raw;
    if (node.textContent !== text) node.textContent = text;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  async function getJSON(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const res = await fetch(url, { signal: ctl.signal, cache: "no-store", headers: { Accept: "application/json" } });
      if (!res.ok) {
        const err = new Error(`HTTP ${res.status}`);
        err.status = res.status;
        throw err;
      }
      return await res.json();
    } finally {
      clearTimeout(timer);
    }
  }

  function show(on) {
    if (state.on === on) return;
    state.on = on;
    document.body.dataset.starlink = on ? "on" : "off";
    for (const node of document.querySelectorAll("[data-view='starlink']")) node.hidden = !on;
    if (on) for (const u of Object.values(state.charts)) u.setSize({ width: Math.max(200, u.root.parentNode.clientWidth), height: HEIGHT });
  }

  function chart(id, label, color, unit) {
    const container = $(id);
    if (!container || typeof uPlot === "undefined") return null;
    const grid = { stroke: "rgba(148, 163, 184, 0.10)", width: 1 };
    const ticks = { stroke: "rgba(148, 163, 184, 0.18)", width: 1, size: 4 };
    const font = "11px system-ui, sans-serif";
    return new uPlot(
      {
        width: Math.max(200, container.clientWidth),
        height: HEIGHT,
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        padding: [8, 30, 0, 0],
        scales: { x: { time: true } },
        axes: [
          { stroke: "#8a97ab", font, grid, ticks, space: 70 },
          { stroke: "#8a97ab", font, grid, ticks, size: 62 },
        ],
        series: [{}, { label, stroke: color, width: 1.6, spanGaps: true, points: { show: false }, value: (u, v) => `${fmt(nf1, v)} ${unit}` }],
      },
      [[], []],
      container,
    );
  }

  function renderAlerts(alerts, total) {
    const list = $("#sl-alerts");
    const frag = document.createDocumentFragment();
    for (const a of alerts) {
      const li = el("li", "alert");
      li.dataset.deviceId = a.device_id ?? "";
      li.dataset.alertCode = String(a.alert_code ?? "");
      const top = el("div", "alert-top");
      top.append(el("span", "alert-entity", a.device_id ?? "—"), el("span", "alert-rule", a.alert_name ?? ""));
      const since = typeof a.since === "string" ? a.since.replace("T", " ").replace(/\.\d+Z$/, " UTC") : "—";
      top.append(el("span", "alert-since", since));
      const bottom = el("div", "alert-bottom");
      bottom.append(el("span", "alert-value", `${a.device_type ?? ""} · code ${a.alert_code ?? "?"}`));
      li.append(top, bottom);
      frag.append(li);
    }
    list.replaceChildren(frag);
    $("#sl-alerts-empty").hidden = alerts.length > 0;
    setRaw($("#sl-alerts-count"), total, fmt(nfInt, total));
  }

  function last(values) {
    for (let i = values.length - 1; i >= 0; i -= 1) if (num(values[i]) !== null) return values[i];
    return null;
  }

  function render(s) {
    setRaw($("#sl-terminals-online"), s.terminals_online, fmt(nfInt, s.terminals_online));
    setRaw($("#sl-terminals-seen"), s.terminals_seen, fmt(nfInt, s.terminals_seen));
    setRaw($("#sl-routers-online"), s.routers_online, fmt(nfInt, s.routers_online));
    setRaw($("#sl-routers-seen"), s.routers_seen, fmt(nfInt, s.routers_seen));
    setRaw($("#sl-alerts-open"), s.alerts_open, fmt(nfInt, s.alerts_open));
    $("#sl-kpi-alerts").classList.toggle("is-firing", num(s.alerts_open) > 0);
    for (const n of document.querySelectorAll(".sl-online-seconds")) n.textContent = fmt(nfInt, s.online_seconds);
    const trend = s.trend || { t: [], latency_ms: [], obstruction_pct: [] };
    const t = Array.isArray(trend.t) ? trend.t : [];
    const lat = Array.isArray(trend.latency_ms) ? trend.latency_ms : [];
    // ObstructionPercentTime as the API sends it (the docs do not say fraction or percent)
    const obs = Array.isArray(trend.obstruction_pct) ? trend.obstruction_pct : [];
    setRaw($("#sl-latency"), last(lat), fmt(nf1, last(lat)));
    setRaw($("#sl-obstruction"), last(obs), fmt(nf3, last(obs)));
    for (const [key, values] of [["latency", lat], ["obstruction", obs]]) {
      const u = state.charts[key];
      const node = $(`#sl-chart-${key}`);
      if (node) node.dataset.points = String(t.length);
      if (u) u.setData([t, values]);
    }
    renderAlerts(Array.isArray(s.open_alerts) ? s.open_alerts : [], s.alerts_open);
  }

  async function refresh() {
    try {
      const s = await getJSON(URL);
      show(true);
      render(s);
      state.refreshes += 1;
      document.body.dataset.starlinkRefreshes = String(state.refreshes);
    } catch (err) {
      if (err && err.status === 404) show(false); // the pipeline is not running
      // other failures: keep what is shown; app.js reports the service's state
    }
  }

  function loop() {
    const started = Date.now();
    refresh().finally(() => setTimeout(loop, Math.max(250, REFRESH_MS - (Date.now() - started))));
  }

  function init() {
    state.charts.latency = chart("#sl-chart-latency", "Ping latency", "#4cc9f0", "ms");
    state.charts.obstruction = chart("#sl-chart-obstruction", "Obstruction", "#f4a261", "");
    for (const [k, v] of Object.entries(state.charts)) if (v === null) delete state.charts[k];
    document.body.dataset.starlinkRefreshes = "0";
    loop();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
