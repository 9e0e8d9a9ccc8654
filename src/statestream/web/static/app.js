// statestream web UI: live updates by polling the JSON API (no inline scripts; text only
// through textContent, never innerHTML).
"use strict";
(function () {
  var EVERY = 3000;

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); });
  }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    if (text instanceof Node) { td.appendChild(text); } else { td.textContent = text; }
    row.appendChild(td);
    return td;
  }

  function badge(run) {
    var span = document.createElement("span");
    span.className = "state " + run.run_state_key;
    span.textContent = run.run_state;
    return span;
  }

  function liveRuns() {
    var table = document.querySelector("table.runs");
    if (!table || !table.dataset.api) { return; }
    var base = table.dataset.runUrl;
    function refresh() {
      getJSON(table.dataset.api).then(function (data) {
        var body = document.createElement("tbody");
        data.runs.forEach(function (run) {
          var tr = document.createElement("tr");
          var a = document.createElement("a");
          a.href = base + encodeURIComponent(run.run_id);
          a.textContent = run.run_id;
          cell(tr, a, "mono");
          cell(tr, run.foreign_id);
          cell(tr, run.status_name);
          cell(tr, badge(run));
          cell(tr, String(run.version));
          cell(tr, run.created_at);
          cell(tr, run.updated_at);
          body.appendChild(tr);
        });
        if (!data.runs.length && !data.partial) {
          var tr = document.createElement("tr");
          tr.className = "empty";
          cell(tr, "No runs match.").colSpan = 7;
          body.appendChild(tr);
        }
        table.replaceChild(body, table.tBodies[0]);
        var hint = document.querySelector("p.partial");
        if (hint) { hint.hidden = !data.partial; }
      }).catch(function () {});
    }
    setInterval(refresh, EVERY);
  }

  function liveRun() {
    var root = document.getElementById("run");
    if (!root) { return; }
    function refresh() {
      getJSON(root.dataset.api).then(function (run) {
        root.querySelectorAll("[data-field]").forEach(function (dd) {
          var key = dd.dataset.field;
          if (key === "run_state") {
            dd.replaceChildren(badge(run));
          } else if (key in run) {
            dd.textContent = run[key] === "" ? "\u2014" : String(run[key]);
          }
        });
        root.querySelectorAll("[data-action]").forEach(function (a) {
          a.hidden = run.actions.indexOf(a.dataset.action) < 0;
        });
      }).catch(function () {});
    }
    setInterval(refresh, EVERY);
  }

  function liveGraph() {
    var el = document.getElementById("graph");
    if (!el || !window.mermaid) { return; }
    var source = el.textContent;
    window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral" });
    function draw() {
      el.removeAttribute("data-processed");
      el.textContent = source;
      return window.mermaid.run({ nodes: [el] }).then(function () {
        el.classList.add("drawn");
      });
    }
    draw();
    setInterval(function () {
      getJSON(el.dataset.api).then(function (data) {
        Object.keys(data.counts).forEach(function (status) {
          var td = document.querySelector('[data-count="' + status.replace(/[^0-9-]/g, "") + '"] a');
          if (td) { td.textContent = data.counts[status].toLocaleString("en"); }
        });
        if (data.mermaid !== source) { source = data.mermaid; draw(); }
      }).catch(function () {});
    }, EVERY);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.body.dataset.live;
    if (live === "runs") { liveRuns(); }
    if (live === "run") { liveRun(); }
    if (live === "graph") { liveGraph(); }
  });
})();
