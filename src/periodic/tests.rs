//! The timer on tokio's paused clock: every sleep below advances virtual
//! time at once, so the schedules are exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{sleep, Instant};

use super::*;
use crate::servicegroup::{Election, LocalElections};

const S: Duration = Duration::from_secs(1);

/// A manager that records when its task runs.
#[derive(Default)]
struct Probe {
    starts: Mutex<Vec<Instant>>,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    finished: AtomicUsize,
}

impl Probe {
    /// Offsets of the runs from `t0`.
    fn offsets(&self, t0: Instant) -> Vec<Duration> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - t0)
            .collect()
    }

    async fn work(&self, takes: Duration) {
        self.starts.lock().unwrap().push(Instant::now());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        sleep(takes).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

fn task(name: &str, spacing: Duration, takes: Duration) -> PeriodicTask<Probe> {
    PeriodicTask::new(name, spacing, move |p: Arc<Probe>| async move {
        p.work(takes).await;
        Ok(())
    })
}

fn settings(fuzzy: Duration) -> Settings {
    Settings {
        interval_max: 60 * S,
        fuzzy_delay: fuzzy,
    }
}

fn start(tasks: Vec<PeriodicTask<Probe>>, probe: &Arc<Probe>, fuzzy: Duration) -> Arc<Timer> {
    let jobs = tasks
        .into_iter()
        .map(|t| (t.bind(probe.clone()), None))
        .collect();
    Timer::start(jobs, settings(fuzzy))
}

#[tokio::test(start_paused = true)]
async fn spacing_is_respected() {
    let probe = Arc::new(Probe::default());
    let t0 = Instant::now();
    let timer = start(
        vec![task("t", 10 * S, Duration::ZERO).run_immediately(true)],
        &probe,
        60 * S,
    );
    sleep(35 * S).await;
    timer.stop().await;
    assert_eq!(
        probe.offsets(t0),
        vec![Duration::ZERO, 10 * S, 20 * S, 30 * S]
    );
}

#[tokio::test(start_paused = true)]
async fn zero_spacing_means_sixty_seconds() {
    let probe = Arc::new(Probe::default());
    let t0 = Instant::now();
    let timer = start(
        vec![task("t", Duration::ZERO, Duration::ZERO).run_immediately(true)],
        &probe,
        Duration::ZERO,
    );
    sleep(130 * S).await;
    timer.stop().await;
    assert_eq!(probe.offsets(t0), vec![Duration::ZERO, 60 * S, 120 * S]);
}

#[tokio::test(start_paused = true)]
async fn first_run_waits_a_fuzzy_delay_within_bounds() {
    let fuzzy = 30 * S;
    let mut firsts = Vec::new();
    for _ in 0..20 {
        let probe = Arc::new(Probe::default());
        let t0 = Instant::now();
        let timer = start(vec![task("t", 1000 * S, Duration::ZERO)], &probe, fuzzy);
        sleep(fuzzy + S).await;
        timer.stop().await;
        let offsets = probe.offsets(t0);
        assert_eq!(offsets.len(), 1, "one first run within the fuzzy delay");
        assert!(
            offsets[0] <= fuzzy,
            "{:?} is past the fuzzy delay",
            offsets[0]
        );
        firsts.push(offsets[0]);
    }
    firsts.sort();
    firsts.dedup();
    assert!(firsts.len() > 1, "the delay is random: {firsts:?}");
}

#[tokio::test(start_paused = true)]
async fn run_immediately_skips_the_fuzzy_delay() {
    let (now, later) = (Arc::new(Probe::default()), Arc::new(Probe::default()));
    let t0 = Instant::now();
    let jobs = vec![
        (
            task("now", 100 * S, Duration::ZERO)
                .run_immediately(true)
                .bind(now.clone()),
            None,
        ),
        (
            task("later", 100 * S, Duration::ZERO).bind(later.clone()),
            None,
        ),
    ];
    let timer = Timer::start(jobs, settings(60 * S));
    sleep(61 * S).await;
    timer.stop().await;
    assert_eq!(now.offsets(t0), vec![Duration::ZERO]);
    assert_eq!(later.offsets(t0).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_task_keeps_being_scheduled() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let failing = PeriodicTask::new("flaky", 5 * S, move |_: Arc<Probe>| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            match n % 3 {
                0 => Err("backend down".into()),
                1 => panic!("bug in the task"),
                _ => Ok(()),
            }
        }
    })
    .run_immediately(true);
    let timer = start(vec![failing], &Arc::new(Probe::default()), Duration::ZERO);
    sleep(27 * S).await;
    let status = timer.status();
    timer.stop().await;
    assert_eq!(calls.load(Ordering::SeqCst), 6, "runs at 0, 5, …, 25 s");
    assert_eq!(status[0].runs, 6);
    assert_eq!(status[0].failures, 4);
    assert_eq!(
        status[0].last_error.as_deref(),
        Some("panicked: bug in the task")
    );
}

#[tokio::test(start_paused = true)]
async fn an_overrunning_task_never_overlaps_itself() {
    let probe = Arc::new(Probe::default());
    let t0 = Instant::now();
    let timer = start(
        vec![task("slow", S, 5 * S / 2).run_immediately(true)],
        &probe,
        Duration::ZERO,
    );
    sleep(11 * S).await;
    let status = timer.status();
    timer.stop().await;
    assert_eq!(probe.most_at_once.load(Ordering::SeqCst), 1);
    // Each run starts as soon as the last one finished.
    assert_eq!(
        probe.offsets(t0),
        vec![Duration::ZERO, 5 * S / 2, 5 * S, 15 * S / 2, 10 * S]
    );
    assert!(status[0].overruns >= 4, "overruns are counted: {status:?}");
}

#[tokio::test(start_paused = true)]
async fn disabled_tasks_do_not_run() {
    let probe = Arc::new(Probe::default());
    let timer = start(
        vec![task("off", S, Duration::ZERO)
            .run_immediately(true)
            .enabled(false)],
        &probe,
        Duration::ZERO,
    );
    sleep(100 * S).await;
    assert_eq!(timer.status()[0].next_due, None);
    timer.stop().await;
    assert!(probe.offsets(Instant::now()).is_empty());

    let mut config = Config::default();
    config.periodic_enable = false;
    let jobs = vec![task("t", S, Duration::ZERO).bind(probe.clone())];
    let started = super::start(jobs, None, &config, "t", None).await.unwrap();
    assert!(started.is_none(), "periodic_enable = false starts no timer");
}

#[tokio::test(start_paused = true)]
async fn tasks_stop_on_shutdown_and_a_run_in_progress_finishes() {
    let probe = Arc::new(Probe::default());
    let timer = start(
        vec![task("t", 10 * S, 4 * S).run_immediately(true)],
        &probe,
        Duration::ZERO,
    );
    sleep(12 * S).await; // the second run is under way
    timer.stop().await;
    assert_eq!(
        probe.finished.load(Ordering::SeqCst),
        2,
        "the run in progress finished"
    );
    sleep(100 * S).await;
    assert_eq!(
        probe.starts.lock().unwrap().len(),
        2,
        "nothing runs after the stop"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_spacing_applies_from_the_last_run() {
    let probe = Arc::new(Probe::default());
    let t0 = Instant::now();
    let timer = start(
        vec![task("t", 100 * S, Duration::ZERO).run_immediately(true)],
        &probe,
        Duration::ZERO,
    );
    sleep(S).await;
    let mut spec = task("t", 10 * S, Duration::ZERO).bind(probe.clone()).spec;
    timer.update(60 * S, std::slice::from_ref(&spec));
    sleep(20 * S).await;
    spec.enabled = false;
    timer.update(60 * S, &[spec]);
    sleep(100 * S).await;
    timer.stop().await;
    assert_eq!(probe.offsets(t0), vec![Duration::ZERO, 10 * S, 20 * S]);
}

#[tokio::test(start_paused = true)]
async fn a_topic_task_runs_only_where_its_election_is_held() {
    let (a, b) = (Arc::new(Probe::default()), Arc::new(Probe::default()));
    let election = Election {
        topic: "t".into(),
        name: "reap".into(),
        candidate: "h".into(),
        ttl: 10 * S,
        keepalive: S,
    };
    let reap = || {
        task("reap", 5 * S, Duration::ZERO)
            .scope(Scope::Topic)
            .run_immediately(true)
    };
    let elections = LocalElections::new();
    let lead_a = elections.campaign(&election);
    let lead_b = elections.campaign(&election);
    let timer_a = Timer::start(
        vec![(reap().bind(a.clone()), Some(lead_a as _))],
        settings(Duration::ZERO),
    );
    sleep(S).await;
    let timer_b = Timer::start(
        vec![(reap().bind(b.clone()), Some(lead_b as _))],
        settings(Duration::ZERO),
    );
    sleep(20 * S).await;
    assert_eq!(a.starts.lock().unwrap().len(), 5);
    assert!(
        b.starts.lock().unwrap().is_empty(),
        "only the leader runs it"
    );
    assert_eq!(timer_b.status()[0].leader, Some(false));
    // The leader stops and resigns: the other takes over within a spacing.
    timer_a.stop().await;
    sleep(6 * S).await;
    timer_b.stop().await;
    assert_eq!(b.starts.lock().unwrap().len(), 1);
}

#[test]
fn scopes_pick_the_workers() {
    let spec = |scope| {
        task("t", S, Duration::ZERO)
            .scope(scope)
            .bind(Arc::new(Probe::default()))
            .spec
    };
    assert!(runs_here(&spec(Scope::Node), None));
    assert!(runs_here(&spec(Scope::Node), Some(0)));
    assert!(!runs_here(&spec(Scope::Node), Some(1)));
    assert!(runs_here(&spec(Scope::Worker), Some(3)));
    assert!(!runs_here(&spec(Scope::Topic), Some(2)));
}
