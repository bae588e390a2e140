//! The one error type of this crate. Callers show problems to whoever posted the definition or the
//! record, so messages never echo a record's values (they may be personal data); they name fields
//! and the constants of the definition instead.

use serde::Deserialize;
use serde::Serialize;

/// One thing wrong with a definition, a record or a query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Problem {
    /// Index of the record in its batch; `None` for definition and query problems.
    pub record: Option<usize>,
    /// JSON Pointer to the offending place: into the record (`/failed`), into the definition
    /// (`/rules/0/op`) or into the query (`/group_by`); `""` is the whole thing.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl Problem {
    /// A problem of a definition or a query (no record index).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem { record: None, field: field.into(), message: message.into() }
    }

    /// A problem of record number `index`.
    pub fn at(index: usize, field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem { record: Some(index), field: field.into(), message: message.into() }
    }
}

/// The JSON Pointer of top-level field `name` (RFC 6901 escaping: `~` → `~0`, `/` → `~1`).
pub fn pointer(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    out.push('/');
    push_escaped(&mut out, name);
    out
}

/// `base` extended by one segment.
pub fn pointer_join(base: &str, segment: &str) -> String {
    let mut out = String::with_capacity(base.len() + segment.len() + 1);
    out.push_str(base);
    out.push('/');
    push_escaped(&mut out, segment);
    out
}

fn push_escaped(out: &mut String, segment: &str) {
    for c in segment.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}
