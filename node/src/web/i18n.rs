//! Translations and the formatting of numbers and dates per language (A1.2). The catalogues are
//! `node/i18n/vi.txt` and `node/i18n/en.txt`, embedded at compile time: one `key = text` a line,
//! `#` starts a comment. Vietnamese is the default. A key missing from a catalogue shows as `??`; the
//! unit tests below make sure that never ships (both catalogues have the same keys, and
//! every key the templates and `crate::web` use exists).

use std::collections::BTreeMap;
use std::sync::LazyLock;

const VI: &str = include_str!("../../i18n/vi.txt");
const EN: &str = include_str!("../../i18n/en.txt");

/// A page's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    Vi,
    En,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "vi" => Some(Lang::Vi),
            "en" => Some(Lang::En),
            _ => None,
        }
    }
    /// The BCP 47 tag, for `<html lang>` and `?lang=`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Vi => "vi",
            Lang::En => "en",
        }
    }
    /// The other language (the switch in the header offers it).
    pub fn other(self) -> Lang {
        match self {
            Lang::Vi => Lang::En,
            Lang::En => Lang::Vi,
        }
    }
}

fn parse_catalogue(text: &'static str) -> BTreeMap<&'static str, &'static str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(" = ").map(|(k, v)| (k.trim(), v.trim())))
        .collect()
}

static CATALOGUES: LazyLock<[BTreeMap<&'static str, &'static str>; 2]> =
    LazyLock::new(|| [parse_catalogue(VI), parse_catalogue(EN)]);

/// The text of `key` in `lang`: the English text, or `??`, when missing (the tests forbid that).
pub fn t(lang: Lang, key: &str) -> &'static str {
    let cat = &CATALOGUES[lang as usize];
    match cat.get(key) {
        Some(v) => v,
        None => {
            tracing::warn!(key, lang = lang.code(), "untranslated key");
            CATALOGUES[Lang::En as usize].get(key).copied().unwrap_or("??")
        }
    }
}

/// Marks a literal as an i18n key, for keys chosen in Rust code rather than in a template (the
/// key test finds `tk("…")` as well as `t("…")`).
pub const fn tk(key: &'static str) -> &'static str {
    key
}

/// `1234567.5` → vi `1.234.567,5`, en `1,234,567.5`; at most `decimals` decimals, trailing
/// zeros dropped.
pub fn number(lang: Lang, n: f64, decimals: usize) -> String {
    if !n.is_finite() {
        return "–".into();
    }
    let (group, point) = match lang {
        Lang::Vi => ('.', ','),
        Lang::En => (',', '.'),
    };
    let text = format!("{:.*}", decimals, n.abs());
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let frac = frac.trim_end_matches('0');
    let mut out = String::with_capacity(text.len() + text.len() / 3 + 1);
    if n < 0.0 && (int != "0" || !frac.is_empty()) {
        out.push('-');
    }
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(group);
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push(point);
        out.push_str(frac);
    }
    out
}

/// A JSON value as page text: numbers per language, strings as they are, nothing as a dash.
pub fn value(lang: Lang, v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| number(lang, f, 2)),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "–".into(),
        serde_json::Value::Bool(b) => t(lang, if *b { "common.yes" } else { "common.no" }).into(),
        other => other.to_string(),
    }
}

/// Vietnam time (UTC+7, no daylight saving): dates on the pages are Vietnam dates.
const VIETNAM_OFFSET_SECONDS: i64 = 7 * 3600;

/// Milliseconds since the epoch as a Vietnam date and time: vi `27/11/2026 14:05`, en
/// `2026-11-27 14:05` (ISO 8601).
pub fn datetime(lang: Lang, ms: u64) -> String {
    if ms == 0 {
        return "–".into();
    }
    let secs = (ms / 1000) as i64 + VIETNAM_OFFSET_SECONDS;
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs) else { return "–".into() };
    let (y, m, d, hh, mm) = (t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute());
    match lang {
        Lang::Vi => format!("{d:02}/{m:02}/{y:04} {hh:02}:{mm:02}"),
        Lang::En => format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}"),
    }
}

/// A day as `yyyy-mm-dd` text (the API's form) shown per language: vi `27/11/2026`.
pub fn day(lang: Lang, iso: &str) -> String {
    let parts: Vec<&str> = iso.splitn(3, '-').collect();
    match (lang, parts.as_slice()) {
        (Lang::Vi, [y, m, d]) if y.len() == 4 && m.len() == 2 && d.len() == 2 => format!("{d}/{m}/{y}"),
        _ => iso.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_dates_follow_the_language() {
        assert_eq!(number(Lang::Vi, 1234.5, 2), "1.234,5");
        assert_eq!(number(Lang::En, 1234.5, 2), "1,234.5");
        assert_eq!(number(Lang::Vi, 1234567.0, 0), "1.234.567");
        assert_eq!(number(Lang::En, -1000.25, 2), "-1,000.25");
        assert_eq!(number(Lang::En, 12.0, 2), "12");
        assert_eq!(number(Lang::En, -0.0001, 2), "0");
        // 2026-11-27 07:05 UTC is 14:05 in Vietnam.
        let ms = 1_795_763_100_000;
        assert_eq!(datetime(Lang::Vi, ms), "27/11/2026 14:05");
        assert_eq!(datetime(Lang::En, ms), "2026-11-27 14:05");
        assert_eq!(day(Lang::Vi, "2026-11-27"), "27/11/2026");
        assert_eq!(day(Lang::En, "2026-11-27"), "2026-11-27");
    }

    fn keys(text: &'static str) -> Vec<&'static str> {
        parse_catalogue(text).keys().copied().collect()
    }

    /// Issue 9 test 4 (A1.2): both catalogues hold the same keys, none empty, no duplicates.
    #[test]
    fn catalogues_have_the_same_keys() {
        let (vi, en) = (keys(VI), keys(EN));
        let only_vi: Vec<_> = vi.iter().filter(|k| !en.contains(k)).collect();
        let only_en: Vec<_> = en.iter().filter(|k| !vi.contains(k)).collect();
        assert!(only_vi.is_empty() && only_en.is_empty(), "only in vi: {only_vi:?}; only in en: {only_en:?}");
        for text in [VI, EN] {
            let lines: Vec<&str> =
                text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
            assert_eq!(lines.len(), parse_catalogue(text).len(), "a line without ` = ` or a duplicate key");
            assert!(parse_catalogue(text).values().all(|v| !v.is_empty()), "an empty translation");
        }
    }

    /// Every key used by a template (`t("…")`) or by the web code (`t("…")`, `tk("…")`) is in the
    /// catalogues (templates of every page group, the reporting pages included).
    #[test]
    fn every_used_key_is_translated() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        let mut dirs = vec![root.join("templates"), root.join("src/web")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("readable directory").flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        let known = parse_catalogue(VI);
        let mut used = 0;
        let mut missing = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).expect("readable file");
            for pat in ["t(\"", "tk(\""] {
                for (at, _) in text.match_indices(pat) {
                    // `t(` as a word of its own, not the end of `get(` or `asset(`.
                    let before = text[..at].chars().next_back();
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        continue;
                    }
                    let rest = &text[at + pat.len()..];
                    let Some(end) = rest.find('"') else { continue };
                    let key = &rest[..end];
                    // `t("…")` in this test's own text and the doc comments is not a key.
                    if key.is_empty() || key.contains(['…', ' ']) {
                        continue;
                    }
                    used += 1;
                    if !known.contains_key(key) {
                        missing.push(format!("{}: {key}", f.display()));
                    }
                }
            }
        }
        assert!(used > 50, "the scan found only {used} keys: is it looking in the right place?");
        assert!(missing.is_empty(), "keys without a translation: {missing:#?}");
    }
}
