//! Consumer lag status from a sliding window of samples, with Burrow's
//! threshold-free rules (linkedin/Burrow's evaluator): no "lag above N"
//! setting to tune per consumer, only how the consumer moves.
//!
//! Sample a durable consumer periodically (its position, the acknowledged
//! floor in the stream; its lag, what is pending or awaiting an ack; when
//! it last showed activity) and push each [`LagSample`] into a
//! [`LagWindow`]; [`LagWindow::status`] evaluates the window, first rule that
//! applies wins:
//!
//! 1. no samples yet, or not a full window: [`LagStatus::Ok`] (nothing to say);
//! 2. lag zero in any sample of the window: [`LagStatus::Ok`] (it caught up);
//! 3. the position went backwards between two samples: [`LagStatus::Rewind`];
//! 4. lag, and no activity for longer than the window spans:
//!    [`LagStatus::Stop`] (nobody consumes);
//! 5. lag, and the position never moved: [`LagStatus::Stall`] (the
//!    consumer is alive, nothing is acknowledged: a stuck handler, a
//!    poison loop);
//! 6. the position moves but the lag never shrank: [`LagStatus::Warn`]
//!    (falling behind);
//! 7. otherwise [`LagStatus::Ok`].
//!
//! [`LagMonitor`](crate::status::LagMonitor) does the sampling for a list
//! of consumers, through
//! [`EventBus::consumer_state`](crate::EventBus::consumer_state) (both
//! backends), and sets their [gauges](crate::metrics::CONSUMER_LAG_STATUS).
//!
//! ```
//! use event_bus::consumer::lag::{LagSample, LagStatus, LagWindow};
//! use std::time::{Duration, Instant};
//!
//! let start = Instant::now();
//! let mut window = LagWindow::new(3);
//! for i in 0..3u64 {
//!     let at = start + Duration::from_secs(10 * i);
//!     // Deliveries keep coming, the acknowledged position stays at 40.
//!     window.push(LagSample { at, position: 40, lag: 7, last_active: Some(at) });
//! }
//! assert_eq!(window.status(start + Duration::from_secs(20)), LagStatus::Stall);
//! ```

use crate::consumer::ConsumerState;
use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

/// One observation of a durable consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LagSample {
    /// When it was taken.
    pub at: Instant,
    /// The consumer's position: the stream sequence below which everything
    /// is acknowledged (JetStream's ack floor).
    pub position: u64,
    /// Messages not yet acknowledged: pending delivery plus awaiting an ack.
    pub lag: u64,
    /// When the consumer last showed life, if ever: a delivery, an
    /// acknowledgement, or (at the time of the sample) a pull request
    /// waiting for messages or messages held by a live instance.
    pub last_active: Option<Instant>,
}

/// A consumer's lag status (Burrow's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum LagStatus {
    /// Keeping up, or not enough samples to say otherwise.
    Ok,
    /// Moving, but the lag has not shrunk over the window.
    Warn,
    /// Alive but acknowledging nothing, with lag.
    Stall,
    /// No activity for longer than the window spans, with lag.
    Stop,
    /// The position went backwards (the consumer was reset or re-created).
    Rewind,
}

impl LagStatus {
    /// A short, stable, upper-case name (`OK`, `WARN`, `STALL`, `STOP`,
    /// `REWIND`), as in Burrow.
    pub fn as_str(self) -> &'static str {
        match self {
            LagStatus::Ok => "OK",
            LagStatus::Warn => "WARN",
            LagStatus::Stall => "STALL",
            LagStatus::Stop => "STOP",
            LagStatus::Rewind => "REWIND",
        }
    }

    /// Whether a service should report itself not ready over it (`STALL`,
    /// `STOP`).
    pub fn is_failing(self) -> bool {
        matches!(self, LagStatus::Stall | LagStatus::Stop)
    }
}

impl fmt::Display for LagStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last `capacity` samples of one consumer.
#[derive(Clone, Debug)]
pub struct LagWindow {
    samples: VecDeque<LagSample>,
    capacity: usize,
}

impl LagWindow {
    /// A window of `capacity` samples (at least 2; Burrow's default is 10).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2);
        LagWindow {
            samples: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Adds a sample, dropping the oldest when full. A sample older than
    /// the newest is ignored (samples arrive in time order).
    pub fn push(&mut self, sample: LagSample) {
        if self.samples.back().is_some_and(|last| sample.at < last.at) {
            return;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &LagSample> {
        self.samples.iter()
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&LagSample> {
        self.samples.back()
    }

    /// The status at `now` (see the [module docs](self) for the rules).
    pub fn status(&self, now: Instant) -> LagStatus {
        let s = &self.samples;
        if s.len() < self.capacity {
            return LagStatus::Ok;
        }
        if s.iter().any(|x| x.lag == 0) {
            return LagStatus::Ok;
        }
        let pairs = || s.iter().zip(s.iter().skip(1));
        if pairs().any(|(a, b)| b.position < a.position) {
            return LagStatus::Rewind;
        }
        let first = s.front().expect("a full window");
        let last = s.back().expect("a full window");
        let span = last.at.saturating_duration_since(first.at);
        let idle = match last.last_active {
            Some(d) => now.saturating_duration_since(d),
            None => now.saturating_duration_since(first.at),
        };
        if idle > span {
            return LagStatus::Stop;
        }
        if first.position == last.position {
            return LagStatus::Stall;
        }
        if pairs().all(|(a, b)| b.lag >= a.lag) {
            return LagStatus::Warn;
        }
        LagStatus::Ok
    }
}

/// The sampled gauges of one durable consumer (set by the
/// [`LagMonitor`](crate::status::LagMonitor) watching it).
pub(crate) struct LagGauges {
    pending: metrics::Gauge,
    ack_pending: metrics::Gauge,
    redelivered: metrics::Gauge,
    status: Vec<(LagStatus, metrics::Gauge)>,
}

impl LagGauges {
    pub(crate) fn new(system: &'static str, consumer: &str, tenant: Option<&str>) -> Self {
        let labels = crate::metrics::with_tenant(
            vec![
                ("messaging.system", system.to_string()),
                ("messaging.consumer.group.name", consumer.to_string()),
            ],
            tenant,
        );
        let status = [
            LagStatus::Ok,
            LagStatus::Warn,
            LagStatus::Stall,
            LagStatus::Stop,
            LagStatus::Rewind,
        ]
        .into_iter()
        .map(|st| {
            let mut l = labels.to_vec();
            l.push(("event_bus.lag_status", st.as_str().to_string()));
            (st, metrics::gauge!(crate::metrics::CONSUMER_LAG_STATUS, &l))
        })
        .collect();
        LagGauges {
            pending: metrics::gauge!(crate::metrics::CONSUMER_PENDING, &labels),
            ack_pending: metrics::gauge!(crate::metrics::CONSUMER_ACK_PENDING, &labels),
            redelivered: metrics::gauge!(crate::metrics::CONSUMER_REDELIVERED, &labels),
            status,
        }
    }

    pub(crate) fn set(&self, state: Option<&ConsumerState>, status: LagStatus) {
        if let Some(s) = state {
            self.pending.set(s.pending as f64);
            self.ack_pending.set(s.ack_pending as f64);
            self.redelivered.set(s.redelivered as f64);
        }
        for (st, g) in &self.status {
            g.set(if *st == status { 1.0 } else { 0.0 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A full window of samples 10 s apart: (position, lag), active at each
    /// sample, or (`idle`) last active just before the window began.
    fn window(points: &[(u64, u64)], idle: bool) -> (LagWindow, Instant) {
        let t0 = Instant::now();
        let mut w = LagWindow::new(points.len());
        for (i, &(position, lag)) in points.iter().enumerate() {
            let at = t0 + Duration::from_secs(10 * i as u64);
            w.push(LagSample {
                at,
                position,
                lag,
                last_active: if idle {
                    Some(t0 - Duration::from_secs(1))
                } else {
                    Some(at)
                },
            });
        }
        let now = t0 + Duration::from_secs(10 * (points.len() as u64 - 1));
        (w, now)
    }

    /// A case: name, (position, lag) samples, idle, expected status.
    type Case<'a> = (&'a str, &'a [(u64, u64)], bool, LagStatus);

    #[test]
    fn the_rules_in_order() {
        use LagStatus::*;
        let cases: &[Case<'_>] = &[
            (
                "caught up at some point",
                &[(1, 5), (2, 0), (3, 4), (4, 6), (5, 9)],
                false,
                Ok,
            ),
            (
                "keeping up, lag shrinking",
                &[(10, 50), (20, 45), (30, 40), (40, 30), (50, 20)],
                false,
                Ok,
            ),
            (
                "lag up and down while moving",
                &[(10, 5), (20, 9), (30, 4), (40, 8), (50, 6)],
                false,
                Ok,
            ),
            (
                "position went back",
                &[(10, 5), (20, 5), (5, 5), (15, 5), (25, 5)],
                false,
                Rewind,
            ),
            (
                "rewind wins over stop",
                &[(10, 5), (5, 5), (5, 5), (5, 5), (5, 5)],
                true,
                Rewind,
            ),
            (
                "no deliveries over the window",
                &[(10, 5), (10, 5), (10, 6), (10, 7), (10, 8)],
                true,
                Stop,
            ),
            (
                "deliveries, no acks",
                &[(10, 5), (10, 5), (10, 6), (10, 7), (10, 8)],
                false,
                Stall,
            ),
            (
                "moving, lag never shrinks",
                &[(10, 5), (20, 5), (30, 6), (40, 8), (50, 8)],
                false,
                Warn,
            ),
            (
                "moving, lag grows steadily",
                &[(10, 1), (11, 2), (12, 3), (13, 4), (14, 5)],
                false,
                Warn,
            ),
        ];
        for (name, points, idle, want) in cases {
            let (w, now) = window(points, *idle);
            assert_eq!(w.status(now), *want, "{name}");
        }
    }

    #[test]
    fn a_window_not_yet_full_says_ok() {
        let t0 = Instant::now();
        let mut w = LagWindow::new(3);
        assert_eq!(w.status(t0), LagStatus::Ok);
        w.push(LagSample {
            at: t0,
            position: 1,
            lag: 9,
            last_active: None,
        });
        w.push(LagSample {
            at: t0,
            position: 1,
            lag: 9,
            last_active: None,
        });
        assert_eq!(w.status(t0 + Duration::from_secs(60)), LagStatus::Ok);
        w.push(LagSample {
            at: t0 + Duration::from_secs(1),
            position: 1,
            lag: 9,
            last_active: None,
        });
        assert_eq!(w.status(t0 + Duration::from_secs(60)), LagStatus::Stop);
    }

    #[test]
    fn stop_needs_the_idle_time_to_exceed_the_window() {
        // Samples span 40 s; last active at the first sample.
        let t0 = Instant::now();
        let mut w = LagWindow::new(5);
        for i in 0..5u64 {
            let at = t0 + Duration::from_secs(10 * i);
            w.push(LagSample {
                at,
                position: 10,
                lag: 5,
                last_active: Some(t0),
            });
        }
        let t_last = t0 + Duration::from_secs(40);
        // 40 s after the last activity: not longer than the span yet.
        assert_eq!(w.status(t_last), LagStatus::Stall);
        assert_eq!(w.status(t_last + Duration::from_secs(1)), LagStatus::Stop);
    }

    #[test]
    fn the_oldest_sample_leaves_and_out_of_order_samples_are_ignored() {
        let t0 = Instant::now();
        let mut w = LagWindow::new(2);
        for (i, lag) in [0u64, 5, 6].into_iter().enumerate() {
            let at = t0 + Duration::from_secs(i as u64);
            w.push(LagSample {
                at,
                position: i as u64,
                lag,
                last_active: Some(at),
            });
        }
        assert_eq!(w.samples().count(), 2);
        // The zero-lag sample has left the window: moving, lag grew.
        assert_eq!(w.status(t0 + Duration::from_secs(2)), LagStatus::Warn);
        w.push(LagSample {
            at: t0,
            position: 0,
            lag: 0,
            last_active: None,
        });
        assert_eq!(w.latest().unwrap().lag, 6, "an older sample is ignored");
    }

    #[test]
    fn names_are_burrows() {
        let names: Vec<_> = [
            LagStatus::Ok,
            LagStatus::Warn,
            LagStatus::Stall,
            LagStatus::Stop,
            LagStatus::Rewind,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(names, ["OK", "WARN", "STALL", "STOP", "REWIND"]);
        assert!(LagStatus::Stall.is_failing() && LagStatus::Stop.is_failing());
        assert!(!LagStatus::Warn.is_failing());
    }
}
