// atomq dashboard: refreshes the live part of a page in place, and asks before destructive posts.
// No inline scripts anywhere (the Content-Security-Policy forbids them).
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.getAttribute("data-confirm"))) {
      event.preventDefault();
    }
  });

  var live = document.getElementById("live");
  var stamp = document.getElementById("updated");
  var pause = document.getElementById("pause");
  if (!live || !live.dataset.url) return;
  var every = Number(live.dataset.refresh || "0") * 1000;
  if (!(every > 0)) return;

  var paused = window.localStorage.getItem("atomq-paused") === "1";
  var busy = false;

  function show(text, stale) {
    if (!stamp) return;
    stamp.textContent = text;
    stamp.classList.toggle("stale", Boolean(stale));
  }

  function label() {
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", paused ? "true" : "false");
    if (paused) show("auto-refresh paused", false);
  }

  if (pause) {
    pause.hidden = false;
    label();
    pause.addEventListener("click", function () {
      paused = !paused;
      window.localStorage.setItem("atomq-paused", paused ? "1" : "0");
      label();
      if (!paused) refresh();
    });
  }

  function openSections() {
    var keys = [];
    live.querySelectorAll("details[data-key]").forEach(function (item) {
      keys.push([item.dataset.key, item.open]);
    });
    return keys;
  }

  function refresh() {
    if (paused || busy || document.hidden) return;
    busy = true;
    var kept = openSections();
    fetch(live.dataset.url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.status === 401) {
          window.location.reload();
          return null;
        }
        return response.text().then(function (html) {
          if (!response.ok) {
            var message = html.replace(/<[^>]*>/g, "").trim() || "HTTP " + response.status;
            throw new Error(message);
          }
          return html;
        });
      })
      .then(function (html) {
        if (html === null) return;
        // Do not swap the page under someone who is about to press a button.
        if (live.contains(document.activeElement) && document.activeElement.tagName === "BUTTON") return;
        live.innerHTML = html;
        kept.forEach(function (pair) {
          var item = live.querySelector('details[data-key="' + CSS.escape(pair[0]) + '"]');
          if (item) item.open = pair[1];
        });
        show("updated " + new Date().toLocaleTimeString(), false);
      })
      .catch(function (error) {
        show("not refreshed: " + error.message + " (showing older figures)", true);
      })
      .finally(function () {
        busy = false;
      });
  }

  if (!paused) show("updated " + new Date().toLocaleTimeString(), false);
  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refresh();
  });
})();
