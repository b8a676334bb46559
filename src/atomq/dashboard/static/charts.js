// atomq dashboard charts (issue 15): draws the history embedded in the page with uPlot (served
// by the dashboard itself, no CDN) and refreshes it every minute from /dashboard/partials/history.
// The data sits in a <script type="application/json"> block, which the CSP allows (it never runs).
(function () {
  "use strict";

  var holder = document.getElementById("charts");
  var source = document.getElementById("history-data");
  if (!holder || !source || typeof window.uPlot === "undefined") return;

  var css = window.getComputedStyle(document.documentElement);
  function color(name, fallback) {
    return (css.getPropertyValue(name) || "").trim() || fallback;
  }
  var ink = color("--muted", "#6b7385");
  var grid = color("--line", "#dde1e8");

  // Each chart: its element id, the unit on its axis, and the series it draws (name, label, colour).
  var CHARTS = [
    { id: "chart-rates", unit: "jobs/min", series: [
      ["finished", "finished", color("--good", "#1e7f4f")],
      ["failed", "failed", color("--bad", "#b3261e")],
      ["retried", "retried", color("--warn", "#8a5a00")]
    ] },
    { id: "chart-depth", unit: "jobs", series: [
      ["queued", "queued", color("--accent", "#2f5fd0")],
      ["running", "running", color("--good", "#1e7f4f")]
    ] },
    { id: "chart-times", unit: "seconds", points: true, series: [
      ["duration_avg", "run time avg", color("--accent", "#2f5fd0")],
      ["duration_p95", "run time p95", color("--ink", "#1d2330")],
      ["lateness_p95", "lateness p95", color("--warn", "#8a5a00")]
    ] }
  ];

  var plots = [];

  function columns(data, chart) {
    var out = [data.t];
    chart.series.forEach(function (item) { out.push(data.series[item[0]] || []); });
    return out;
  }

  function width(element) {
    return Math.max(240, element.clientWidth || holder.clientWidth || 600);
  }

  function build(data) {
    CHARTS.forEach(function (chart) {
      var element = document.getElementById(chart.id);
      if (!element) return;
      var series = [{}];
      chart.series.forEach(function (item) {
        series.push({ label: item[1], stroke: item[2], width: 2, spanGaps: false,
          // Run times exist only for minutes where jobs ended: show lone values as dots.
          points: chart.points ? { show: true, size: 4, fill: item[2] } : {},
          value: function (u, v) { return v == null ? "-" : (Math.round(v * 1000) / 1000).toString(); } });
      });
      var plot = new window.uPlot({
        width: width(element),
        height: 180,
        series: series,
        scales: { y: { range: function (u, min, max) { return [0, Math.max(1, max || 0) * 1.1]; } } },
        axes: [
          { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
          { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, label: chart.unit, size: 60 }
        ],
        legend: { live: true }
      }, columns(data, chart), element);
      element.dataset.drawn = "1";
      plots.push([plot, chart, element]);
    });
  }

  function update(data) {
    plots.forEach(function (entry) { entry[0].setData(columns(data, entry[1])); });
    holder.dataset.updated = String(Date.now());
  }

  build(JSON.parse(source.textContent));

  window.addEventListener("resize", function () {
    plots.forEach(function (entry) { entry[0].setSize({ width: width(entry[2]), height: 180 }); });
  });

  function refresh() {
    if (document.hidden || !holder.dataset.url) return;
    fetch(holder.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) { if (data) update(data); })
      .catch(function () { /* the next minute tries again; the page says when figures are stale */ });
  }
  window.setInterval(refresh, 60000);
})();
