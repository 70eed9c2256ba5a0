// review.js: the reviewer page at "/review". Leases the next item (POST /api/review/next), shows it,
// posts the verdict (POST /api/review/{prediction_id}) and moves on. Every POST carries the CSRF
// token from <meta name="csrf-token"> in the X-CSRF-Token header; the session cookie goes along
// automatically. All data goes into the DOM through textContent / attributes, never as HTML.
"use strict";

(function () {
  const EMPTY_POLL_MS = 3000;
  const HISTORY_LIMIT = 20;

  const $ = (id) => document.getElementById(id);
  const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content || "";

  let current = null; // the item on screen, or null
  let busy = false; // a request that must not be doubled (next / verdict) is in flight
  let pollTimer = null; // the pending "queue empty, try again" timer

  function h(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const pad2 = (n) => String(n).padStart(2, "0");
  /** Any JSON value as short text (labels may be strings, numbers, booleans...). */
  const fmt = (v) => (v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));

  /** Local time of an ISO string or epoch seconds. */
  function when(at) {
    const d = typeof at === "number" ? new Date(at * 1000) : new Date(at);
    if (Number.isNaN(d.getTime())) return fmt(at);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
      `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  /** The routing policy in human words. */
  function reasonText(item) {
    switch (item.reason) {
      case "least_confidence": return "low confidence";
      case "margin": return "close call between the top classes";
      case "entropy": return "uncertain (high entropy)";
      case "learned": return "likely wrong (learned)";
      case "shadow": return "shadow model disagrees";
      case "disagreement": return "models disagree";
      case "drift": return "input drift";
      case "label_error": return `suspected label error: label says ${fmt(item.label)}`;
      default: return String(item.reason ?? "unknown");
    }
  }

  function setStatus(text, kind = "ok") {
    const el = $("status");
    el.textContent = text;
    el.className = kind === "ok" ? "" : kind; // "" (green), "error" or "info"
  }

  /** Enable the verdict buttons only with an item on screen and nothing in flight. */
  function setBusy(value) {
    busy = value;
    const off = busy || !current;
    $("btn-error").disabled = off;
    $("btn-correct").disabled = off;
  }

  /** POST JSON (or nothing) with the CSRF header; returns {ok, status, data}. */
  async function post(url, body) {
    const headers = { "X-CSRF-Token": csrfToken };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await resp.json(); } catch (_) { /* an empty or non-JSON body */ }
    return { ok: resp.ok, status: resp.status, data };
  }

  const errorText = (r) => (r.data && r.data.error) || `HTTP ${r.status}`;

  // ------------------------------------------------------------------ showing an item

  function renderScores(item) {
    const box = $("scores");
    const options = $("label-options");
    box.replaceChildren();
    options.replaceChildren();
    const scores = item.scores || {};
    const entries = Object.entries(scores).sort((a, b) => b[1] - a[1]);
    $("scores-block").classList.toggle("hidden", entries.length === 0);
    for (const [cls, score] of entries) {
      const row = h("div", { class: "score-row", "data-class": cls, "data-value": score });
      if (String(item.prediction) === cls) row.classList.add("predicted");
      const bar = h("div", { class: "bar" });
      const fill = h("span");
      fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
      bar.appendChild(fill);
      row.append(h("span", { class: "score-name", title: cls }, cls), bar,
        h("span", { class: "score-val" }, isNum(score) ? score.toFixed(3) : fmt(score)));
      box.appendChild(row);
    }
    // The datalist suggests the known classes (and the suspected label) as corrected labels.
    const classes = new Set(Object.keys(scores));
    if (item.label !== null && item.label !== undefined) classes.add(String(item.label));
    for (const cls of classes) options.appendChild(h("option", { value: cls }));
  }

  function renderFeatures(features) {
    const tbody = $("features").querySelector("tbody");
    tbody.replaceChildren();
    const entries = Object.entries(features || {});
    for (const [name, value] of entries) {
      const tr = h("tr", { "data-feature": name });
      tr.append(h("th", {}, name), h("td", { class: "mono" }, fmt(value)));
      tbody.appendChild(tr);
    }
    if (!entries.length) tbody.appendChild(h("tr", {}, "")).appendChild(h("td", { class: "empty" }, "no features"));
  }

  function showItem(item) {
    current = item;
    $("item-empty").classList.add("hidden");
    $("item-body").classList.remove("hidden");
    $("item").dataset.predictionId = item.prediction_id;
    $("item-id").textContent = item.prediction_id;
    $("item-model").textContent = `${item.model} / ${item.model_version}`;
    const reason = $("item-reason");
    reason.textContent = reasonText(item);
    reason.title = `policy: ${item.reason}`;
    reason.dataset.reason = item.reason;
    $("item-priority").textContent = isNum(item.priority) ? item.priority.toFixed(3) : fmt(item.priority);
    $("item-prediction").textContent = fmt(item.prediction);
    $("item-confidence").textContent = isNum(item.confidence) ? `${(item.confidence * 100).toFixed(1)}%` : "–";
    $("item-requested-at").textContent = item.requested_at ? when(item.requested_at) : "–";
    const tags = Object.entries(item.tags || {}).map(([k, v]) => `${k}=${v}`);
    $("item-tags").textContent = tags.length ? tags.join(", ") : "–";
    const ps = Object.entries(item.policy_scores || {}).map(([k, v]) => `${k} ${isNum(v) ? v.toFixed(3) : fmt(v)}`);
    $("item-policy-scores").textContent = ps.length ? ps.join(", ") : "–";
    renderScores(item);
    renderFeatures(item.features);
    $("corrected-label").value = "";
    $("note").value = "";
    tickLease();
  }

  function showEmpty() {
    current = null;
    delete $("item").dataset.predictionId;
    $("item-id").textContent = "";
    $("item-body").classList.add("hidden");
    $("item-empty").classList.remove("hidden");
    $("lease").textContent = "";
  }

  /** The lease countdown, redrawn every second. */
  function tickLease() {
    const el = $("lease");
    if (!current || !isNum(current.lease_expires_at)) { el.textContent = ""; return; }
    const left = Math.round(current.lease_expires_at - Date.now() / 1000);
    if (left <= 0) {
      el.textContent = "lease expired: another reviewer may take this item";
    } else {
      el.textContent = `lease expires in ${Math.floor(left / 60)}:${pad2(left % 60)}`;
    }
    el.classList.toggle("expiring", left <= 30);
  }

  // ------------------------------------------------------------------ talking to the server

  /** Lease the next item; when the queue is empty, ask again every 3 s. */
  async function loadNext() {
    clearTimeout(pollTimer);
    pollTimer = null;
    setBusy(true);
    try {
      const r = await post("/api/review/next");
      if (!r.ok) throw new Error(errorText(r));
      if (r.data && r.data.item) {
        showItem(r.data.item);
      } else {
        showEmpty();
        pollTimer = setTimeout(loadNext, EMPTY_POLL_MS);
      }
    } catch (err) {
      setStatus(`Could not load the next item: ${err.message} (retrying)`, "error");
      pollTimer = setTimeout(loadNext, EMPTY_POLL_MS);
    } finally {
      setBusy(false);
    }
  }

  async function submit(verdict) {
    if (!current || busy) return; // no double submit
    const id = current.prediction_id;
    const body = { verdict };
    const label = $("corrected-label").value.trim();
    const note = $("note").value.trim();
    if (verdict === "error" && label) body.corrected_label = label;
    if (note) body.note = note;

    setBusy(true);
    setStatus(`Saving ${verdict} on ${id}…`, "info");
    let r;
    try {
      r = await post(`/api/review/${encodeURIComponent(id)}`, body);
    } catch (err) {
      setStatus(`Could not save ${verdict} on ${id}: the server is unreachable`, "error");
      setBusy(false);
      return;
    }
    if (r.ok) {
      setStatus(`Saved: ${verdict} on ${id}`);
      loadHistory();
      setBusy(false);
      await loadNext();
      return;
    }
    setStatus(errorText(r), "error");
    setBusy(false);
    // The item is gone or no longer ours (already reviewed, lease lost): move on, keeping the message.
    if (r.status === 404 || r.status === 409 || r.status === 410) await loadNext();
  }

  async function loadHistory() {
    let list;
    try {
      const resp = await fetch(`/api/review/history?limit=${HISTORY_LIMIT}`,
        { credentials: "same-origin", cache: "no-store" });
      if (!resp.ok) return;
      list = await resp.json();
    } catch (_) {
      return; // the history is a nicety: the next verdict will try again
    }
    const ul = $("history");
    ul.replaceChildren();
    for (const v of list || []) {
      const li = h("li", { "data-prediction-id": v.prediction_id, "data-verdict": v.verdict });
      li.append(
        h("span", { class: `verdict-${v.verdict}` }, v.verdict), document.createTextNode(" "),
        h("span", { class: "mono" }, v.prediction_id), document.createTextNode(" "),
        h("span", { class: "muted" }, [v.model, v.reason].filter(Boolean).join(" · ")),
      );
      const extra = [];
      if (v.corrected_label !== null && v.corrected_label !== undefined && v.corrected_label !== "") {
        extra.push(`→ ${fmt(v.corrected_label)}`);
      }
      if (v.note) extra.push(`“${v.note}”`);
      if (extra.length) li.append(h("div", {}, extra.join("  ")));
      if (v.at !== undefined && v.at !== null) li.append(h("div", { class: "muted" }, when(v.at)));
      ul.appendChild(li);
    }
    if (!ul.children.length) ul.appendChild(h("li", { class: "empty" }, "No verdicts yet."));
  }

  async function logout() {
    $("logout").disabled = true;
    try {
      await post("/review/logout");
    } catch (_) {
      /* go to /review anyway: it shows the login form if the session is gone */
    }
    window.location.href = "/review";
  }

  // ------------------------------------------------------------------ wiring

  $("btn-error").addEventListener("click", () => submit("error"));
  $("btn-correct").addEventListener("click", () => submit("correct"));
  $("logout").addEventListener("click", logout);

  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    const typing = t instanceof HTMLElement &&
      (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable);
    if (typing) {
      if (ev.key === "Escape") {
        t.blur(); // leave the field, so E / C work again
      } else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        submit("error");
      }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
    const k = ev.key.toLowerCase();
    if (k === "e") { ev.preventDefault(); submit("error"); }
    else if (k === "c") { ev.preventDefault(); submit("correct"); }
  });

  setInterval(tickLease, 1000);
  loadHistory();
  loadNext();
})();
