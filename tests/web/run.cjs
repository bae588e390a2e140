// Browser checks of the DTM web pages (issue 9, tests 2–4; A1.2, A1.9, F10), run by tests/tests/web.rs
// against a real 3-node cluster, in headless Chromium driven by playwright-core:
//  1. keyboard only: an admin signs in with a password, enrolls an authenticator (TOTP computed here,
//     RFC 6238), sees the recovery codes, signs out, signs in again with a TOTP code and moves through
//     the navigation — every step with the keyboard, and every focused element visibly outlined;
//  2. axe-core: no WCAG 2.1 A/AA violation on any page of tests/web/pages.json, in Vietnamese and
//     English, at desktop width and at 360 px (where the page must not scroll sideways either);
//  3. translations: `<html lang>` matches, and no page shows a raw i18n key or the `??` of a
//     missing one.
// Input: the JSON file named by DTM_WEB_FIXTURE (base URL, accounts, ids). Exit status 0 = all passed.
"use strict";

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const { chromium } = require("playwright-core");
const axeSource = require("axe-core").source;

const fixture = JSON.parse(fs.readFileSync(process.env.DTM_WEB_FIXTURE, "utf8"));
const ROOT = path.resolve(__dirname, "..", "..");
const BASE = fixture.base_url;
const VIEWPORTS = [
  { name: "desktop", width: 1280, height: 800 },
  { name: "phone", width: 360, height: 740 },
];
const LANGS = ["vi", "en"];
const failures = [];
const log = (...a) => console.log(...a);
const fail = (what) => {
  failures.push(what);
  console.log("FAIL " + what);
};

// ---- TOTP (RFC 6238, SHA-1, 6 digits, 30 s), as authenticator apps compute it ----
function base32(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of text.replace(/[\s=]/g, "").toUpperCase()) {
    const v = alphabet.indexOf(c);
    if (v < 0) throw new Error("not base32: " + c);
    bits += v.toString(2).padStart(5, "0");
  }
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}
function totp(secretBase32, atSeconds) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(atSeconds / 30)));
  const h = crypto.createHmac("sha1", base32(secretBase32)).update(counter).digest();
  const o = h[h.length - 1] & 0xf;
  const n = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(n % 1000000).padStart(6, "0");
}
const now = () => Date.now() / 1000;

// ---- the i18n keys, to find any that shows as raw text ----
function keys(file) {
  return fs
    .readFileSync(path.join(ROOT, "node", "i18n", file), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#") && l.includes(" = "))
    .map((l) => l.split(" = ")[0].trim());
}
const KEYS = new Set([...keys("en.txt"), ...keys("vi.txt")]);

async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
}

async function newContext(browser, extra) {
  return browser.newContext({ ignoreHTTPSErrors: true, bypassCSP: true, ...extra });
}

// ---- keyboard helpers ----
/** Presses Tab until the focused element matches `test` (at most `max` presses), checking that every
 *  element that takes the focus on the way has a visible focus indicator. */
async function tabTo(page, describe, test, max = 60) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press("Tab");
    const info = await page.evaluate(() => {
      const el = document.activeElement;
      if (!el || el === document.body) return null;
      const s = getComputedStyle(el);
      return {
        tag: el.tagName.toLowerCase(),
        id: el.id,
        name: el.getAttribute("name") || "",
        text: (el.innerText || el.value || "").trim().slice(0, 60),
        href: el.getAttribute("href") || "",
        type: el.getAttribute("type") || "",
        outline: s.outlineStyle !== "none" && parseFloat(s.outlineWidth) >= 2,
        shadow: s.boxShadow && s.boxShadow !== "none",
      };
    });
    if (!info) continue;
    if (!info.outline && !info.shadow) {
      fail(`focus not visible on <${info.tag} id=${info.id} name=${info.name}> "${info.text}" (${page.url()})`);
    }
    if (test(info)) return info;
  }
  throw new Error(`keyboard: could not reach ${describe} with Tab on ${page.url()}`);
}

/** axe-core on the page as it is now (states reached by posting forms: errors, the TOTP step,
 *  the enrollment, the recovery codes), at desktop width and at 360 px. */
async function axeHere(page, label) {
  for (const viewport of VIEWPORTS) {
    await page.setViewportSize({ width: viewport.width, height: viewport.height });
    await page.addScriptTag({ content: axeSource });
    const result = await page.evaluate(() =>
      // eslint-disable-next-line no-undef
      axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }),
    );
    for (const v of result.violations) {
      fail(`${label} [${viewport.name}]: axe ${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join(" | ")}`);
    }
    if (viewport.name === "phone") {
      const wide = await page.evaluate(() => document.documentElement.scrollWidth);
      if (wide > viewport.width + 1) fail(`${label}: the page is ${wide} px wide at ${viewport.width} px`);
    }
    log(`checked ${label} [${viewport.name}]: ${result.violations.length} violations`);
  }
  await page.setViewportSize({ width: 1280, height: 800 });
}

async function keyboardFlow(browser) {
  const ctx = await newContext(browser, { viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  const admin = fixture.accounts.admin;
  await page.goto(`${BASE}/ui/login?lang=en`);
  // The skip link comes first.
  const skip = await tabTo(page, "the skip link", (i) => i.href === "#main", 3);
  log("keyboard: skip link first:", skip.text);
  await tabTo(page, "the username field", (i) => i.id === "username");
  await page.keyboard.type(admin.username);
  await tabTo(page, "the password field", (i) => i.id === "password", 3);
  await page.keyboard.type(admin.password);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/ui\/mfa/);
  log("keyboard: password accepted, enrollment required:", page.url());
  await tabTo(page, "the set-up button", (i) => i.tag === "button" && /set up/i.test(i.text));
  await page.keyboard.press("Enter");
  await page.waitForSelector("#secret");
  await axeHere(page, "enrollment (QR code)");
  const secret = (await page.textContent("#secret")).replace(/\s/g, "");
  if (!(await page.$("svg.qr[role=img][aria-label]"))) fail("the enrollment page has no labelled QR code");
  await tabTo(page, "the code field", (i) => i.id === "code");
  await page.keyboard.type(totp(secret, now()));
  await page.keyboard.press("Enter");
  await page.waitForSelector("#recovery-codes");
  const codes = await page.$$eval("#recovery-codes code", (els) => els.map((e) => e.textContent));
  if (codes.length < 5) fail(`expected recovery codes, saw ${codes.length}`);
  await axeHere(page, "recovery codes");
  log("keyboard: authenticator enrolled,", codes.length, "recovery codes shown");
  await tabTo(page, "the continue link", (i) => i.href === "/ui/");
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/ui\/$/);
  // Sign out with the keyboard.
  await tabTo(page, "the sign-out button", (i) => i.tag === "button" && /sign out/i.test(i.text));
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/ui\/login/);
  if (!(await page.textContent("main")).includes("signed out")) fail("no signed-out notice after signing out");
  // Sign in again: password, then a TOTP code (the next time step: the enrollment used this one).
  await tabTo(page, "the username field", (i) => i.id === "username");
  await page.keyboard.type(admin.username);
  await tabTo(page, "the password field", (i) => i.id === "password", 3);
  await page.keyboard.type(admin.password);
  await page.keyboard.press("Enter");
  await page.waitForSelector("#code");
  await axeHere(page, "TOTP step");
  // A wrong code first: the error summary names the problem and links to the field. The code field
  // has the focus when the step opens (autofocus).
  await page.keyboard.type("000000");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#error-summary a[href='#code']");
  log("keyboard: wrong code refused with a linked error summary");
  await axeHere(page, "TOTP step with an error");
  await tabTo(page, "the code field", (i) => i.id === "code");
  await page.keyboard.type(totp(secret, now() + 30));
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/ui\/$/);
  log("keyboard: signed in with TOTP");
  // Through the navigation to the catalog, and into a dataset.
  await tabTo(page, "the catalog link", (i) => i.href === "/ui/catalog");
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/ui\/catalog$/);
  await tabTo(page, "the dataset link", (i) => i.href === `/ui/catalog/${fixture.dataset}`);
  await page.keyboard.press("Enter");
  await page.waitForURL(new RegExp(`/ui/catalog/${fixture.dataset}`));
  log("keyboard: navigated to the dataset page");
  // The analysis form, submitted with the keyboard.
  await page.goto(`${BASE}/ui/analysis?lang=en`);
  await tabTo(page, "the first group-by box", (i) => i.id === "dim-0");
  await page.keyboard.press("Space");
  await tabTo(page, "the submit button", (i) => i.tag === "button" && /show aggregates/i.test(i.text));
  await page.keyboard.press("Enter");
  await page.waitForSelector("#result-table");
  log("keyboard: analysis submitted");
  return { ctx, secret };
}

/** Signs in through the form (and the TOTP step when the account has a secret). */
async function signIn(browser, account) {
  const ctx = await newContext(browser);
  const page = await ctx.newPage();
  await page.goto(`${BASE}/ui/login?lang=vi`);
  await page.fill("#username", account.username);
  await page.fill("#password", account.password);
  await Promise.all([page.waitForLoadState("load"), page.press("#password", "Enter")]);
  if (await page.$("#code")) {
    await page.fill("#code", totp(account.totp_secret, now() + 30));
    await Promise.all([page.waitForLoadState("load"), page.press("#code", "Enter")]);
  }
  if (!/\/ui\/$/.test(page.url())) throw new Error(`signing in as ${account.username} ended at ${page.url()}`);
  await page.close();
  return ctx;
}

async function checkPage(ctx, entry, lang, viewport) {
  const page = await ctx.newPage();
  await page.setViewportSize({ width: viewport.width, height: viewport.height });
  const target = entry.path.replace("{dataset}", fixture.dataset).replace("{source}", fixture.source);
  const url = `${BASE}${target}${target.includes("?") ? "&" : "?"}lang=${lang}`;
  const where = `${target} [${entry.as}, ${lang}, ${viewport.name}]`;
  const resp = await page.goto(url);
  if (!resp) return fail(`${where}: no response`);
  if (resp.status() >= 500) fail(`${where}: status ${resp.status()}`);
  if (/\/ui\/login/.test(page.url()) && entry.as !== "anonymous") fail(`${where}: sent to sign in`);
  const htmlLang = await page.getAttribute("html", "lang");
  if (htmlLang !== lang) fail(`${where}: <html lang="${htmlLang}">`);
  const text = await page.evaluate(() => document.body.innerText);
  const raw = text.split(/[\s()<>:,;"']+/).filter((w) => KEYS.has(w.replace(/[.]+$/, "")));
  if (raw.length) fail(`${where}: raw i18n keys shown: ${[...new Set(raw)].join(", ")}`);
  if (text.includes("??")) fail(`${where}: a missing translation (??) is shown`);
  if (viewport.name === "phone") {
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    if (wide > viewport.width + 1) fail(`${where}: the page is ${wide} px wide at ${viewport.width} px`);
  }
  await page.addScriptTag({ content: axeSource });
  const result = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }),
  );
  for (const v of result.violations) {
    const nodes = v.nodes.map((n) => n.target.join(" ") + " " + (n.failureSummary || "").split("\n").slice(1, 2).join("")).slice(0, 3);
    fail(`${where}: axe ${v.id} (${v.impact}): ${v.help} — ${nodes.join(" | ")}`);
  }
  log(`checked ${where}: ${result.violations.length} violations, ${result.passes.length} rules passed`);
  await page.close();
}

(async () => {
  const browser = await launch();
  try {
    const pages = JSON.parse(fs.readFileSync(path.join(__dirname, "pages.json"), "utf8")).pages;
    const contexts = {};
    try {
      const { ctx } = await keyboardFlow(browser);
      contexts.admin = ctx;
    } catch (e) {
      fail("keyboard flow: " + e.message);
    }
    contexts.anonymous = await newContext(browser);
    for (const entry of pages) {
      if (!contexts[entry.as]) {
        const account = fixture.accounts[entry.as];
        if (!account) {
          fail(`pages.json: no account for "${entry.as}"`);
          continue;
        }
        try {
          contexts[entry.as] = await signIn(browser, account);
        } catch (e) {
          fail(e.message);
          continue;
        }
      }
      for (const lang of LANGS) {
        for (const viewport of VIEWPORTS) {
          try {
            await checkPage(contexts[entry.as], entry, lang, viewport);
          } catch (e) {
            fail(`${entry.path} [${entry.as}, ${lang}, ${viewport.name}]: ${e.message}`);
          }
        }
      }
    }
  } finally {
    await browser.close();
  }
  console.log(failures.length ? `${failures.length} failure(s)` : "all browser checks passed");
  process.exit(failures.length ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
