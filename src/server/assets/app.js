// cairn dashboard: reads and acts through /api/v1 with the token kept in this tab's session storage.
// No framework and no build step: the DOM is built with createElement (never innerHTML, so names and
// paths from the repository are text, not markup), charts are inline SVG drawn from the API's data.
"use strict";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
// A job in one of these states never changes again (interrupted: its server died under it, and the next
// server on the repository lists it so).
const FINAL = ["completed", "failed", "cancelled", "interrupted"];
let token = sessionStorage.getItem("cairn-token") || "";
let current = null; // the instance shown
let instanceCfg = null; // its configuration (what a restore replaces)
let pending = null; // the snapshot chosen for restore
let following = null; // id of the job whose progress is shown

// ----- helpers -------------------------------------------------------------------------------------------

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  let r;
  try { r = await fetch("/api/v1" + path, opts); }
  catch (e) { throw unreachable("the server does not answer (" + e.message + ")"); }
  // A proxy in front of a server that is down or restarting.
  if ([502, 503, 504].includes(r.status)) throw unreachable("the server does not answer (" + r.status + ")");
  if (r.status === 401) { logout(); throw new Error("the token was refused"); }
  const data = await r.json().catch(() => ({}));
  if (r.status === 403) throw new Error("your token's role may not do this: " + (data.error || "forbidden"));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}
// An error that may pass (the server stopped, is restarting, or the network dropped): worth asking again.
function unreachable(msg) { const e = new Error(msg); e.unreachable = true; return e; }
const enc = encodeURIComponent;
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) e.setAttribute(k, v);
  for (const k of kids) e.append(k == null ? "-" : k);
  return e;
}
function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}
function text(e, s) { e.textContent = s == null ? "-" : String(s); return e; }
function bytes(n) {
  if (n == null) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function when(t) {
  if (!t) return "-";
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}
function timeEl(t) { return t ? el("time", { datetime: t, title: t }, when(t)) : "-"; }
function nextRun(i) { return i.paused ? "paused" : i.next_due ? timeEl(i.next_due) : i.schedule ? "-" : "manual only"; }
function ratio(r) { return r ? r.toFixed(1) + "×" : "-"; }
// A table row; each cell carries its column's name for the phone layout (see style.css).
function row(labels, cells, cls) {
  const tr = el("tr", { class: cls });
  cells.forEach((c, i) => tr.append(el("td", { "data-label": labels[i] }, c)));
  return tr;
}
function banner(msg, good) { const b = $("banner"); text(b, msg); b.className = good ? "good" : "bad"; }
function show(id) {
  for (const s of ["login", "overview", "instance"]) $(s).hidden = s !== id;
  $("logout").hidden = id === "login";
}
function logout() { token = ""; sessionStorage.removeItem("cairn-token"); show("login"); $("token").focus(); }

// ----- overview ------------------------------------------------------------------------------------------

const COLS = ["Instance", "Status", "Paused", "Last backup", "Next run", "Snapshots", "Size", "Stored", "Dedup"];

async function overview() {
  show("overview");
  const [list, stats] = await Promise.all([api("GET", "/instances"), api("GET", "/stats")]);
  const body = $("instances"); body.replaceChildren();
  const bad = [];
  for (const i of list) {
    const trouble = !i.paused && (i.status === "failed" || i.status === "overdue");
    if (trouble) bad.push(`${i.instance} ${i.status}`);
    const status = el("span", { class: "badge " + (i.paused ? "paused" : i.status) }, i.paused ? "paused" : i.status);
    const last = el("span", {}, timeEl(i.last_snapshot));
    if (i.last_status && i.last_status !== "ok") last.append(` (last run ${i.last_status})`);
    body.append(row(COLS, [
      el("a", { href: "#/instance/" + enc(i.instance) }, i.instance), status, i.paused ? "yes" : "no", last,
      nextRun(i), String(i.snapshot_count), bytes(i.logical_bytes),
      bytes(i.stored_bytes), ratio(i.dedup_ratio),
    ], trouble ? "trouble" : i.paused ? "paused" : null));
  }
  $("no-instances").hidden = list.length > 0;
  if (bad.length) banner(`${bad.length} instance(s) need attention: ${bad.join(", ")}`, false);
  else banner(list.length ? `All ${list.length} instance(s) healthy` : "No instances", true);
  sizeChart(stats.size_history || [], stats.totals || {});
}

// Repository size over time: a step line of stored bytes (and a dashed one of logical bytes), from
// GET /stats's size_history.
function sizeChart(points, totals) {
  const box = $("size-chart"); box.replaceChildren();
  if (!points.length) { text($("size-summary"), "No snapshots yet."); return; }
  const W = 640, H = 200, L = 64, R = 12, T = 12, B = 28;
  const ts = points.map((p) => Date.parse(p.time));
  const t0 = ts[0], t1 = Math.max(ts[ts.length - 1], t0 + 1);
  const top = Math.max(1, ...points.map((p) => Math.max(p.stored_bytes, p.logical_bytes)));
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const step = (key) => points.map((p, i) =>
    (i ? `H${x(ts[i]).toFixed(1)}V` : `M${x(ts[i]).toFixed(1)},`) + y(p[key]).toFixed(1)).join("") + `H${W - R}`;
  const first = points[0], last = points[points.length - 1];
  const summary = `Stored size ${bytes(first.stored_bytes)} on ${when(first.time)}, ${bytes(last.stored_bytes)} ` +
    `on ${when(last.time)}, over ${points.length} snapshot(s); pack files hold ${bytes(totals.stored_bytes)}.`;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "size-title size-summary", class: "chart" },
    svg("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), class: "axis" }),
    svg("line", { x1: L, y1: T, x2: L, y2: y(0), class: "axis" }),
    svg("text", { x: L - 6, y: y(top) + 4, "text-anchor": "end", class: "tick" }, bytes(top)),
    svg("text", { x: L - 6, y: y(0), "text-anchor": "end", class: "tick" }, "0"),
    svg("text", { x: L, y: H - 8, class: "tick" }, when(first.time)),
    svg("text", { x: W - R, y: H - 8, "text-anchor": "end", class: "tick" }, when(last.time)),
    svg("path", { d: step("logical_bytes"), class: "logical" }),
    svg("path", { d: step("stored_bytes"), class: "stored" }));
  points.forEach((p, i) => chart.append(svg("circle", { cx: x(ts[i]), cy: y(p.stored_bytes), r: 3, class: "stored-dot" },
    svg("title", {}, `${when(p.time)} ${p.instance || ""}: ${bytes(p.stored_bytes)} stored, ${bytes(p.logical_bytes)} logical`))));
  const legend = el("p", { class: "legend" }, el("span", { class: "key stored" }, "stored"), " ",
    el("span", { class: "key logical" }, "logical (newest snapshot of each instance)"));
  box.append(chart, legend);
  text($("size-summary"), summary);
}

// ----- instance page -------------------------------------------------------------------------------------

async function instancePage(name, focus) {
  show("instance"); current = name;
  const base = "/instances/" + enc(name);
  const [i, snaps, runs, jobs] = await Promise.all([
    api("GET", base), api("GET", base + "/snapshots"), api("GET", base + "/log"),
    api("GET", "/jobs?instance=" + enc(name) + "&limit=5"),
  ]);
  instanceCfg = i;
  text($("inst-name"), name);
  facts(i);
  text($("pause-toggle"), i.paused ? "Resume schedule" : "Pause schedule");
  $("pause-toggle").dataset.paused = i.paused ? "1" : "";
  timeline(snaps);
  snapshotTable(snaps);
  const rb = $("runs"); rb.replaceChildren();
  const labels = ["Start", "Kind", "Status", "Detail"];
  for (const r of runs.slice(-50).reverse()) {
    rb.append(row(labels, [timeEl(r.start), r.kind, r.status, r.error || (r.snapshot_id || "").slice(0, 10) || "-"],
      r.status === "failed" ? "trouble" : null));
  }
  if (focus) $("inst-name").focus();
  // A job of this instance still running (started from another tab, or by the schedule): follow it.
  const running = jobs.find((j) => !FINAL.includes(j.status));
  if (running && following !== running.id) follow(running);
}

function facts(i) {
  const dl = $("inst-facts"); dl.replaceChildren();
  const add = (k, v) => dl.append(el("dt", {}, k), el("dd", {}, v));
  add("Status", el("span", { class: "badge " + (i.paused ? "paused" : i.status) }, i.paused ? "paused" : i.status));
  add("Last backup", timeEl(i.last_snapshot));
  add("Next run", nextRun(i));
  add("Schedule", i.schedule || "manual");
  add("Files", i.paths && i.paths.length ? i.paths.join(", ") : "none");
  add("Database", i.pg || "none");
  add("Size", `${bytes(i.logical_bytes)} in ${i.snapshot_count} snapshot(s), ${bytes(i.stored_bytes)} stored (${ratio(i.dedup_ratio)})`);
}

// Snapshots as marks on a time axis; each mark is a keyboard-reachable button that opens the restore dialog.
function timeline(snaps) {
  const box = $("timeline"); box.replaceChildren();
  if (!snaps.length) { box.append(el("p", { class: "hint" }, "No snapshots yet.")); return; }
  const W = 640, H = 64, L = 16, R = 16, Y = 26;
  const ts = snaps.map((s) => Date.parse(s.time));
  const t0 = Math.min(...ts), t1 = Math.max(...ts);
  const x = (t) => (t1 === t0 ? W / 2 : L + ((t - t0) / (t1 - t0)) * (W - L - R));
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "timeline", role: "group", "aria-labelledby": "timeline-title" },
    svg("line", { x1: L, y1: Y, x2: W - R, y2: Y, class: "axis" }),
    svg("text", { x: L, y: H - 6, class: "tick" }, when(snaps[ts.indexOf(t0)].time)));
  if (t1 !== t0) g.append(svg("text", { x: W - R, y: H - 6, "text-anchor": "end", class: "tick" }, when(snaps[ts.indexOf(t1)].time)));
  snaps.forEach((s, i) => {
    const safety = (s.tags || []).includes("safety");
    const label = `${safety ? "Safety snapshot" : "Snapshot"} ${s.id.slice(0, 10)} of ${when(s.time)}, ` +
      `${bytes(s.summary && s.summary.bytes_total)}: restore…`;
    const mark = svg("g", { tabindex: "0", role: "button", "aria-label": label, class: "mark" + (safety ? " safety" : "") },
      svg("title", {}, label), svg("circle", { cx: x(ts[i]), cy: Y, r: 7 }));
    mark.addEventListener("click", () => openRestore(s));
    mark.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openRestore(s); } });
    g.append(mark);
  });
  box.append(g);
}

function snapshotTable(snaps) {
  const sb = $("snapshots"); sb.replaceChildren();
  const labels = ["Time", "Id", "Size", "Added", "Tags", "Action"];
  for (const s of snaps.slice().reverse()) {
    const b = el("button", { type: "button", class: "restore", "aria-label": `Restore snapshot ${s.id.slice(0, 10)} of ${when(s.time)}` }, "Restore…");
    b.addEventListener("click", () => openRestore(s));
    const sum = s.summary || {};
    sb.append(row(labels, [timeEl(s.time), el("code", {}, s.id.slice(0, 10)), bytes(sum.bytes_total),
      bytes(sum.bytes_added), (s.tags || []).join(", ") || "-", b]));
  }
}

// ----- jobs ----------------------------------------------------------------------------------------------

function busy(on) {
  $("backup-now").disabled = on;
  for (const b of document.querySelectorAll("button.restore")) b.disabled = on;
}

function showJob(job, lost) {
  const pct = job.progress_percent;
  if (pct == null) $("job-bar").removeAttribute("value"); else $("job-bar").value = pct;
  text($("job-label"), `${job.kind} ${job.status}` + (pct == null ? "" : ` ${Math.round(pct)}%`));
  const parts = [job.current_step || "", `${job.files_done} files`, bytes(job.bytes_done) + (job.bytes_total ? " of " + bytes(job.bytes_total) : "")];
  if (job.rows_verified) parts.push(`${job.rows_verified} rows verified`);
  if (job.safety_snapshot_id) parts.push(`safety snapshot ${job.safety_snapshot_id.slice(0, 10)}`);
  if (job.error) parts.push(job.error);
  if (lost) parts.push(`the server has not answered since ${lost.toLocaleTimeString()}; still asking`);
  text($("job-text"), parts.filter(Boolean).join(" · "));
  $("job").dataset.status = job.status;
}

// Polls the job until it ends, showing its step and counters; then reloads the page's data. While the server
// does not answer (restarting, or killed and started again) it keeps asking, more slowly: the next server
// answers for the same job id, with the job `interrupted` if the old one died under it.
async function follow(job) {
  following = job.id;
  $("job").hidden = false; busy(true);
  banner(`${job.kind} of ${job.instance || "the repository"} started`, true);
  let lost = null; // since when the server has not answered
  try {
    for (;;) {
      showJob(job, lost);
      if (FINAL.includes(job.status)) break;
      await new Promise((r) => setTimeout(r, lost ? 2000 : 400));
      try { job = await api("GET", "/jobs/" + job.id); lost = null; }
      catch (e) { if (!e.unreachable) throw e; lost = lost || new Date(); }
    }
    // The error of an interrupted job already starts with "interrupted: ".
    const prefix = job.status + ": ", err = job.error || "";
    const why = err.startsWith(prefix) ? err.slice(prefix.length) : err;
    banner(`${job.kind} of ${job.instance || "the repository"} ${job.status}` + (why ? ": " + why : ""),
      job.status === "completed");
  } finally {
    following = null; busy(false);
  }
  if (current) await instancePage(current);
}

// ----- restore dialog ------------------------------------------------------------------------------------

function openRestore(snapshot) {
  pending = snapshot;
  text($("rd-name"), current); text($("rd-name2"), current);
  text($("rd-snap"), snapshot.id.slice(0, 10)); text($("rd-time"), when(snapshot.time));
  const what = $("rd-what"); what.replaceChildren();
  for (const p of (instanceCfg && instanceCfg.paths) || []) {
    what.append(el("li", {}, "the files under ", el("code", {}, p),
      " (the snapshot's files overwrite the live ones; files created since are kept)"));
  }
  if (instanceCfg && instanceCfg.pg) what.append(el("li", {}, "the database ", el("code", {}, instanceCfg.pg), ", replaced whole"));
  $("rd-confirm").value = ""; $("rd-go").disabled = true;
  // Esc keeps the last returnValue: a dialog closed that way must not read as a "go" of an earlier one.
  $("restore-dialog").returnValue = "";
  $("restore-dialog").showModal(); $("rd-confirm").focus();
}

async function restoreChosen() {
  try {
    await follow(await api("POST", "/instances/" + enc(current) + "/restore",
      { snapshot: pending.id, in_place: true, confirm: true }));
  } catch (e) { banner(e.message, false); }
}

// ----- routing -------------------------------------------------------------------------------------------

async function route() {
  if (!token) return logout();
  try {
    const m = location.hash.match(/^#\/instance\/(.+)$/);
    if (m) await instancePage(decodeURIComponent(m[1]), true);
    else { current = null; await overview(); }
  } catch (e) { banner(e.message, false); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault(); token = $("token").value.trim(); sessionStorage.setItem("cairn-token", token); route();
  });
  $("logout").addEventListener("click", logout);
  $("backup-now").addEventListener("click", async () => {
    try { await follow(await api("POST", "/instances/" + enc(current) + "/backup", {})); }
    catch (e) { banner(e.message, false); }
  });
  $("pause-toggle").addEventListener("click", async () => {
    const action = $("pause-toggle").dataset.paused ? "resume" : "pause";
    try { await api("POST", `/instances/${enc(current)}/${action}`, {}); await instancePage(current); $("pause-toggle").focus(); }
    catch (e) { banner(e.message, false); }
  });
  $("rd-confirm").addEventListener("input", () => { $("rd-go").disabled = $("rd-confirm").value !== current; });
  $("restore-dialog").addEventListener("close", () => {
    if ($("restore-dialog").returnValue === "go" && $("rd-confirm").value === current) restoreChosen();
  });
  window.addEventListener("hashchange", route);
  route();
});
