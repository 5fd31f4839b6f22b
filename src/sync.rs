//! Locks that outlive a panic: a thread that panicked while holding one
//! left its data as consistent as each critical section keeps it (none
//! leaves it half written), so the others go on with it.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
