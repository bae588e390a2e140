// Report forms (web/reporting.rs): early checks while typing, so a mistake shows next to its field
// before the form is sent. Progressive enhancement only: the server checks every submission with
// the dataset's validator and shows its messages without this file; nothing here blocks sending.
// The messages come translated from the form's data-msg-* attributes.
(function () {
  "use strict";
  var form = document.querySelector("form[data-report-form]");
  if (!form) return;
  function msg(name) { return form.getAttribute("data-msg-" + name) || ""; }
  function problem(input) {
    var v = input.value.trim();
    if (v === "") return input.required ? msg("required") : "";
    var kind = input.getAttribute("data-kind");
    if (kind === "integer" || kind === "decimal") {
      var t = kind === "decimal" && v.indexOf(".") < 0 && v.split(",").length === 2 ? v.replace(",", ".") : v;
      var ok = kind === "integer" ? /^[-+]?\d+$/.test(t) : /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t);
      if (!ok) return msg(kind === "integer" ? "integer" : "number");
      var n = Number(t);
      var min = input.getAttribute("data-min");
      var max = input.getAttribute("data-max");
      if (min !== null && n < Number(min)) return msg("min") + " " + min + ".";
      if (max !== null && n > Number(max)) return msg("max") + " " + max + ".";
    }
    return "";
  }
  function show(input) {
    var id = input.id + "-early";
    var old = document.getElementById(id);
    var text = problem(input);
    var described = (input.getAttribute("aria-describedby") || "").split(" ").filter(function (x) { return x && x !== id; });
    if (old) old.parentNode.removeChild(old);
    if (text) {
      var span = document.createElement("span");
      span.className = "field-error";
      span.id = id;
      span.textContent = text;
      input.parentNode.insertBefore(span, input);
      described.push(id);
      input.setAttribute("aria-invalid", "true");
    } else if (!document.getElementById(input.id + "-error")) {
      input.removeAttribute("aria-invalid");
    }
    if (described.length) input.setAttribute("aria-describedby", described.join(" "));
    else input.removeAttribute("aria-describedby");
  }
  Array.prototype.forEach.call(form.querySelectorAll("input[data-kind], input[required], select[required]"), function (input) {
    input.addEventListener("change", function () { show(input); });
  });
})();
