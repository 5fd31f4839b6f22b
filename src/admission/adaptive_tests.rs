//! Unit tests of the adaptive limit's controller and per-call decisions.

use super::*;

/// An interval of handlers that keep the workers busy (they compute).
fn interval(min_wait_us: u64) -> Interval {
    Interval {
        min_wait_us,
        busy_permille: 1000,
    }
}

/// An interval's counts, each call answered having spent 1 ms in the node.
fn seen(in_flight: u64, completed: u64, refused: u64) -> Observed {
    Observed {
        in_flight,
        completed,
        in_node_us: completed * 1_000,
        refused,
    }
}

#[test]
fn a_closed_loop_never_sheds_however_long_its_queue() {
    // 256 callers of 500 µs on 2 CPUs: a queue of ~64 ms that stands
    // but does not grow (each caller waits for its answer).
    let mut control = Control::default();
    let mut shedding = false;
    for round in 0..100 {
        let in_flight = if round == 0 { 40 } else { 256 };
        let d = control.step(interval(64_000), seen(in_flight, 200, 0), 2, shedding);
        shedding = d.shedding;
        assert!(!shedding, "round {round}");
    }
}

#[test]
fn an_open_loop_past_capacity_sheds_until_its_queue_is_gone() {
    // 80 answered per 20 ms interval (4,000/s); 160 arrive: +80 per
    // interval, on a node that had been running quietly.
    let mut control = Control::default();
    for _ in 0..20 {
        control.step(interval(100), seen(2, 80, 0), 2, false);
    }
    let (mut shedding, mut in_flight) = (false, 0);
    let mut shed_from = None;
    for round in 0..10 {
        in_flight += 80;
        let wait = if round == 0 { 100 } else { in_flight * 250 };
        let d = control.step(interval(wait), seen(in_flight, 80, 0), 2, shedding);
        shedding = d.shedding;
        if shedding && shed_from.is_none() {
            shed_from = Some(round);
            // Two per CPU, and 4,000/s × 2 ms: 12 calls in flight.
            assert_eq!(d.bound, 12);
        }
    }
    assert_eq!(shed_from, Some(2), "three intervals of growth, then shed");
    // Shedding holds the queue near the bound: no growth, but it stands,
    // and half the calls are refused.
    for _ in 0..20 {
        let d = control.step(interval(TARGET_US), seen(8, 80, 80), 2, shedding);
        shedding = d.shedding;
        assert!(shedding);
    }
    // A dip in the calls in flight while callers are still refused is the
    // same overload: admitting all again would let a new wave in.
    let d = control.step(interval(200), seen(1, 80, 75), 2, shedding);
    assert!(d.shedding);
    // The load falls: nothing is refused, the queue goes, and so does the
    // shedding.
    let d = control.step(interval(200), seen(2, 40, 0), 2, shedding);
    assert!(!d.shedding);
}

#[test]
fn callers_moving_over_from_a_stopped_worker_are_not_shed() {
    // 43 callers settled, then 21 more arrive over four intervals.
    let mut control = Control::default();
    for _ in 0..20 {
        assert!(
            !control
                .step(interval(9_000), seen(43, 20, 0), 2, false)
                .shedding
        );
    }
    for in_flight in [49, 55, 60, 64, 64, 64] {
        let d = control.step(interval(9_000), seen(in_flight, 20, 0), 2, false);
        assert!(!d.shedding, "{in_flight}");
    }
}

#[test]
fn a_load_that_ended_earlier_does_not_delay_shedding() {
    let mut control = Control::default();
    for _ in 0..10 {
        control.step(interval(60_000), seen(256, 200, 0), 2, false);
    }
    for _ in 0..20 {
        control.step(interval(100), seen(0, 200, 0), 2, false);
    }
    let mut shed_at = None;
    for round in 1..=5 {
        let d = control.step(interval(30_000), seen(round * 100, 200, 0), 2, false);
        if d.shedding && shed_at.is_none() {
            shed_at = Some(round);
        }
    }
    assert_eq!(shed_at, Some(3), "shed at the third interval of growth");
}

#[test]
fn a_node_that_just_started_sheds_nothing_while_its_callers_move_in() {
    // A new worker: its callers arrive over five intervals.
    let mut control = Control::default();
    for in_flight in [10, 20, 30, 40, 50, 50, 50] {
        let d = control.step(interval(9_000), seen(in_flight, 20, 0), 2, false);
        assert!(!d.shedding, "{in_flight}");
    }
}

#[test]
fn handlers_waiting_on_io_are_never_a_queue_however_their_callers_ramp_in() {
    // 64 callers of a 20 ms handler that waits on another node, joining
    // four per interval after a quiet spell: the calls in flight grow for
    // sixteen intervals while the answers lag behind them, and the time
    // in the node is 20 ms or more; but the workers are mostly idle and
    // nothing waits to run.
    let idle = |min_wait_us| Interval {
        min_wait_us,
        busy_permille: 150,
    };
    let mut control = Control::default();
    for _ in 0..20 {
        assert!(!control.step(idle(30), seen(0, 0, 0), 2, false).shedding);
    }
    let mut shedding = false;
    for round in 1..=40u64 {
        let in_flight = (4 * round).min(64);
        let completed = (4 * round.saturating_sub(1)).min(64);
        let d = control.step(idle(30), seen(in_flight, completed, 0), 2, shedding);
        shedding = d.shedding;
        assert!(!shedding, "round {round}: {in_flight} in flight");
    }
    // The same callers on handlers that compute, keeping the workers
    // busy, are a queue that grows: that is what is shed.
    let mut control = Control::default();
    for _ in 0..20 {
        control.step(interval(30), seen(0, 0, 0), 2, false);
    }
    let shed = (1..=16u64).any(|round| {
        let in_flight = 4 * round;
        let completed = 4 * round.saturating_sub(1);
        control
            .step(interval(30), seen(in_flight, completed, 0), 2, false)
            .shedding
    });
    assert!(shed, "busy workers and a growing time in the node");
}

#[test]
fn the_bound_lets_handlers_keep_the_time_they_take_unqueued() {
    // Handlers of 20 ms, most of it waiting on another node: under a
    // light load the workers idle and each call spends 20 ms in the node.
    let light = Interval {
        min_wait_us: 30,
        busy_permille: 300,
    };
    let mut control = Control::default();
    for _ in 0..40 {
        let answered = Observed {
            in_node_us: 20 * 20_000,
            ..seen(20, 20, 0)
        };
        assert!(!control.step(light, answered, 2, false).shedding);
    }
    // Then an open loop saturates the workers: the calls in flight grow,
    // 100 answered per interval. The bound lets the answers go on at
    // about that rate at 20 ms each (about 100 in flight; the rate is
    // smoothed, so it lags a little), where the target alone would allow
    // 4 + 10.
    let mut bound = None;
    for round in 1..=10u64 {
        let d = control.step(interval(3_000), seen(100 + 60 * round, 100, 0), 2, false);
        if d.shedding {
            bound = Some(d.bound);
            break;
        }
    }
    let bound = bound.expect("an open loop on saturated workers is shed");
    assert!((60..=130).contains(&bound), "bound {bound}");
}

#[test]
fn a_burst_that_stops_growing_is_not_shed() {
    let mut control = Control::default();
    let d1 = control.step(interval(5_000), seen(300, 200, 0), 2, false);
    let d2 = control.step(interval(5_000), seen(300, 200, 0), 2, false);
    assert!(!d1.shedding && !d2.shedding);
}

fn limiter() -> Arc<Limiter> {
    Limiter::new(
        true,
        1000,
        Arc::new(Load::default()),
        AdmissionStats::default(),
    )
}

#[test]
fn shedding_refuses_sheddable_first_and_critical_last() {
    let limiter = limiter();
    limiter.shedding.store(true, Ordering::Relaxed);
    limiter.bound.store(4, Ordering::Relaxed);
    let ask = |criticality| Ask {
        criticality,
        deadline: None,
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(limiter.admit(ask(Criticality::Sheddable)).unwrap());
    }
    assert_eq!(
        limiter.admit(ask(Criticality::Sheddable)).unwrap_err(),
        Refusal::Limit
    );
    for _ in 0..2 {
        held.push(limiter.admit(ask(Criticality::Default)).unwrap());
    }
    assert!(limiter.admit(ask(Criticality::Default)).is_err());
    for _ in 0..4 {
        held.push(limiter.admit(ask(Criticality::Critical)).unwrap());
    }
    assert!(limiter.admit(ask(Criticality::Critical)).is_err());
    assert_eq!(limiter.stats.refused_limit.get(), 3);
    drop(held);
    assert_eq!(limiter.stats.in_flight.get(), 0);
    // Not shedding: everything passes, however many.
    limiter.shedding.store(false, Ordering::Relaxed);
    let held: Vec<_> = (0..100)
        .map(|_| limiter.admit(ask(Criticality::Sheddable)).unwrap())
        .collect();
    assert_eq!(held.len(), 100);
}

#[test]
fn a_deadline_shorter_than_the_queue_is_refused_at_once() {
    let limiter = limiter();
    limiter.load.wait_us.store(30_000, Ordering::Relaxed);
    let short = Ask {
        criticality: Criticality::Critical,
        deadline: Some(Duration::from_millis(10)),
    };
    assert_eq!(limiter.admit(short).unwrap_err(), Refusal::Deadline);
    let long = Ask {
        deadline: Some(Duration::from_millis(100)),
        ..short
    };
    assert!(limiter.admit(long).is_ok());
    assert!(limiter.admit(Ask::default()).is_ok());
    assert_eq!(limiter.stats.refused_deadline.get(), 1);
}

#[test]
fn criticality_is_read_from_its_header() {
    let mut headers = http::HeaderMap::new();
    assert_eq!(Criticality::of(&headers), Criticality::Default);
    headers.insert(CRITICALITY, http::HeaderValue::from_static("sheddable"));
    headers.insert(GRPC_TIMEOUT, http::HeaderValue::from_static("250m"));
    let ask = Ask::of(&headers);
    assert_eq!(ask.criticality, Criticality::Sheddable);
    assert_eq!(ask.deadline, Some(Duration::from_millis(250)));
    assert_eq!(Criticality::parse(b"critical"), Criticality::Critical);
    assert_eq!(Criticality::parse(b"bogus"), Criticality::Default);
}

#[test]
fn a_static_limiter_only_counts() {
    let limiter = Limiter::new(
        false,
        4,
        Arc::new(Load::default()),
        AdmissionStats::default(),
    );
    limiter.shedding.store(true, Ordering::Relaxed);
    limiter.bound.store(1, Ordering::Relaxed);
    let passes: Vec<_> = (0..10)
        .filter_map(|_| limiter.admit(Ask::default()).ok())
        .collect();
    assert_eq!(passes.len(), 10);
    assert_eq!(limiter.stats.in_flight.get(), 10);
    assert_eq!(limiter.stats.limit.get(), 4);
    drop(passes);
    assert_eq!(limiter.stats.in_flight.get(), 0);
}
