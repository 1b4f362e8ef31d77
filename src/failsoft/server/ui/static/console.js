// Live refresh: every 2 s, fetch this page's main section and swap it in.
// Pauses while the tab is hidden, a form field has focus or holds unsent text;
// a signed-out session (no fragment header in the answer) reloads the page to
// the sign-in.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  var busy = false;
  function typing() {
    var fields = live.querySelectorAll("input[type=text]");
    for (var i = 0; i < fields.length; i += 1) {
      if (fields[i].value !== "") { return true; }
    }
    return false;
  }
  function refresh() {
    if (busy || document.hidden || live.contains(document.activeElement) &&
        document.activeElement.tagName !== "BODY" && document.activeElement.tagName !== "BUTTON") {
      return;
    }
    if (typing()) { return; }
    busy = true;
    var url = new URL(window.location.href);
    url.searchParams.set("part", "main");
    fetch(url.toString(), { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {
        if (answer.ok && answer.headers.get("X-Failsoft-Fragment") === "1") {
          return answer.text().then(function (html) {
            live.innerHTML = html;
            var stamp = document.getElementById("refreshed");
            if (stamp) { stamp.textContent = new Date().toLocaleTimeString(); }
          });
        }
        if (answer.redirected || answer.status === 401) { window.location.reload(); }
      })
      .catch(function () { /* the gateway is away: try again at the next tick */ })
      .then(function () { busy = false; });
  }
  window.setInterval(refresh, 2000);
})();
