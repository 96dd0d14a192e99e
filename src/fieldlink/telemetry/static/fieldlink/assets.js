/* The asset page: live values (polls the latest endpoint; paused while the tab is hidden) and a
 * uPlot chart per measuring point fed by the downsampled series endpoint. Served from 'self'; no
 * inline script: the URLs come from data-* attributes. */
(function () {
  "use strict";
  var root = document.getElementById("asset-live");
  if (!root) return;
  var HEALTH = {
    failure: ["Failure", "\u2716"], function_check: ["Function check", "\u25BC"],
    out_of_specification: ["Out of specification", "?"],
    maintenance_required: ["Maintenance required", "\u25C6"], ok: ["OK", "\u2714"],
    unknown: ["Unknown", "\u2013"]
  };
  var latestUrl = root.getAttribute("data-latest-url");
  var interval = parseInt(root.getAttribute("data-interval-ms"), 10) || 5000;
  var status = document.getElementById("live-status");
  var cards = Array.prototype.slice.call(root.querySelectorAll(".point[data-point-id]"));
  var rangeMs = 86400000;
  var timer = null;
  var charts = {};

  function fmt(v) { return v === null || v === undefined ? "\u2014" : Number(v.toPrecision(6)).toString(); }
  function getJson(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); });
  }
  function setHealth(asset) {
    var badge = document.querySelector("#asset-health .health");
    if (!badge || badge.getAttribute("data-health") === asset.health) return;
    var sign = HEALTH[asset.health] || HEALTH.unknown;
    badge.className = "health health-" + asset.health;
    badge.setAttribute("data-health", asset.health);
    badge.textContent = "";
    var icon = document.createElement("span");
    icon.className = "health-icon"; icon.setAttribute("aria-hidden", "true"); icon.textContent = sign[1];
    badge.appendChild(icon); badge.appendChild(document.createTextNode(" " + sign[0]));
  }
  function poll() {
    getJson(latestUrl).then(function (data) {
      setHealth(data.asset);
      data.points.forEach(function (p) {
        var card = root.querySelector('.point[data-point-id="' + p.id + '"]');
        if (!card || p.ts === null) return;
        var value = card.querySelector('[data-field="value"]');
        var at = card.querySelector('[data-field="at"]');
        if (at.getAttribute("datetime") !== p.ts) {
          value.textContent = fmt(p.value);
          at.setAttribute("datetime", p.ts); at.textContent = "at " + p.ts;
          card.setAttribute("data-updated", p.ts);
        }
      });
      status.textContent = "Live \u2014 updated " + new Date().toISOString().slice(11, 19) + " UTC";
    }).catch(function () { status.textContent = "Live values unavailable; retrying."; });
  }
  function schedule() {
    stop();
    if (document.hidden) { status.textContent = "Paused while the tab is hidden."; return; }
    poll();
    timer = window.setInterval(poll, interval);
  }
  function stop() { if (timer !== null) { window.clearInterval(timer); timer = null; } }

  function chartWidth(el) { return Math.max(200, el.clientWidth || 300); }
  function drawChart(card) {
    var el = card.querySelector('[data-field="chart"]');
    var end = Date.now();
    var url = card.getAttribute("data-series-url") + "?start=" + (end - rangeMs) + "&end=" + end +
      "&max_points=" + Math.min(2000, Math.max(100, Math.round(chartWidth(el) * 2)));
    var link = card.querySelector("[data-export]");
    if (link) {
      var base = link.getAttribute("href").split("?")[0];
      link.setAttribute("href", base + "?start=" + (end - Math.min(rangeMs, 2678400000)) + "&end=" + end);
    }
    getJson(url).then(function (s) {
      var t = s.t.map(function (ms) { return ms / 1000; });
      var data = s.mode === "raw" ? [t, s.avg] : [t, s.min, s.avg, s.max];
      var unit = card.getAttribute("data-unit");
      var series = [{}, { label: s.mode === "raw" ? unit : "avg " + unit, stroke: "#0b5394", width: 1.5 }];
      if (s.mode !== "raw") {
        series = [{}, { label: "min", stroke: "#8fb3d9", width: 1 },
          { label: "avg " + unit, stroke: "#0b5394", width: 1.5 }, { label: "max", stroke: "#8fb3d9", width: 1 }];
      }
      var opts = { width: chartWidth(el), height: 220, series: series,
        scales: { x: { time: true, min: (end - rangeMs) / 1000, max: end / 1000 } },
        legend: { show: true } };
      if (charts[card.getAttribute("data-point-id")]) charts[card.getAttribute("data-point-id")].destroy();
      el.textContent = "";
      if (typeof window.uPlot !== "function") { el.textContent = "Chart unavailable."; return; }
      charts[card.getAttribute("data-point-id")] = new window.uPlot(opts, data, el);
      el.setAttribute("data-mode", s.mode);
      el.setAttribute("data-points", String(t.length));
    }).catch(function () { el.textContent = "Chart unavailable."; });
  }
  function drawAll() { cards.forEach(drawChart); }

  Array.prototype.forEach.call(document.querySelectorAll("[data-range-ms]"), function (button) {
    button.addEventListener("click", function () {
      rangeMs = parseInt(button.getAttribute("data-range-ms"), 10);
      Array.prototype.forEach.call(document.querySelectorAll("[data-range-ms]"), function (b) {
        b.setAttribute("aria-pressed", b === button ? "true" : "false");
      });
      drawAll();
    });
  });
  var resizeTimer = null;
  window.addEventListener("resize", function () {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(function () {
      cards.forEach(function (card) {
        var chart = charts[card.getAttribute("data-point-id")];
        var el = card.querySelector('[data-field="chart"]');
        if (chart) chart.setSize({ width: chartWidth(el), height: 220 });
      });
    }, 200);
  });
  document.addEventListener("visibilitychange", schedule);
  drawAll();
  schedule();
})();
