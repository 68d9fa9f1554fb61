// Zones and privacy masks drawn on the camera's snapshot with a mouse or a finger (pointer
// events), saved through /api/cameras/<id>/zones (a config.update: applied live, kept in the
// saved overlay). Zones go to the tracker, masks to the camera's input.
"use strict";
(function () {
  var stage = document.getElementById("zone-stage");
  var svg = document.getElementById("zone-svg");
  if (!stage || !svg) { return; }
  var NS = "http://www.w3.org/2000/svg";
  var csrf = document.body.dataset.csrf || "";
  var cam = stage.dataset.camera;
  var zones = [];
  var masks = [];
  try { zones = JSON.parse(stage.dataset.zones || "[]"); } catch (e) { zones = []; }
  try { masks = JSON.parse(stage.dataset.masks || "[]"); } catch (e) { masks = []; }
  var points = [];
  var result = document.getElementById("zone-result");

  function say(text, bad) {
    if (!result) { return; }
    result.textContent = text;
    result.className = bad ? "error" : "ok";
  }
  function node(tag, attrs) {
    var n = document.createElementNS(NS, tag);
    Object.keys(attrs).forEach(function (k) { n.setAttribute(k, attrs[k]); });
    return n;
  }
  function pts(poly) { return poly.map(function (p) { return p[0] + "," + p[1]; }).join(" "); }

  function draw() {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    zones.forEach(function (z) {
      var pg = node("polygon", { points: pts(z.polygon), "class": z.mode || "include" });
      pg.dataset.zone = z.name;
      svg.appendChild(pg);
    });
    masks.forEach(function (m) {
      var pg = node("polygon", { points: pts(m.polygon), "class": "mask" });
      pg.dataset.mask = m.name;
      svg.appendChild(pg);
    });
    if (points.length) {
      svg.appendChild(node("polyline", { points: pts(points.concat([points[0]])) }));
      points.forEach(function (p) {
        svg.appendChild(node("circle", { cx: p[0], cy: p[1], r: 0.01 }));
      });
    }
  }

  function list() {
    var ul = document.getElementById("zone-list");
    if (!ul) { return; }
    ul.textContent = "";
    function item(z, kind) {
      var li = document.createElement("li");
      li.dataset.zone = z.name;
      li.dataset.kind = kind;
      var b = document.createElement("b");
      b.textContent = z.name;
      li.appendChild(b);
      li.appendChild(document.createTextNode(" " +
        (kind === "mask" ? "privacy mask" : (z.mode || "include")) + ", " +
        z.polygon.length + " corners "));
      if (document.getElementById("zone-tools")) {
        var del = document.createElement("button");
        del.type = "button";
        del.className = "zone-del";
        del.dataset.zone = z.name;
        del.dataset.kind = kind;
        del.textContent = "Delete";
        li.appendChild(del);
      }
      ul.appendChild(li);
    }
    zones.forEach(function (z) { item(z, "zone"); });
    masks.forEach(function (m) { item(m, "mask"); });
    var none = document.getElementById("no-zones");
    if (none) { none.hidden = zones.length + masks.length > 0; }
  }

  function save(kind, next, done) {
    var body = kind === "mask" ? { masks: next } : { zones: next };
    fetch("/api/cameras/" + encodeURIComponent(cam) + "/zones", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
      body: JSON.stringify(body)
    }).then(function (r) { return r.json(); }).then(function (j) {
      if (j.ok) {
        if (kind === "mask") { masks = next; } else { zones = next; }
        points = [];
        draw();
        list();
        say(done + (kind === "mask" ? " The camera blacks it out now" : " The tracker uses it now") +
          " (config version " + j.version + ").", false);
      } else {
        say("Not saved: " + (j.errors || []).map(function (e) {
          return e.key + ": " + e.error;
        }).join("; ") + (j.errors && j.errors.length ? "" : (j.reason || j.error || "")), true);
      }
    }).catch(function (e) { say("Not saved: " + e, true); });
  }

  if (document.getElementById("zone-tools")) {
    svg.addEventListener("pointerdown", function (e) {
      e.preventDefault();
      var r = svg.getBoundingClientRect();
      var x = Math.min(1, Math.max(0, (e.clientX - r.left) / r.width));
      var y = Math.min(1, Math.max(0, (e.clientY - r.top) / r.height));
      points.push([Math.round(x * 10000) / 10000, Math.round(y * 10000) / 10000]);
      draw();
      say(points.length + " corner(s)" + (points.length < 3 ? ": at least three" : ""), false);
    });
    document.getElementById("zone-undo").addEventListener("click", function () {
      points.pop();
      draw();
    });
    document.getElementById("zone-clear").addEventListener("click", function () {
      points = [];
      draw();
    });
    document.getElementById("zone-save").addEventListener("click", function () {
      var name = document.getElementById("zone-name").value.trim();
      if (points.length < 3) { say("A zone needs at least three corners.", true); return; }
      if (!name) { say("Give the zone a name.", true); return; }
      var mode = document.getElementById("zone-mode").value;
      if (mode === "mask") {
        var nm = masks.filter(function (m) { return m.name !== name; });
        nm.push({ name: name, polygon: points });
        save("mask", nm, "Saved mask " + name + ".");
        return;
      }
      var next = zones.filter(function (z) { return z.name !== name; });
      next.push({ name: name, polygon: points, mode: mode });
      save("zone", next, "Saved zone " + name + ".");
    });
    document.getElementById("zone-list").addEventListener("click", function (e) {
      var t = e.target;
      if (!t.classList || !t.classList.contains("zone-del")) { return; }
      var name = t.dataset.zone;
      var list = t.dataset.kind === "mask" ? masks : zones;
      save(t.dataset.kind === "mask" ? "mask" : "zone",
        list.filter(function (z) { return z.name !== name; }), "Deleted " + name + ".");
    });
  }
  draw();
}());
