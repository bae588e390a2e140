// Page-load benchmark of the DTM web pages (issue 9 benchmark; P1–P4): against a running cluster
// (`dtm demo`, see scripts/bench-web.sh), for each page: headless Chromium's navigation timing (the
// page request, first and largest contentful paint, full load, the slowest request of the page, the
// server's own render time from `Server-Timing`), RUNS times with a warm cache after one cold load,
// and one Lighthouse 12 run (performance and accessibility scores, mobile and desktop settings).
// Prints a Markdown table. Input: DTM_DEMO_JSON (the demo's demo.json), NODE_PATH, CHROMIUM.
"use strict";

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const { execFileSync } = require("child_process");
const { chromium } = require("playwright-core");

const demo = JSON.parse(fs.readFileSync(process.env.DTM_DEMO_JSON, "utf8"));
const BASE = demo.nodes[0].http;
const RUNS = Number(process.env.RUNS || 10);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const LIGHTHOUSE = path.join(process.env.NODE_PATH.split(":")[0], "lighthouse", "cli", "index.js");
const USER = "bench-admin";
const PASSWORD = "bench web pages 2026";

function base32(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of text.replace(/[\s=]/g, "").toUpperCase()) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}
function totp(secret, at) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 30)));
  const h = crypto.createHmac("sha1", base32(secret)).update(counter).digest();
  const o = h[h.length - 1] & 0xf;
  return String((((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3]) % 1000000).padStart(6, "0");
}

async function api(method, p, body, headers = {}) {
  const r = await fetch(BASE + p, {
    method,
    headers: { "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null, cookies: r.headers.getSetCookie() };
}

/** An admin with an enrolled authenticator; the enrolling session becomes a full session. */
async function adminSession() {
  const token = { authorization: "Bearer " + demo.admin_token };
  await api("POST", "/api/v1/users", { username: USER, role: "admin", password: PASSWORD }, token);
  const login = await api("POST", "/api/v1/auth/login", { username: USER, password: PASSWORD });
  if (login.status !== 200) throw new Error("login: " + JSON.stringify(login.body) + " (a second run needs a fresh demo dir)");
  const cookie = login.cookies.find((c) => c.startsWith("__Host-dtm_session=")).split(";")[0];
  const h = { cookie, "x-csrf-token": login.body.csrf_token };
  const e = await api("POST", "/api/v1/auth/totp/enroll", {}, h);
  const c = await api("POST", "/api/v1/auth/totp/confirm", { code: totp(e.body.secret, Date.now() / 1000) }, h);
  if (c.status !== 200) throw new Error("confirm: " + JSON.stringify(c.body));
  return cookie.split("=").slice(1).join("=");
}

/** The demo's data-entry user (reporting pages), when the demo has one. */
async function dataEntrySession() {
  const r = demo.reporting;
  if (!r || !r.username) return null;
  const login = await api("POST", "/api/v1/auth/login", { username: r.username, password: r.password });
  if (login.status !== 200) return null;
  return login.cookies.find((c) => c.startsWith("__Host-dtm_session=")).split(";")[0].split("=").slice(1).join("=");
}

function pages() {
  const ids = demo.datasets.map((d) => d.id || d);
  const ds = ids.find((d) => d === "etx_monthly") || ids[0] || "";
  const src = (demo.sources[0] && demo.sources[0].id) || "";
  return [
    ["sign-in", "/ui/login"],
    ["reports due (data entry)", "/ui/reporting/due", "data-entry"],
    ["reporting status", "/ui/reporting/status"],
    ["home", "/ui/"],
    ["dashboard", "/ui/dashboard"],
    ["catalog", "/ui/catalog"],
    ["dataset", `/ui/catalog/${ds}`],
    ["sources", "/ui/sources"],
    ["source connections", `/ui/sources/${src}`],
    ["analysis (result)", `/ui/analysis?dataset=${ds}&interval=month`],
    ["audit trail", "/ui/audit"],
    ["admin: sources", "/ui/admin/sources"],
    ["admin: users", "/ui/admin/users"],
    ["admin: gateway", "/ui/admin/gateway"],
    ["admin: cluster", "/ui/admin/cluster"],
  ];
}

async function measure(page, url) {
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => performance.getEntriesByType("navigation")[0].loadEventEnd > 0);
  return page.evaluate(async () => {
    const nav = performance.getEntriesByType("navigation")[0];
    const fcp = (performance.getEntriesByName("first-contentful-paint")[0] || {}).startTime || null;
    const lcp = await new Promise((resolve) => {
      new PerformanceObserver((l) => {
        const e = l.getEntries();
        resolve(e[e.length - 1].startTime);
      }).observe({ type: "largest-contentful-paint", buffered: true });
      setTimeout(() => resolve(null), 500);
    });
    const requests = [nav.responseEnd - nav.requestStart, ...performance.getEntriesByType("resource").map((r) => r.responseEnd - r.requestStart)];
    const server = (nav.serverTiming || []).find((s) => s.name === "app");
    return {
      request: nav.responseEnd - nav.requestStart,
      fcp,
      lcp,
      load: nav.loadEventEnd - nav.startTime,
      slowest: Math.max(...requests),
      server: server ? server.duration : null,
    };
  });
}

const median = (xs) => {
  const s = xs.filter((x) => x != null).sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
const max = (xs) => Math.max(...xs.filter((x) => x != null));
const ms = (x) => (x == null || !isFinite(x) ? "–" : x.toFixed(x < 10 ? 1 : 0));

function lighthouse(url, session, preset) {
  const args = [
    LIGHTHOUSE,
    url,
    "--output=json",
    "--quiet",
    "--only-categories=performance,accessibility",
    `--chrome-flags=--headless=new --no-sandbox --ignore-certificate-errors --disable-dev-shm-usage`,
    `--extra-headers=${JSON.stringify({ Cookie: `__Host-dtm_session=${session}` })}`,
  ];
  if (preset === "desktop") args.push("--preset=desktop");
  const out = execFileSync(process.execPath, args, { env: { ...process.env, CHROME_PATH: CHROMIUM }, maxBuffer: 64 << 20 });
  const r = JSON.parse(out);
  return {
    perf: Math.round(r.categories.performance.score * 100),
    a11y: Math.round(r.categories.accessibility.score * 100),
    fcp: r.audits["first-contentful-paint"].numericValue,
    lcp: r.audits["largest-contentful-paint"].numericValue,
  };
}

(async () => {
  const admin = await adminSession();
  const dataEntry = await dataEntrySession();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  const rows = [];
  const only = process.env.ONLY; // a path prefix, to measure some pages only
  for (const [name, p, who] of pages().filter(([, p]) => !only || p.startsWith(only))) {
    const session = who === "data-entry" ? dataEntry : admin;
    if (!session) continue;
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
    await ctx.addCookies([{ name: "__Host-dtm_session", value: session, url: BASE, secure: true, httpOnly: true, sameSite: "Strict" }]);
    const page = await ctx.newPage();
    const cold = await measure(page, BASE + p);
    const warm = [];
    for (let i = 0; i < RUNS; i++) warm.push(await measure(page, BASE + p));
    await ctx.close();
    const pick = (k) => warm.map((w) => w[k]);
    const lhMobile = lighthouse(BASE + p, session, "mobile");
    const lhDesktop = lighthouse(BASE + p, session, "desktop");
    rows.push({ name, p, cold, warm: Object.fromEntries(["request", "fcp", "lcp", "load", "slowest", "server"].map((k) => [k, { med: median(pick(k)), max: max(pick(k)) }])), lhMobile, lhDesktop });
    console.error(`${name}: done`);
  }
  await browser.close();
  console.log(`Pages of node 1 of a 3-node \`dtm demo\` cluster on this machine; headless Chromium ${browser.version ? "" : ""}(playwright-core), ${RUNS} warm loads after one cold load; times in ms (median / max of the warm loads; cold in brackets).`);
  console.log("");
  console.log("| page | request | server render | FCP | LCP | full load | slowest request | Lighthouse perf (mobile / desktop) | Lighthouse a11y |");
  console.log("|---|---|---|---|---|---|---|---|---|");
  for (const r of rows) {
    const w = r.warm;
    const cell = (k) => `${ms(w[k].med)} / ${ms(w[k].max)} (${ms(r.cold[k])})`;
    console.log(`| ${r.name} | ${cell("request")} | ${cell("server")} | ${cell("fcp")} | ${cell("lcp")} | ${cell("load")} | ${cell("slowest")} | ${r.lhMobile.perf} / ${r.lhDesktop.perf} | ${r.lhMobile.a11y} |`);
  }
  const worst = (f) => Math.max(...rows.map(f));
  console.log("");
  console.log(`Worst page: request ${ms(worst((r) => Math.max(r.warm.request.max, r.cold.request)))} ms, FCP ${ms(worst((r) => Math.max(r.warm.fcp.max, r.cold.fcp)))} ms, LCP ${ms(worst((r) => Math.max(r.warm.lcp.max, r.cold.lcp || 0)))} ms, full load ${ms(worst((r) => Math.max(r.warm.load.max, r.cold.load)))} ms, slowest request ${ms(worst((r) => Math.max(r.warm.slowest.max, r.cold.slowest)))} ms; Lighthouse performance min ${Math.min(...rows.map((r) => Math.min(r.lhMobile.perf, r.lhDesktop.perf)))}, accessibility min ${Math.min(...rows.map((r) => Math.min(r.lhMobile.a11y, r.lhDesktop.a11y)))}.`);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
