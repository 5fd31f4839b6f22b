//! Loopback ports for processes a test starts and tells where to listen.
//!
//! Binding port 0 and closing it hands out a port from the kernel's
//! ephemeral range, where the next outgoing connection of any process may
//! take it before the child binds it, and where two calls in a row may get
//! the same port. These come from below that range instead, are never handed
//! out twice by one test process, and are checked free when handed out.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Below Linux's default ephemeral range (32768–60999): no outgoing
/// connection is given one of these by the kernel.
const FIRST: u16 = 20000;
const LAST: u16 = 32000;

static GIVEN: Mutex<Option<(u16, HashSet<u16>)>> = Mutex::new(None);

/// A free loopback port, distinct from every other one this process got.
pub fn free_port() -> u16 {
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let (next, seen) = given.get_or_insert_with(|| {
        // Start where another test process (another binary, another run on
        // a shared machine) is unlikely to be.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let span = u32::from(LAST - FIRST);
        let offset = (nanos ^ std::process::id().wrapping_mul(2654435761)) % span;
        (FIRST + offset as u16, HashSet::new())
    });
    for _ in FIRST..=LAST {
        let port = *next;
        *next = if port >= LAST { FIRST } else { port + 1 };
        if seen.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            seen.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..={LAST}")
}
