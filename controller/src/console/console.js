// Live updates of the incident queue: when the server says an incident
// opened or changed, fetch the queue's rows again (same filter) and put
// them in place. Without this script the page still works; reload it.
"use strict";
(function () {
  var queue = document.getElementById("queue");
  if (!queue || !window.EventSource || !window.fetch) {
    return;
  }
  var pending = null;
  function refresh() {
    pending = null;
    var query = new URLSearchParams(window.location.search);
    query.set("part", "rows");
    fetch(window.location.pathname + "?" + query.toString(), {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
    })
      .then(function (r) {
        return r.ok ? r.text() : Promise.reject(r.status);
      })
      .then(function (rows) {
        // Markup from the console itself, escaped on the server.
        var parsed = new DOMParser().parseFromString(rows, "text/html");
        queue.replaceChildren.apply(queue, Array.from(parsed.body.childNodes));
        queue.dataset.updated = String(Date.now());
      })
      .catch(function () {});
  }
  var source = new EventSource(queue.dataset.live);
  source.addEventListener("incident", function () {
    if (pending === null) {
      pending = window.setTimeout(refresh, 150);
    }
  });
})();
