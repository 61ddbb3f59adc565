// sf-bridge console: keeps the parts marked data-live up to date without reloading the page.
// Every few seconds it fetches the part's fragment and swaps it in when it changed; it pauses
// while the tab is hidden and stops when the session has ended.
(function () {
  "use strict";
  var INTERVAL_MS = 2000;

  function watch(element) {
    var url = element.getAttribute("data-live");
    var busy = false;
    var timer = null;

    function refresh() {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.status === 401) {
            window.clearInterval(timer);
            element.insertAdjacentHTML("beforebegin",
              '<p class="problem">Your session ended: sign in again to see live updates.</p>');
            return null;
          }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (html !== null && html !== undefined && html !== element.innerHTML) {
            element.innerHTML = html;
            element.setAttribute("data-refreshed", String(Date.now()));
          }
        })
        .catch(function () { /* the next round tries again */ })
        .then(function () { busy = false; });
    }

    timer = window.setInterval(refresh, INTERVAL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var parts = document.querySelectorAll("[data-live]");
    for (var i = 0; i < parts.length; i += 1) { watch(parts[i]); }
  });
})();
