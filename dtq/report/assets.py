"""The stylesheet and script inlined into every space-time report (no network, no fonts).

The script zooms by rescaling x coordinates (so dots stay round and text stays upright),
pans by dragging, labels the time axis for the current zoom, toggles kinds from the legend,
and on a click shows an event's clock and data and highlights its causal past and future.
"""

from __future__ import annotations

CSS = """
:root { --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bad: #b91c1c; --good: #15803d; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 13px/1.45 system-ui, "DejaVu Sans", "Liberation Sans", sans-serif; }
code, pre, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
header { padding: 10px 16px 8px; border-bottom: 1px solid var(--line); }
header .title { display: flex; gap: 12px; align-items: baseline; flex-wrap: wrap; }
h1 { font-size: 19px; margin: 0; }
h2 { font-size: 15px; margin: 14px 0 6px; }
.desc { color: var(--muted); }
.verdict { font-weight: 700; padding: 1px 8px; border-radius: 10px; }
.verdict.ok { background: #dcfce7; color: var(--good); }
.verdict.failed { background: #fee2e2; color: var(--bad); }
.facts { display: flex; flex-wrap: wrap; gap: 2px 18px; margin-top: 4px; }
.facts span b { color: var(--muted); font-weight: 500; margin-right: 4px; }
.facts .bad, .violations { color: var(--bad); font-weight: 600; }
.violations { margin: 4px 0 0; padding-left: 18px; }
#toolbar { display: flex; align-items: center; gap: 6px 14px; flex-wrap: wrap;
  padding: 6px 16px; border-bottom: 1px solid var(--line); background: #f9fafb; }
#toolbar button { font: inherit; padding: 1px 8px; }
#toolbar .hint, .cap { color: var(--muted); }
.cap { color: #92400e; }
#legend { display: flex; flex-wrap: wrap; gap: 2px 4px; padding: 4px 16px;
  border-bottom: 1px solid var(--line); }
#legend .group { color: var(--muted); margin: 0 4px 0 10px; align-self: center; }
#legend .group:first-child { margin-left: 0; }
.chip { display: inline-flex; align-items: center; gap: 4px; padding: 0 7px;
  border: 1px solid var(--line); border-radius: 10px; font-size: 12px; cursor: pointer;
  user-select: none; background: #fff; }
.chip.off { opacity: .35; text-decoration: line-through; }
.chip small { color: var(--muted); }
.sw { display: inline-block; width: 10px; height: 10px; border-radius: 50%; }
.sw.line { width: 18px; height: 3px; border-radius: 0; }
.sw.box { width: 16px; height: 11px; border-radius: 2px; border: 1px solid #d1d5db; }
#main { display: flex; align-items: stretch; border-bottom: 1px solid var(--line); }
#labels-col { flex: none; border-right: 1px solid var(--line); background: #fff; }
#scroller { flex: 1; min-width: 0; overflow-x: auto; overflow-y: hidden; cursor: grab; }
#scroller.dragging { cursor: grabbing; }
#panel { flex: none; width: 330px; padding: 8px 12px; border-left: 1px solid var(--line);
  font-size: 12px; overflow: auto; }
#panel h3 { font-size: 13px; margin: 0 0 4px; }
#panel table { border-collapse: collapse; }
#panel td { padding: 0 8px 0 0; vertical-align: top; }
#panel pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0;
  background: #f9fafb; padding: 4px 6px; }
#panel .past { color: #1d4ed8; } #panel .future { color: #c2410c; }
svg text { font-size: 11px; fill: var(--muted); }
.lane-label { font-size: 13px; font-weight: 600; fill: var(--fg); text-anchor: end; }
.axis-title { text-anchor: end; }
.lane.even .lane-bg { fill: #ffffff; }
.lane.odd .lane-bg { fill: #f6f7f9; }
.lane-line { stroke: #9ca3af; stroke-width: 1.5; }
.tick { display: none; }
.tick.on { display: inline; }
.tick line { stroke: #e5e7eb; }
.tick text { text-anchor: middle; }
rect.fault { opacity: .9; }
rect.fault.scripted { fill: rgba(220, 38, 38, .07); stroke: rgba(220, 38, 38, .45);
  stroke-dasharray: 4 3; opacity: 1; }
.fault-edge { stroke: #dc2626; stroke-width: 1.2; stroke-dasharray: 4 3; }
.fault-label { fill: #b91c1c; font-size: 12px; font-weight: 600; }
.note { stroke: #78716c; stroke-width: 1.2; stroke-dasharray: 2 3; }
.msg line { stroke-width: 1.5; opacity: .85; }
.msg:hover line, .msg.self line { stroke-width: 3.5; opacity: 1; }
.msg.undelivered line { stroke-dasharray: 5 3; }
.msg.again line { stroke-dasharray: 7 2 2 2; }
.msg.dropped line { stroke-dasharray: 1.5 2.5; }
.msg line.lost-x { stroke: #dc2626; stroke-width: 2; stroke-dasharray: none; }
.event { stroke: #fff; stroke-width: 1; cursor: pointer; }
.event.alarm { stroke: #111827; stroke-width: 1.6; }
.event:hover { stroke: #111827; stroke-width: 2.5; }
.msg { cursor: pointer; }
svg.focus .event, svg.focus .msg { opacity: .14; }
svg.focus .past, svg.focus .future, svg.focus .self { opacity: 1; }
svg.focus .event.past { stroke: #1d4ed8; stroke-width: 2; }
svg.focus .event.future { stroke: #c2410c; stroke-width: 2; }
svg.focus .event.self { stroke: #111827; stroke-width: 3.5; }
.hidden { display: none; }
section.text { padding: 4px 16px 16px; max-width: 980px; }
section.text li { margin: 2px 0; }
details pre { background: #f9fafb; padding: 8px; overflow: auto; }
table.faults td, table.faults th { padding: 1px 10px 1px 0; text-align: left; }
"""

JS = r"""
(function () {
  "use strict";
  var svg = document.getElementById("spacetime");
  var scroller = document.getElementById("scroller");
  var panel = document.getElementById("panel-body");
  if (!svg || !scroller) return;
  var data = JSON.parse(document.getElementById("dtq-data").textContent);
  var EVENTS = data.events;
  var baseWidth = parseFloat(svg.getAttribute("data-width"));
  var KEYS = ["x", "x1", "x2", "cx", "width"];
  var ZMIN = 0.001, ZMAX = 16, GAP = 72, EXTRA = 28;
  var zoom = 1;
  var items = [];
  svg.querySelectorAll("rect, line, circle, text").forEach(function (el) {
    if (el.closest("defs")) return;
    var base = [];
    KEYS.forEach(function (k) {
      if (el.hasAttribute(k)) base.push([k, parseFloat(el.getAttribute(k))]);
    });
    if (base.length) items.push([el, base]);
  });
  var dotR = Array.prototype.map.call(svg.querySelectorAll("circle.event"), function (el) {
    return [el, parseFloat(el.getAttribute("r"))];
  });
  var ticks = Array.prototype.map.call(svg.querySelectorAll("g.tick"), function (g) {
    return {g: g, p: +g.getAttribute("data-p"),
            x: parseFloat(g.querySelector("line").getAttribute("x1"))};
  }).sort(function (a, b) { return b.p - a.p || a.x - b.x; });
  var dots = Array.prototype.slice.call(svg.querySelectorAll(".event"));
  var msgs = Array.prototype.slice.call(svg.querySelectorAll(".msg"));
  var slider = document.getElementById("zoom");
  var zoomLabel = document.getElementById("zoom-label");

  function layoutTicks(z) {
    var chosen = [];
    ticks.forEach(function (t) {
      var x = t.x * z, lo = 0, hi = chosen.length;
      while (lo < hi) {
        var mid = (lo + hi) >> 1;
        if (chosen[mid] < x) lo = mid + 1; else hi = mid;
      }
      var ok = (lo === 0 || x - chosen[lo - 1] >= GAP) &&
               (lo === chosen.length || chosen[lo] - x >= GAP);
      if (ok) chosen.splice(lo, 0, x);
      t.g.classList.toggle("on", ok);
    });
  }

  function setZoom(z, anchor) {
    z = Math.max(ZMIN, Math.min(ZMAX, z));
    if (anchor === undefined) anchor = scroller.clientWidth / 2;
    var at = (scroller.scrollLeft + anchor) / zoom;
    zoom = z;
    items.forEach(function (it) {
      it[1].forEach(function (kv) { it[0].setAttribute(kv[0], (kv[1] * z).toFixed(1)); });
    });
    svg.setAttribute("width", (baseWidth * z + EXTRA).toFixed(1));
    var shrink = Math.max(0.45, Math.min(1, z * 2.5));
    dotR.forEach(function (d) { d[0].setAttribute("r", (d[1] * shrink).toFixed(2)); });
    layoutTicks(z);
    scroller.scrollLeft = at * z - anchor;
    if (slider) slider.value = String(Math.log(z) / Math.LN2);
    if (zoomLabel) zoomLabel.textContent = Math.round(z * 100) + "%";
    svg.setAttribute("data-zoom", z.toFixed(3));
  }

  var pending = null;
  function requestZoom(z, anchor) {
    var first = pending === null;
    pending = [z, anchor];
    if (first) requestAnimationFrame(function () {
      var p = pending;
      pending = null;
      setZoom(p[0], p[1]);
    });
  }
  function current() { return pending ? pending[0] : zoom; }

  function fit() {
    setZoom((scroller.clientWidth - 4 - EXTRA) / baseWidth, 0);
    scroller.scrollLeft = 0;
  }

  function button(id, fn) {
    var b = document.getElementById(id);
    if (b) b.addEventListener("click", fn);
  }
  button("zoom-fit", fit);
  button("zoom-one", function () { setZoom(1); });
  button("zoom-in", function () { setZoom(zoom * 1.5); });
  button("zoom-out", function () { setZoom(zoom / 1.5); });
  if (slider) slider.addEventListener("input", function () {
    requestZoom(Math.pow(2, parseFloat(slider.value)));
  });
  scroller.addEventListener("wheel", function (ev) {
    if (!ev.ctrlKey && !ev.metaKey) return;
    ev.preventDefault();
    var r = scroller.getBoundingClientRect();
    requestZoom(current() * Math.pow(1.002, -ev.deltaY), ev.clientX - r.left);
  }, {passive: false});

  var drag = null, dragged = false;
  scroller.addEventListener("mousedown", function (ev) {
    if (ev.button === 0) drag = {x: ev.clientX, left: scroller.scrollLeft, moved: false};
  });
  window.addEventListener("mousemove", function (ev) {
    if (!drag) return;
    var dx = ev.clientX - drag.x;
    if (Math.abs(dx) > 3) { drag.moved = true; scroller.classList.add("dragging"); }
    if (drag.moved) { scroller.scrollLeft = drag.left - dx; ev.preventDefault(); }
  });
  window.addEventListener("mouseup", function () {
    dragged = !!(drag && drag.moved);
    drag = null;
    scroller.classList.remove("dragging");
  });

  function leq(a, b) {
    for (var k in a) if (a[k] > (b[k] || 0)) return false;
    return true;
  }
  function hasClock(seq) { return Object.keys(EVENTS[seq][3]).length > 0; }
  function relation(seq, sel) {
    if (seq === sel) return "self";
    if (!hasClock(seq)) return "";
    var a = EVENTS[seq][3], b = EVENTS[sel][3], le = leq(a, b), ge = leq(b, a);
    if (le && ge) return seq < sel ? "past" : "future";
    return le ? "past" : ge ? "future" : "";
  }

  function clear() {
    svg.classList.remove("focus");
    dots.concat(msgs).forEach(function (el) { el.classList.remove("past", "future", "self"); });
    if (panel) panel.innerHTML = data.hint;
  }

  function mark(sel, chosenMsg) {
    var n = {past: 0, future: 0, "": 0};
    svg.classList.add("focus");
    dots.forEach(function (el) {
      var seq = +el.getAttribute("data-seq"), r = relation(seq, sel);
      el.classList.remove("past", "future", "self");
      if (r) el.classList.add(r);
      if (r !== "self") n[r] += 1;
    });
    msgs.forEach(function (el) {
      var s = el.getAttribute("data-send"), v = el.getAttribute("data-recv"), r = "";
      el.classList.remove("past", "future", "self");
      if (el === chosenMsg) r = "self";
      else if (v !== null && /past|self/.test(relation(+v, sel))) r = "past";
      else if (s !== null && /future|self/.test(relation(+s, sel))) r = "future";
      if (r) el.classList.add(r);
    });
    return n;
  }

  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c];
    });
  }
  function clockText(c) {
    var ks = Object.keys(c).sort();
    if (!ks.length) return "(none)";
    return "{" + ks.map(function (k) { return k + ":" + c[k]; }).join(", ") + "}";
  }
  function eventHtml(seq) {
    var e = EVENTS[seq];
    return "<table><tr><td>actor</td><td><b>" + esc(e[0]) + "</b></td></tr>" +
      "<tr><td>kind</td><td><b>" + esc(e[1]) + "</b></td></tr>" +
      "<tr><td>time</td><td>" + e[2] + " ms</td></tr><tr><td>event</td><td>#" + seq +
      "</td></tr></table><div>vector clock</div><pre>" + esc(clockText(e[3])) +
      "</pre><div>data</div><pre>" + esc(JSON.stringify(e[4], null, 1)) + "</pre>";
  }
  function counts(n) {
    return "<p><span class='past'>" + n.past + " events happened before</span>, <span " +
      "class='future'>" + n.future + " after</span>, " + n[""] + " are concurrent " +
      "(dimmed). Esc clears.</p>";
  }
  function showEvent(seq) {
    if (!hasClock(seq)) {
      clear();
      panel.innerHTML = eventHtml(seq) + "<p>This event carries no clock, so its causal " +
        "relations are unknown.</p>";
      return;
    }
    panel.innerHTML = "<h3>Event</h3>" + eventHtml(seq) + counts(mark(seq, null));
  }
  function showMessage(el) {
    var s = el.getAttribute("data-send"), v = el.getAttribute("data-recv");
    var title = el.querySelector("title");
    var html = "<h3>Message " + esc(el.getAttribute("data-msg")) + "</h3><pre>" +
      esc(title ? title.textContent : "") + "</pre>";
    if (s !== null) html += "<h3>send</h3>" + eventHtml(+s);
    if (v !== null) html += "<h3>receive</h3>" + eventHtml(+v);
    var sel = s !== null ? +s : +v;
    panel.innerHTML = html + (hasClock(sel) ? counts(mark(sel, el)) : "");
  }

  svg.addEventListener("click", function (ev) {
    if (dragged) { dragged = false; return; }
    var dot = ev.target.closest(".event"), msg = ev.target.closest(".msg");
    if (dot) showEvent(+dot.getAttribute("data-seq"));
    else if (msg) showMessage(msg);
    else clear();
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.target && /INPUT|TEXTAREA/.test(ev.target.tagName)) return;
    if (ev.key === "Escape") clear();
    else if (ev.key === "+" || ev.key === "=") setZoom(zoom * 1.5);
    else if (ev.key === "-") setZoom(zoom / 1.5);
    else if (ev.key === "0") fit();
  });

  document.querySelectorAll("#legend .chip[data-toggle]").forEach(function (chip) {
    chip.addEventListener("click", function () {
      var off = chip.classList.toggle("off");
      svg.querySelectorAll(chip.getAttribute("data-toggle")).forEach(function (el) {
        el.classList.toggle("hidden", off);
      });
    });
  });

  var t0 = performance.now();
  fit();
  var m = /(?:^#|&)event=(\d+)/.exec(location.hash);
  if (m && EVENTS[m[1]]) showEvent(+m[1]);
  document.body.setAttribute("data-layout-ms", String(Math.round(performance.now() - t0)));
  document.body.setAttribute("data-ready", "1");
})();
"""
