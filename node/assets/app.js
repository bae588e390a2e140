// DTM pages: progressive enhancement only; every page works without this file.
// A region marked data-refresh="<seconds>" is reloaded in place from the same URL.
(function () {
  "use strict";
  var live = document.querySelector("[data-refresh]");
  if (live && window.fetch && window.DOMParser) {
    var seconds = Math.max(2, parseInt(live.getAttribute("data-refresh"), 10) || 5);
    setInterval(function () {
      if (document.hidden) return;
      fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok && !r.redirected ? r.text() : null; })
        .then(function (text) {
          if (!text) return;
          var fresh = new DOMParser().parseFromString(text, "text/html").querySelector("[data-refresh]");
          if (fresh) live.innerHTML = fresh.innerHTML;
        })
        .catch(function () {});
    }, seconds * 1000);
  }
  // A form error summary takes the focus, so that keyboard and screen-reader users hear it first.
  var summary = document.getElementById("error-summary");
  if (summary) summary.focus();
})();
