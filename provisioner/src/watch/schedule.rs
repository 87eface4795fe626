//! When the next reconcile runs, and what it must do. Pure (times are passed in), so the rules
//! are unit-tested without a clock:
//!
//! - events are debounced: a reconcile waits for a quiet period after the last one, at most
//!   [`MAX_DEBOUNCE`] after the first;
//! - after a failure nothing runs before the backoff has passed, whatever arrives meanwhile:
//!   events, resyncs and requeues are coalesced into that next attempt;
//! - what is pending only grows until a reconcile takes it.

use std::time::Duration;

use tokio::time::Instant;

/// Longest a burst of events can postpone a reconcile.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

/// What the next reconcile must do, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Work {
    /// Recompute the readiness gates from the last observation; no AWS call.
    Gates,
    /// Something the plan depends on changed in the cluster: read target health and apply the
    /// plan, unless the plan's inputs turn out unchanged (then as [`Work::Gates`]).
    Cluster,
    /// Something waits on the ALB (a gate, a drain, a wave): read target health and apply.
    Alb,
    /// Re-read the target group itself (drift, VPC), then as [`Work::Alb`].
    Full,
}

impl Work {
    /// The label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gates => "gates",
            Self::Cluster => "cluster",
            Self::Alb => "alb",
            Self::Full => "full",
        }
    }
}

/// Exponential backoff with jitter: the n-th consecutive failure waits a random time between
/// half and all of `min * 2^(n-1)`, capped at `max` ("equal jitter": never less than half, so a
/// persistently failing call really slows down, yet replicas do not retry in lockstep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The defaults of `watch`.
    pub const DEFAULT: Self = Self { min: Duration::from_secs(1), max: Duration::from_secs(60) };

    /// The wait after `failures` consecutive failures (1 for the first), with `unit` in [0, 1)
    /// as the random draw.
    pub fn after(&self, failures: u32, unit: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let full = self.min.saturating_mul(1u32 << exp.min(20)).min(self.max);
        full / 2 + full.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }
}

/// The schedule of one controller.
#[derive(Debug, Clone)]
pub struct Schedule {
    pending: Option<Work>,
    due: Option<Instant>,
    burst_started: Option<Instant>,
    retry_at: Option<Instant>,
    failures: u32,
}

impl Default for Schedule {
    fn default() -> Self {
        Self::new()
    }
}

impl Schedule {
    /// Nothing pending.
    pub fn new() -> Self {
        Self { pending: None, due: None, burst_started: None, retry_at: None, failures: 0 }
    }

    /// When the pending work may run, if any is pending.
    pub fn due(&self) -> Option<Instant> {
        self.pending.and(self.due)
    }

    /// What is pending.
    #[cfg(test)]
    pub fn pending(&self) -> Option<Work> {
        self.pending
    }

    fn add(&mut self, work: Work) {
        self.pending = self.pending.max(Some(work));
    }

    fn not_before_retry(&self, at: Instant) -> Instant {
        self.retry_at.map_or(at, |r| r.max(at))
    }

    /// An event changed something: run after a quiet period of `debounce`, within
    /// [`MAX_DEBOUNCE`] of the first event of the burst, and not before a pending retry.
    pub fn event(&mut self, work: Work, now: Instant, debounce: Duration) {
        self.add(work);
        let started = *self.burst_started.get_or_insert(now);
        let quiet = (now + debounce).min(started + MAX_DEBOUNCE);
        self.due = Some(self.not_before_retry(quiet));
    }

    /// Run as soon as allowed (a resync, a new term as leader).
    pub fn now(&mut self, work: Work, now: Instant) {
        self.add(work);
        let at = self.not_before_retry(now);
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }

    /// Run again at `at` (something waits on the ALB), unless something earlier is due.
    pub fn requeue(&mut self, work: Work, at: Instant) {
        self.add(work);
        let at = self.not_before_retry(at);
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }

    /// Takes the pending work to run it now.
    pub fn take(&mut self) -> Option<Work> {
        self.due = None;
        self.burst_started = None;
        self.pending.take()
    }

    /// The taken work succeeded: the backoff is over.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// The taken work failed: it is pending again, after the backoff. Returns the wait.
    pub fn failed(&mut self, work: Work, now: Instant, backoff: &Backoff, unit: f64) -> Duration {
        self.failures += 1;
        let wait = backoff.after(self.failures, unit);
        self.retry_at = Some(now + wait);
        self.add(work);
        self.due = self.retry_at;
        wait
    }

    /// The taken work was cancelled (leadership was lost): it is pending for the next term.
    pub fn cancelled(&mut self, work: Work) {
        self.add(work);
        self.due = None;
    }
}

/// A number in [0, 1) that differs between processes and calls, for jitter (std only: the
/// standard library's hasher is randomly keyed per process).
pub fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_with_equal_jitter_up_to_the_cap() {
        let b = Backoff::DEFAULT;
        assert_eq!((b.after(1, 0.0), b.after(1, 0.5)), (S / 2, 750 * MS));
        assert_eq!(b.after(2, 0.0), S);
        assert_eq!(b.after(4, 0.5), S * 6);
        assert_eq!(b.after(7, 0.0), S * 30, "2^6 s is above the 60 s cap");
        assert_eq!(b.after(100, 1.0), S * 60);
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn events_are_debounced_within_a_bound() {
        let t0 = Instant::now();
        let mut s = Schedule::new();
        assert_eq!(s.due(), None);
        s.event(Work::Cluster, t0, 200 * MS);
        assert_eq!(s.due(), Some(t0 + 200 * MS));
        // A steady stream of events postpones the reconcile, but not beyond MAX_DEBOUNCE.
        for i in 1..20 {
            s.event(Work::Gates, t0 + i * 150 * MS, 200 * MS);
        }
        assert_eq!(s.due(), Some(t0 + MAX_DEBOUNCE));
        assert_eq!(s.take(), Some(Work::Cluster), "pending work only grows");
        assert_eq!(s.due(), None);
    }

    #[test]
    fn events_do_not_cut_a_backoff_short() {
        let t0 = Instant::now();
        let mut s = Schedule::new();
        s.now(Work::Cluster, t0);
        let work = s.take().expect("work");
        let wait = s.failed(work, t0, &Backoff::DEFAULT, 0.0);
        assert_eq!(wait, S / 2);
        // Events, a resync and a requeue during the backoff all wait for it.
        s.event(Work::Cluster, t0 + 10 * MS, 100 * MS);
        assert_eq!(s.due(), Some(t0 + S / 2));
        s.now(Work::Full, t0 + 20 * MS);
        s.requeue(Work::Cluster, t0 + 30 * MS);
        assert_eq!((s.due(), s.pending()), (Some(t0 + S / 2), Some(Work::Full)));
        // The second failure doubles the wait; a success ends the backoff.
        let work = s.take().expect("work");
        assert_eq!(s.failed(work, t0 + S, &Backoff::DEFAULT, 0.0), S);
        s.take();
        s.succeeded();
        s.event(Work::Cluster, t0 + 3 * S, 100 * MS);
        assert_eq!(s.due(), Some(t0 + 3 * S + 100 * MS));
    }

    #[test]
    fn a_requeue_does_not_postpone_something_due_sooner() {
        let t0 = Instant::now();
        let mut s = Schedule::new();
        s.event(Work::Cluster, t0, 100 * MS);
        s.requeue(Work::Cluster, t0 + 5 * S);
        assert_eq!(s.due(), Some(t0 + 100 * MS));
    }

    #[test]
    fn cancelled_work_waits_for_the_next_term() {
        let mut s = Schedule::new();
        s.now(Work::Cluster, Instant::now());
        let work = s.take().expect("work");
        s.cancelled(work);
        assert_eq!((s.pending(), s.due()), (Some(Work::Cluster), None));
        s.now(Work::Full, Instant::now());
        assert_eq!(s.pending(), Some(Work::Full));
    }
}
