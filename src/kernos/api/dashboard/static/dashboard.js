// kernos dashboard: live updates and paging on top of pages that work without this script.
// No framework, no build step. Every request goes to this origin with the session cookie.
"use strict";

(function () {
  const POLL_RUNS = 3000;
  const POLL_PROVIDERS = 5000;

  function get(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } }).then((r) => {
      if (r.status === 401) {
        window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
        throw new Error("signed out");
      }
      if (!r.ok) throw new Error(url + ": " + r.status);
      return r;
    });
  }

  // Times in the viewer's own zone.
  function localTimes(root) {
    for (const t of root.querySelectorAll("time[datetime]")) {
      const d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) {
        t.title = t.textContent;
        t.textContent = d.toLocaleString();
      }
    }
  }

  // A short poll of a fragment that replaces an element's content, while the tab is visible.
  function poll(el, every) {
    const url = el.dataset.live;
    let busy = false;
    setInterval(() => {
      if (busy || document.hidden) return;
      if (el.contains(document.activeElement) && document.activeElement !== document.body) return;
      busy = true;
      get(url)
        .then((r) => r.text())
        .then((html) => {
          el.innerHTML = html;
          localTimes(el);
          el.dataset.refreshed = String(Date.now());
        })
        .catch(() => {})
        .finally(() => (busy = false));
    }, every);
  }

  // Forms that ask first (cancel).
  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      e.preventDefault();
    }
  });

  // -- a run's timeline ------------------------------------------------------------------

  function Timeline(table) {
    this.table = table;
    this.body = document.getElementById("timeline-rows");
    this.run = table.dataset.run;
    // the time axis: the run's whole life as the server saw it; it grows only if rows of a
    // live run go past it, and then every row's bar is redrawn to the new scale
    this.span = parseFloat(table.dataset.span) || 0.001;
    this.loading = false;
    this.more = document.getElementById("more");
    this.progress = document.getElementById("progress");
    this.stepStart = {};
    this.noteRows(Array.from(this.body.children));
  }

  Timeline.prototype.lastSeq = function () {
    const last = this.body.lastElementChild;
    return last ? parseInt(last.dataset.seq, 10) : 0;
  };

  Timeline.prototype.complete = function () {
    return !this.table.dataset.next;
  };

  // Waits that began on an earlier page, and a time axis long enough for every bar.
  Timeline.prototype.noteRows = function (rows) {
    let span = this.span;
    for (const row of rows) {
      const step = row.dataset.step;
      const start = parseFloat(row.dataset.start);
      if (step && !(step in this.stepStart)) this.stepStart[step] = start;
      if (row.dataset.openWait && step in this.stepStart) {
        const began = this.stepStart[step];
        const rect = row.querySelector("rect.w");
        if (rect) {
          rect.setAttribute("x", String(began));
          rect.setAttribute("width", String(Math.max(0, start - began)));
        }
      }
      span = Math.max(span, parseFloat(row.dataset.end) || 0);
    }
    const grew = span > this.span * 1.0001;
    if (grew) this.span = this.table.dataset.live === "yes" ? span * 1.2 : span;
    const box = "0 0 " + this.span + " 10";
    for (const row of grew ? this.body.children : rows) {
      const svg = row.querySelector("svg.bar");
      if (svg && svg.getAttribute("viewBox") !== box) svg.setAttribute("viewBox", box);
    }
  };

  Timeline.prototype.append = function (html, next) {
    const parsed = document.createElement("template");
    parsed.innerHTML = html;
    const rows = Array.from(parsed.content.children);
    this.noteRows(rows);
    localTimes(parsed.content);
    this.body.append(parsed.content);
    this.table.dataset.next = next;
    if (this.more) this.more.hidden = !next;
    if (this.progress) this.progress.textContent = this.body.childElementCount + " events shown";
  };

  Timeline.prototype.fetchAfter = function (after) {
    if (this.loading) return Promise.resolve();
    this.loading = true;
    const url = "/fragments/runs/" + encodeURIComponent(this.run) + "/timeline?after=" + after;
    return get(url)
      .then((r) => r.text().then((html) => this.append(html, r.headers.get("X-Next") || "")))
      .finally(() => (this.loading = false));
  };

  Timeline.prototype.loadMore = function () {
    if (this.complete()) return Promise.resolve();
    return this.fetchAfter(this.table.dataset.next);
  };

  Timeline.prototype.catchUp = function () {
    // new events at the end: only once every earlier page is shown, so no gap opens
    if (!this.complete()) return Promise.resolve();
    return this.fetchAfter(this.lastSeq());
  };

  function toggles(table) {
    const key = "kernos.timeline.hidden";
    let hidden = [];
    try {
      hidden = JSON.parse(localStorage.getItem(key) || '["noise"]');
    } catch (e) {
      hidden = ["noise"];
    }
    for (const box of document.querySelectorAll("input[data-cat]")) {
      const cat = box.dataset.cat;
      box.checked = hidden.indexOf(cat) < 0;
      table.classList.toggle("hide-" + cat, !box.checked);
      box.addEventListener("change", () => {
        table.classList.toggle("hide-" + cat, !box.checked);
        hidden = Array.from(document.querySelectorAll("input[data-cat]"))
          .filter((b) => !b.checked)
          .map((b) => b.dataset.cat);
        localStorage.setItem(key, JSON.stringify(hidden));
      });
    }
  }

  function runPage() {
    const table = document.getElementById("timeline");
    if (!table) return;
    const timeline = new Timeline(table);
    toggles(table);
    if (timeline.more) {
      timeline.more.addEventListener("click", (e) => {
        e.preventDefault();
        timeline.loadMore();
      });
      // the next page arrives as the person scrolls near the end
      new IntersectionObserver((entries) => {
        if (entries.some((e) => e.isIntersecting)) timeline.loadMore();
      }, { rootMargin: "600px" }).observe(timeline.more);
    }
    if (table.dataset.live !== "yes") return;
    const summary = document.getElementById("summary");
    let pending = null;
    function refresh() {
      pending = null;
      const url = summary.dataset.url;
      get(url)
        .then((r) => r.text())
        .then((html) => {
          const doc = new DOMParser().parseFromString(html, "text/html");
          const facts = doc.getElementById("facts");
          const actions = doc.getElementById("actions");
          const oldActions = document.getElementById("actions");
          if (facts) {
            document.getElementById("facts").replaceWith(facts);
            localTimes(facts);
            const count = facts.querySelector("#facts-count");
            const label = document.getElementById("event-count");
            if (count && label) label.textContent = count.textContent + " events";
          }
          const typing = oldActions && oldActions.contains(document.activeElement);
          if (actions && oldActions && actions.dataset.key !== oldActions.dataset.key && !typing) {
            oldActions.replaceWith(actions);
          }
        })
        .catch(() => {});
      timeline.catchUp().catch(() => {});
    }
    function soon() {
      if (!pending) pending = setTimeout(refresh, 150);
    }
    const source = new EventSource(
      "/live/runs/" + encodeURIComponent(timeline.run) + "?after=" + table.dataset.lastSeq
    );
    source.onmessage = soon;
    source.addEventListener("end", () => {
      source.close();
      table.dataset.live = "no";
      refresh();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    localTimes(document);
    const runs = document.getElementById("runs");
    if (runs && runs.dataset.live) poll(runs, POLL_RUNS);
    const health = document.getElementById("health");
    if (health && health.dataset.live) poll(health, POLL_PROVIDERS);
    runPage();
  });
})();
