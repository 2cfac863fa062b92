//! Keeps the node threads of an in-process run within a bounded number of local steps of each
//! other (`--max-lead`).
//!
//! With more node threads than cores, the operating system runs a few threads for a whole time
//! slice (tens of local steps of a small model) while the others sit still. A node that runs then
//! averages, interaction after interaction, with copies of peers that do not move; with `pull`
//! (only the reader changes) each of those averages halves the progress the node made since, so
//! the run as a whole learns as if it took fewer steps. (The authors' MPI ranks on the same
//! machine do not show the loss; how closely MPI couples them was not measured.) A node that is
//! more than `max_lead` steps ahead of the slowest node waits for it.
//! Measured (issue 18, 8 nodes on 2 cores, H = 1, mean of 2 seeds): `pull` 86.43% free-running,
//! 86.55% with a lead of 4, 87.10% with 1; the authors' MPI protocol 87.11%.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Step counters of every node, and the bound on how far one may run ahead of the slowest.
pub(crate) struct Pacer {
    steps: Box<[AtomicU64]>,
    max_lead: Option<u64>,
    /// Woken when the slowest node's count moves.
    moved: Condvar,
    lock: Mutex<()>,
    /// Sum and largest of the leads (steps ahead of the slowest node) at each recorded step.
    lead_sum: AtomicU64,
    lead_max: AtomicU64,
    recorded: AtomicU64,
}

/// A node that stopped (finished, or failed) no longer holds the others back.
const STOPPED: u64 = u64::MAX;

impl Pacer {
    /// `nodes` counters starting at `start_step`; `max_lead` `None` never waits.
    pub(crate) fn new(nodes: usize, start_step: u64, max_lead: Option<u64>) -> Self {
        Pacer {
            steps: (0..nodes).map(|_| AtomicU64::new(start_step)).collect(),
            max_lead,
            moved: Condvar::new(),
            lock: Mutex::new(()),
            lead_sum: AtomicU64::new(0),
            lead_max: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
        }
    }

    fn slowest(&self) -> u64 {
        self.steps
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .min()
            .unwrap_or(STOPPED)
    }

    /// Records that `node` has taken `steps` local steps; then, if it is more than `max_lead`
    /// steps ahead of the slowest node, waits until it no longer is (or `abort` is set).
    pub(crate) fn step_done(&self, node: usize, steps: u64, abort: &AtomicBool) {
        let before = self.slowest();
        self.steps[node].store(steps, Ordering::Release);
        let slowest = self.slowest();
        let ahead = steps.saturating_sub(slowest);
        self.lead_sum.fetch_add(ahead, Ordering::Relaxed);
        self.lead_max.fetch_max(ahead, Ordering::Relaxed);
        self.recorded.fetch_add(1, Ordering::Relaxed);
        let Some(lead) = self.max_lead else {
            return;
        };
        if slowest != before {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.moved.notify_all();
        }
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while steps > self.slowest().saturating_add(lead) && !abort.load(Ordering::Relaxed) {
            // The timeout only guards against a wake-up lost to a node that stopped meanwhile.
            guard = self
                .moved
                .wait_timeout(guard, Duration::from_millis(5))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// `node` takes no more steps (end of its run, or a failure): nobody waits for it.
    pub(crate) fn stopped(&self, node: usize) {
        self.steps[node].store(STOPPED, Ordering::Release);
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.moved.notify_all();
    }

    /// The mean and the largest number of steps a node was ahead of the slowest node when it
    /// finished a step (before any wait).
    pub(crate) fn drift(&self) -> (f64, u64) {
        let recorded = self.recorded.load(Ordering::Relaxed).max(1);
        (
            self.lead_sum.load(Ordering::Relaxed) as f64 / recorded as f64,
            self.lead_max.load(Ordering::Relaxed),
        )
    }

    /// How many steps `node` is ahead of the slowest node (for tests and diagnostics).
    #[cfg(test)]
    fn lead(&self, node: usize) -> u64 {
        self.steps[node]
            .load(Ordering::Acquire)
            .saturating_sub(self.slowest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Node 0 runs freely while node 1 is held back: node 0 gets exactly `max_lead` steps ahead
    /// and no further, and goes on as soon as node 1 moves.
    #[test]
    fn a_node_waits_at_max_lead_steps_ahead_of_the_slowest() {
        let pacer = Arc::new(Pacer::new(2, 0, Some(3)));
        let abort = Arc::new(AtomicBool::new(false));
        let reached = Arc::new(AtomicU64::new(0));
        let runner = {
            let (pacer, abort, reached) = (pacer.clone(), abort.clone(), reached.clone());
            std::thread::spawn(move || {
                for step in 1..=10 {
                    pacer.step_done(0, step, &abort);
                    reached.store(step, Ordering::SeqCst);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        // Step 4 is recorded, then it waits: 4 > 0 + 3.
        assert_eq!(reached.load(Ordering::SeqCst), 3);
        assert_eq!(pacer.lead(0), 4);
        pacer.step_done(1, 2, &abort);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(reached.load(Ordering::SeqCst), 5);
        pacer.stopped(1);
        runner.join().unwrap();
        assert_eq!(reached.load(Ordering::SeqCst), 10);
        // Leads recorded: node 0's 1, 2, 3, 4 (it waits), node 1's 0, node 0's 3, 4 (it waits),
        // then 0 once node 1 stopped.
        assert_eq!(pacer.drift().1, 4);
    }

    #[test]
    fn without_a_bound_or_after_abort_nobody_waits() {
        let free = Pacer::new(2, 0, None);
        let abort = AtomicBool::new(false);
        free.step_done(0, 1000, &abort);
        assert_eq!(free.lead(0), 1000);
        let bounded = Pacer::new(2, 0, Some(1));
        abort.store(true, Ordering::Relaxed);
        bounded.step_done(0, 50, &abort);
        assert_eq!(bounded.lead(0), 50);
    }
}
