//! Jittered exponential backoff between reconnection attempts.

use std::time::Duration;

use rand::Rng;

use crate::config::BackoffConfig;

/// Delays that double from `initial` up to `max`; each delay is drawn uniformly from the upper
/// half of the current step, so agents that lost the manager together do not come back in
/// lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    step: Duration,
}

impl Backoff {
    /// A backoff at its first step.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            step: config.initial,
        }
    }

    /// The next delay; the step after it is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step.min(self.config.max);
        self.step = (step * 2).min(self.config.max);
        let half = step / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    }

    /// Back to the first step (after a connection that worked).
    pub fn reset(&mut self) {
        self.step = self.config.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        });
        let mut upper = Duration::from_millis(200);
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= upper / 2 && d <= upper,
                "{d:?} not in [{:?}, {upper:?}]",
                upper / 2
            );
            upper = (upper * 2).min(Duration::from_secs(30));
        }
        assert!(b.next_delay() <= Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(200));
    }
}
