// Browser test of the reporting regime (issue 9, tests 1 and 3; C2(b), A1.9, F10), run by
// tests/tests/web_reporting.rs against a real 3-node cluster:
//  1. a data-entry user signs in with password and TOTP, fills the report form (first with a value
//     the validator refuses, whose message appears next to the field), submits, sees the receipt;
//     an auditor finds the submitted values on the analysis page and both reports on the status page;
//  2. the same with the keyboard only (Tab, Shift+Tab, arrows, typing, Enter; no mouse), asserting
//     after every Tab that the focused element shows a visible focus indicator.
// Contexts bypass the pages' Content-Security-Policy only so that axe-core can be injected.
// Configuration: the JSON in DTM_WEB_CONFIG (see the Rust test). Needs playwright-core on NODE_PATH
// and Chromium (CHROMIUM, default /usr/bin/chromium). Prints one JSON line; exits 1 on failure.
"use strict";

const crypto = require("crypto");
const { chromium } = require("playwright-core");

const cfg = JSON.parse(process.env.DTM_WEB_CONFIG || "{}");
const STEP_SECONDS = 30;
const TAB_PRESSES_MAX = 80;
const TIMEOUT_MS = 20000;

function base32Decode(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0;
  let value = 0;
  const out = [];
  for (const c of text.replace(/=+$/, "").toUpperCase()) {
    const i = alphabet.indexOf(c);
    if (i < 0) throw new Error(`not base32: ${c}`);
    value = (value << 5) | i;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const h = crypto.createHmac("sha1", secret).update(counter).digest();
  const o = h[h.length - 1] & 0xf;
  const n = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(n % 1000000).padStart(6, "0");
}

// A code is accepted once per time step, within one step of the server's clock: each sign-in uses
// the next unused step, now or the one after.
let lastStep = cfg.entry.last_step;
async function nextCode() {
  for (;;) {
    const now = Math.floor(Date.now() / 1000 / STEP_SECONDS);
    const step = Math.max(now, lastStep + 1);
    if (step <= now + 1) {
      lastStep = step;
      return totp(base32Decode(cfg.entry.secret), step);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// axe-core with the WCAG 2.1 A and AA rules (issue 9 test 2) on the reporting pages in the states
// this test reaches (a form with errors, a receipt), in both languages, at desktop and phone width.
const AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];
const axeChecked = [];
async function axeCheck(page, label) {
  await page.addScriptTag({ path: require.resolve("axe-core/axe.min.js") });
  const violations = await page.evaluate(async (tags) => {
    const r = await window.axe.run(document, { runOnly: { type: "tag", values: tags } });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5) }));
  }, AXE_TAGS);
  check(violations.length === 0, `axe found WCAG 2.1 A/AA violations on ${label}: ${JSON.stringify(violations)}`);
  axeChecked.push(label);
}

// The same page in Vietnamese: checked by axe too, and without untranslated keys (`??`).
async function inVietnamese(page, label) {
  const url = new URL(page.url());
  url.searchParams.set("lang", "vi");
  await page.goto(url.toString());
  check(!(await text(page)).includes("??"), `an untranslated text on ${label} (vi)`);
  await axeCheck(page, `${label} (vi)`);
  url.searchParams.set("lang", "en");
  await page.goto(url.toString());
}

// Page-load timings (ms) of the reporting pages, as Chromium measured them: time to first byte,
// first contentful paint, load; for the receipt the whole POST → redirect → page.
const timings = {};
async function timing(page, label) {
  timings[label] = await page.evaluate(() => {
    const n = performance.getEntriesByType("navigation")[0];
    const fcp = performance.getEntriesByName("first-contentful-paint")[0];
    const r = (x) => Math.round(x * 10) / 10;
    return { ttfb: r(n.responseStart - n.startTime), fcp: fcp ? r(fcp.startTime) : null, load: r(n.loadEventEnd - n.startTime) };
  });
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function text(page) {
  return page.evaluate(() => document.body.innerText);
}

// --- Flow 1: pointer and form filling ---------------------------------------------------------
async function pointerFlow(browser, period, values) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, bypassCSP: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  await page.goto(`${cfg.urls[0]}/ui/login?lang=en`);
  await page.fill("#username", cfg.entry.username);
  await page.fill("#password", cfg.entry.password);
  await page.click("form button[type=submit]");
  await page.waitForSelector("#code");
  await page.fill("#code", await nextCode());
  await page.click("form button[type=submit].primary");
  await page.waitForURL((u) => !u.pathname.startsWith("/ui/login"));
  // The reports due, on another node (the session is replicated).
  await page.goto(`${cfg.urls[1]}/ui/reporting/due?lang=en`);
  await timing(page, "reports due");
  await axeCheck(page, "reports due");
  await inVietnamese(page, "reports due");
  const formHref = `/ui/reporting/report/${cfg.dataset}/${period}`;
  await page.click(`a[href="${formHref}"]`);
  await page.waitForURL((u) => u.pathname === formHref);
  await page.waitForLoadState("load");
  await timing(page, "report form");
  await axeCheck(page, "report form");
  // A value the validator refuses: the form comes back with the message next to the field.
  await page.getByLabel("Applications received").fill("-5");
  await page.getByLabel("Processed on time").fill(values.on_time);
  // The early check (reporting.js) speaks as soon as the field is left; the server still decides.
  const early = await page.locator(".field-error[id$='-early']").first().innerText();
  check(early.includes("smallest allowed value is 0"), `the early check's message: ${early}`);
  await page.click("button[value=submit]");
  await page.waitForSelector("#error-summary");
  const invalid = await page.getByLabel("Applications received").getAttribute("aria-invalid");
  check(invalid === "true", "the refused field is marked aria-invalid");
  const errorText = await page.locator(".field.invalid .field-error").first().innerText();
  check(/minimum/.test(errorText), `the validator's message is shown next to the field: ${errorText}`);
  await axeCheck(page, "report form with errors");
  // Correct it, save a draft, submit.
  await page.getByLabel("Applications received").fill(values.received);
  await page.getByLabel("satisfaction").fill(values.satisfaction);
  await page.getByLabel("channel").selectOption(values.channel);
  await page.click("button[value=draft]");
  await page.waitForSelector(".notice");
  check((await page.getByLabel("Applications received").inputValue()) === values.received, "the draft keeps the value");
  await page.click("button[value=submit]");
  await page.waitForURL((u) => u.pathname === `${formHref}/receipt`);
  await page.waitForLoadState("load");
  await timing(page, "submit to receipt");
  const receipt = await text(page);
  check(receipt.includes("Report received"), "the receipt page is shown");
  check(/Signature\s+\S{40,}/.test(receipt), "the receipt shows its signature");
  await axeCheck(page, "receipt");
  await inVietnamese(page, "receipt");
  await context.close();
}

// --- Flow 2: keyboard only -----------------------------------------------------------------------
// The focused element, and whether its focus is visible (an outline or a box shadow).
async function focused(page) {
  return page.evaluate(() => {
    const el = document.activeElement;
    if (!el || el === document.body) return null;
    const s = getComputedStyle(el);
    const outline = s.outlineStyle !== "none" && parseFloat(s.outlineWidth) > 0;
    const shadow = s.boxShadow && s.boxShadow !== "none";
    return {
      tag: el.tagName.toLowerCase(),
      id: el.id || "",
      name: el.getAttribute("name") || "",
      href: el.getAttribute("href") || "",
      value: el.getAttribute("value") || "",
      text: (el.innerText || "").trim().slice(0, 60),
      visible: outline || shadow,
    };
  });
}

let focusChecks = 0;
async function tabTo(page, want, what) {
  for (let i = 0; i < TAB_PRESSES_MAX; i++) {
    await page.keyboard.press("Tab");
    const f = await focused(page);
    if (!f) continue;
    focusChecks++;
    check(f.visible, `focus is not visible on ${JSON.stringify(f)} (looking for ${what})`);
    if (want(f)) return f;
  }
  throw new Error(`Tab never reached ${what}`);
}

async function keyboardFlow(browser, period, values) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, bypassCSP: true, viewport: { width: 360, height: 740 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  await page.goto(`${cfg.urls[2]}/ui/login?lang=en`);
  await tabTo(page, (f) => f.id === "username", "the user name");
  await page.keyboard.type(cfg.entry.username);
  await tabTo(page, (f) => f.id === "password", "the password");
  await page.keyboard.type(cfg.entry.password);
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
  let f = await focused(page);
  if (!f || f.id !== "code") f = await tabTo(page, (x) => x.id === "code", "the TOTP code");
  await page.keyboard.type(await nextCode());
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
  check(!new URL(page.url()).pathname.startsWith("/ui/login"), `signed in with the keyboard (at ${page.url()})`);
  await tabTo(page, (x) => x.href === "/ui/reporting/due", "the Reports due link");
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
  const formHref = `/ui/reporting/report/${cfg.dataset}/${period}`;
  await tabTo(page, (x) => x.href === formHref, `the form of ${period}`);
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
  await axeCheck(page, "report form at 360 px");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `the form scrolls sideways at 360 px by ${overflow} px`);
  for (const [name, value] of [["v.received", values.received], ["v.on_time", values.on_time], ["v.satisfaction", values.satisfaction]]) {
    await tabTo(page, (x) => x.name === name, name);
    await page.keyboard.type(value);
  }
  await tabTo(page, (x) => x.name === "v.channel", "the channel select");
  // The options are "Choose…", "portal", "kiosk".
  await page.keyboard.press("ArrowDown");
  if (values.channel === "kiosk") await page.keyboard.press("ArrowDown");
  const chosen = await page.evaluate(() => document.activeElement.value);
  check(chosen === values.channel, `the select took ${chosen}`);
  await tabTo(page, (x) => x.tag === "button" && x.value === "submit", "the Submit button");
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
  check(new URL(page.url()).pathname === `${formHref}/receipt`, `the keyboard submission ends on the receipt (at ${page.url()})`);
  check((await text(page)).includes("Report received"), "the receipt page is shown");
  await tabTo(page, (x) => x.href.endsWith("/receipt.json"), "the receipt download");
  await axeCheck(page, "receipt at 360 px");
  await context.close();
}

// --- An auditor finds the values on the analysis page and the status page (signs in by keyboard) --
async function analysis(browser, periods, expected) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, bypassCSP: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  await page.goto(`${cfg.urls[0]}/ui/login?lang=en`);
  await tabTo(page, (f) => f.id === "username", "the user name");
  await page.keyboard.type(cfg.analyst.username);
  await tabTo(page, (f) => f.id === "password", "the password");
  await page.keyboard.type(cfg.analyst.password);
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
  const q = new URLSearchParams([
    ["dataset", cfg.dataset], ["interval", "month"], ["from", periods[periods.length - 1]], ["to", periods[0]],
    ["dim", "agency"], ["measure", "received"], ["lang", "en"],
  ]);
  await page.goto(`${cfg.urls[2]}/ui/analysis?${q}`);
  const table = await page.evaluate(() => Array.from(document.querySelectorAll("table")).map((t) => t.innerText).join("\n"));
  for (const v of expected) {
    check(table.includes(v), `the analysis table shows ${v}: ${table}`);
  }
  // The same user sees both reports submitted on the status page (checked by axe as well).
  await page.goto(`${cfg.urls[1]}/ui/reporting/status?lang=en&dataset=${cfg.dataset}`);
  const status = await text(page);
  check((status.match(/Submitted/g) || []).length >= 3 && status.includes(cfg.entry.username), `the status page: ${status}`);
  await axeCheck(page, "reporting status");
  await inVietnamese(page, "reporting status");
  await context.close();
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  const result = { ok: false, focus_checks: 0 };
  try {
    await pointerFlow(browser, cfg.periods[0], cfg.values[0]);
    await keyboardFlow(browser, cfg.periods[1], cfg.values[1]);
    if (cfg.analysis) await analysis(browser, cfg.periods, cfg.expected_in_analysis);
    result.ok = true;
  } catch (e) {
    result.error = String((e && e.stack) || e);
  } finally {
    result.focus_checks = focusChecks;
    result.axe_checked = axeChecked;
    result.timings_ms = timings;
    await browser.close();
  }
  console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
})();
