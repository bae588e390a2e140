//! The crate's one error type. Library functions return it; the binary and the tests wrap it in
//! `anyhow` at their edge.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A file or directory operation failed; `what` says which and why it was needed.
    #[error("{what} ({path}): {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A helper command (`ip`, `iptables`, `dtm certs`) failed or could not run.
    #[error("command `{command}` failed: {detail}")]
    Command { command: String, detail: String },
    /// A `dtm serve` process did not start or did not stop.
    #[error("node {node}: {detail}")]
    Node { node: u64, detail: String },
    /// The cluster answered a setup or admin request with something other than success.
    #[error("{what}: HTTP {status}: {body}")]
    Api { what: String, status: u16, body: String },
    /// The HTTPS client failed (connection, TLS, timeout, body).
    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// A condition was not reached before its deadline.
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout { what: String, waited_ms: u64 },
    /// A history line or an answer did not have the expected shape.
    #[error("malformed {what}: {detail}")]
    Malformed { what: String, detail: String },
    /// The run's options are inconsistent (e.g. a partition scenario without network namespaces).
    #[error("invalid options: {0}")]
    Options(String),
}

impl ChaosError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> ChaosError {
        ChaosError::Io { what, path: path.into(), source }
    }
}

pub type Result<T, E = ChaosError> = std::result::Result<T, E>;
