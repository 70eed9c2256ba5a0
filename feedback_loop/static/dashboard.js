// dashboard.js: the live dashboard at "/". Polls the JSON API every 2 s (no page reload) and
// redraws the models table, the accuracy charts, the review-queue panel and the alerts list.
// All data goes into the DOM through textContent / attributes, never as HTML.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const HISTORY_MINUTES = 60;
  const ALERT_LIMIT = 50;
  const COLORS = { rolling: "#2f6fdf", estimated: "#e07b00", coverage: "#7a8597" };
  const STATUS_COLORS = { firing: "#d0342c", resolved: "#1f9d55" };

  const $ = (id) => document.getElementById(id);

  /** Create an HTML element with attributes and optional text. */
  function h(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const pct = (v) => (isNum(v) ? `${(v * 100).toFixed(2)}%` : "–");
  const int = (v) => (isNum(v) ? v.toLocaleString("en-US") : "–");
  const pad2 = (n) => String(n).padStart(2, "0");

  function clock(date) {
    return `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`;
  }

  /** A short local time: HH:MM:SS today, else "YYYY-MM-DD HH:MM:SS". */
  function when(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso ?? "");
    const today = new Date().toDateString() === d.toDateString();
    const day = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} `;
    return (today ? "" : day) + clock(d);
  }

  const key = (model, version) => `${model}\u0000${version}`;
  const isWhole = (snap) => !snap.segment || Object.keys(snap.segment).length === 0;

  async function getJSON(url) {
    let resp;
    try {
      resp = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    } catch (err) {
      throw new Error(`${url}: API unreachable`);
    }
    if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
    return resp.json();
  }

  // ------------------------------------------------------------------ models table

  /** A <td> showing `text`, with the class and the exact API value in data-value. */
  function numCell(cls, value, text) {
    const td = h("td", { class: `num ${cls}`, "data-value": value ?? "" }, text);
    return td;
  }

  /** Pairs the cumulative and rolling whole-version snapshots of each model version. */
  function versionsOf(snapshots) {
    const rows = new Map();
    for (const snap of snapshots.filter(isWhole)) {
      const k = key(snap.model, snap.model_version);
      const row = rows.get(k) || { model: snap.model, version: snap.model_version };
      row[snap.window === "rolling" ? "rolling" : "cumulative"] = snap;
      rows.set(k, row);
    }
    return [...rows.values()].sort((a, b) =>
      a.model.localeCompare(b.model) || String(a.version).localeCompare(String(b.version)));
  }

  function renderModels(snapshots, latestHistory) {
    const tbody = $("models-table").querySelector("tbody");
    const rows = versionsOf(snapshots);
    tbody.replaceChildren();
    for (const row of rows) {
      const main = row.cumulative || row.rolling; // the counts come from the cumulative window
      const cumAcc = row.cumulative ? row.cumulative.accuracy : null;
      // Rolling accuracy: the rolling snapshot, else the latest history point, if any.
      let rollAcc = row.rolling ? row.rolling.accuracy : null;
      if (!row.rolling) rollAcc = latestHistory.get(key(row.model, row.version))?.rolling_accuracy ?? null;
      const est = main.estimated_accuracy ?? null;

      const tr = h("tr", { "data-model": row.model, "data-version": row.version });
      tr.append(
        h("td", { class: "model" }, row.model),
        h("td", { class: "version mono" }, row.version),
        numCell("acc-cumulative", cumAcc, pct(cumAcc)),
        numCell("acc-rolling", rollAcc, pct(rollAcc)),
        numCell("acc-estimated", est, pct(est)),
        numCell("label-coverage", main.label_coverage, pct(main.label_coverage)),
        numCell("count", main.count, int(main.count)),
        numCell("predictions", main.predictions, int(main.predictions)),
      );
      tbody.appendChild(tr);
    }
    $("models-empty").classList.toggle("hidden", rows.length > 0);
  }

  // ------------------------------------------------------------------ charts

  function renderCharts(points, alerts) {
    const container = $("charts");
    const byVersion = new Map();
    for (const p of points) {
      const k = key(p.model, p.model_version);
      if (!byVersion.has(k)) byVersion.set(k, { model: p.model, version: p.model_version, points: [] });
      byVersion.get(k).points.push(p);
    }

    // One shared time range so the charts line up: the history's span, stretched to show the
    // alerts detected after its last point.
    const ts = points.map((p) => p.t);
    const xMin = ts.length ? Math.min(...ts) : Date.now() / 1000 - HISTORY_MINUTES * 60;
    let xMax = ts.length ? Math.max(...ts) : Date.now() / 1000;
    const alertT = (a) => Date.parse(a.detected_at) / 1000;
    for (const a of alerts) if (alertT(a) >= xMin) xMax = Math.max(xMax, alertT(a));

    const seen = new Set();
    const groups = [...byVersion.values()].sort((a, b) =>
      a.model.localeCompare(b.model) || String(a.version).localeCompare(String(b.version)));
    for (const g of groups) {
      const k = key(g.model, g.version);
      seen.add(k);
      const series = [
        { name: "rolling accuracy", color: COLORS.rolling, points: g.points.map((p) => [p.t, p.rolling_accuracy]) },
        { name: "estimated accuracy", color: COLORS.estimated, points: g.points.map((p) => [p.t, p.estimated_accuracy]) },
        { name: "label coverage", color: COLORS.coverage, faint: true, points: g.points.map((p) => [p.t, p.label_coverage]) },
      ];
      const markers = alerts
        .filter((a) => a.model === g.model && a.model_version === g.version)
        .map((a) => ({
          t: alertT(a),
          color: STATUS_COLORS[a.status] || STATUS_COLORS.firing,
          title: `${a.kind} (${a.status}, ${a.severity}) at ${when(a.detected_at)}: ${a.message}`,
        }));
      const svg = FLCharts.lineChart({ series, markers, xMin, xMax });

      // Reuse the card of this model version, so the page does not jump on each refresh.
      let card = [...container.children].find((c) => c.dataset.key === k);
      if (!card) {
        card = h("div", { class: "chart-card", "data-model": g.model, "data-version": g.version });
        card.dataset.key = k;
        card.appendChild(h("h3", {}, `${g.model} · ${g.version}`));
        container.appendChild(card);
      }
      const old = card.querySelector("svg");
      if (old) old.replaceWith(svg); else card.appendChild(svg);
    }
    for (const card of [...container.children]) if (!seen.has(card.dataset.key)) card.remove();
    $("charts-empty").classList.toggle("hidden", groups.length > 0);
  }

  // ------------------------------------------------------------------ review queue

  function renderQueue(stats) {
    $("queue-depth").textContent = int(stats.depth);
    $("queue-leased").textContent = int(stats.leased);
    $("queue-verdicts").textContent = int(stats.verdicts);
    $("errors-found").textContent = int(stats.errors_found);
    $("verdicts-last-hour").textContent = int(stats.verdicts_last_hour);

    // Throughput: the last 60 minutes, with the minutes without verdicts as zero bars.
    const counts = new Map((stats.throughput_per_minute || []).map(([t, n]) => [t, n]));
    const latest = Math.max(Math.floor(Date.now() / 60000) * 60, ...counts.keys());
    const bars = [];
    for (let t = latest - 59 * 60; t <= latest; t += 60) bars.push([t, counts.get(t) || 0]);
    FLCharts.barChart($("throughput"), bars);

    const list = $("per-reviewer");
    list.replaceChildren();
    const reviewers = Object.entries(stats.per_reviewer || {}).sort((a, b) => b[1] - a[1]);
    for (const [name, n] of reviewers) {
      const li = h("li", { "data-reviewer": name });
      li.append(h("strong", {}, name), document.createTextNode(`: ${int(n)}`));
      list.appendChild(li);
    }
    if (!reviewers.length) list.appendChild(h("li", { class: "empty" }, "No verdicts yet."));

    const counters = ["offered", "queued", "duplicates", "labeled", "over_budget", "full", "evicted"]
      .filter((k) => k in stats)
      .map((k) => `${k.replace("_", " ")} ${int(stats[k])}`);
    $("queue-counters").textContent = counters.join(" · ");
  }

  // ------------------------------------------------------------------ alerts

  function renderAlerts(alerts) {
    const list = $("alerts");
    list.replaceChildren();
    for (const a of alerts) {
      const li = h("li", { "data-alert-id": a.alert_id, "data-status": a.status });
      const head = h("div", { class: "alert-head" });
      head.append(
        h("span", { class: `badge ${a.status}` }, a.status),
        h("strong", { class: "alert-kind" }, a.kind),
        h("span", { class: "mono" }, `${a.model}/${a.model_version}`),
        h("span", { class: `badge ${a.severity}` }, a.severity),
        h("span", { class: "muted" }, when(a.detected_at)),
      );
      li.append(head, h("div", { class: "alert-msg" }, a.message));
      list.appendChild(li);
    }
    $("alerts-empty").classList.toggle("hidden", alerts.length > 0);
  }

  // ------------------------------------------------------------------ the refresh loop

  async function refresh() {
    const [models, history, alerts, stats] = await Promise.allSettled([
      getJSON("/api/models"),
      getJSON(`/api/history?minutes=${HISTORY_MINUTES}`),
      getJSON(`/api/alerts?limit=${ALERT_LIMIT}`),
      getJSON("/api/review/stats"),
    ]);
    const errors = [];
    // Each section is drawn on its own, so one failing endpoint does not blank the others.
    const attempt = (what, fn) => {
      try { fn(); } catch (err) { console.error(err); errors.push(`${what}: ${err.message}`); }
    };

    const points = history.status === "fulfilled" ? history.value.points || [] : [];
    const latest = new Map(points.map((p) => [key(p.model, p.model_version), p])); // last one wins
    const alertList = alerts.status === "fulfilled" ? alerts.value : [];

    if (models.status === "fulfilled") attempt("models", () => renderModels(models.value, latest));
    if (history.status === "fulfilled") attempt("charts", () => renderCharts(points, alertList));
    if (alerts.status === "fulfilled") attempt("alerts", () => renderAlerts(alertList));
    if (stats.status === "fulfilled") attempt("review queue", () => renderQueue(stats.value));
    for (const r of [models, history, alerts, stats]) if (r.status === "rejected") errors.push(r.reason.message);

    const banner = $("error-banner");
    if (errors.length && errors.every((e) => e.endsWith("API unreachable"))) {
      errors.splice(0, errors.length, "the API is unreachable"); // one line when the server is down
    }
    if (errors.length) {
      banner.textContent = `Problem refreshing (retrying every ${REFRESH_MS / 1000} s): ${errors.join("; ")}`;
      banner.classList.remove("hidden");
    } else {
      banner.classList.add("hidden");
      banner.textContent = "";
      $("updated").textContent = `updated ${clock(new Date())}`;
    }
  }

  // setTimeout after each round (not setInterval): a slow API never stacks up requests.
  async function loop() {
    try {
      await refresh();
    } finally {
      setTimeout(loop, REFRESH_MS);
    }
  }

  $("history-minutes").textContent = String(HISTORY_MINUTES);
  loop();
})();
