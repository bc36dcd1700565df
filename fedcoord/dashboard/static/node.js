// The node view: live overview from /api/stream; tasks, dead letters, history and the report on demand.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const { esc, num, pct, secs, tag, table } = FC;
  const ACTIVE = ["pending", "queued", "assigned", "in_progress", "handing_off"];
  const PRIOS = ["critical", "high", "medium", "low"];
  let role = "viewer", offset = 0, limit = 50, selected = null, lastTotals = "", lastActive = "", lastDead = "";
  FC.tokenBox();

  $("status-boxes").innerHTML = ACTIVE.map((s) => `<label><input type="checkbox" value="${s}"> ${s}</label>`).join(" ");
  const queueChart = FC.chart("queue-chart");
  const thChart = FC.chart("threshold-chart");
  const tpChart = FC.chart("throughput-chart");
  const same = FC.memo();  // what is unchanged since the last snapshot is not drawn again

  function render(o) {
    if (o.error) {  // the node is not serving (its store down, taken over, closing): say so
      $("state").textContent = o.state; $("state").className = "tag unhealthy";
      $("stale").textContent = `Node ${o.node_id} is ${o.state}: ${o.error}. The data below is from before.`;
      $("stale").className = "show";
      same("cards", null);  // (the state tag is drawn again when the node serves again)
      return;
    }
    if (!same("cards", [o.state, o.load, o.threshold, o.oldest_queued_age_s, o.totals.completed])) {
      $("state").textContent = o.state; $("state").className = "tag " + (o.state === "serving" ? "healthy" : "unknown");
      $("c-load").textContent = pct(o.load.ratio);
      $("c-threshold").textContent = pct(o.threshold);
      $("c-ready").textContent = num(o.load.ready);
      $("c-leased").textContent = num(o.load.leased) + " / " + num(o.load.slots);
      $("c-oldest").textContent = secs(o.oldest_queued_age_s);
      $("c-completed").textContent = num(o.totals.completed || 0);
    }
    if (!same("queues", o.queues)) queueChart.setOption({
      animation: false, grid: { left: 50, right: 50, top: 20, bottom: 30 }, tooltip: { trigger: "axis" },
      xAxis: { type: "category", data: o.queues.map((q) => q.priority) },
      yAxis: [{ type: "value", name: "tasks", minInterval: 1 }, { type: "value", name: "oldest s" }],
      series: [
        { name: "in line", type: "bar", data: o.queues.map((q) => q.depth), itemStyle: { color: "#2f6fb3" } },
        { name: "oldest waited (s)", type: "line", yAxisIndex: 1, data: o.queues.map((q) => q.oldest_age_s ?? 0), itemStyle: { color: "#e08a1e" } },
      ],
    });
    if (!same("lines", o.lines)) table($("lines"), [{ t: "capabilities" }, { t: "difficulty", num: 1 }, { t: "priority" }, { t: "in line", num: 1 }, { t: "oldest waited", num: 1 }, { t: "workers able", num: 1 }],
      o.lines.map((l) => `<tr><td>${esc(l.capabilities.join(", ") || "(none)")}</td><td class="num">${l.difficulty}</td><td>${esc(l.priority)}</td><td class="num">${num(l.depth)}</td><td class="num">${secs(l.oldest_age_s)}</td><td class="num ${l.takers ? "" : "err"}">${l.takers}</td></tr>`),
      "nothing in line");
    if (!same("types", o.types)) table($("types"), [{ t: "type" }, { t: "active tasks", num: 1 }],
      Object.entries(o.types).map(([k, v]) => `<tr><td>${esc(k)}</td><td class="num">${num(v)}</td></tr>`), "no active tasks");
    if (!same("workers", o.workers)) table($("workers"), [{ t: "worker" }, { t: "health" }, { t: "skill", num: 1 }, { t: "capabilities" }, { t: "load", num: 1 }, { t: "active", num: 1 }, { t: "completed", num: 1 }, { t: "failed", num: 1 }, { t: "success rate", num: 1 }, { t: "avg completion", num: 1 }, { t: "" }],
      o.workers.map((w) => `<tr><td>${esc(w.id)}</td><td>${tag(w.health)}</td><td class="num">${w.skill}</td><td>${esc(w.capabilities.join(", "))}</td><td class="num">${pct(w.load)}</td><td class="num">${w.active} / ${w.concurrency}</td><td class="num">${num(w.completed)}</td><td class="num">${num(w.failed)}</td><td class="num">${pct(w.success_rate)}</td><td class="num">${secs(w.avg_completion_s)}</td>` +
        `<td>${w.health !== "healthy" ? `<button class="act" data-remove="${esc(w.id)}" ${role === "operator" ? "" : "disabled title='needs the operator token'"}>remove</button>` : ""}</td></tr>`),
      "no workers registered");
    const to = o.handoff ? Object.entries(o.handoff.to_peers) : [];
    if (!same("handoffs", o.handoff)) table($("handoffs"), [{ t: "peer" }, { t: "tasks handed off", num: 1 }],
      to.map(([p, n]) => `<tr><td>${esc(p)}</td><td class="num">${num(n)}</td></tr>`), o.handoff ? "none lately" : "hand-off is off on this node");
    // What changed decides what to fetch again (at most once a second: a busy node changes all the time).
    const totals = JSON.stringify(o.totals), active = JSON.stringify(o.active);
    const dead = `${o.totals.failed || 0}/${o.totals.requeued || 0}`;  // dead letters change only with these
    if (active !== lastActive || totals !== lastTotals) { lastActive = active; lastTotals = totals; refetch.tasks = true; }
    if (dead !== lastDead) { lastDead = dead; refetch.dead = true; }
    flush();
  }
  const refetch = { tasks: false, dead: false };
  let lastFetch = 0, timer = null;
  function flush() {
    const wait = lastFetch + 1000 - Date.now();
    if (wait > 0) { if (!timer) timer = setTimeout(() => { timer = null; flush(); }, wait); return; }
    lastFetch = Date.now();
    if (refetch.tasks) { refetch.tasks = false; loadTasks(); if (selected) loadDetail(selected); }
    if (refetch.dead) { refetch.dead = false; loadDead(); }
  }

  function query() {
    const st = [...document.querySelectorAll("#status-boxes input:checked")].map((b) => b.value);
    const p = new URLSearchParams({ offset, limit });
    if (st.length) p.set("status", st.join(","));
    for (const [k, id] of [["type", "f-type"], ["priority", "f-priority"], ["worker", "f-worker"]]) if ($(id).value.trim()) p.set(k, $(id).value.trim());
    return p.toString();
  }
  let inflight = false, again = false;
  async function loadTasks() {
    if (inflight) { again = true; return; }
    inflight = true;
    try {
      const r = await FC.get("/api/tasks?" + query());
      table($("tasks"), [{ t: "id" }, { t: "type" }, { t: "status" }, { t: "priority" }, { t: "worker" }, { t: "attempt", num: 1 }, { t: "age", num: 1 }],
        r.tasks.map((t) => `<tr class="click" data-task="${esc(t.id)}"><td>${esc(t.id)}</td><td>${esc(t.type)}</td><td>${tag(t.status)}</td><td>${esc(t.priority)}</td><td>${esc(t.worker || "")}</td><td class="num">${t.attempt}</td><td class="num">${secs(t.age_s)}</td></tr>`),
        "no active task matches");
      $("page-info").textContent = `${r.offset + 1}-${r.offset + r.tasks.length}` + (r.total !== null ? ` of ${num(r.total)}` : r.more ? " of more" : "");
      $("prev").disabled = r.offset === 0; $("next").disabled = !r.more;
    } catch (e) { $("page-info").innerHTML = `<span class="err">${esc(e.message)}</span>`; }
    finally { inflight = false; if (again) { again = false; loadTasks(); } }
  }
  async function loadDetail(id) {
    selected = id;
    try {
      const t = await FC.get("/api/tasks/" + encodeURIComponent(id));
      $("detail").innerHTML = `<b>${esc(t.id)}</b> ${tag(t.status)} type <b>${esc(t.type)}</b>, priority ${esc(t.priority)}, difficulty ${t.difficulty}` +
        (t.dependencies.length ? `, depends on ${t.dependencies.length}` : "") + (t.from_node ? `, came from node ${esc(t.from_node)}` : "") +
        `<ul>${t.why.map((w) => `<li>${esc(w)}</li>`).join("")}</ul>` +
        (t.story.length ? "<table><tr><th>when</th><th>event</th><th>status</th><th>worker</th><th>attempt</th><th>error</th></tr>" +
          t.story.map((e) => `<tr><td>${new Date(e.at_ns / 1e6).toLocaleTimeString()}</td><td>${esc(e.kind)}</td><td>${tag(e.status)}</td><td>${esc(e.worker || "")}</td><td>${e.attempt}</td><td>${esc(e.error || "")}</td></tr>`).join("") + "</table>"
          : `<span class="muted">(transitions are kept when the node runs with core.story_tasks > 0)</span>`);
    } catch (e) { $("detail").innerHTML = `<span class="err">${esc(e.message)}</span>`; }
  }
  async function loadDead() {
    try {
      const r = await FC.get("/api/dead?limit=20");
      $("c-dead").textContent = num(r.total);
      table($("dead"), [{ t: "id" }, { t: "type" }, { t: "failed" }, { t: "error" }, { t: "" }],
        r.tasks.map((t) => `<tr><td>${esc(t.id)}</td><td>${esc(t.type)}</td><td>${new Date(t.finished_ns / 1e6).toLocaleTimeString()}</td><td title="${esc(t.error)}">${esc(t.error)}</td>` +
          `<td><button class="act" data-requeue="${esc(t.id)}" ${role === "operator" ? "" : "disabled title='needs the operator token'"}>requeue</button></td></tr>`),
        "no dead letters");
    } catch (e) { $("c-dead").textContent = "?"; }
  }
  async function loadHistory() {
    try {
      const h = await FC.get("/api/history?minutes=60");
      const t = h.rows.map((r) => new Date(r.minute_ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
      thChart.setOption({
        animation: false, grid: { left: 45, right: 20, top: 30, bottom: 30 }, tooltip: { trigger: "axis" }, legend: { top: 0 },
        xAxis: { type: "category", data: t }, yAxis: { type: "value", axisLabel: { formatter: (v) => (100 * v).toFixed(0) + "%" } },
        series: [
          { name: "threshold", type: "line", step: "end", data: h.rows.map((r) => r.threshold), itemStyle: { color: "#e08a1e" } },
          { name: "load", type: "line", data: h.rows.map((r) => r.load_ratio), itemStyle: { color: "#2f6fb3" } },
          { name: "peak load", type: "line", lineStyle: { type: "dotted" }, data: h.rows.map((r) => r.load_ratio_max), itemStyle: { color: "#8fb4dd" } },
        ],
      });
      tpChart.setOption({
        animation: false, grid: { left: 50, right: 50, top: 30, bottom: 30 }, tooltip: { trigger: "axis" }, legend: { top: 0 },
        xAxis: { type: "category", data: t }, yAxis: [{ type: "value", name: "tasks/min" }, { type: "value", name: "s" }],
        series: [
          { name: "completed", type: "bar", data: h.rows.map((r) => r.completed), itemStyle: { color: "#1e7b34" } },
          { name: "failed", type: "bar", data: h.rows.map((r) => r.failed), itemStyle: { color: "#b3261e" } },
          { name: "p99 completion", type: "line", yAxisIndex: 1, data: h.rows.map((r) => r.completion_p99_s), itemStyle: { color: "#e08a1e" } },
        ],
      });
      const r = await FC.get("/api/report");
      const rows = [["completed", num(r.completed)], ["failed", num(r.failed)], ["cancelled", num(r.cancelled)], ["throughput", num(r.throughput_per_s, 1) + " /s"],
        ["p50 / p95 / p99 completion", `${secs(r.p50_completion_s)} / ${secs(r.p95_completion_s)} / ${secs(r.p99_completion_s)}`],
        ["mean / p99 queue wait", `${secs(r.avg_queue_wait_s)} / ${secs(r.p99_queue_wait_s)}`], ["error rate", pct(r.error_rate)]];
      table($("report"), [{ t: "" }, { t: "", num: 1 }], rows.map(([k, v]) => `<tr><td>${esc(k)}</td><td class="num">${v}</td></tr>`), "");
    } catch (e) { /* shown as stale by the stream */ }
  }

  document.addEventListener("click", async (ev) => {
    const el = ev.target.closest("[data-task],[data-requeue],[data-remove]");
    if (!el) return;
    try {
      if (el.dataset.task) loadDetail(el.dataset.task);
      else if (el.dataset.requeue) { await FC.post(`/api/dead/${encodeURIComponent(el.dataset.requeue)}/requeue`); loadDead(); }
      else if (el.dataset.remove) { await FC.post(`/api/workers/${encodeURIComponent(el.dataset.remove)}/remove`); }
    } catch (e) { alert(e.message); }
  });
  $("filters").addEventListener("change", () => { offset = 0; loadTasks(); });
  $("prev").addEventListener("click", () => { offset = Math.max(0, offset - limit); loadTasks(); });
  $("next").addEventListener("click", () => { offset += limit; loadTasks(); });

  FC.get("/api/info").then((i) => {
    role = i.role;
    $("node-id").textContent = i.node_id;
    $("role").textContent = "role: " + i.role;
    document.title = "fedcoord node " + i.node_id;
    FC.live("/api/stream", render, i.needs_token);
    loadDead();  // (its buttons follow the role)
    loadHistory(); setInterval(loadHistory, 10000);
  }).catch((e) => { $("role").textContent = e.message; $("stale").textContent = e.message + ": enter a token above."; $("stale").className = "show"; });
})();
