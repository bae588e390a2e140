//! Masking of personal data (C7), applied on the receiving node before a record is proposed to
//! Raft, so raw personal data never reaches the replicated log. Sources that mask on their side
//! ("masked" form) are checked instead: a value that still looks like a citizen id, a phone number or
//! an e-mail address is refused.

use std::sync::LazyLock;

use hmac::Mac;
use regex::Regex;
use serde_json::Map;
use serde_json::Value;

use crate::canonical::canonical_json;
use crate::def::MaskMethod;
use crate::def::SourceForm;
use crate::error::Problem;
use crate::error::pointer;
use crate::limits;
use crate::validate::CompiledDataset;
use crate::validate::hmac_sha256;

/// What redaction leaves in place of the value.
pub const REDACTED: &str = "[redacted]";
/// Prefix of hash-masked values.
pub const HASH_PREFIX: &str = "hmac:";

// The patterns are constants of this file, so failing to compile one is a programmer error that
// every test run would show at once.
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}").expect("constant regex")
});

impl CompiledDataset {
    /// Raw form: replaces every masked field present by its masked form. Masked form: refuses masked
    /// fields whose value looks like raw personal data. Returns the fields masked or checked.
    pub fn mask(
        &self,
        index: usize,
        record: &mut Map<String, Value>,
        form: SourceForm,
        key: &[u8],
    ) -> Result<Vec<String>, Vec<Problem>> {
        let mut touched = Vec::new();
        let mut problems = Vec::new();
        for (field, method) in &self.def.masking {
            let Some(value) = record.get_mut(field) else { continue };
            if value.is_null() {
                continue;
            }
            match form {
                SourceForm::Raw => *value = mask_value(value, method, key),
                SourceForm::Masked => {
                    if let Some(kind) = raw_personal_data_kind(value) {
                        problems.push(Problem::at(
                            index,
                            pointer(field),
                            format!(
                                "`{field}` looks like a raw {kind}; this source must send it masked ({})",
                                method.name()
                            ),
                        ));
                    }
                }
            }
            touched.push(field.clone());
        }
        if problems.is_empty() { Ok(touched) } else { Err(problems) }
    }
}

/// The masked form of a non-null value.
pub fn mask_value(value: &Value, method: &MaskMethod, key: &[u8]) -> Value {
    match method {
        MaskMethod::Redact => Value::String(REDACTED.to_string()),
        MaskMethod::Hash => Value::String(mask_hash(value, key)),
        MaskMethod::Partial { keep_start, keep_end } => match value {
            Value::String(s) => Value::String(mask_partial(s, *keep_start, *keep_end)),
            Value::Number(n) => Value::String(mask_partial(&n.to_string(), *keep_start, *keep_end)),
            // Booleans, arrays and objects have no characters to keep: hide them whole.
            _ => Value::String(REDACTED.to_string()),
        },
    }
}

/// "hmac:" + hex of the first bytes of HMAC-SHA256(key, canonical JSON of the value): equal values
/// still join, other keys give other hashes.
pub fn mask_hash(value: &Value, key: &[u8]) -> String {
    let mut mac = hmac_sha256(key);
    mac.update(canonical_json(value).as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("{HASH_PREFIX}{}", hex::encode(&digest[..limits::MASK_HASH_BYTES]))
}

/// Keeps `keep_start` first and `keep_end` last characters (chars, not bytes: Vietnamese text) and
/// puts `*` for each hidden one. A value too short to hide at least
/// [`limits::PARTIAL_HIDDEN_CHARS_MIN`] characters that way keeps only its last
/// [`limits::PARTIAL_KEEP_END_SHORT_CHARS`] characters, and never more than half of itself.
pub fn mask_partial(text: &str, keep_start: usize, keep_end: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let (start, end) = if n >= keep_start + keep_end + limits::PARTIAL_HIDDEN_CHARS_MIN {
        (keep_start, keep_end)
    } else {
        (0, keep_end.min(limits::PARTIAL_KEEP_END_SHORT_CHARS).min(n / 2))
    };
    chars.iter().enumerate().map(|(i, c)| if i < start || i >= n - end { *c } else { '*' }).collect()
}

/// Whether a value is already in one of the masked forms this crate produces.
pub fn looks_masked(text: &str) -> bool {
    text.contains('*') || text.starts_with(HASH_PREFIX) || text == REDACTED
}

/// The kind of personal data a value looks like, if it is not masked: "citizen id", "phone number"
/// or "e-mail address".
pub fn raw_personal_data_kind(value: &Value) -> Option<&'static str> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    // Only the forms that cannot hide anything are skipped outright: a `*` appended to an e-mail
    // address must not let it through (a partially masked address has no name part left before
    // `@`, so the pattern does not match it).
    if text.starts_with(HASH_PREFIX) || text == REDACTED {
        return None;
    }
    if EMAIL.is_match(&text) {
        return Some("e-mail address");
    }
    let compact: String = text.chars().filter(|c| !(c.is_whitespace() || matches!(c, '.' | '-'))).collect();
    if (compact.len() == 9 || compact.len() == 12) && compact.bytes().all(|b| b.is_ascii_digit()) {
        return Some("citizen id");
    }
    // Phone numbers are also written with parentheses around the area code.
    let digits = compact.replace(['(', ')'], "");
    let national = if let Some(rest) = digits.strip_prefix("+84") {
        Some(rest)
    } else if let Some(rest) = digits.strip_prefix("84") {
        Some(rest)
    } else {
        digits.strip_prefix('0')
    };
    if national.is_some_and(|rest| (9..=10).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_digit())) {
        return Some("phone number");
    }
    None
}

#[cfg(test)]
#[path = "mask_tests.rs"]
mod tests;
