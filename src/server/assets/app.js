// cairn dashboard: reads and acts through /api/v1 with the token kept in this tab's session storage.
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("cairn-token") || "";
let current = null; // the instance shown
let pending = null; // { snapshot } chosen for restore

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch("/api/v1" + path, opts);
  if (r.status === 401) { logout(); throw new Error("token refused"); }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}
function text(el, s) { el.textContent = s == null ? "-" : String(s); return el; }
function cell(tr, s) { tr.appendChild(text(document.createElement("td"), s)); }
function bytes(n) {
  if (n == null) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function banner(msg, good) { const b = $("banner"); text(b, msg); b.className = good ? "good" : "bad"; }
function show(id) { for (const s of ["login", "overview", "instance"]) $(s).hidden = s !== id; $("logout").hidden = id === "login"; }
function logout() { token = ""; sessionStorage.removeItem("cairn-token"); show("login"); $("token").focus(); }

async function overview() {
  show("overview");
  const list = await api("GET", "/instances");
  const body = $("instances"); body.replaceChildren();
  let bad = 0;
  for (const i of list) {
    const tr = document.createElement("tr");
    tr.className = i.paused ? "paused" : i.status;
    if (i.status === "failed" || i.status === "overdue") bad++;
    const td = document.createElement("td"); const a = document.createElement("a");
    a.href = "#/instance/" + encodeURIComponent(i.instance); text(a, i.instance); td.appendChild(a); tr.appendChild(td);
    cell(tr, i.paused ? "paused" : i.status); cell(tr, i.last_snapshot); cell(tr, i.next_due);
    cell(tr, i.snapshot_count); cell(tr, bytes(i.stored_bytes)); cell(tr, i.dedup_ratio ? i.dedup_ratio.toFixed(1) + "x" : "-");
    body.appendChild(tr);
  }
  banner(bad ? bad + " instance(s) failed or overdue" : "all instances healthy", !bad);
}

async function instancePage(name) {
  show("instance"); current = name;
  const [i, snaps, runs] = await Promise.all([
    api("GET", "/instances/" + encodeURIComponent(name)),
    api("GET", "/instances/" + encodeURIComponent(name) + "/snapshots"),
    api("GET", "/instances/" + encodeURIComponent(name) + "/log"),
  ]);
  text($("inst-name"), name);
  text($("inst-summary"), `${i.paused ? "paused" : i.status} · last backup ${i.last_snapshot || "never"} · next ${i.next_due || "-"} · ${bytes(i.stored_bytes)} stored`);
  text($("pause-toggle"), i.paused ? "Resume" : "Pause");
  $("pause-toggle").dataset.paused = i.paused ? "1" : "";
  const sb = $("snapshots"); sb.replaceChildren();
  for (const s of snaps.slice().reverse()) {
    const tr = document.createElement("tr");
    cell(tr, s.time); cell(tr, s.id.slice(0, 10)); cell(tr, bytes(s.summary && s.summary.bytes_total)); cell(tr, (s.tags || []).join(", "));
    const td = document.createElement("td"); const b = document.createElement("button");
    text(b, "Restore…"); b.addEventListener("click", () => openRestore(s.id)); td.appendChild(b); tr.appendChild(td);
    sb.appendChild(tr);
  }
  const rb = $("runs"); rb.replaceChildren();
  for (const r of runs.slice(-50).reverse()) {
    const tr = document.createElement("tr");
    cell(tr, r.start); cell(tr, r.kind); cell(tr, r.status); cell(tr, r.error || r.snapshot_id || "");
    rb.appendChild(tr);
  }
}

async function follow(job) {
  $("job").hidden = false;
  for (;;) {
    const pct = job.progress_percent;
    if (pct == null) $("job-bar").removeAttribute("value"); else $("job-bar").value = pct;
    text($("job-text"), `${job.kind} ${job.status}: ${job.current_step} · ${job.files_done} files · ${bytes(job.bytes_done)}` +
      (job.rows_verified ? ` · ${job.rows_verified} rows verified` : "") + (job.error ? " · " + job.error : ""));
    if (["completed", "failed", "cancelled"].includes(job.status)) break;
    await new Promise((r) => setTimeout(r, 500));
    job = await api("GET", "/jobs/" + job.id);
  }
  banner(`${job.kind} ${job.status}`, job.status === "completed");
  if (current) await instancePage(current);
}

function openRestore(snapshot) {
  pending = { snapshot };
  text($("rd-name"), current); text($("rd-snap"), snapshot.slice(0, 10));
  $("rd-confirm").value = ""; $("rd-go").disabled = true;
  $("restore-dialog").showModal(); $("rd-confirm").focus();
}

async function route() {
  if (!token) return logout();
  try {
    const m = location.hash.match(/^#\/instance\/(.+)$/);
    if (m) await instancePage(decodeURIComponent(m[1])); else { current = null; await overview(); }
  } catch (e) { banner(e.message, false); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault(); token = $("token").value.trim(); sessionStorage.setItem("cairn-token", token); route();
  });
  $("logout").addEventListener("click", logout);
  $("backup-now").addEventListener("click", async () => {
    try { await follow(await api("POST", "/instances/" + encodeURIComponent(current) + "/backup", {})); }
    catch (e) { banner(e.message, false); }
  });
  $("pause-toggle").addEventListener("click", async () => {
    const action = $("pause-toggle").dataset.paused ? "resume" : "pause";
    try { await api("POST", `/instances/${encodeURIComponent(current)}/${action}`, {}); await instancePage(current); }
    catch (e) { banner(e.message, false); }
  });
  $("rd-confirm").addEventListener("input", () => { $("rd-go").disabled = $("rd-confirm").value !== current; });
  $("restore-dialog").addEventListener("close", async () => {
    if ($("restore-dialog").returnValue !== "go" || $("rd-confirm").value !== current) return;
    try {
      await follow(await api("POST", "/instances/" + encodeURIComponent(current) + "/restore",
        { snapshot: pending.snapshot, in_place: true, confirm: true }));
    } catch (e) { banner(e.message, false); }
  });
  window.addEventListener("hashchange", route);
  route();
});
