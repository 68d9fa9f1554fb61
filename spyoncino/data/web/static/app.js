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

  function eventItem(ev) {
    var li = el("li");
    li.dataset.event = ev.id;
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
    a.appendChild(el("b", "", (ev.labels || []).join(", ") || ev.kind));
    a.appendChild(document.createTextNode(" "));
    a.appendChild(el("time", "", when(ev.started_at)));
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
      var a = el("a", "", ((ev.labels || []).join(", ") || ev.kind) + " · " + when(ev.started_at));
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
    source.addEventListener("state", function (m) { showState(JSON.parse(m.data)); });
    source.addEventListener("event", function (m) { showEvent(JSON.parse(m.data)); });
    source.addEventListener("health", function (m) { showHealth(JSON.parse(m.data)); });
  }

  // The health page is a snapshot of reports that change every few seconds: keep it fresh.
  if (body.dataset.page === "health") {
    setTimeout(function () { window.location.reload(); }, 10000);
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
