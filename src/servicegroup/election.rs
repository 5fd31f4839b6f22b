//! Leader election: one candidate of a named election holds it at a time.
//!
//! A periodic task of [`Scope::Topic`](crate::periodic::Scope::Topic) runs
//! only on the node that holds its election. [`Driver::campaign`] returns a
//! [`Leadership`] that campaigns in the background for as long as it lives;
//! the etcd driver elects through etcd's election API on a lease, the file
//! driver through a lock file, and the memory driver within its group
//! ([`LocalElections`]).
//!
//! [`Driver::campaign`]: super::Driver::campaign

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

/// One candidacy.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Election {
    /// The topic the election belongs to.
    pub topic: String,
    /// The election's name within the topic (a periodic task's name).
    pub name: String,
    /// Who campaigns (the node's host); shown as the leader's value.
    pub candidate: String,
    /// How long a dead leader keeps the election (the etcd lease TTL): a
    /// node's `service_down_time`, so a task moves as fast as its
    /// membership does.
    pub ttl: Duration,
    /// How often the candidate proves it is alive (`report_interval`).
    pub keepalive: Duration,
}

impl Election {
    /// A candidacy of `candidate` in election `name` of `topic`.
    pub fn new(
        topic: impl Into<String>,
        name: impl Into<String>,
        candidate: impl Into<String>,
        ttl: Duration,
        keepalive: Duration,
    ) -> Self {
        Election {
            topic: topic.into(),
            name: name.into(),
            candidate: candidate.into(),
            ttl,
            keepalive,
        }
    }
}

/// A candidate's standing, campaigning in the background until dropped or
/// resigned.
pub trait Leadership: Send + Sync {
    /// Whether this candidate holds the election now. A leader that cannot
    /// prove it still holds it (its lease may have expired) says `false`.
    fn is_leader(&self) -> bool;

    /// Gives the election up so that another candidate takes it at once.
    fn resign(&self) -> BoxFuture<'_, ()>;
}

/// Elections held in memory: who holds each, by name. A `memory://`
/// registry keeps one, shared by its every handle; a driver of another
/// kind may keep one for the candidates of its process.
#[derive(Debug, Default)]
pub struct LocalElections {
    holders: Mutex<HashMap<String, u64>>,
    ids: AtomicU64,
}

impl LocalElections {
    /// No election held yet.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A candidacy in `election`: the first candidate to ask holds it
    /// until it resigns or is dropped.
    pub fn campaign(self: &Arc<Self>, election: &Election) -> Arc<LocalLeadership> {
        Arc::new(LocalLeadership {
            elections: Arc::clone(self),
            key: format!("{}\0{}", election.topic, election.name),
            id: self.ids.fetch_add(1, Ordering::Relaxed),
            resigned: AtomicBool::new(false),
        })
    }
}

/// A candidacy in one of [`LocalElections`].
pub struct LocalLeadership {
    elections: Arc<LocalElections>,
    key: String,
    id: u64,
    /// A resigned candidate never takes the election again.
    resigned: AtomicBool,
}

impl LocalLeadership {
    fn release(&self) {
        let mut holders = crate::sync::lock(&self.elections.holders);
        if holders.get(&self.key) == Some(&self.id) {
            holders.remove(&self.key);
        }
    }
}

impl Leadership for LocalLeadership {
    fn is_leader(&self) -> bool {
        if self.resigned.load(Ordering::SeqCst) {
            return false;
        }
        let mut holders = crate::sync::lock(&self.elections.holders);
        *holders.entry(self.key.clone()).or_insert(self.id) == self.id
    }

    fn resign(&self) -> BoxFuture<'_, ()> {
        self.resigned.store(true, Ordering::SeqCst);
        self.release();
        Box::pin(async {})
    }
}

impl Drop for LocalLeadership {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election(name: &str) -> Election {
        Election {
            topic: "t".into(),
            name: name.into(),
            candidate: "h".into(),
            ttl: Duration::from_secs(1),
            keepalive: Duration::from_millis(100),
        }
    }

    #[tokio::test]
    async fn one_local_leader_until_it_resigns() {
        let elections = LocalElections::new();
        let a = elections.campaign(&election("x"));
        let b = elections.campaign(&election("x"));
        let other = elections.campaign(&election("y"));
        let elsewhere = LocalElections::new().campaign(&election("x"));
        assert!(a.is_leader());
        assert!(!b.is_leader());
        assert!(other.is_leader(), "another election has its own leader");
        assert!(
            elsewhere.is_leader(),
            "other elections have their own leaders"
        );
        a.resign().await;
        assert!(b.is_leader());
        assert!(!a.is_leader());
        let c = elections.campaign(&election("x"));
        drop(b);
        assert!(c.is_leader(), "a dropped leader frees the election");
        c.resign().await;
        assert!(!a.is_leader(), "a resigned candidate stays out");
    }
}
