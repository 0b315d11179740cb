//! In-memory metrics: counts per task and outcome, durations with percentiles.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

/// How many recent durations per task feed the percentiles.
const SAMPLES: usize = 4096;

/// Counts and durations of one task since the orchestrator started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskMetrics {
    /// Jobs submitted through this orchestrator.
    pub enqueued: u64,
    /// Attempts started.
    pub started: u64,
    /// Jobs ended `done`.
    pub succeeded: u64,
    /// Jobs ended `failed`.
    pub failed: u64,
    /// Attempts that failed and were rescheduled.
    pub retried: u64,
    /// Jobs ended `cancelled`.
    pub cancelled: u64,
    /// Times put back because the exclusivity key was held.
    pub snoozed: u64,
    /// Attempts currently running here.
    pub running: u64,
    /// Durations of finished attempts.
    pub duration: DurationStats,
}

/// Summary of attempt durations (mean over all; percentiles over the last 4096).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DurationStats {
    /// Attempts measured.
    pub count: u64,
    /// Mean, in seconds.
    pub mean_s: f64,
    /// Median, in seconds.
    pub p50_s: f64,
    /// 95th percentile, in seconds.
    pub p95_s: f64,
    /// 99th percentile, in seconds.
    pub p99_s: f64,
}

/// A point-in-time copy of all metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Per task, by name.
    pub tasks: BTreeMap<String, TaskMetrics>,
}

impl MetricsSnapshot {
    /// The sum over all tasks of `field`.
    pub fn total(&self, field: impl Fn(&TaskMetrics) -> u64) -> u64 {
        self.tasks.values().map(field).sum()
    }
}

#[derive(Debug, Default)]
struct TaskCounters {
    metrics: TaskMetrics,
    total_secs: f64,
    samples: VecDeque<f64>,
}

/// Where the engine counts.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    tasks: Mutex<HashMap<String, TaskCounters>>,
}

/// The events metrics count.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    Enqueued,
    Started,
    Succeeded,
    Failed,
    Retried,
    Cancelled,
    Snoozed,
}

impl Metrics {
    pub(crate) fn count(&self, task: &str, what: Count, duration: Option<Duration>) {
        let mut tasks = self.tasks.lock();
        let counters = match tasks.get_mut(task) {
            Some(counters) => counters,
            None => tasks.entry(task.to_owned()).or_default(),
        };
        let m = &mut counters.metrics;
        match what {
            Count::Enqueued => m.enqueued += 1,
            Count::Started => {
                m.started += 1;
                m.running += 1;
            }
            Count::Succeeded => m.succeeded += 1,
            Count::Failed => m.failed += 1,
            Count::Retried => m.retried += 1,
            Count::Cancelled => m.cancelled += 1,
            Count::Snoozed => m.snoozed += 1,
        }
        if let Some(duration) = duration {
            m.running = m.running.saturating_sub(1);
            let secs = duration.as_secs_f64();
            counters.total_secs += secs;
            counters.metrics.duration.count += 1;
            if counters.samples.len() == SAMPLES {
                counters.samples.pop_front();
            }
            counters.samples.push_back(secs);
        }
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let tasks = self.tasks.lock();
        let tasks = tasks
            .iter()
            .map(|(name, counters)| {
                let mut metrics = counters.metrics.clone();
                let mut sorted: Vec<f64> = counters.samples.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                let d = &mut metrics.duration;
                if d.count > 0 {
                    d.mean_s = counters.total_secs / d.count as f64;
                    d.p50_s = percentile(&sorted, 0.50);
                    d.p95_s = percentile(&sorted, 0.95);
                    d.p99_s = percentile(&sorted, 0.99);
                }
                (name.clone(), metrics)
            })
            .collect();
        MetricsSnapshot { tasks }
    }
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.5), 50.0);
        assert_eq!(percentile(&samples, 0.95), 95.0);
        assert_eq!(percentile(&samples, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn counts_and_durations_per_task() {
        let metrics = Metrics::default();
        metrics.count("a", Count::Started, None);
        metrics.count("a", Count::Succeeded, Some(Duration::from_millis(10)));
        metrics.count("a", Count::Started, None);
        metrics.count("a", Count::Failed, Some(Duration::from_millis(30)));
        let snap = metrics.snapshot();
        let a = &snap.tasks["a"];
        assert_eq!((a.started, a.succeeded, a.failed, a.running), (2, 1, 1, 0));
        assert!((a.duration.mean_s - 0.02).abs() < 1e-9);
        assert_eq!(a.duration.p99_s, 0.03);
    }
}
