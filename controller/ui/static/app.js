// gu hub web UI: one ES module, no build step, no other host. It reads the hub's API
// with the session cookie and polls the page it shows every second (POLL_MS).
// Every value from the hub goes in through textContent or an attribute, never as HTML.

const POLL_MS = 1000;
const RENEW_MS = 120000;
const PAGE_ROWS = 100;
const main = document.getElementById("main");
const banner = document.getElementById("banner");

let csrf = "";
let who = null;
let timer = null;
let generation = 0; // bumps on every navigation: a stale poll does not draw

// ------------------------------------------------------------------ helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs = {}) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const method = options.method || "GET";
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin", cache: "no-store",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (resp.status === 401) { sessionEnded(); throw new ApiError(401, "not logged in"); }
  const text = await resp.text();
  if (!resp.ok) {
    let message = text;
    try { message = JSON.parse(text).error.message; } catch (e) { /* plain text */ }
    throw new ApiError(resp.status, message);
  }
  if (options.text) return text;
  return text ? JSON.parse(text) : null;
}

function sessionEnded() {
  stopPolling();
  banner.hidden = false;
  banner.textContent = "Your UI session has ended: run `gu ui` for a new log-in link.";
  main.replaceChildren();
}

function showError(err) {
  if (err.status === 401) return;
  main.replaceChildren(h("p", { role: "alert", class: "notready", text: err.message }));
}

const GiB = 1 << 30;
function gib(bytes) { return bytes === null || bytes === undefined ? "–" : (bytes / GiB).toFixed(1); }
function pct(v) { return v === null || v === undefined ? "–" : `${Number(v).toFixed(0)} %`; }
function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}
function age(iso) { return iso ? ago(iso).replace(" ago", "") : "–"; }

function sparkline(values, width = 64, height = 16, max = 100) {
  const el = svg("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": `CPU over the last ${values.length} samples` });
  if (values.length > 1) {
    const step = width / (values.length - 1);
    const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(height - (Math.min(v, max) / max) * (height - 1) - 0.5).toFixed(1)}`);
    el.append(svg("polyline", { points: pts.join(" ") }));
  }
  return el;
}

function chart(samples, value, max, label) {
  const W = 600, H = 120;
  const el = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none",
    role: "img", "aria-label": label });
  for (const f of [0.25, 0.5, 0.75]) el.append(svg("line", { x1: 0, x2: W, y1: H * f, y2: H * f }));
  if (samples.length > 1) {
    const t0 = samples[0].t, t1 = samples[samples.length - 1].t, span = Math.max(1, t1 - t0);
    const pts = samples.map((s) => `${(((s.t - t0) / span) * W).toFixed(1)},${(H - (Math.min(value(s), max) / max) * (H - 2) - 1).toFixed(1)}`);
    el.append(svg("polyline", { points: pts.join(" ") }));
  }
  return el;
}

function copyButton(text) {
  return h("button", { type: "button", class: "copy", title: "Copy the full node id",
    "aria-label": `Copy node id ${text}`,
    on: { click: () => navigator.clipboard && navigator.clipboard.writeText(text) } }, "copy");
}

function sortableTable(columns, rows, state, onSort, caption) {
  const head = h("tr", {}, columns.map((c) => {
    const sort = state.key === c.key ? (state.dir > 0 ? "ascending" : "descending") : null;
    return h("th", { scope: "col", "aria-sort": c.sort ? (sort || "none") : null },
      c.sort ? h("button", { type: "button", on: { click: () => onSort(c.key) } }, c.title) : c.title);
  }));
  return h("div", { class: "table-wrap" }, h("table", {},
    caption ? h("caption", { text: caption }) : null,
    h("thead", {}, head), h("tbody", {}, rows)));
}

function simpleTable(columns, items, caption) {
  return h("div", { class: "table-wrap" }, h("table", {},
    caption ? h("caption", { text: caption }) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c[0])))),
    h("tbody", {}, items.map((it) => h("tr", {}, columns.map((c) => h("td", {}, c[1](it))))))));
}

// ---------------------------------------------------------------- polling

function stopPolling() { if (timer) clearTimeout(timer); timer = null; }

function poll(gen, draw) {
  const tick = async () => {
    if (gen !== generation) return;
    try { await draw(); } catch (err) { if (gen === generation) showError(err); }
    if (gen === generation && !banner.textContent) timer = setTimeout(tick, POLL_MS);
  };
  tick();
}

// --------------------------------------------------------------- providers

const providerState = { key: "name", dir: 1, label: "", freeCpu: "", freeMem: "", page: 0,
  open: new Set() };

function providerRow(p) {
  const memUsed = p.memAvailable === null || p.memAvailable === undefined ? null : p.memTotal - p.memAvailable;
  const names = p.tasks.map((t) => `${t.session}/${t.placement} (${t.state})`);
  const tasks = p.tasks.length
    ? h("details", { open: providerState.open.has(p.node),
        on: { toggle: (e) => e.target.open ? providerState.open.add(p.node) : providerState.open.delete(p.node) } },
        h("summary", { title: names.join("\n") }, String(p.taskCount)),
        h("ul", {}, p.tasks.map((t) => h("li", { "data-session": t.session },
          h("a", { href: `#/sessions/${encodeURIComponent(t.session)}` }, t.session), ` ${t.placement} `,
          h("span", { class: "muted" }, t.state)))))
    : String(p.taskCount);
  return h("tr", { "data-node": p.node },
    h("td", {}, h("a", { href: `#/providers/${p.node}` }, p.name || p.node.slice(0, 12)), " ",
      h("span", { class: "node", title: p.node }, p.node.slice(0, 10)), " ", copyButton(p.node)),
    h("td", {}, p.os || "–"),
    h("td", {}, `${p.cores} / ${p.threads}`),
    h("td", { class: "cpu" }, pct(p.cpu), sparkline(p.spark)),
    h("td", { class: "mem" }, `${gib(memUsed)} / ${gib(p.memTotal)} GiB`),
    h("td", { class: "disk" }, `${gib(p.diskFree)} / ${gib(p.diskTotal)} GiB`),
    h("td", { class: "tasks" }, tasks),
    h("td", {}, p.runtimes.map((r) => r.accel ? `${r.name} (${r.accel})` : r.name).join(", ") || "–"),
    h("td", { class: p.ready ? "ready" : "notready" }, p.ready ? "Ready" : "NotReady"),
    h("td", { title: p.lastSeen || "" }, ago(p.lastSeen)));
}

function providersPage(gen) {
  // filtering, sorting and paging happen on the hub: a page of 1,000 providers gets its
  // 100 rows, not all of them
  const s = providerState;
  let data = null;
  let debounce = null;
  const refetch = () => { clearTimeout(debounce); debounce = setTimeout(() => fetchRows().catch(showError), 150); };
  const input = (id, label, key, placeholder, type = "text") => h("label", { for: id }, label,
    h("input", { id, type, value: s[key], placeholder, min: type === "number" ? 0 : null,
      on: { input: (e) => { s[key] = e.target.value; s.page = 0; refetch(); } } }));
  const filters = h("form", { class: "filters", role: "search", on: { submit: (e) => e.preventDefault() } },
    input("f-label", "Label (key=value, …)", "label", "zone=lab"),
    input("f-cpu", "Free cores at least", "freeCpu", "0", "number"),
    input("f-mem", "Free memory at least (GiB)", "freeMem", "0", "number"));
  const body = h("div", {});
  main.replaceChildren(h("h1", {}, "Providers"), filters, body);
  const columns = [
    { key: "name", title: "Provider", sort: true }, { key: "os", title: "OS" },
    { key: "cores", title: "Cores / threads", sort: true }, { key: "cpu", title: "CPU", sort: true },
    { key: "mem", title: "Memory used / total", sort: true }, { key: "disk", title: "Disk free / total", sort: true },
    { key: "tasks", title: "Tasks", sort: true }, { key: "runtimes", title: "Runtimes" },
    { key: "ready", title: "Status", sort: true }, { key: "seen", title: "Last seen", sort: true },
  ];
  const onSort = (key) => { s.dir = s.key === key ? -s.dir : 1; s.key = key; refetch(); };
  const turn = (by) => { s.page += by; refetch(); };
  function draw() {
    if (!data) return;
    s.page = data.page;
    const caption = `${data.matched} of ${data.total} providers match, ${data.ready} ready; ` +
      `showing ${data.providers.length}`;
    const pager = data.pages > 1 ? h("div", { class: "pager" },
      h("button", { type: "button", disabled: data.page === 0, on: { click: () => turn(-1) } }, "Previous"),
      h("span", {}, `Page ${data.page + 1} of ${data.pages}`),
      h("button", { type: "button", disabled: data.page >= data.pages - 1, on: { click: () => turn(1) } }, "Next")) : null;
    body.replaceChildren(...[sortableTable(columns, data.providers.map(providerRow), s, onSort, caption), pager].filter(Boolean));
  }
  async function fetchRows() {
    const q = new URLSearchParams({ sort: s.key, desc: s.dir < 0, label: s.label, page: s.page,
      minCpu: Number(s.freeCpu) || 0, minMemGiB: Number(s.freeMem) || 0 });
    const got = await api(`/v1/ui/providers?${q}`);
    if (gen === generation) { data = got; draw(); }
  }
  poll(gen, fetchRows);
}

async function providerDetail(gen, node) {
  const facts = {};
  await Promise.all(["os", "cpu", "mem", "storage"].map(async (k) => {
    try { facts[k] = await api(`/peers/${node}/inf/${k}`); } catch (e) { facts[k] = null; }
  }));
  poll(gen, async () => {
    const p = await api(`/v1/ui/providers/${node}`);
    if (gen !== generation) return;
    const dl = h("dl", { class: "facts" });
    const fact = (k, v) => dl.append(h("dt", {}, k), h("dd", {}, v));
    fact("Node id", h("span", { class: "node" }, p.node)); fact("Status", p.ready ? "Ready" : "NotReady");
    fact("Last seen", ago(p.lastSeen));
    if (facts.os) fact("OS", `${facts.os.name} ${facts.os.version}`);
    if (facts.cpu) fact("CPU", `${facts.cpu.architecture}, ${facts.cpu.cores} cores / ${facts.cpu.threads} threads, ${pct(p.cpu)} used`);
    if (facts.mem) fact("Memory", `${facts.mem.gib} GiB free of ${facts.mem.total} GiB`);
    if (facts.storage) fact("Storage", `${facts.storage.gib} GiB free of ${facts.storage.totalGib} GiB`);
    fact("Free for placements", `${p.freeCpu} cores, ${(p.freeMemoryMiB / 1024).toFixed(1)} GiB`);
    fact("Runtimes", p.runtimes.map((r) => r.accel ? `${r.name} (${r.accel})` : r.name).join(", ") || "–");
    fact("Labels", Object.entries(p.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "–");
    const mins = p.history.length > 1 ? ((p.history[p.history.length - 1].t - p.history[0].t) / 60).toFixed(0) : 0;
    main.replaceChildren(
      h("h1", {}, `Provider ${p.name || p.node.slice(0, 12)}`), dl,
      h("h2", {}, `CPU %, last ${mins} min`), chart(p.history, (s) => s.cpu, 100, "CPU percent over time"),
      h("h2", {}, "Memory used (GiB)"),
      chart(p.history, (s) => (p.memTotal - s.memAvailable) / GiB, Math.max(1, p.memTotal / GiB), "Memory used over time"),
      h("h2", {}, "Placements"),
      simpleTable([
        ["Placement", (x) => x.placement],
        ["Session", (x) => h("a", { href: `#/sessions/${encodeURIComponent(x.session)}` }, x.session)],
        ["App", (x) => x.app], ["Runtime", (x) => x.runtime], ["State", (x) => x.state],
      ], p.placements, `${p.placements.length} placements`));
  });
}

// ---------------------------------------------------------------- sessions

function counts(s) {
  const c = (s.status || {}).counts || {};
  return Object.entries(c).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(", ") || "–";
}

async function setSuspend(name, suspend) {
  await api(`/v1/sessions/${encodeURIComponent(name)}/suspend`, { method: "PUT", body: { suspend } });
}

function suspendButton(s, after) {
  const suspended = !!s.spec.suspend;
  return h("button", { type: "button", "data-action": suspended ? "resume" : "suspend",
    on: { click: async (e) => {
      e.target.disabled = true;
      try { await setSuspend(s.metadata.name, !suspended); await after(); } catch (err) { alert(err.message); }
    } } }, suspended ? "Resume" : "Suspend");
}

function sessionsPage(gen) {
  poll(gen, async () => {
    const list = await api("/v1/sessions");
    if (gen !== generation) return;
    const items = list.items.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    const refresh = async () => {};
    main.replaceChildren(h("h1", {}, "Sessions"), simpleTable([
      ["Session", (s) => h("a", { href: `#/sessions/${encodeURIComponent(s.metadata.name)}` }, s.metadata.name)],
      ["App", (s) => s.spec.app],
      ["Priority", (s) => `${s.status.priorityClass || "–"} (${s.status.priority ?? 0})`],
      ["Phase", (s) => h("span", { class: "phase" }, s.status.phase || "Pending")],
      ["Placements", (s) => counts(s)],
      ["Age", (s) => age(s.metadata.creationTimestamp)],
      ["", (s) => suspendButton(s, refresh)],
    ], items, `${items.length} sessions`));
    for (const tr of main.querySelectorAll("tbody tr")) tr.dataset.session = tr.querySelector("a").textContent;
  });
}

function sessionDetail(gen, name) {
  const path = `/v1/sessions/${encodeURIComponent(name)}`;
  poll(gen, async () => {
    const [s, events, logs] = await Promise.all([
      api(path), api(`${path}/events`).catch(() => ({ items: [] })),
      api(`${path}/logs`, { text: true }).catch((e) => e.status === 404 ? "" : `(${e.message})`),
    ]);
    if (gen !== generation) return;
    const tail = logs.split("\n").slice(-60).join("\n");
    const del = h("button", { type: "button", class: "danger", "data-action": "delete", on: { click: async () => {
      if (!confirm(`Delete session ${name}? Its workloads are stopped.`)) return;
      try { await api(path, { method: "DELETE" }); location.hash = "#/sessions"; } catch (err) { alert(err.message); }
    } } }, "Delete");
    const st = s.status || {};
    main.replaceChildren(
      h("h1", {}, `Session ${name}`),
      h("p", {}, "Phase ", h("strong", { class: "phase" }, st.phase || "Pending"), ` · app ${s.spec.app} · priority ${st.priorityClass || "–"} (${st.priority ?? 0}) · ${s.spec.workload.runtime} · age ${age(s.metadata.creationTimestamp)} `,
        suspendButton(s, async () => {}), " ", del),
      h("h2", {}, "Conditions"),
      simpleTable([["Type", (c) => c.type], ["Status", (c) => c.status], ["Reason", (c) => h("span", { class: "reason" }, c.reason || "")],
        ["Message", (c) => c.message || ""], ["Since", (c) => ago(c.lastTransitionTime)]], st.conditions || []),
      h("h2", {}, "Placements"),
      simpleTable([["Placement", (p) => p.name], ["Provider", (p) => p.node ? h("a", { href: `#/providers/${p.node}` }, p.node.slice(0, 12)) : "unbound"],
        ["State", (p) => p.state], ["Reason", (p) => h("span", { class: "reason" }, p.reason || "")], ["Exit code", (p) => p.exitCode ?? ""]],
        st.placements || []),
      h("h2", {}, "Events"),
      simpleTable([["When", (e) => ago(e.time || e.timestamp)], ["Type", (e) => e.type], ["Reason", (e) => h("span", { class: "reason" }, e.reason)],
        ["Message", (e) => e.message]], events.items.slice(-30)),
      h("h2", {}, "Logs (last lines)"),
      h("pre", { class: "logs", tabindex: 0 }, tail || "(no output yet)"));
  });
}

// --------------------------------------------------- networks, policies, priorities

function listPage(gen, title, kind, columns) {
  poll(gen, async () => {
    const list = await api(`/v1/${kind}`);
    if (gen !== generation) return;
    main.replaceChildren(h("h1", {}, title), simpleTable(columns, list.items, `${list.items.length} ${title.toLowerCase()}`));
  });
}

const networkColumns = [
  ["Network", (n) => n.metadata.name], ["CIDR", (n) => n.spec.cidr], ["MTU", (n) => n.spec.mtu],
  ["Members", (n) => {
    const m = (n.status || {}).members || [];
    return m.length ? h("ul", {}, m.map((x) => h("li", {}, `${x.placement} ${x.ip || "–"} ${x.mac || ""} ${x.node ? x.node.slice(0, 8) : "unbound"}${x.reason ? " · " + x.reason : ""}`))) : "none";
  }],
];
const policyColumns = [
  ["Policy", (p) => p.metadata.name], ["Apps", (p) => p.spec.apps.join(", ")],
  ["Providers", (p) => {
    const a = p.spec.allowProviders;
    if (!a) return "any";
    const sel = Object.entries(a.selector || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    return [a.nodes.length ? `${a.nodes.length} nodes` : "", sel ? `labels ${sel}` : ""].filter(Boolean).join("; ") || "none";
  }],
  ["Images", (p) => `${p.spec.allowImages.length} hashes`], ["Signers", (p) => `${p.spec.allowImagesSignedBy.length} keys`],
];
const priorityColumns = [
  ["Priority", (p) => p.metadata.name], ["Value", (p) => p.spec.value], ["Preemption", (p) => p.spec.preemptionPolicy],
  ["On preempted", (p) => p.spec.onPreempted], ["Default", (p) => p.spec.default ? "yes" : ""], ["Description", (p) => p.spec.description],
];

// ------------------------------------------------------------------ routing

function route() {
  stopPolling();
  generation += 1;
  const gen = generation;
  const parts = (location.hash.replace(/^#\/?/, "") || "providers").split("/").map(decodeURIComponent);
  for (const a of document.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", a.getAttribute("href") === `#/${parts[0]}`);
    if (a.hasAttribute("aria-current")) a.setAttribute("aria-current", "page");
  }
  main.replaceChildren(h("p", {}, "Loading…"));
  const [page, arg] = parts;
  if (page === "providers" && arg) providerDetail(gen, arg).catch(showError);
  else if (page === "sessions" && arg) sessionDetail(gen, arg);
  else if (page === "sessions") sessionsPage(gen);
  else if (page === "networks") listPage(gen, "Networks", "virtualnetworks", networkColumns);
  else if (page === "policies") listPage(gen, "Policies", "imagepolicies", policyColumns);
  else if (page === "priorities") listPage(gen, "Priorities", "priorities", priorityColumns);
  else providersPage(gen);
  document.title = `gu hub · ${page}`;
}

async function renew() {
  const resp = await fetch("/ui/session/renew", { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
  if (resp.status === 401) return sessionEnded();
  const next = resp.headers.get("X-CSRF-Token");
  if (next) csrf = next;
}

async function start() {
  try {
    who = await api("/v1/whoami");
  } catch (err) { return; }
  csrf = who.csrf || "";
  document.getElementById("who").textContent = `${who.role}: ${who.name}`;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/ui/logout", { method: "POST", credentials: "same-origin" });
    sessionEnded();
    banner.textContent = "Logged out. Run `gu ui` to log in again.";
  });
  setInterval(renew, RENEW_MS);
  window.addEventListener("hashchange", route);
  route();
}

start();
