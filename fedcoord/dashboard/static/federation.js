// The federation view: everything from /api/stream (the rounds the ServerApp recorded).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const { esc, num, pct, secs, table } = FC;
  const charts = Object.fromEntries(["flows", "loads", "rounds", "latency", "budget", "quantiles"].map((id) => [id, FC.chart(id)]));
  const time = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const grid = { left: 50, right: 50, top: 30, bottom: 30 };
  const htag = (h) => `<span class="tag ${h === "reporting" ? "healthy" : h.startsWith("missing") ? "unhealthy" : "unknown"}">${esc(h)}</span>`;

  // No new round for three periods: the aggregator (or its SuperLink) is away or restarting.
  let lastView = null;
  setInterval(() => {
    if (!lastView || !lastView.last || lastView.rounds.length < 2) return;
    const r = lastView.rounds, period = (r[r.length - 1].at_ms - r[0].at_ms) / (r.length - 1);
    const age = Date.now() - lastView.last.started_ns / 1e6;
    if (age > 3 * period + 5000 && $("live").textContent === "live") {
      $("stale").textContent = `No round for ${Math.round(age / 1000)} s (rounds came every ${Math.round(period / 1000)} s): the aggregator may be restarting; the numbers below are from round #${lastView.last.round}.`;
      $("stale").className = "show";
    }
  }, 2000);

  function render(v) {
    lastView = v;
    if (!v.last) { $("c-round").textContent = "waiting for the first round"; return; }
    const L = v.last;
    $("c-round").textContent = "#" + L.round + " " + time(L.started_ns / 1e6);
    $("c-participants").textContent = L.participants + " / " + (L.asked ?? "?");
    $("c-load").textContent = L.federation_load ? pct(L.federation_load.value) + " ± " + pct(L.federation_load.sd) : "–";
    $("c-throughput").textContent = num(L.throughput_per_s, 1);
    $("c-handoff").textContent = num(L.handed_off_per_s, 2);
    $("c-latency").textContent = secs(L.latency_s);
    const p99 = v.quantiles.find((q) => q.q === 0.99);
    $("c-p99").textContent = p99 ? secs(p99.value) : "–";
    $("missing").textContent = L.missing.length ? "missing replies: " + L.missing.join(", ") : "";
    $("flows-min").textContent = Math.round(v.flows_s / 60);

    table($("nodes"), [{ t: "node" }, { t: "health" }, { t: "load", num: 1 }, { t: "± sd", num: 1 }, { t: "queue (est.)", num: 1 }, { t: "capacity", num: 1 }, { t: "threshold", num: 1 }, { t: "policy" }, { t: "out / s", num: 1 }, { t: "in / s", num: 1 }, { t: "release" }, { t: "eps spent", num: 1 }, { t: "eps left", num: 1 }, { t: "" }],
      v.nodes.map((n) => `<tr><td>${esc(n.id)}</td><td>${htag(n.health)}</td>` +
        `<td class="num">${pct(n.load)}</td><td class="num">${pct(n.load_sd)}</td><td class="num">${num(n.queue, 1)}</td><td class="num">${num(n.capacity)}</td><td class="num">${pct(n.threshold)}</td><td>${esc(n.policy || "")}</td>` +
        `<td class="num">${num(n.handed_off_out_per_s, 2)}</td><td class="num">${num(n.handed_off_in_per_s, 2)}</td><td>${esc(n.release || "")}</td><td class="num">${num(n.budget_spent, 3)}</td><td class="num">${num(n.budget_left, 3)}</td>` +
        `<td>${n.url ? `<a href="${esc(n.url)}" target="_blank">node view</a>` : ""}</td></tr>`),
      "no node has reported yet");

    // Flows: each sender's released out-rate into the federation, and on to each receiver's in-rate.
    // (the busiest 15 on each side by name; the rest summed as "others")
    const top = (m) => {
      const e = Object.entries(m).sort((a, b) => b[1] - a[1]);
      const rest = e.slice(15).reduce((s, [, x]) => s + x, 0);
      return rest > 0 ? [...e.slice(0, 15), [`${e.length - 15} others`, rest]] : e;
    };
    const senders = top(v.flows.out), receivers = top(v.flows.in);
    const data = [...senders.map(([k]) => ({ name: k + " \u25B8" })), { name: "hand-off" }, ...receivers.map(([k]) => ({ name: "\u25B8 " + k }))];
    const links = [...senders.map(([k, x]) => ({ source: k + " \u25B8", target: "hand-off", value: x })), ...receivers.map(([k, x]) => ({ source: "hand-off", target: "\u25B8 " + k, value: x }))];
    charts.flows.setOption({
      animation: false, tooltip: { trigger: "item" },
      graphic: links.length ? [] : [{ type: "text", left: "center", top: "middle", style: { text: "no hand-offs in this period", fill: "#67717d" } }],
      series: [{ type: "sankey", data: links.length ? data : [], links, nodeAlign: "justify", emphasis: { focus: "adjacency" }, label: { fontSize: 12 }, lineStyle: { color: "gradient", opacity: 0.4 } }],
    }, { replaceMerge: ["series", "graphic"] });

    const ns = v.nodes.filter((n) => n.load !== null);
    charts.loads.setOption({
      animation: false, grid, tooltip: { trigger: "axis" },
      xAxis: { type: "category", data: ns.map((n) => n.id), axisLabel: { interval: ns.length > 30 ? "auto" : 0, rotate: ns.length > 12 ? 45 : 0 } },
      yAxis: { type: "value", axisLabel: { formatter: (x) => (100 * x).toFixed(0) + "%" } },
      series: [
        { name: "load", type: "bar", data: ns.map((n) => n.load), itemStyle: { color: "#2f6fb3" } },
        { name: "threshold", type: "scatter", symbol: "rect", symbolSize: [14, 3], data: ns.map((n) => n.threshold), itemStyle: { color: "#e08a1e" } },
        { name: "load + sd", type: "scatter", symbolSize: 4, data: ns.map((n) => n.load + n.load_sd), itemStyle: { color: "#8fb4dd" } },
      ],
    });
    const t = v.rounds.map((r) => time(r.at_ms));
    charts.rounds.setOption({
      animation: false, grid, tooltip: { trigger: "axis" }, legend: { top: 0 },
      xAxis: { type: "category", data: t },
      yAxis: [{ type: "value", name: "load", axisLabel: { formatter: (x) => (100 * x).toFixed(0) + "%" } }, { type: "value", name: "nodes", minInterval: 1 }],
      series: [
        { name: "global load", type: "line", showSymbol: false, data: v.rounds.map((r) => r.load), itemStyle: { color: "#2f6fb3" } },
        { name: "participants", type: "line", step: "end", yAxisIndex: 1, showSymbol: false, data: v.rounds.map((r) => r.participants), itemStyle: { color: "#1e7b34" } },
      ],
    });
    charts.latency.setOption({
      animation: false, grid, tooltip: { trigger: "axis" }, legend: { top: 0 },
      xAxis: { type: "category", data: t },
      yAxis: [{ type: "value", name: "s" }, { type: "value", name: "missing", minInterval: 1 }],
      series: [
        { name: "round latency", type: "line", showSymbol: false, data: v.rounds.map((r) => r.latency_s), itemStyle: { color: "#e08a1e" } },
        { name: "missing replies", type: "bar", yAxisIndex: 1, data: v.rounds.map((r) => r.missing), itemStyle: { color: "#b3261e" } },
      ],
    });
    charts.budget.setOption({
      animation: false, grid, tooltip: { trigger: "axis" }, legend: { top: 0, type: "scroll" },
      xAxis: { type: "time" }, yAxis: { type: "value", name: "epsilon left" },
      series: [
        ...Object.entries(v.budget).slice(0, 25).map(([k, pts]) => ({ name: k + " left", type: "line", showSymbol: false, data: pts })),
        ...Object.entries(v.budget_spent || {}).slice(0, 25).map(([k, pts]) => ({ name: k + " spent", type: "line", showSymbol: false, lineStyle: { type: "dashed" }, data: pts })),
      ],
    }, { replaceMerge: ["series"] });
    charts.quantiles.setOption({
      animation: false, grid, tooltip: { trigger: "axis" },
      xAxis: { type: "category", data: v.quantiles.map((q) => "p" + Math.round(q.q * 100)) }, yAxis: { type: "value", name: "s" },
      series: [
        { name: "estimate", type: "bar", data: v.quantiles.map((q) => q.value), itemStyle: { color: "#2f6fb3" } },
        { name: "low", type: "scatter", symbol: "rect", symbolSize: [16, 2], data: v.quantiles.map((q) => q.low), itemStyle: { color: "#555" } },
        { name: "high", type: "scatter", symbol: "rect", symbolSize: [16, 2], data: v.quantiles.map((q) => q.high), itemStyle: { color: "#555" } },
      ],
    });
  }
  FC.get("/api/info").then((i) => FC.live("/api/stream", render, i.needs_token))
    .catch((e) => { $("stale").textContent = e.message; $("stale").className = "show"; });
})();
