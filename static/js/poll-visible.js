// Polling panels (hx-trigger="every 2s", or "load, every 30s") ask the server only while
// the tab is visible.
// htmx's own way, hx-trigger="every 2s [document.visibilityState === 'visible']", compiles
// the filter with eval, which our Content-Security-Policy (script-src 'self') forbids: htmx
// then drops the filter and polls hidden tabs too.
document.addEventListener("htmx:beforeRequest", function (event) {
  var trigger = event.detail.elt.getAttribute("hx-trigger") || "";
  if (document.visibilityState !== "visible" && /(^|,\s*)every /.test(trigger)) {
    event.preventDefault();
  }
});
