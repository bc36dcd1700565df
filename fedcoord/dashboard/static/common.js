// Shared by both views: the token, JSON calls, the live stream with its stale banner, formatting.
"use strict";
const FC = (() => {
  const params = new URLSearchParams(location.search);
  if (params.get("token")) sessionStorage.setItem("fc-token", params.get("token"));
  const token = () => sessionStorage.getItem("fc-token") || "";
  const setToken = (t) => { if (t) sessionStorage.setItem("fc-token", t); else sessionStorage.removeItem("fc-token"); };
  const headers = () => (token() ? { Authorization: "Bearer " + token() } : {});

  async function get(path) {
    const r = await fetch(path, { headers: headers(), cache: "no-store" });
    const body = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }
  async function post(path) {
    const r = await fetch(path, { method: "POST", headers: headers() });
    const body = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }

  // The live stream: `onData` gets every snapshot. While the connection is down the page says
  // its data is stale (since when) and keeps reconnecting; a stream that went silent (no
  // snapshot, no keepalive for 20 s) is closed and opened again. `tokenInUrl`: the server needs a
  // token for reads (EventSource cannot send a header; a token in an address is viewer-only).
  function live(path, onData, tokenInUrl) {
    const badge = document.getElementById("live");
    const stale = document.getElementById("stale");
    let lastOk = null, lastByte = Date.now(), es = null;
    const say = (text) => { stale.textContent = text; stale.className = "show"; };
    const down = async () => {
      badge.textContent = "reconnecting"; badge.className = "off";
      const since = lastOk ? new Date(lastOk).toLocaleTimeString() : "the start";
      say("Connection lost: the data below is stale (last update " + since + "). Reconnecting...");
      try {  // why: a token the server wants, or the server away
        const r = await fetch("/api/info", { headers: headers(), cache: "no-store" });
        if (r.status === 401 || r.status === 403) say("This page needs a token: enter it above (the operator token works too).");
      } catch (e) { /* away: the message above stands */ }
    };
    const open = () => {
      if (es) es.close();
      const q = tokenInUrl && token() ? (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token()) : "";
      es = new EventSource(path + q);
      lastByte = Date.now();
      es.onmessage = (ev) => {
        lastOk = lastByte = Date.now();
        badge.textContent = "live"; badge.className = "on"; stale.className = "";
        const data = JSON.parse(ev.data);
        if (data.error && !data.state) { badge.textContent = "error"; badge.className = "off"; say(data.error); return; }
        onData(data);
      };
      es.onerror = () => { down(); if (es.readyState === EventSource.CLOSED) setTimeout(open, 1000); };
    };
    open();
    setInterval(() => { if (Date.now() - lastByte > 20000) { down(); open(); } }, 2000);
  }

  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const num = (v, d = 0) => (v === null || v === undefined ? "–" : Number(v).toLocaleString(undefined, { maximumFractionDigits: d, minimumFractionDigits: d }));
  const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(0) + "%");
  const secs = (v) => {
    if (v === null || v === undefined) return "–";
    if (v < 1) return (v * 1000).toFixed(0) + " ms";
    if (v < 120) return v.toFixed(1) + " s";
    if (v < 7200) return (v / 60).toFixed(1) + " min";
    return (v / 3600).toFixed(1) + " h";
  };
  const tag = (s) => `<span class="tag ${esc(s)}">${esc(s)}</span>`;
  const table = (el, head, rows, empty) => {
    el.innerHTML = "<thead><tr>" + head.map((h) => `<th class="${h.num ? "num" : ""}">${esc(h.t)}</th>`).join("") + "</tr></thead><tbody>" +
      (rows.length ? rows.join("") : `<tr><td colspan="${head.length}" class="muted">${esc(empty)}</td></tr>`) + "</tbody>";
  };
  const chart = (id) => {
    const c = echarts.init(document.getElementById(id), null, { renderer: "canvas" });
    window.addEventListener("resize", () => c.resize());
    return c;
  };
  // `same(key, value)`: true when `value` is what it was the last time under `key` (then the
  // page leaves that part alone: redrawing an unchanged table or chart is the browser's main cost).
  const memo = () => { const last = {}; return (k, v) => { const s = JSON.stringify(v); if (last[k] === s) return true; last[k] = s; return false; }; };
  function tokenBox() {
    const box = document.getElementById("token");
    if (!box) return;
    box.value = token();
    box.addEventListener("change", () => { setToken(box.value.trim()); location.reload(); });
  }
  return { get, post, live, esc, num, pct, secs, tag, table, chart, memo, token, tokenBox };
})();
// A token given in the address is kept for this tab and taken out of the address bar.
if (new URLSearchParams(location.search).get("token")) history.replaceState(null, "", location.pathname);
