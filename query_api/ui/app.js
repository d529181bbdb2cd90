// The viewer page: one tenant's audit log, read with a viewer token from the URL fragment.
//
// Rules this file keeps: every string from an event is put in the page as text
// (textContent, attribute values set through the DOM), never as markup; no request leaves
// this origin; the token and the pinned key come from the fragment, which no request
// carries. Verification trusts the pinned key only (verify.js).

import { parseVerifierKey, verifyEvent } from "./verify.js";

const SEVERITIES = ["SEVERITY_UNSPECIFIED", "SEVERITY_DEBUG", "SEVERITY_INFO", "SEVERITY_NOTICE",
  "SEVERITY_WARNING", "SEVERITY_ERROR", "SEVERITY_CRITICAL", "SEVERITY_SECURITY"];
const CATEGORIES = ["CATEGORY_UNSPECIFIED", "CATEGORY_AUTH", "CATEGORY_ACCESS_CONTROL",
  "CATEGORY_DATA", "CATEGORY_CONFIGURATION", "CATEGORY_ADMIN", "CATEGORY_BILLING",
  "CATEGORY_SECURITY", "CATEGORY_SYSTEM", "CATEGORY_INTEGRATION", "CATEGORY_COMPLIANCE"];
const SCALARS = ["actor_id", "resource_type", "resource_id"];
const PAGE_SIZE = 25;
const CHART_ALL_TIME_S = 31536000;

const $ = (id) => document.getElementById(id);
const state = {};

// -- DOM helpers: text only ------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-") || ["id", "type", "title", "dir", "role", "tabindex",
      "aria-label", "aria-live", "scope", "download", "href", "colspan"].includes(k)) {
      node.setAttribute(k, v === true ? "" : String(v));
    } else throw new Error(`attribute ${k} is not allowed`);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const svgEl = (tag, attrs = {}) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
};

const short = (name, prefix) => name.replace(prefix, "");
const sevClass = (s) => `sev s-${SEVERITIES.includes(s) ? short(s, "SEVERITY_") : "UNKNOWN"}`;
const when = (ts) => (typeof ts === "string" ? ts.replace("T", " ").replace(/(\.\d+)?Z$/, " UTC") : "");
const shown = (v) => (v === null || v === undefined || v === "" ? "—" : v);

function notice(text, kind = "error") {
  const box = $("notice");
  box.replaceChildren(el("p", { text }));
  box.dataset.kind = kind;
  box.hidden = false;
}

// -- configuration from the fragment ----------------------------------------------------
// "#token=...&key=..." split by hand: URLSearchParams would turn the "+" of a key into " ".
function readFragment() {
  const out = {};
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    const eq = part.indexOf("=");
    if (eq < 1) continue;
    try {
      out[decodeURIComponent(part.slice(0, eq))] = decodeURIComponent(part.slice(eq + 1));
    } catch {
      /* a malformed part is ignored */
    }
  }
  return out;
}

// What the token says about itself, for display only: the server decides what it may read.
function tokenClaims(token) {
  try {
    const body = token.slice(4, token.indexOf("."));
    const json = atob(body.replaceAll("-", "+").replaceAll("_", "/"));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(json, (c) => c.charCodeAt(0))));
    return { tenant: String(claims.t), filters: claims.f || {}, expires: Number(claims.e) };
  } catch {
    return null;
  }
}

// -- the API -----------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function api(path, params = [], raw = false) {
  const url = new URL(`../${path}`, location.href);
  for (const [k, v] of params) url.searchParams.append(k, v);
  for (let attempt = 0; ; attempt++) {
    const resp = await fetch(url, { headers: { Authorization: `Bearer ${state.token}` },
      credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" });
    if (resp.status === 429 && attempt < 5) {
      const wait = Math.min(Number(resp.headers.get("Retry-After")) || 1, 10);
      await new Promise((done) => setTimeout(done, wait * 1000));
      continue;
    }
    if (resp.ok) return raw ? resp : resp.json();
    let error = {};
    try {
      error = (await resp.json()).error || {};
    } catch {
      /* not JSON */
    }
    if (resp.status === 401) {
      $("main").hidden = true;
      notice(`This viewer link no longer works: ${error.message || "not accepted"}. Ask for a new one.`);
    }
    throw new ApiError(resp.status, error.code, error.message);
  }
}

// -- header: scope and trust -----------------------------------------------------------
function showScope() {
  const c = state.claims;
  if (!c) return $("scope").replaceChildren();
  const parts = [el("span", { text: "Tenant " }), el("strong", { id: "tenant", text: c.tenant })];
  const fixed = Object.entries(c.filters).map(([k, v]) => `${k}=${[].concat(v).join(",")}`);
  if (fixed.length) parts.push(el("span", { id: "fixed", text: ` · limited to ${fixed.join(" · ")}` }));
  const at = when(new Date(c.expires * 1000).toISOString().replace(/\.\d+Z$/, "Z"));
  const past = c.expires * 1000 <= Date.now();
  parts.push(el("span", { class: past ? "warn" : undefined, text: ` · link ${past ? "expired" : "expires"} ${at}` }));
  $("scope").replaceChildren(...parts);
}

const groups = (hex) => hex.match(/.{1,4}/g).join(" ");

async function showTrust() {
  const box = $("trust");
  if (!window.isSecureContext || !globalThis.crypto?.subtle) {
    state.trustProblem = "verification needs a secure context (HTTPS)";
    box.replaceChildren(el("span", { class: "warn", text: `Events cannot be verified here: ${state.trustProblem}.` }));
    return;
  }
  if (state.pinned) {
    box.replaceChildren(el("span", { text: "Verifying against the pinned key " }),
      el("code", { id: "pinned-key", text: state.pinned.id }),
      el("span", { text: ` (SHA-256 ${groups(state.pinned.fingerprint)})` }));
    return;
  }
  const why = state.pinError ? `the pinned key is not a valid verifier key (${state.pinError})` : "no pinned key";
  state.trustProblem = why;
  let published = null;
  try {
    const resp = await fetch(new URL("../v1/audit/public-key", location.href),
      { credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" });
    published = await parseVerifierKey((await resp.json()).verifier_key);
  } catch {
    published = null;
  }
  state.published = published;
  const parts = [el("span", { class: "warn", text: `Events are unverified: ${why}.` })];
  if (published) {
    parts.push(el("span", { text: " The server publishes the key " }),
      el("code", { id: "server-key", text: published.id }),
      el("span", { text: " with SHA-256 fingerprint " }),
      el("code", { id: "server-fingerprint", text: groups(published.fingerprint) }),
      el("span", { text: ": compare it with the one your operator gave you before pinning it." }));
  }
  box.replaceChildren(...parts);
}

// -- filters ---------------------------------------------------------------------------
function fillSelect(select, all, fixed, prefix, anyText) {
  const allowed = fixed && fixed.length ? fixed : all;
  const options = allowed.length > 1 || !fixed ? [el("option", { text: anyText })] : [];
  options[0]?.setAttribute("value", "");
  for (const v of allowed) {
    const o = el("option", { text: short(v, prefix) });
    o.value = v;
    options.push(o);
  }
  select.replaceChildren(...options);
  select.disabled = Boolean(fixed && fixed.length === 1);
}

function setupFilters() {
  const f = state.claims?.filters || {};
  fillSelect($("f-severities"), SEVERITIES, f.severities, "SEVERITY_", "Any severity");
  fillSelect($("f-categories"), CATEGORIES, f.categories, "CATEGORY_", "Any category");
  for (const name of SCALARS) {
    const input = $(`f-${name}`);
    input.value = f[name] || "";
    input.disabled = Boolean(f[name]);
    input.title = f[name] ? "fixed by this viewer link" : "";
  }
  $("f-actions").placeholder = f.actions ? `within ${f.actions.join(", ")}` : "user.login or user.*";
}

function filterParams() {
  const p = [];
  const range = $("f-range").value;
  if (range) p.push(["start_time", new Date(Date.now() - Number(range) * 1000).toISOString()]);
  for (const name of ["severities", "categories"]) {
    if ($(`f-${name}`).value) p.push([name, $(`f-${name}`).value]);
  }
  for (const a of $("f-actions").value.split(/[\s,]+/)) if (a) p.push(["actions", a]);
  for (const name of SCALARS) {
    const input = $(`f-${name}`);
    if (!input.disabled && input.value.trim()) p.push([name, input.value.trim()]);
  }
  if ($("f-q").value.trim()) p.push(["q", $("f-q").value.trim()]);
  return p;
}

// -- the list --------------------------------------------------------------------------
function row(event) {
  const actor = event.actor || {};
  const res = event.primary_resource;
  const button = el("button", { type: "button", class: "row", "data-id": event.id },
    el("span", { class: "time", text: when(event.occurred_at) }),
    el("span", { class: sevClass(event.severity), text: short(String(event.severity), "SEVERITY_") }),
    el("span", { class: "action", dir: "auto", text: event.action }),
    el("span", { class: "who", dir: "auto", text: actor.display_name ? `${actor.display_name} (${actor.id})` : actor.id }),
    el("span", { class: "what", dir: "auto", text: res ? `${res.type}: ${res.display_name || res.id}` : "" }),
    el("span", { class: "desc", dir: "auto", text: event.description }));
  button.addEventListener("click", () => openDetail(event.id, button));
  return el("li", {}, button);
}

async function loadPage(first) {
  const params = [...state.params, ["page_size", String(PAGE_SIZE)]];
  if (!first) params.push(["page_token", state.nextToken]);
  $("status").textContent = "Loading…";
  if (first) {
    $("events").replaceChildren();
    $("more").hidden = true;
  }
  try {
    const page = await api("v1/audit/events", params);
    $("events").append(...page.events.map(row));
    state.count = (first ? 0 : state.count) + page.events.length;
    state.nextToken = page.next_page_token;
    $("more").hidden = !state.nextToken;
    $("status").textContent = state.count ? `${state.count} event${state.count === 1 ? "" : "s"}${state.nextToken ? ", more below" : ""}`
      : "No events match.";
  } catch (err) {
    $("status").textContent = `Could not load events: ${err.message}`;
  }
}

// -- the chart: counts by severity over time (stats) ---------------------------------
async function loadChart() {
  const base = state.params.filter(([k]) => k !== "severities");
  if (!$("f-range").value) base.push(["start_time", new Date(Date.now() - CHART_ALL_TIME_S * 1000).toISOString()]);
  const chosen = state.params.filter(([k]) => k === "severities");
  const box = $("chart");
  try {
    const total = await api("v1/audit/stats", [...base, ...chosen]);
    const sevs = SEVERITIES.filter((s) => total.by_severity[s] > 0);
    const series = [];
    for (const s of sevs) {
      const points = sevs.length === 1 ? total.histogram.points
        : (await api("v1/audit/stats", [...base, ["severities", s]])).histogram.points;
      series.push([s, points]);
    }
    drawChart(total, series);
    $("legend").replaceChildren(...sevs.map((s) => el("li", {},
      el("span", { class: `swatch ${sevClass(s)}` }), `${short(s, "SEVERITY_")} ${total.by_severity[s]}`)));
  } catch (err) {
    box.replaceChildren(el("p", { class: "status", text: `No chart: ${err.message}` }));
    $("legend").replaceChildren();
  }
}

const minutes = (ts) => when(ts).replace(/:\d\d UTC$/, " UTC");

function bucketName(seconds) {
  if (seconds < 3600) return `${seconds / 60} min`;
  if (seconds < 86400) return `${seconds / 3600} h`;
  return `${seconds / 86400} d`;
}

function drawChart(total, series) {
  const start = Date.parse(total.start_time);
  const width = total.histogram.bucket_seconds * 1000;
  const n = Math.max(1, Math.ceil((Date.parse(total.end_time) - start) / width));
  const stacks = Array.from({ length: n }, () => []);
  for (const [sev, points] of series) {
    for (const p of points) {
      const i = Math.min(n - 1, Math.max(0, Math.floor((Date.parse(p.start) - start) / width)));
      stacks[i].push([sev, p.count]);
    }
  }
  const max = Math.max(1, ...stacks.map((s) => s.reduce((a, [, c]) => a + c, 0)));
  const svg = svgEl("svg", { viewBox: `0 0 ${n * 10} 100`, preserveAspectRatio: "none", role: "img",
    "aria-label": `${total.total} events from ${when(total.start_time)} to ${when(total.end_time)}` });
  stacks.forEach((stack, i) => {
    let y = 100;
    for (const [sev, count] of stack) {
      const h = (count / max) * 100;
      y -= h;
      const rect = svgEl("rect", { x: i * 10 + 1, y, width: 8, height: h, class: sevClass(sev) });
      const title = svgEl("title");
      title.textContent = `${short(sev, "SEVERITY_")}: ${count}`;
      rect.append(title);
      svg.append(rect);
    }
  });
  $("chart").replaceChildren(svg, el("div", { class: "axis" },
    el("span", { text: minutes(total.start_time) }),
    el("span", { text: `max ${max} per ${bucketName(total.histogram.bucket_seconds)}` }),
    el("span", { text: minutes(total.end_time) })));
}

// -- the detail --------------------------------------------------------------------------
function table(kind, head, rows, rowClass) {
  return el("table", { class: kind }, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...rows.map((r, i) => el("tr", { class: rowClass?.(i) || undefined }, ...r.map(cell)))));
}

// A table cell: text as text, "" and absent told apart, JSON values as indented JSON.
function cell(value) {
  if (value instanceof Node) return el("td", {}, value);
  if (value === undefined) return el("td", { class: "empty", text: "—" });
  if (value === "") return el("td", { class: "empty", text: '""' });
  if (typeof value === "string" && value.length > 400) {  // scrolls in place, keyboard too
    return el("td", {}, el("div", { class: "long", dir: "auto", tabindex: 0, text: value,
      "aria-label": `long value, ${value.length} characters` }));
  }
  if (typeof value === "string") return el("td", { dir: "auto", text: value });
  if (value !== null && typeof value === "object") {
    return el("td", {}, el("pre", { dir: "auto", text: JSON.stringify(value, null, 2) }));
  }
  return el("td", { text: JSON.stringify(value) });
}

function fields(pairs) {
  const dl = el("dl", {});
  for (const [k, v] of pairs) dl.append(el("dt", { text: k }), el("dd", { dir: "auto", text: shown(v) }));
  return dl;
}

function changesTable(changes) {
  if (!changes) return el("p", { class: "empty", text: "No change set." });
  const before = changes.old_value || {};
  const after = changes.new_value || {};
  const named = new Set(changes.changed_fields || []);
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after), ...named])].sort();
  const changed = (k) => named.has(k) || JSON.stringify(before[k]) !== JSON.stringify(after[k]);
  const rows = keys.map((k) => [el("span", { class: changed(k) ? "mark" : "", text: changed(k) ? "changed" : "" }),
    k, before[k], after[k]]);
  return table("diff", ["", "Field", "Before", "After"], rows, (i) => (changed(keys[i]) ? "changed" : ""));
}

function renderDetail(e) {
  const a = e.actor || {};
  const res = [e.primary_resource && ["primary", e.primary_resource],
    ...(e.related_resources || []).map((r) => ["related", r])].filter(Boolean);
  const meta = Object.entries(e.metadata || {});
  $("detail-title").textContent = `Event: ${e.action}`;
  $("detail-body").replaceChildren(
    fields([["Occurred", when(e.occurred_at)], ["Received", when(e.received_at)], ["Action", e.action],
      ["Category", short(e.category, "CATEGORY_")], ["Severity", short(e.severity, "SEVERITY_")],
      ["Description", e.description], ["Event id", e.id], ["Sequence", String(e.seq)],
      ["IP", e.ip], ["User agent", e.user_agent], ["Request id", e.request_id], ["Trace id", e.trace_id],
      ["Hash", e.hash]]),
    el("h3", { text: "Actor" }),
    fields([["Type", short(a.type || "", "ACTOR_TYPE_")], ["Id", a.id], ["Name", a.display_name]]),
    el("h3", { text: "Resources" }),
    res.length ? table("res", ["Role", "Type", "Id", "Name"], res.map(([role, r]) => [role, r.type, r.id, shown(r.display_name)]))
      : el("p", { class: "empty", text: "No resources." }),
    el("h3", { text: "Metadata" }),
    meta.length ? table("kv", ["Key", "Value"], meta) : el("p", { class: "empty", text: "No metadata." }),
    el("h3", { text: "Changes" }),
    changesTable(e.changes));
}

function showVerification(status, text, checks = []) {
  const p = $("verify-status");
  p.dataset.status = status;
  p.textContent = text;
  $("verify-checks").replaceChildren(...checks.map((c) => el("li", { "data-check": c.name, "data-result": c.result },
    el("span", { class: `result r-${c.result}`, text: c.result === "pass" ? "✓" : c.result === "fail" ? "✗" : "–" }),
    el("strong", { text: ` ${c.name}: ` }), c.detail)));
}

async function verify(e, seq) {
  showVerification("pending", "Checking the event against its signed checkpoint…");
  let proof;
  try {
    proof = await api(`v1/audit/events/${encodeURIComponent(e.id)}/proof`);
  } catch (err) {
    if (seq !== state.detailSeq) return;
    const pending = err.status === 404 && /checkpoint/.test(err.message);
    return showVerification(pending ? "unverified" : "failed", pending
      ? "unverified: not yet covered by a signed checkpoint (checkpoints follow within a minute or so)"
      : `failed: no proof (${err.message})`);
  }
  if (state.trustProblem && !globalThis.crypto?.subtle) return showVerification("unverified", `unverified: ${state.trustProblem}`);
  const result = await verifyEvent(e, proof, state.pinned);
  if (seq !== state.detailSeq) return;
  const signed = result.checkpoint?.extensions.find((x) => x.startsWith("time "))?.slice(5);
  let text;
  if (result.status === "verified") {
    text = `verified: in the log signed by the pinned key ${state.pinned.id} (checkpoint of ${result.checkpoint.size} events${signed ? `, signed ${when(signed)}` : ""})`;
  } else if (result.status === "failed") {
    text = `failed: ${result.failed.join(", ")} (see below)`;
  } else {
    text = `unverified: ${state.trustProblem || "no pinned key"}`;
    if (state.published) text += ` (the server's key is ${state.published.id}, SHA-256 ${groups(state.published.fingerprint)})`;
  }
  showVerification(result.status, text, result.checks);
}

async function openDetail(id, from) {
  const seq = (state.detailSeq = (state.detailSeq || 0) + 1);
  state.lastFocus = from;
  document.querySelectorAll(".row[aria-current]").forEach((r) => r.removeAttribute("aria-current"));
  from?.setAttribute("aria-current", "true");
  $("detail").hidden = false;
  document.body.classList.add("detail-open");
  $("detail-body").replaceChildren(el("p", { text: "Loading…" }));
  showVerification("pending", "");
  $("detail-title").focus();
  try {
    const { event } = await api(`v1/audit/events/${encodeURIComponent(id)}`);
    if (seq !== state.detailSeq) return;
    renderDetail(event);
    await verify(event, seq);
  } catch (err) {
    if (seq === state.detailSeq) $("detail-body").replaceChildren(el("p", { text: `Could not load the event: ${err.message}` }));
  }
}

function closeDetail() {
  state.detailSeq = (state.detailSeq || 0) + 1;
  $("detail").hidden = true;
  document.body.classList.remove("detail-open");
  (state.lastFocus?.isConnected ? state.lastFocus : $("events-title")).focus();
}

// -- export ----------------------------------------------------------------------------
async function exportAs(format) {
  const button = $(`export-${format}`);
  button.disabled = true;
  try {
    const resp = await api("v1/audit/export", [...state.params, ["format", format]], true);
    const url = URL.createObjectURL(await resp.blob());
    const link = el("a", { href: url, download: `audit-${state.claims?.tenant || "log"}.${format}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    $("status").textContent = `Export failed: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

// -- start -----------------------------------------------------------------------------
async function refresh() {
  state.params = filterParams();
  closeDetailQuietly();
  await Promise.all([loadPage(true), loadChart()]);
}

function closeDetailQuietly() {
  state.detailSeq = (state.detailSeq || 0) + 1;
  $("detail").hidden = true;
  document.body.classList.remove("detail-open");
}

function onListKeys(ev) {
  const rows = [...document.querySelectorAll("#events .row")];
  const i = rows.indexOf(document.activeElement);
  const to = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: rows.length - 1 }[ev.key];
  if (i < 0 || to === undefined || !rows[to]) return;
  ev.preventDefault();
  rows[to].focus();
}

async function start() {
  for (const k of Object.keys(state)) delete state[k];
  $("notice").hidden = true;
  $("main").hidden = true;
  const cfg = readFragment();
  if (!cfg.token) return notice("No viewer token: open this page with #token=<viewer token> in its URL.", "info");
  state.token = cfg.token;
  state.claims = tokenClaims(cfg.token);
  if (cfg.key) {
    try {
      state.pinned = await parseVerifierKey(cfg.key);
    } catch (err) {
      state.pinError = err.message;
    }
  }
  showScope();
  setupFilters();
  if (matchMedia("(max-width: 720px)").matches) $("filter-box").open = false;
  await showTrust();
  $("main").hidden = false;
  await refresh();
  document.body.dataset.ready = "true";
}

function wire() {
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    refresh();
  });
  $("reset").addEventListener("click", () => {
    $("filters").reset();
    setupFilters();
    refresh();
  });
  $("more").addEventListener("click", () => loadPage(false));
  $("close").addEventListener("click", closeDetail);
  $("export-csv").addEventListener("click", () => exportAs("csv"));
  $("export-ndjson").addEventListener("click", () => exportAs("ndjson"));
  $("events").addEventListener("keydown", onListKeys);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("detail").hidden) closeDetail();
  });
  window.addEventListener("hashchange", () => {
    document.body.dataset.ready = "false";
    start();
  });
}

wire();
start();
