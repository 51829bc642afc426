"""Draw Prometheus's console page for the stack from the Grafana dashboard.

    python3 console.py DASHBOARD.json OUT.html

The Grafana dashboard (monitoring/dashboards/tiled-stack.json) is the one place where the
stack's panels and their queries are written. Not every deployment runs Grafana, but every
deployment with the monitoring profile runs Prometheus, and Prometheus serves the files of
its console directory at /consoles/<name>.html. So the image build turns the dashboard into
one such page: the same titles, units, queries and legends, drawn by a small script in the
page from Prometheus's own /api/v1/query_range. One source for both: a query fixed in the
dashboard is fixed on the console page at the next build, and the two never drift apart.
(That is also why the dashboard's queries use a literal [1m] and no Grafana variables: the
page sends them to Prometheus as they are.)

What the page must respect:

- Prometheus sends every console file through Go's template engine (html/template), so the
  page holds no "{{" at all. The panels travel as base64 of an ASCII JSON document, decoded
  with atob() in the page, and the legend's {{label}} markers are found by a string built
  from character codes. This script refuses to write a page that contains "{{". The engine
  passes the rest through as it is, except comments, which it drops (so nothing in the page
  may depend on one).
- It is self-contained: no script, style sheet or font from anywhere else.
- It asks Prometheus at /api/v1/query_range, an absolute path: the page lives under
  /consoles/, where a relative URL would miss the API.

For a test or a screenshot the page says how it went: each panel carries
data-series="N" (series with at least two finite points) once drawn, and when every panel is done
the page's title reads "tiled-stack: K/M panels with data" and a
<div id="summary" data-with-data="K" data-panels="M"> appears. It draws again every 30 s.

Standard library only (the image installs python3, not python3-minimal, for its json module).
"""

import base64
import json
import os
import sys

RANGE_SECONDS = 15 * 60
STEP_SECONDS = 15
REFRESH_SECONDS = 30
PAGE_NAME = "tiled-stack"


# --- the dashboard's panels -----------------------------------------------------------------

def _grafana_variable(expr):
    """The first Grafana variable ($name, ${name}, $__interval...) in expr, or None."""
    for i, ch in enumerate(expr[:-1]):
        nxt = expr[i + 1]
        if ch == "$" and (nxt == "{" or nxt == "_" or nxt.isalpha()):
            end = i + 1
            while end < len(expr) and (expr[end].isalnum() or expr[end] in "_{}"):
                end += 1
            return expr[i:end]
    return None


def _all_panels(panels):
    for panel in panels:
        yield panel
        # A collapsed row keeps its panels inside it.
        yield from _all_panels(panel.get("panels") or [])


def panels_of(dashboard):
    """The dashboard's query panels in reading order: what the console page draws."""
    found = []
    for panel in _all_panels(dashboard.get("panels") or []):
        if panel.get("type") == "row":
            continue
        targets = []
        for target in panel.get("targets") or []:
            expr = (target.get("expr") or "").strip()
            if not expr or target.get("hide"):
                continue
            variable = _grafana_variable(expr)
            if variable:
                raise SystemExit(
                    f"console.py: panel {panel.get('title')!r} uses the Grafana variable {variable} in "
                    f"{expr!r}; Prometheus does not know it, so write the value out (e.g. [1m]).")
            targets.append({"expr": expr, "legendFormat": target.get("legendFormat") or "",
                            "refId": target.get("refId") or ""})
        if not targets:
            continue
        defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
        grid = panel.get("gridPos") or {}
        found.append(((grid.get("y", 0), grid.get("x", 0), len(found)), {
            "title": panel.get("title") or "",
            "description": panel.get("description") or "",
            "unit": defaults.get("unit") or "short",
            "min": defaults.get("min") if isinstance(defaults.get("min"), (int, float)) else None,
            "targets": targets,
        }))
    found.sort(key=lambda item: item[0])
    return [panel for _, panel in found]


# --- the page ---------------------------------------------------------------------------------

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=1440">
<title>__PAGE_NAME__</title>
<style>
body { margin: 0; background: #ffffff; color: #1f2328;
  font: 13px/1.35 "DejaVu Sans", "Liberation Sans", Arial, Helvetica, sans-serif; }
#page { width: 1400px; margin: 0 auto; padding: 14px 0 24px; }
#head { display: flex; justify-content: space-between; align-items: baseline;
  border-bottom: 1px solid #d0d7de; padding-bottom: 8px; margin-bottom: 12px; }
#head h1 { font-size: 20px; margin: 0; font-weight: 600; }
#head .sub { color: #57606a; margin-left: 10px; font-size: 13px; }
#range { color: #57606a; font-size: 12px; text-align: right; }
#grid { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.panel { border: 1px solid #d0d7de; border-radius: 4px; padding: 8px 10px 6px; min-width: 0; }
.panel h2 { font-size: 14px; margin: 0; font-weight: 600; }
.panel .desc { color: #57606a; font-size: 11px; margin: 2px 0 2px; min-height: 15px;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.panel .queries { font-size: 11px; color: #57606a; margin-top: 2px; }
.panel .queries summary { cursor: pointer; }
.panel .queries pre { white-space: pre-wrap; word-break: break-all; margin: 4px 0 0;
  font: 11px/1.3 "DejaVu Sans Mono", "Liberation Mono", monospace; color: #1f2328; }
.panel svg { display: block; }
.panel .status { color: #57606a; font-size: 11px; min-height: 15px; }
.panel .status.error { color: #cf222e; }
.legend { list-style: none; padding: 0; margin: 2px 0 0; display: flex; flex-wrap: wrap;
  gap: 1px 14px; font-size: 11px; }
.legend li { white-space: nowrap; }
.legend .swatch { display: inline-block; width: 14px; height: 3px; margin-right: 5px;
  vertical-align: middle; }
.legend .last { color: #57606a; margin-left: 4px; }
#summary { margin-top: 12px; color: #57606a; font-size: 12px; }
</style>
</head>
<body>
<div id="page">
<div id="head">
<div><h1 id="name">__PAGE_NAME__<span class="sub" id="dashboard-title"></span></h1></div>
<div id="range">loading&hellip;</div>
</div>
<div id="grid"></div>
</div>
<script>
(function () {
  "use strict";
  var DASHBOARD = JSON.parse(atob("__PAYLOAD__"));
  var PANELS = DASHBOARD.panels;
  var RANGE_S = __RANGE__, STEP_S = __STEP__, REFRESH_MS = __REFRESH__ * 1000;
  var API = "/api/v1/query_range", QUERY_TIMEOUT_MS = 20000;
  var SVG_NS = "http://www.w3.org/2000/svg";
  var W = 674, H = 210, LEFT = 74, RIGHT = 10, TOP = 8, BOTTOM = 22;
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939",
                "#8c6d31", "#843c39", "#7b4173", "#3182bd"];
  // The legend's markers, built from character codes: the page must not hold them literally.
  var OPEN = String.fromCharCode(123, 123), CLOSE = String.fromCharCode(125, 125);

  function color(i) {
    if (i < COLORS.length) { return COLORS[i]; }
    return "hsl(" + ((i * 137.508) % 360).toFixed(0) + ", 65%, 42%)";
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    var key;
    for (key in attrs || {}) { node.setAttribute(key, attrs[key]); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG_NS, tag);
    var key;
    for (key in attrs || {}) { node.setAttribute(key, attrs[key]); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function seriesName(metric) {
    var keys = Object.keys(metric).filter(function (k) { return k !== "__name__"; }).sort();
    var labels = keys.map(function (k) { return k + "=\"" + metric[k] + "\""; }).join(", ");
    var name = metric.__name__ || "";
    if (!labels) { return name || "value"; }
    return name + String.fromCharCode(123) + labels + String.fromCharCode(125);
  }

  // Grafana's legendFormat: each OPEN label CLOSE becomes that label's value.
  function legendText(format, metric) {
    if (!format) { return seriesName(metric); }
    var out = "", rest = format;
    for (;;) {
      var start = rest.indexOf(OPEN);
      if (start < 0) { break; }
      var stop = rest.indexOf(CLOSE, start + 2);
      if (stop < 0) { break; }
      var label = rest.slice(start + 2, stop).trim();
      out += rest.slice(0, start) + (metric[label] !== undefined ? metric[label] : "");
      rest = rest.slice(stop + 2);
    }
    return out + rest;
  }

  function short(v) {
    var a = Math.abs(v);
    var steps = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
    for (var i = 0; i < steps.length; i++) {
      if (a >= steps[i][0]) { return trim(v / steps[i][0]) + steps[i][1]; }
    }
    return trim(v);
  }

  function trim(v) {
    if (v === 0) { return "0"; }
    return String(parseFloat(v.toPrecision(3)));
  }

  function bytes(v) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    var i = 0, a = Math.abs(v);
    while (a >= 1024 && i < units.length - 1) { a /= 1024; v /= 1024; i++; }
    return trim(v) + " " + units[i];
  }

  function seconds(v) {
    var a = Math.abs(v);
    if (a === 0) { return "0 s"; }
    if (a < 1e-3) { return trim(v * 1e6) + " \u00b5s"; }
    if (a < 1) { return trim(v * 1e3) + " ms"; }
    if (a < 120) { return trim(v) + " s"; }
    if (a < 7200) { return trim(v / 60) + " min"; }
    return trim(v / 3600) + " h";
  }

  function formatValue(v, unit) {
    switch (unit) {
      case "s": return seconds(v);
      case "ms": return seconds(v / 1000);
      case "bytes": case "decbytes": return bytes(v);
      case "reqps": return short(v) + " req/s";
      case "ops": return short(v) + " ops/s";
      case "percentunit": return trim(v * 100) + "%";
      case "percent": return trim(v) + "%";
      default: return short(v);
    }
  }

  function clock(t) {
    var d = new Date(t * 1000);
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  function query(expr, start, end) {
    var url = API + "?query=" + encodeURIComponent(expr) + "&start=" + start + "&end=" + end +
      "&step=" + STEP_S;
    var abort = typeof AbortController === "function" ? new AbortController() : null;
    var timer = abort ? setTimeout(function () { abort.abort(); }, QUERY_TIMEOUT_MS) : null;
    var options = { credentials: "same-origin", cache: "no-store" };
    if (abort) { options.signal = abort.signal; }
    return fetch(url, options)
      .then(function (response) {
        clearTimeout(timer);
        return response.json().catch(function () {
          throw new Error("HTTP " + response.status);
        });
      })
      .then(function (body) {
        if (body.status !== "success") { throw new Error(body.error || "query failed"); }
        return body.data.result || [];
      });
  }

  // Every series of a panel as {name, points: [[t, v], ...]} with finite values only.
  function collect(results, panel) {
    var series = [];
    results.forEach(function (result, i) {
      if (!result.ok) { return; }
      result.data.forEach(function (s) {
        var points = [];
        (s.values || []).forEach(function (pair) {
          var v = parseFloat(pair[1]);
          if (isFinite(v)) { points.push([pair[0], v]); }
        });
        series.push({ name: legendText(panel.targets[i].legendFormat, s.metric || {}), points: points });
      });
    });
    return series;
  }

  function draw(box, series, unit, panelMin, start, end) {
    var plot = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
    var lo = Infinity, hi = -Infinity;
    series.forEach(function (s) {
      s.points.forEach(function (p) { if (p[1] < lo) { lo = p[1]; } if (p[1] > hi) { hi = p[1]; } });
    });
    if (lo === Infinity) { lo = 0; hi = 1; }
    if (typeof panelMin === "number" && panelMin < lo) { lo = panelMin; }
    if (hi === lo) { hi = lo === 0 ? 1 : lo + Math.abs(lo) * 0.1; }
    var x0 = LEFT, x1 = W - RIGHT, y0 = H - BOTTOM, y1 = TOP;
    function x(t) { return x0 + (t - start) / (end - start) * (x1 - x0); }
    function y(v) { return y0 - (v - lo) / (hi - lo) * (y0 - y1); }

    [lo, (lo + hi) / 2, hi].forEach(function (v, i) {
      var yy = y(v).toFixed(1);
      plot.appendChild(svg("line", { x1: x0, x2: x1, y1: yy, y2: yy,
        stroke: i === 0 ? "#8c959f" : "#e6e9ec", "stroke-width": 1 }));
      plot.appendChild(svg("text", { x: x0 - 6, y: (y(v) + 4).toFixed(1), "text-anchor": "end",
        "font-size": 11, fill: "#57606a", "class": i === 0 ? "y-min" : (i === 2 ? "y-max" : "y-mid") },
        formatValue(v, unit)));
    });
    plot.appendChild(svg("line", { x1: x0, x2: x0, y1: y1, y2: y0, stroke: "#8c959f", "stroke-width": 1 }));
    plot.appendChild(svg("text", { x: x0, y: H - 6, "font-size": 11, fill: "#57606a" }, clock(start)));
    plot.appendChild(svg("text", { x: x1, y: H - 6, "font-size": 11, fill: "#57606a", "text-anchor": "end" },
      clock(end)));

    series.forEach(function (s, i) {
      var segment = [], last = null;
      function flush() {
        if (segment.length === 1) {
          var p = segment[0].split(",");
          plot.appendChild(svg("circle", { cx: p[0], cy: p[1], r: 1.8, fill: color(i) }));
        } else if (segment.length > 1) {
          plot.appendChild(svg("polyline", { points: segment.join(" "), fill: "none", stroke: color(i),
            "stroke-width": 1.5, "stroke-linejoin": "round" }));
        }
        segment = [];
      }
      s.points.forEach(function (p) {
        if (last !== null && p[0] - last > STEP_S * 1.5) { flush(); }
        segment.push(x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1));
        last = p[0];
      });
      flush();
    });
    box.appendChild(plot);

    var legend = el("ul", { "class": "legend" });
    series.forEach(function (s, i) {
      var item = el("li");
      item.appendChild(el("span", { "class": "swatch", style: "background:" + color(i) }));
      item.appendChild(el("span", { "class": "label" }, s.name));
      if (s.points.length) {
        var last = s.points[s.points.length - 1][1];
        item.appendChild(el("span", { "class": "last" }, formatValue(last, unit)));
      }
      legend.appendChild(item);
    });
    box.appendChild(legend);
  }

  function renderPanel(panel, node, start, end) {
    return Promise.all(panel.targets.map(function (target) {
      return query(target.expr, start, end).then(
        function (data) { return { ok: true, data: data }; },
        function (err) { return { ok: false, error: target.refId + ": " + (err && err.message || err) }; });
    })).then(function (results) {
      var series = collect(results, panel);
      var withData = series.filter(function (s) { return s.points.length >= 2; }).length;
      var errors = results.filter(function (r) { return !r.ok; }).map(function (r) { return r.error; });
      var box = node.querySelector(".chart");
      var status = node.querySelector(".status");
      box.textContent = "";
      draw(box, series, panel.unit, panel.min, start, end);
      if (errors.length) {
        status.className = "status error";
        status.textContent = errors.join("; ");
      } else {
        status.className = "status";
        status.textContent = withData ? "" : "no data";
      }
      node.setAttribute("data-series", String(withData));
      return withData;
    }).catch(function (err) {
      var status = node.querySelector(".status");
      status.className = "status error";
      status.textContent = "drawing failed: " + (err && err.message || err);
      node.setAttribute("data-series", "0");
      return 0;
    });
  }

  var grid = document.getElementById("grid");
  var nodes = PANELS.map(function (panel, i) {
    var node = el("div", { "class": "panel", id: "panel-" + (i + 1), "data-title": panel.title });
    node.appendChild(el("h2", {}, panel.title));
    node.appendChild(el("div", { "class": "desc", title: panel.description }, panel.description));
    node.appendChild(el("div", { "class": "chart" }));
    node.appendChild(el("div", { "class": "status" }, "loading\u2026"));
    var queries = el("details", { "class": "queries" });
    queries.appendChild(el("summary", {}, "queries"));
    queries.appendChild(el("pre", {}, panel.targets.map(function (t) {
      return t.refId + ": " + t.expr + (t.legendFormat ? "\n   legend: " + t.legendFormat : "");
    }).join("\n")));
    node.appendChild(queries);
    grid.appendChild(node);
    return node;
  });
  if (DASHBOARD.title) {
    document.getElementById("dashboard-title").textContent = DASHBOARD.title + " \u2014 Prometheus console";
  }

  function refresh() {
    var end = Math.floor(Date.now() / 1000), start = end - RANGE_S;
    document.getElementById("range").textContent = "last " + (RANGE_S / 60) + " min: " + clock(start) +
      " \u2013 " + clock(end) + ", step " + STEP_S + " s, redrawn every " + (REFRESH_MS / 1000) + " s";
    Promise.all(PANELS.map(function (panel, i) {
      return renderPanel(panel, nodes[i], start, end);
    })).then(function (counts) {
      var k = counts.filter(function (n) { return n > 0; }).length, m = PANELS.length;
      document.title = "__PAGE_NAME__: " + k + "/" + m + " panels with data";
      var summary = document.getElementById("summary");
      if (!summary) {
        summary = el("div", { id: "summary" });
        document.getElementById("page").appendChild(summary);
      }
      summary.setAttribute("data-with-data", String(k));
      summary.setAttribute("data-panels", String(m));
      summary.textContent = k + " of " + m + " panels with data, drawn at " + clock(end) + ".";
    }).then(function () {
      setTimeout(refresh, REFRESH_MS);
    });
  }

  refresh();
})();
</script>
</body>
</html>
"""


def render(dashboard):
    panels = panels_of(dashboard)
    if not panels:
        raise SystemExit("console.py: the dashboard has no panel with a query")
    payload = json.dumps({"title": dashboard.get("title") or "", "uid": dashboard.get("uid") or "",
                         "panels": panels}, ensure_ascii=True)
    page = PAGE
    for key, value in (("__PAYLOAD__", base64.b64encode(payload.encode("ascii")).decode("ascii")),
                       ("__PAGE_NAME__", PAGE_NAME),
                       ("__RANGE__", str(RANGE_SECONDS)),
                       ("__STEP__", str(STEP_SECONDS)),
                       ("__REFRESH__", str(REFRESH_SECONDS))):
        page = page.replace(key, value)
    if "{{" in page:
        raise SystemExit("console.py: the page would hold '{{', which Prometheus's template engine reads")
    return page, len(panels)


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: python3 console.py DASHBOARD.json OUT.html\n")
        return 2
    source, target = argv[1], argv[2]
    with open(source, encoding="utf-8") as f:
        try:
            dashboard = json.load(f)
        except ValueError as err:
            raise SystemExit(f"console.py: {source}: {err}")
    if not isinstance(dashboard, dict):
        raise SystemExit(f"console.py: {source} is not a Grafana dashboard (no JSON object)")
    page, count = render(dashboard)
    partial = target + ".part"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(partial, target)
    print(f"console.py: {target}: {count} panels from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
