//! Rolling replacements: every worker replaced one at a time, a new one
//! serving before the one it replaces is asked to stop (a reload with
//! `restart_method = reload`, an upgrade, a recycle after
//! `max_requests`).

use std::collections::VecDeque;

use super::{Pool, State};

/// A rolling replacement of workers (a reload with `restart_method =
/// reload`).
pub(super) struct Rolling {
    /// Workers still to replace, oldest first.
    pub(super) old: VecDeque<u64>,
    /// The replacement started for the head of `old`, not serving yet.
    pub(super) waiting_for: Option<u64>,
}

impl Pool {
    /// Replaces every worker, one at a time: a new one serves before the
    /// one it replaces is asked to stop.
    pub(in super::super) fn replace_all(&mut self) {
        let old: VecDeque<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state != State::Retiring)
            .map(|(id, _)| *id)
            .collect();
        tracing::info!(workers = old.len(), "replacing workers one at a time");
        self.roll_failed = false;
        self.rolling = Some(Rolling {
            old,
            waiting_for: None,
        });
        self.roll_on(None);
    }

    /// Moves a rolling replacement on: when the awaited replacement serves,
    /// the worker it replaces stops and the next replacement starts.
    pub(super) fn roll_on(&mut self, ready: Option<u64>) {
        let Some(mut rolling) = self.rolling.take() else {
            return;
        };
        if let Some(waiting) = rolling.waiting_for {
            if ready != Some(waiting) {
                self.rolling = Some(rolling);
                return;
            }
            if let Some(old) = rolling.old.pop_front() {
                self.retire(old);
            }
            rolling.waiting_for = None;
        }
        // Skip workers that went away meanwhile.
        while let Some(&old) = rolling.old.front() {
            match self.workers.get(&old) {
                Some(w) if w.state != State::Retiring => {
                    let slot = w.slot;
                    rolling.waiting_for = self.start_worker(slot);
                    if rolling.waiting_for.is_some() {
                        self.rolling = Some(rolling);
                    }
                    return;
                }
                _ => {
                    rolling.old.pop_front();
                }
            }
        }
        tracing::info!("replacement done");
    }
}
