// charts.js: a tiny dependency-free SVG chart helper for the feedback-loop dashboard.
//
//   FLCharts.lineChart(options) -> <svg>
//     options.series:  [{name, color, points: [[tSeconds, value|null], ...], faint?: bool}]
//     options.markers: [{t: tSeconds, color, title}]   vertical lines, `title` is the tooltip
//     options.xMin / options.xMax: the time range in epoch seconds (default: the data's range)
//     options.width / options.height: viewBox size (the SVG scales to its container's width)
//   The y axis is fixed to 0..1 and labelled as percentages; a null value breaks the line.
//
//   FLCharts.barChart(svg, bars) draws [[tSeconds, n], ...] as bars into an existing <svg>.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";

  /** Create an SVG element with attributes. */
  function el(tag, attrs = {}, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function pad2(n) { return String(n).padStart(2, "0"); }

  function hhmm(tSeconds) {
    const d = new Date(tSeconds * 1000);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  }

  // Candidate tick steps in seconds; the first giving at most `maxTicks` ticks wins.
  const STEPS = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

  function timeTicks(xMin, xMax, maxTicks) {
    const span = Math.max(1, xMax - xMin);
    const step = STEPS.find((s) => span / s <= maxTicks) || Math.ceil(span / maxTicks);
    const ticks = [];
    for (let t = Math.ceil(xMin / step) * step; t <= xMax; t += step) ticks.push(t);
    return { ticks, step };
  }

  function lineChart(options) {
    const series = options.series || [];
    const markers = options.markers || [];
    const W = options.width || 600;
    const H = options.height || 230;
    const m = { left: 40, right: 12, top: 26, bottom: 22 }; // top holds the legend
    const pw = W - m.left - m.right;
    const ph = H - m.top - m.bottom;

    // The time range: given, or from the data (at least one minute wide).
    let xMin = options.xMin;
    let xMax = options.xMax;
    if (xMin === undefined || xMax === undefined) {
      const ts = series.flatMap((s) => s.points.map((p) => p[0]));
      xMin = xMin ?? (ts.length ? Math.min(...ts) : Date.now() / 1000 - 60);
      xMax = xMax ?? (ts.length ? Math.max(...ts) : Date.now() / 1000);
    }
    if (xMax - xMin < 60) xMin = xMax - 60;

    const x = (t) => m.left + ((t - xMin) / (xMax - xMin)) * pw;
    const y = (v) => m.top + (1 - Math.min(1, Math.max(0, v))) * ph;

    const svg = el("svg", {
      class: "chart",
      viewBox: `0 0 ${W} ${H}`,
      preserveAspectRatio: "xMidYMid meet",
      role: "img",
    });

    // Horizontal gridlines every 25 %, labelled.
    for (let i = 0; i <= 4; i++) {
      const v = i / 4;
      svg.appendChild(el("line", { class: "grid", x1: m.left, x2: W - m.right, y1: y(v), y2: y(v) }));
      svg.appendChild(el("text", {
        class: "axis-label", x: m.left - 5, y: y(v) + 3, "text-anchor": "end",
      }, `${Math.round(v * 100)}%`));
    }

    // Vertical gridlines on round times, labelled HH:MM.
    const { ticks } = timeTicks(xMin, xMax, Math.max(2, Math.floor(pw / 70)));
    for (const t of ticks) {
      svg.appendChild(el("line", { class: "grid", x1: x(t), x2: x(t), y1: m.top, y2: m.top + ph }));
      svg.appendChild(el("text", {
        class: "axis-label", x: x(t), y: H - 6, "text-anchor": "middle",
      }, hhmm(t)));
    }

    // Alert markers first, so the lines are drawn over them.
    for (const mk of markers) {
      if (mk.t < xMin || mk.t > xMax) continue;
      const g = el("g", { class: "alert-marker" });
      g.appendChild(el("title", {}, mk.title || ""));
      const attrs = { x1: x(mk.t), x2: x(mk.t), y1: m.top, y2: m.top + ph };
      g.appendChild(el("line", { ...attrs, class: "marker", stroke: mk.color || "#d0342c" }));
      g.appendChild(el("line", { ...attrs, class: "marker-hit" })); // wide invisible hover target
      svg.appendChild(g);
    }

    // The series: one <path> each, with a new sub-path ("M") after every gap (null value).
    for (const s of series) {
      let d = "";
      let pen = false;
      for (const [t, v] of s.points) {
        if (v === null || v === undefined || Number.isNaN(v)) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      }
      if (!d) continue;
      const path = el("path", { class: `series${s.faint ? " faint" : ""}`, d, stroke: s.color });
      path.setAttribute("data-series", s.name);
      path.appendChild(el("title", {}, s.name));
      svg.appendChild(path);
      // A lone point draws no line: show it as a dot.
      if (!d.includes("L")) {
        const [, cx, cy] = d.match(/M([\d.]+),([\d.]+)/);
        svg.appendChild(el("circle", { cx, cy, r: 2.5, fill: s.color }));
      }
    }

    // The legend, along the top.
    const legend = el("g", { class: "legend" });
    let lx = m.left;
    for (const s of series) {
      legend.appendChild(el("line", {
        x1: lx, x2: lx + 16, y1: 11, y2: 11, stroke: s.color, "stroke-width": 3,
        opacity: s.faint ? 0.5 : 1,
      }));
      const label = el("text", { x: lx + 20, y: 15 }, s.name);
      legend.appendChild(label);
      lx += 20 + s.name.length * 6.2 + 16; // rough text width: no layout pass needed
    }
    if (markers.length) {
      legend.appendChild(el("line", {
        x1: lx, x2: lx, y1: 4, y2: 18, stroke: "#d0342c", "stroke-width": 2, "stroke-dasharray": "3 2",
      }));
      legend.appendChild(el("text", { x: lx + 6, y: 15 }, "alert"));
    }
    svg.appendChild(legend);
    return svg;
  }

  /** Bars of [[tSeconds, n], ...] into `svg` (its viewBox is set here), each with a tooltip. */
  function barChart(svg, bars, options = {}) {
    const W = options.width || 300;
    const H = options.height || 80;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("preserveAspectRatio", "none");
    if (!bars.length) return svg;
    const max = Math.max(1, ...bars.map((b) => b[1]));
    const slot = W / bars.length;
    const gap = Math.min(2, slot * 0.2);
    bars.forEach(([t, n], i) => {
      const h = (n / max) * (H - 2);
      const rect = el("rect", { x: i * slot + gap / 2, y: H - h, width: Math.max(0.5, slot - gap), height: h });
      rect.setAttribute("data-minute", t);
      rect.setAttribute("data-count", n);
      rect.appendChild(el("title", {}, `${hhmm(t)}: ${n}`));
      svg.appendChild(rect);
    });
    return svg;
  }

  window.FLCharts = { lineChart, barChart, hhmm };
})();
