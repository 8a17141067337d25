// Live updates: a part of the page marked data-live (the incident queue,
// the event stream) listens on its server-sent events; when something
// opens or changes, it fetches its rows again (same filter) and puts them
// in place. Without this script the pages still work; reload them.
"use strict";
(function () {
  var part = document.querySelector("[data-live]");
  if (!part || !window.EventSource || !window.fetch) {
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
        part.replaceChildren.apply(part, Array.from(parsed.body.childNodes));
        part.dataset.updated = String(Date.now());
      })
      .catch(function () {});
  }
  var source = new EventSource(part.dataset.live);
  source.addEventListener("change", function () {
    if (pending === null) {
      pending = window.setTimeout(refresh, 150);
    }
  });
})();
