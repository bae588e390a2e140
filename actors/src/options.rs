//! [`PipelineOptions`]: the limits and the restart policy of the pipeline, validated at start-up.

use std::time::Duration;

use crate::limits;

/// Options of a [`crate::Pipeline`]. Every field is explicit because each one decides how the node
/// behaves under overload or failure; `Default` gives the values documented in `limits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Jobs admitted per source, whether in the pipeline or held by a caller's permit while it
    /// commits; one more is refused with `Busy` at once. This bounds the (unbounded) mailboxes.
    pub queue_depth_per_source: usize,
    /// At most this many restarts of one stage actor within `restart_window`; one more failure
    /// escalates to a restart of the whole source.
    pub restart_max: u32,
    /// The sliding window over which stage restarts are counted.
    pub restart_window: Duration,
    /// Delay before the first restart of a stage; doubled for each further failure in the window.
    pub backoff_initial: Duration,
    /// Cap of the restart delay, and the delay before a source is restarted after an escalation.
    pub backoff_max: Duration,
    /// How long a caller waits for its job before getting `Timeout`.
    pub call_timeout: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            queue_depth_per_source: limits::QUEUE_DEPTH_PER_SOURCE_DEFAULT,
            restart_max: limits::RESTART_MAX_DEFAULT,
            restart_window: Duration::from_millis(limits::RESTART_WINDOW_DEFAULT_MS),
            backoff_initial: Duration::from_millis(limits::BACKOFF_INITIAL_DEFAULT_MS),
            backoff_max: Duration::from_millis(limits::BACKOFF_MAX_DEFAULT_MS),
            call_timeout: Duration::from_millis(limits::CALL_TIMEOUT_DEFAULT_MS),
        }
    }
}

impl PipelineOptions {
    /// Checks every field against the bounds in `limits`; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_depth_per_source == 0 || self.queue_depth_per_source > limits::QUEUE_DEPTH_PER_SOURCE_MAX {
            return Err(format!(
                "queue_depth_per_source must be in 1..={}, got {}",
                limits::QUEUE_DEPTH_PER_SOURCE_MAX,
                self.queue_depth_per_source
            ));
        }
        if self.restart_max > limits::RESTART_MAX_LIMIT {
            return Err(format!("restart_max must be at most {}, got {}", limits::RESTART_MAX_LIMIT, self.restart_max));
        }
        if self.restart_window.is_zero() {
            return Err("restart_window must be positive".to_owned());
        }
        if self.backoff_initial.is_zero() {
            return Err("backoff_initial must be positive".to_owned());
        }
        if self.backoff_initial > self.backoff_max {
            return Err(format!(
                "backoff_initial ({:?}) must not exceed backoff_max ({:?})",
                self.backoff_initial, self.backoff_max
            ));
        }
        if self.backoff_max > Duration::from_millis(limits::BACKOFF_MAX_LIMIT_MS) {
            return Err(format!("backoff_max must be at most {} ms", limits::BACKOFF_MAX_LIMIT_MS));
        }
        if self.call_timeout.is_zero() || self.call_timeout > Duration::from_millis(limits::CALL_TIMEOUT_LIMIT_MS) {
            return Err(format!("call_timeout must be in (0, {}] ms", limits::CALL_TIMEOUT_LIMIT_MS));
        }
        Ok(())
    }

    /// The delay before restarting a stage that failed for the `failures_in_window`-th time
    /// (1-based): `backoff_initial × 2^(n-1)`, capped at `backoff_max`.
    pub(crate) fn backoff_for(&self, failures_in_window: usize) -> Duration {
        let exponent = u32::try_from(failures_in_window.saturating_sub(1)).unwrap_or(u32::MAX).min(31);
        self.backoff_initial.saturating_mul(1u32 << exponent).min(self.backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(PipelineOptions::default().validate(), Ok(()));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let opts = PipelineOptions { queue_depth_per_source: 0, ..PipelineOptions::default() };
        assert!(opts.validate().is_err_and(|e| e.contains("queue_depth_per_source")));
        let opts = PipelineOptions { backoff_initial: Duration::from_secs(10), ..PipelineOptions::default() };
        assert!(opts.validate().is_err_and(|e| e.contains("backoff_initial")));
        let opts = PipelineOptions { call_timeout: Duration::ZERO, ..PipelineOptions::default() };
        assert!(opts.validate().is_err_and(|e| e.contains("call_timeout")));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let opts = PipelineOptions {
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(300),
            ..PipelineOptions::default()
        };
        assert_eq!(opts.backoff_for(1), Duration::from_millis(50));
        assert_eq!(opts.backoff_for(2), Duration::from_millis(100));
        assert_eq!(opts.backoff_for(3), Duration::from_millis(200));
        assert_eq!(opts.backoff_for(4), Duration::from_millis(300));
        assert_eq!(opts.backoff_for(100), Duration::from_millis(300));
    }
}
