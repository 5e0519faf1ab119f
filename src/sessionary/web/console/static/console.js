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

  // <ol data-events="url">: a run's events as they arrive (EventSource, which resumes with
  // Last-Event-ID after a cut), each as its type, cursor and data. A `status` or `end`
  // event updates [data-run-status]; `end` closes the stream, takes the cancel form
  // ([data-while-active]) away and refreshes [data-refresh-on-end] from the page as the
  // server now renders it (its times, duration and result: the API's numbers, not ours).
  // EventSource hears only the types it listens for: these are the runs feature's own, a
  // producer's default (chunk), and unnamed messages.
  const EVENT_TYPES = ["status", "chunk", "retry", "reset", "end", "message"];

  function follow(list) {
    const state = document.querySelector("[data-events-state]");
    const say = (text) => { if (state) state.textContent = text; };
    function showStatus(value) {
      const status = document.querySelector("[data-run-status]");
      if (!status || typeof value !== "string") return;
      status.textContent = value;
      status.className = `status ${value}`;
    }
    function show(event) {
      const item = document.createElement("li");
      item.dataset.type = event.type;
      const type = document.createElement("strong");
      type.textContent = event.type;
      const cursor = document.createElement("small");
      cursor.textContent = event.lastEventId ? ` ${event.lastEventId} ` : " ";
      const data = document.createElement("code");
      data.textContent = event.data;
      item.append(type, cursor, data);
      list.append(item);
      list.scrollTop = list.scrollHeight;
      let parsed = null;
      try { parsed = JSON.parse(event.data); } catch (error) { /* not JSON: shown as it is */ }
      return parsed;
    }
    async function refresh() {
      try {
        const response = await fetch(location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" });
        if (!response.ok) return;
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const old of document.querySelectorAll("[data-refresh-on-end][id]")) {
          const replacement = fresh.getElementById(old.id);
          if (replacement) {
            localTimes(replacement);
            old.replaceWith(document.adoptNode(replacement));
          }
        }
        list.dataset.refreshed = "true";
      } catch (error) { /* offline a moment: a reload shows the same */ }
    }
    const source = new EventSource(list.dataset.events);
    list.consoleSource = source;
    source.addEventListener("open", () => say("Following the run's events live."));
    for (const name of EVENT_TYPES) {
      source.addEventListener(name, (event) => {
        const data = show(event);
        if ((name === "status" || name === "end") && data) showStatus(data.status);
        if (name === "end") {
          source.close();
          for (const form of document.querySelectorAll("[data-while-active]")) form.hidden = true;
          say(`The run ended: ${data && data.status ? data.status : "done"}.`);
          list.dataset.ended = "true";
          refresh();
        }
      });
    }
    source.addEventListener("error", (event) => {
      if (event.data !== undefined) {  // the server's own `error`: the store stopped answering
        show(event);
        say("The store stopped answering: reconnecting…");
      } else if (source.readyState === EventSource.CLOSED) {
        if (list.dataset.ended !== "true") say("The event stream is closed: reload the page to follow again.");
      } else {
        say("The connection was cut: reconnecting…");
      }
    });
  }

  // <div data-chart="<id of a JSON script>">: the sessions (and bounces) per bucket, as
  // /stats gives them ({start, sessions, bounces}), drawn with uPlot in UTC; each chart is
  // kept in sessionaryConsole.charts by its element's id.
  const charts = {};
  function drawCharts(root) {
    if (!window.uPlot) return;
    for (const el of root.querySelectorAll("[data-chart]")) {
      const buckets = JSON.parse(document.getElementById(el.dataset.chart).textContent);
      const data = [
        buckets.map((b) => b.start / 1000),
        buckets.map((b) => b.sessions),
        buckets.map((b) => b.bounces),
      ];
      const size = () => ({ width: Math.max(200, el.clientWidth), height: 260 });
      const chart = new uPlot({
        ...size(),
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
        series: [
          {},
          { label: "Sessions", stroke: "#0b5cad", width: 2, fill: "rgba(11, 92, 173, 0.08)", points: { show: buckets.length < 60 } },
          { label: "Bounces", stroke: "#b42318", width: 1.5, points: { show: buckets.length < 60 } },
        ],
      }, data, el);
      charts[el.id] = chart;
      new ResizeObserver(() => chart.setSize(size())).observe(el);
    }
  }

  window.sessionaryConsole = { localTimes, charts };

  document.addEventListener("DOMContentLoaded", () => {
    localTimes(document);
    confirmations(document);
    for (const el of document.querySelectorAll("[data-poll]")) poll(el);
    drawCharts(document);
    for (const el of document.querySelectorAll("ol[data-events]")) follow(el);
    document.dispatchEvent(new CustomEvent("console:ready"));
  });
})();
