//! Faults of etcd: a restart of a single etcd, and each member of a
//! three-member cluster killed in turn, the one holding most client
//! streams first. Membership must not change: nodes keep serving and stay
//! up, and heartbeats and watches resume.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{assert_no_failed_call, blocking, serial, Fleet, Row, WAIT};
use crate::node_faults::{three, WARM};
use crate::support::etcd::{Cluster, Etcd};
use crate::support::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_etcd() {
    let _serial = serial().await;
    let mut etcd = blocking(Etcd::start);
    let url = etcd.url();
    let mut fleet = Fleet::start(&url, three()).await;
    let calls = fleet.call_loop(true);
    calls.wait_ok(WARM, "calls before the fault").await;
    let before = fleet.reregistrations().await;

    let fault = Instant::now();
    blocking(|| etcd.stop());
    let hosts = fleet.hosts();
    let reflected = eventually(WAIT, "a node reporting the outage", || async {
        for host in &hosts {
            if fleet
                .registration(host)
                .await
                .is_some_and(|r| r.state == "retrying")
            {
                return Some(fault.elapsed());
            }
        }
        None
    })
    .await;
    calls
        .wait_ok(WARM, "calls while etcd is down (the client's view holds)")
        .await;
    blocking(|| etcd.restart());
    let answering = SystemTime::now();
    let answered = Instant::now();
    let after = fleet
        .heartbeats_after(answering, "every node heartbeating again")
        .await;
    let recovered = fleet.probe(&url, "probe-restart", answered).await;

    let calls = calls.stop().await;
    Row {
        fault: "restart etcd",
        calls: &calls,
        reflected: Some(reflected),
        recovered: Some(recovered),
        note: format!(
            "reflected: a node reports `retrying`; no node seen down; re-registrations {}; recovered: from etcd answering",
            after - before
        ),
    }
    .print();
    assert_no_failed_call(&calls, "etcd restart");
}

/// What one member's metrics tell.
struct MemberView {
    /// Client streams (watches and lease keep-alives) open on it.
    streams: u64,
    leader: bool,
}

fn member_view(member: &Etcd) -> MemberView {
    let mut conn = TcpStream::connect(member.endpoint()).expect("connect to the member");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
        member.endpoint()
    )
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text)
        .expect("the member's metrics");
    let mut started = 0.0;
    let mut handled = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let streams = line.contains("grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\"")
            || line.contains("grpc_method=\"LeaseKeepAlive\"");
        let value = || {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if streams && line.starts_with("grpc_server_started_total") {
            started += value();
        } else if streams && line.starts_with("grpc_server_handled_total") {
            handled += value();
        }
    }
    MemberView {
        streams: (started - handled).max(0.0) as u64,
        leader: text.lines().any(|l| l == "etcd_server_is_leader 1"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_each_etcd_member_in_turn() {
    let _serial = serial().await;
    let mut cluster = blocking(Cluster::start);
    let url = cluster.url();
    // A registry timeout well past the 1 s down time: a write that waited
    // for it whole after the leader's loss would outlive the node's lease;
    // a quarter of it does not.
    let specs = three()
        .into_iter()
        .map(|s| s.env("SVCKIT_REGISTRY_TIMEOUT", "3s"))
        .collect();
    let mut fleet = Fleet::start(&url, specs).await;
    let before = fleet.reregistrations().await;

    // The clients' streams sit on members the client balances over: the
    // first kill is the member holding most of them; then the leader, if
    // spared; then the last one. Each comes back before the next kill.
    let mut rows = Vec::new();
    let mut killed: Vec<usize> = Vec::new();
    for round in 0..cluster.members.len() {
        let views: Vec<MemberView> = cluster.members.iter().map(member_view).collect();
        let streams: Vec<u64> = views.iter().map(|v| v.streams).collect();
        let alive = || (0..streams.len()).filter(|i| !killed.contains(i));
        let leader = alive().find(|&i| views[i].leader);
        let busiest = alive().max_by_key(|&i| streams[i]);
        // The leader's kill loses writes in flight (raft drops them while it
        // elects another): it comes second when the first kill spared it.
        let victim = match (round, leader) {
            (0, _) | (_, None) => busiest,
            (_, Some(leader)) => Some(leader),
        }
        .expect("a member not killed yet");
        if round == 0 {
            assert!(
                streams[victim] > 0,
                "no member holds a client stream: {streams:?}"
            );
        }
        killed.push(victim);
        let calls = fleet.call_loop(true);
        calls.wait_ok(WARM, "calls before the fault").await;
        let fault = Instant::now();
        let fault_wall = SystemTime::now();
        blocking(|| cluster.members[victim].stop());
        fleet
            .heartbeats_after(fault_wall, "every node heartbeating through another member")
            .await;
        let recovered = fleet
            .probe(&url, &format!("probe-member-{round}"), fault)
            .await;
        calls.wait_ok(WARM, "calls after the member was lost").await;
        let leader = views[victim].leader;
        rows.push((victim, leader, streams, recovered, calls.stop().await));
        blocking(|| cluster.members[victim].restart());
    }
    let after = fleet.reregistrations().await;

    for (round, (victim, leader, streams, recovered, calls)) in rows.iter().enumerate() {
        let role = if *leader { "leader" } else { "follower" };
        let fault = format!("kill etcd member {} of 3 (m{victim}, {role})", round + 1);
        let note = format!(
            "it held {} of {} client streams; no node seen down; recovered: from the kill",
            streams[*victim],
            streams.iter().sum::<u64>()
        );
        Row {
            fault: &fault,
            calls,
            reflected: None,
            recovered: Some(*recovered),
            note,
        }
        .print();
    }
    // A keep-alive stream broken with its member is replaced by a new
    // lease; the liveness key never lapses (no leave above).
    eprintln!("re-registrations over the three kills: {}", after - before);
    assert!(
        rows.iter().any(|(_, leader, ..)| *leader),
        "no round killed the leader"
    );
    for (_, _, _, _, calls) in &rows {
        assert_no_failed_call(calls, "etcd member kill");
    }
}
