//! Which nodes of a large topic a client balances over.

use std::sync::Arc;

use super::Node;

/// Which nodes of a large topic a client talks to: the `size` nodes whose
/// rendezvous score with `client` is highest (Google SRE book, ch. 20).
/// Every client ranks the nodes its own way, so the subsets spread over the
/// fleet; a node that joins or leaves moves only the subsets it enters or
/// leaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subsetting {
    pub(crate) client: u64,
    /// 0: no subsetting.
    pub(crate) size: usize,
}

impl Subsetting {
    /// Keeps the `size` best-scoring of `nodes` (all of them when there
    /// are no more).
    pub(super) fn apply(&self, nodes: &mut Vec<Arc<Node>>) {
        if self.size == 0 || nodes.len() <= self.size {
            return;
        }
        let score = |n: &Arc<Node>| std::cmp::Reverse(rendezvous(self.client, n.host()));
        nodes.select_nth_unstable_by_key(self.size - 1, score);
        nodes.truncate(self.size);
    }
}

/// A stable 64-bit score of (client, host): FNV-1a over both, then mixed
/// (splitmix64's finaliser) so that close inputs score far apart.
pub(crate) fn rendezvous(client: u64, host: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in client.to_le_bytes().iter().chain(host.as_bytes()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
