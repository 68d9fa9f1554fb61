// A camera's day strip: a tap on a mark plays the event's clip (or shows its snapshot) here.
"use strict";
(function () {
  var strip = document.getElementById("timeline");
  if (!strip) { return; }
  var video = document.getElementById("timeline-clip");
  var snap = document.getElementById("timeline-snap");
  function play(mark, e) {
    var clip = mark.dataset.clip;
    var still = mark.dataset.snap;
    if (!clip && !still) { return; }  // nothing stored yet: follow the link
    e.preventDefault();
    Array.prototype.forEach.call(strip.querySelectorAll("a.mark.on"), function (m) {
      m.classList.remove("on");
    });
    mark.classList.add("on");
    if (clip) {
      snap.hidden = true;
      video.hidden = false;
      video.src = clip;
      video.play().catch(function () {});
    } else {
      video.hidden = true;
      video.pause();
      snap.hidden = false;
      snap.src = still;
    }
  }
  strip.addEventListener("click", function (e) {
    var t = e.target;
    while (t && t !== strip && !(t.classList && t.classList.contains("mark"))) { t = t.parentNode; }
    if (t && t !== strip) { play(t, e); }
  });
  var list = document.getElementById("timeline-list");
  if (list) {
    list.addEventListener("click", function (e) {
      var a = e.target.closest ? e.target.closest("a[data-event]") : null;
      if (!a) { return; }
      var mark = strip.querySelector('a.mark[data-event="' + CSS.escape(a.dataset.event) + '"]');
      if (mark) { play(mark, e); }
    });
  }
}());
