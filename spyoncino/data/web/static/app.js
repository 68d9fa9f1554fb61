// Spyoncino status page: live updates over server-sent events, snapshot refresh and
// command buttons without a reload. The pages work without this file.
"use strict";
(function () {
  var body = document.body;
  var csrf = body.dataset.csrf || "";
  var refresh = Math.max(0.5, parseFloat(body.dataset.refresh || "3")) * 1000;

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function when(ts) {
    if (!ts) { return "-"; }
    var d = new Date(ts * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  // Snapshots: load the next image off-screen and swap it in, so a slow reply never blanks a card.
  function refreshSnaps() {
    var imgs = document.querySelectorAll("img.snap");
    Array.prototype.forEach.call(imgs, function (img) {
      var base = img.getAttribute("src").split("&t=")[0];
      var next = new Image();
      next.onload = function () { img.src = next.src; };
      next.src = base + "&t=" + Date.now();
    });
  }
  if (document.querySelector("img.snap")) {
    Array.prototype.forEach.call(document.querySelectorAll("img.snap"), function (img) {
      img.addEventListener("error", function () {
        setTimeout(function () {
          img.src = img.getAttribute("src").split("&t=")[0] + "&t=" + Date.now();
        }, 1500);
      });
    });
    setInterval(refreshSnaps, refresh);
  }

  function showState(s) {
    var badge = document.getElementById("armed-state");
    if (!badge || !s) { return; }
    badge.textContent = s.armed ? "armed" : "disarmed";
    badge.className = "badge " + (s.armed ? "armed" : "disarmed");
    var muted = document.getElementById("muted");
    if (muted) {
      var keys = Object.keys(s.muted_until || {});
      muted.textContent = keys.length ? "muted: " + keys.sort().join(", ") : "";
    }
  }

  // "2 people, 1 car": an activity's objects counted by label, people first
  function summary(ev) {
    var objs = ev.objects || [];
    if (!objs.length) { return (ev.labels || []).join(", ") || ev.kind; }
    var counts = {}, order = [];
    objs.forEach(function (o) {
      if (!(o.label in counts)) { counts[o.label] = 0; order.push(o.label); }
      counts[o.label] += 1;
    });
    order.sort(function (a, b) { return (a !== "person") - (b !== "person"); });
    return order.map(function (l) {
      var n = counts[l];
      return n + " " + (n === 1 ? l : (l === "person" ? "people" : l === "bus" ? "buses" : l + "s"));
    }).join(", ");
  }

  function eventItem(ev) {
    var li = el("li");
    li.dataset.event = ev.id;
    li.dataset.severity = ev.severity || "alert";
    var a = el("a");
    a.href = "/events/" + encodeURIComponent(ev.id);
    var art = (ev.artifacts || {}).thumbnail || (ev.artifacts || {}).snapshot;
    if (art) {
      var img = el("img", "thumb");
      img.alt = "";
      img.src = art.url;
      a.appendChild(img);
    } else {
      a.appendChild(el("span", "nothumb"));
    }
    a.appendChild(el("span", "cam", ev.camera_id));
    a.appendChild(document.createTextNode(" "));
    a.appendChild(el("b", "", summary(ev)));
    a.appendChild(document.createTextNode(" "));
    a.appendChild(el("time", "", when(ev.started_at)));
    a.appendChild(document.createTextNode(" "));
    var sev = ev.severity || "alert";
    a.appendChild(el("span", "severity severity-" + sev, sev));
    a.appendChild(document.createTextNode(" "));
    a.appendChild(el("span", "phase", ev.phase));
    li.appendChild(a);
    return li;
  }

  function matches(list, ev) {
    var f = {};
    try { f = JSON.parse(list.dataset.filter || "{}"); } catch (e) { f = {}; }
    if (f.camera && ev.camera_id !== f.camera) { return false; }
    if (f.label && (ev.labels || []).indexOf(f.label) < 0) { return false; }
    if (f.severity && (ev.severity || "alert") !== f.severity) { return false; }
    if (f.zone && (ev.zones || []).indexOf(f.zone) < 0) { return false; }
    if (f.day && when(ev.started_at).slice(0, 10) !== f.day) { return false; }
    return true;
  }

  function showEvent(ev) {
    ["recent", "events"].forEach(function (id) {
      var list = document.getElementById(id);
      if (!list || !matches(list, ev)) { return; }
      var old = list.querySelector('li[data-event="' + CSS.escape(ev.id) + '"]');
      var item = eventItem(ev);
      if (old) { list.replaceChild(item, old); } else { list.insertBefore(item, list.firstChild); }
      var none = document.getElementById("no-events");
      if (none) { none.remove(); }
    });
    var card = document.querySelector('article.camera[data-camera="' + CSS.escape(ev.camera_id) + '"] .last-event');
    if (card) {
      card.textContent = "";
      var a = el("a", "", summary(ev) + " · " + when(ev.started_at));
      a.href = "/events/" + encodeURIComponent(ev.id);
      card.appendChild(a);
    }
  }

  function showHealth(h) {
    (h.cameras || []).forEach(function (c) {
      var card = document.querySelector('article.camera[data-camera="' + CSS.escape(c.id) + '"]');
      if (!card) { return; }
      var st = card.querySelector(".state");
      if (st) { st.textContent = c.state; st.className = "state " + c.state; }
      var fps = card.querySelector(".fps");
      if (fps) { fps.textContent = c.fps === null ? "-" : c.fps.toFixed(1); }
    });
  }

  if (window.EventSource && body.dataset.page !== "login") {
    var source = new EventSource("/api/stream");
    window.spyoncinoStream = source;
    source.addEventListener("state", function (m) { showState(JSON.parse(m.data)); });
    source.addEventListener("event", function (m) { showEvent(JSON.parse(m.data)); });
    source.addEventListener("health", function (m) { showHealth(JSON.parse(m.data)); });
  }

  // The health page is a snapshot of reports that change every few seconds: keep it fresh.
  // The details fold stays as the user left it across those reloads.
  if (body.dataset.page === "health") {
    var fold = document.getElementById("health-details");
    var store = null;
    try { store = window.sessionStorage; } catch (e) { store = null; }
    if (fold && store && store.getItem("health-details") === "open") { fold.open = true; }
    setTimeout(function () {
      if (fold && store) { store.setItem("health-details", fold.open ? "open" : ""); }
      window.location.reload();
    }, 10000);
  }

  // Command buttons: POST with the CSRF header, show the new state without a reload.
  Array.prototype.forEach.call(document.querySelectorAll("form.js-command"), function (form) {
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
        body: "{}"
      }).then(function (r) { return r.json(); }).then(function (j) {
        if (j.state) { showState(j.state); }
        if (j.image) { refreshSnaps(); }
      });
    });
  });
}());

// Live view: draw what motion and the detector saw over the MJPEG picture (boxes events come
// at most 5 a second per camera; a kind not heard of for 1.5 s is cleared).
(function () {
  var stage = document.getElementById("live-stage");
  var svg = document.getElementById("live-boxes");
  if (!stage || !svg || !window.spyoncinoStream) { return; }
  var NS = "http://www.w3.org/2000/svg";
  var layers = {};
  function layer(kind) {
    if (!layers[kind]) {
      var g = document.createElementNS(NS, "g");
      g.setAttribute("class", kind);
      svg.appendChild(g);
      layers[kind] = { g: g, timer: null };
    }
    return layers[kind];
  }
  window.spyoncinoStream.addEventListener("boxes", function (m) {
    var b = JSON.parse(m.data);
    if (b.camera_id !== stage.dataset.camera) { return; }
    svg.setAttribute("viewBox", "0 0 " + b.w + " " + b.h);
    var l = layer(b.kind);
    while (l.g.firstChild) { l.g.removeChild(l.g.firstChild); }
    b.boxes.forEach(function (r, i) {
      var rect = document.createElementNS(NS, "rect");
      rect.setAttribute("x", r[0]); rect.setAttribute("y", r[1]);
      rect.setAttribute("width", r[2] - r[0]); rect.setAttribute("height", r[3] - r[1]);
      l.g.appendChild(rect);
      if (b.labels[i]) {
        var t = document.createElementNS(NS, "text");
        t.setAttribute("x", r[0] + 3); t.setAttribute("y", Math.max(14, r[1] - 4));
        t.textContent = b.labels[i];
        l.g.appendChild(t);
      }
    });
    clearTimeout(l.timer);
    l.timer = setTimeout(function () {
      while (l.g.firstChild) { l.g.removeChild(l.g.firstChild); }
    }, 1500);
  });
}());
