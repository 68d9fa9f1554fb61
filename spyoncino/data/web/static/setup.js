// The first-run page: pick a found camera or type a source, grab a test frame, save.
"use strict";
(function () {
  var form = document.getElementById("setup-form");
  if (!form) { return; }
  var csrf = document.body.dataset.csrf || "";
  var source = document.getElementById("setup-source");
  var result = document.getElementById("setup-result");
  var frame = document.getElementById("setup-frame");

  function say(text, bad) {
    result.textContent = text;
    result.className = bad ? "error" : "ok";
  }
  function post(url, data) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
      body: JSON.stringify(data)
    }).then(function (r) {
      return r.json().catch(function () { return { ok: false, message: "HTTP " + r.status }; });
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll("button.pick"), function (b) {
    b.addEventListener("click", function () {
      source.value = b.dataset.source;
      document.getElementById("setup-id").value = b.dataset.name || "cam1";
    });
  });
  document.getElementById("setup-test").addEventListener("click", function () {
    say("Opening " + source.value + " ...", false);
    frame.hidden = true;
    post("/api/setup/probe", { source: source.value }).then(function (j) {
      say(j.message || j.error || "?", !j.ok);
      if (j.ok) { frame.src = j.image; frame.hidden = false; }
    });
  });
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    say("Saving ...", false);
    post("/api/setup/camera", {
      source: source.value,
      camera_id: document.getElementById("setup-id").value,
      name: document.getElementById("setup-name").value
    }).then(function (j) {
      if (j.ok) {
        say("Saved. The camera is starting.", false);
        setTimeout(function () { window.location.href = "/"; }, 800);
      } else {
        say("Not saved: " + ((j.errors || []).map(function (x) {
          return x.key + ": " + x.error;
        }).join("; ") || j.reason || j.error || j.message), true);
      }
    });
  });
}());
