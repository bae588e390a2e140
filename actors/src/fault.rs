//! Test-only fault injection (feature `fault-injection`, never in a release build): a trigger the
//! node's `Stages` implementation consults so tests can make a chosen stage panic on demand.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::StageId;

/// Armed panics per stage. `Stages` implementations call [`FaultTrigger::check`] at the start of
/// each stage; it panics while the stage has armed panics left.
#[derive(Debug, Default)]
pub struct FaultTrigger {
    armed: [AtomicU32; 3],
}

impl FaultTrigger {
    /// Makes the next `times` calls of `stage` panic.
    pub fn arm_panic(&self, stage: StageId, times: u32) {
        self.armed[stage.index()].store(times, Ordering::SeqCst);
    }

    /// Panics if `stage` has an armed panic left (and uses it up).
    pub fn check(&self, stage: StageId) {
        let fire = self.armed[stage.index()]
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .is_ok();
        if fire {
            panic!("injected fault in stage {}", stage.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_exactly_the_armed_number_of_times() {
        let trigger = FaultTrigger::default();
        trigger.check(StageId::Validate);
        trigger.arm_panic(StageId::Validate, 2);
        for _ in 0..2 {
            assert!(std::panic::catch_unwind(|| trigger.check(StageId::Validate)).is_err());
        }
        trigger.check(StageId::Validate);
        trigger.check(StageId::Ingest);
    }
}
