// sessionary console: the little a page needs beyond HTML. Every page works without it;
// with it, times show in the reader's zone, live numbers refresh, forms that destroy ask
// first, a run's events arrive as they happen and charts are drawn (uPlot).
"use strict";

(function () {
  const local = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

  function localTimes(root) {
    for (const el of root.querySelectorAll("time[data-ms]")) {
      const ms = Number(el.dataset.ms);
      if (Number.isFinite(ms) && ms > 0) {
        const date = new Date(ms);
        el.dateTime = date.toISOString();
        el.title = date.toISOString();
        el.textContent = local.format(date);
      }
    }
  }

  // <el data-poll="url" data-every="5">: every N s, each [data-field=key] inside gets the
  // JSON answer's value at that key (a dotted path); the last answer is kept on the element
  // (el.consoleData) for whoever reads it.
  function poll(el) {
    const every = Math.max(1, Number(el.dataset.every || 5)) * 1000;
    async function once() {
      try {
        const response = await fetch(el.dataset.poll, { headers: { Accept: "application/json" }, credentials: "same-origin" });
        if (response.ok) {
          const data = await response.json();
          el.consoleData = data;
          for (const field of el.querySelectorAll("[data-field]")) {
            let value = data;
            for (const part of field.dataset.field.split(".")) value = value == null ? undefined : value[part];
            if (value !== undefined) field.textContent = String(value);
          }
          el.dataset.polled = String(Date.now());
        }
      } catch (error) { /* offline a moment: the next round tries again */ }
      setTimeout(once, every);
    }
    setTimeout(once, every);
  }

  function confirmations(root) {
    for (const form of root.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    }
  }

  window.sessionaryConsole = { localTimes };

  document.addEventListener("DOMContentLoaded", () => {
    localTimes(document);
    confirmations(document);
    for (const el of document.querySelectorAll("[data-poll]")) poll(el);
    document.dispatchEvent(new CustomEvent("console:ready"));
  });
})();
