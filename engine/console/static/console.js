/* flowrunner console: confirmations and live updates. No framework, no build step.
 * Every page works without this script; it only adds:
 *  - a confirm() before posting a form with data-confirm;
 *  - [data-poll] lists (runs, inbox) re-fetched from the page's own URL when the feed of
 *    run changes (/v1/events) says a run changed;
 *  - on a run's and a step's page, the run's event stream (/v1/runs/{id}/events):
 *    node statuses updated in batches, agent replies streamed, panels refreshed. */
(function () {
  "use strict";

  var STATUS_OF = {
    step_started: "running", step_completed: "completed", step_failed: "failed",
    step_retrying: "pending", step_waiting: "waiting", step_skipped: "skipped",
    step_excluded: "excluded", step_cancelled: "cancelled", step_released: "pending"
  };
  var RUN_EVENTS = ["run_started", "run_completed", "run_failed", "run_cancelled", "run_retried"];
  var OTHER_EVENTS = ["gate_decided", "lease_expired"];

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  function fetchPage(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; });
  }

  /* Replace each element matching selector (by id) with its copy in the fetched page. */
  function swap(html, selector) {
    if (!html) { return; }
    var fresh = new DOMParser().parseFromString(html, "text/html");
    document.querySelectorAll(selector).forEach(function (element) {
      var copy = element.id && fresh.getElementById(element.id);
      if (copy) { element.replaceWith(document.importNode(copy, true)); }
    });
  }

  /* Lists (runs, inbox): re-fetched when the feed of run changes (/v1/events) says a run
   * changed, at most twice a second, and every data-poll ms anyway (a safety net). */
  function poll() {
    var first = document.querySelector("[data-poll]");
    if (!first) { return; }
    var every = parseInt(first.getAttribute("data-poll"), 10) || 15000;
    var busy = false;
    function refresh() {
      if (document.hidden || busy) { return; }
      busy = true;
      fetchPage(window.location.href)
        .then(function (html) { swap(html, "[data-poll]"); })
        .catch(function () { /* the next change or round tries again */ })
        .then(function () { busy = false; });
    }
    var soon = throttled(refresh, 500);
    var feed = new EventSource("/v1/events");
    feed.addEventListener("run", soon);
    feed.addEventListener("reset", soon);
    window.setInterval(refresh, every);
  }

  /* Call fn at most once per `wait` ms, after the last call (trailing). */
  function throttled(fn, wait) {
    var timer = null;
    return function () {
      if (timer !== null) { return; }
      timer = window.setTimeout(function () { timer = null; fn(); }, wait);
    };
  }

  function follow(runId, after, handlers) {
    var url = "/v1/runs/" + encodeURIComponent(runId) + "/events?after=" + encodeURIComponent(after);
    var source = new EventSource(url);
    Object.keys(STATUS_OF).concat(RUN_EVENTS, OTHER_EVENTS).forEach(function (name) {
      source.addEventListener(name, function (message) { handlers.event(JSON.parse(message.data)); });
    });
    source.addEventListener("delta", function (message) {
      if (handlers.delta) { handlers.delta(JSON.parse(message.data)); }
    });
    source.addEventListener("prompt", function (message) {
      if (handlers.prompt) { handlers.prompt(JSON.parse(message.data)); }
    });
    source.addEventListener("end", function () {
      source.close();
      if (handlers.end) { handlers.end(); }
    });
    return source;
  }

  function setStatus(element, status) {
    var badge = document.createElement("span");
    badge.className = "status st-" + status;
    badge.textContent = status;
    element.replaceChildren(badge);
  }

  function runPage(root) {
    var pending = new Map();
    var scheduled = false;
    var refresh = throttled(function () {
      fetchPage(window.location.href).then(function (html) { swap(html, "[data-swap]"); });
    }, 300);
    var refreshSteps = throttled(refresh, 3000);

    function flush() {
      scheduled = false;
      pending.forEach(function (status, step) {
        var node = root.querySelector('svg .node[data-step="' + CSS.escape(step) + '"]');
        if (node) {
          node.setAttribute("class", node.getAttribute("class").replace(/\sst-[a-z]+/g, "") + " st-" + status);
          var state = node.querySelector("text.state");
          if (state) { state.textContent = status; }
          var title = node.querySelector("title");
          if (title) { title.textContent = title.textContent.replace(/(: [a-z]+)?$/, ": " + status); }
        }
        var cell = root.querySelector('[data-step-status="' + CSS.escape(step) + '"]');
        if (cell) { setStatus(cell, status); }
      });
      pending.clear();
    }

    follow(root.dataset.run, root.dataset.after, {
      event: function (event) {
        if (event.event === "run_retried") { window.location.reload(); return; }
        var status = STATUS_OF[event.event];
        if (status && event.step_id) {
          pending.set(event.step_id, status);
          if (!scheduled) { scheduled = true; window.requestAnimationFrame(flush); }
          refreshSteps();
        } else {
          refresh();
        }
      },
      end: refresh
    });
  }

  function stepPage(root) {
    var stepId = root.dataset.step;
    var reply = document.getElementById("reply");
    var prompt = document.getElementById("prompt");
    var promptNone = document.getElementById("prompt-none");
    var buffered = "";
    var gate = root.querySelector("form[data-gate]");
    var reload = throttled(function () {
      if (gate) {
        if (document.getElementById("changed")) { return; }
        var note = document.createElement("p");
        note.id = "changed";
        note.className = "notice";
        note.setAttribute("role", "status");
        note.textContent = "This step changed since the page was loaded (decided by someone else?). ";
        var link = document.createElement("a");
        link.href = window.location.pathname;
        link.textContent = "Reload to see it";
        note.appendChild(link);
        gate.parentNode.insertBefore(note, gate);
      } else {
        window.location.reload();
      }
    }, 500);

    follow(root.dataset.run, root.dataset.after, {
      event: function (event) {
        if (event.step_id === stepId || event.event === "run_retried") { reload(); }
      },
      prompt: function (frame) {
        if (!prompt || frame.step_id !== stepId) { return; }
        prompt.textContent = frame.text;  /* the composed prompt of the attempt running */
        prompt.hidden = false;
        if (promptNone) { promptNone.hidden = true; }
      },
      delta: function (frame) {
        if (!reply || frame.step_id !== stepId) { return; }
        if (!buffered) {
          window.requestAnimationFrame(function () {
            reply.appendChild(document.createTextNode(buffered));
            buffered = "";
          });
        }
        buffered += frame.text;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    poll();
    var run = document.getElementById("run");
    if (run && run.dataset.live === "true") { runPage(run); }
    var step = document.getElementById("step");
    if (step && step.dataset.live === "true") { stepPage(step); }
  });
}());
