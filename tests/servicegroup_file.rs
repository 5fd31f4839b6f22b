//! The file driver's own guarantees: several processes sharing a directory
//! (two drivers on one path stand in for two processes), crash detection by
//! heartbeat age, and clear errors for unusable directories.

mod support;

use std::time::{Duration, Instant};

use support::*;
use svckit::servicegroup::file::FileDriver;
use svckit::servicegroup::{AdminChange, Driver, RegistrationState};
use svckit::ErrorKind;

#[tokio::test]
async fn crashed_node_is_down_within_its_down_time() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FileDriver::open(dir.path(), &options()).unwrap();
    let mut watch = registry.watch(Some("compute")).await.unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    expect_event(&mut watch, Duration::from_secs(2), "join", is_join("n1")).await;

    let crashed_at = Instant::now();
    drop(node);
    expect_event(&mut watch, DOWN_TIME * 3, "leave", is_leave("n1")).await;
    eprintln!(
        "file driver: crash detected after {:?}",
        crashed_at.elapsed()
    );
    assert!(!registry.get("compute", "n1").await.unwrap().unwrap().up);
}

#[tokio::test]
async fn processes_sharing_a_directory_see_one_group() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileDriver::open(dir.path(), &options()).unwrap();
    let b = FileDriver::open(dir.path(), &options()).unwrap();
    let live = live_endpoint().await;
    let mut watch = a.watch(Some("compute")).await.unwrap();
    let node = a
        .join(registration_at("compute", "n1", &live.url))
        .await
        .unwrap();
    assert!(b.get("compute", "n1").await.unwrap().unwrap().up);
    expect_event(&mut watch, Duration::from_secs(10), "n1 up", is_join("n1")).await;

    // The other "process" may not claim the same (topic, host) while the
    // holder serves...
    match b.join(registration("compute", "n1")).await {
        Err(e) if e.kind() == ErrorKind::Duplicate => {
            assert!(
                e.to_string().contains(&std::process::id().to_string()),
                "{e}"
            )
        }
        other => panic!("expected Duplicate, got {:?}", other.map(|_| ())),
    }
    // ...and an admin change from it never loses a heartbeat.
    for _ in 0..20 {
        b.set_admin("compute", "n1", AdminChange::Disable { reason: None })
            .await
            .unwrap();
        b.set_admin("compute", "n1", AdminChange::Enable)
            .await
            .unwrap();
    }
    expect_none(&mut watch, DOWN_TIME, "n1 looking down", is_leave("n1")).await;
    assert!(a.get("compute", "n1").await.unwrap().unwrap().up);

    // Once the first one is gone (stopped: stale heartbeat), the name is free.
    drop(node);
    drop(live);
    eventually(DOWN_TIME * 3, "n1 to turn down", || async {
        (!b.get("compute", "n1").await.unwrap().unwrap().up).then_some(())
    })
    .await;
    let taken = b.join(registration("compute", "n1")).await.unwrap();
    assert!(a.get("compute", "n1").await.unwrap().unwrap().up);
    taken.leave().await.unwrap();
}

#[tokio::test]
async fn heartbeat_restores_files_removed_by_someone_else() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FileDriver::open(dir.path(), &options()).unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    let alive = dir.path().join("alive/compute/n1.json");
    let record = dir.path().join("services/compute/n1.json");
    assert!(alive.is_file() && record.is_file());

    std::fs::remove_file(&alive).unwrap();
    eventually(
        Duration::from_secs(2),
        "the liveness file to come back",
        || async { alive.is_file().then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(1),
        "a counted re-registration",
        || async { (node.status().reregistrations >= 1).then_some(()) },
    )
    .await;
    assert!(registry.get("compute", "n1").await.unwrap().unwrap().up);

    let mut watch = registry.watch(Some("compute")).await.unwrap();
    expect_event(&mut watch, Duration::from_secs(10), "n1 up", is_join("n1")).await;
    node.leave().await.unwrap();
    expect_event(
        &mut watch,
        Duration::from_secs(10),
        "n1 leaving",
        is_leave("n1"),
    )
    .await;
    assert!(!alive.exists(), "leave removes the liveness file");
    assert!(record.is_file(), "the record outlives the node");
    assert_eq!(node.status().state, RegistrationState::Left);
    // A heartbeat after the leave would bring the liveness file back, and
    // the node up.
    expect_none(
        &mut watch,
        REPORT_INTERVAL * 3,
        "a heartbeat after leave",
        is_join("n1"),
    )
    .await;
    assert!(!alive.exists(), "no heartbeat after leave");
}

#[tokio::test]
async fn unusable_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    match FileDriver::open(file.join("registry"), &options()) {
        Err(e) if e.kind() == ErrorKind::Unavailable => {
            assert!(e.to_string().contains("a-file"), "{e}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match FileDriver::open(std::path::Path::new("/proc/svckit-registry"), &options()) {
        Err(e) if e.kind() == ErrorKind::Unavailable => {
            assert!(e.to_string().contains("not writable"), "{e}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lock_held_by_another_process_is_waited_for_boundedly() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FileDriver::open(dir.path(), &options()).unwrap();
    let lock = dir.path().join(".lock");

    // Another process holds the registry's lock and never lets go, as one
    // stopped (SIGSTOP) in the middle of a write would.
    let mut holder = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"exec 9>>"$0" && flock 9 && exec sleep 60"#)
        .arg(&lock)
        .spawn()
        .expect("sh and flock(1)");
    eventually(Duration::from_secs(5), "the lock to be held", || async {
        let file = std::fs::OpenOptions::new().append(true).open(&lock).ok()?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .is_err()
            .then_some(())
    })
    .await;

    let bound = options().timeout + Duration::from_secs(2);
    match tokio::time::timeout(bound, registry.join(registration("compute", "n1"))).await {
        Ok(Err(e)) if e.kind() == ErrorKind::Unavailable => {
            let msg = e.to_string();
            assert!(msg.contains(&lock.display().to_string()), "{msg}");
            assert!(msg.contains("held by another process"), "{msg}");
        }
        Ok(Err(e)) => panic!("expected Unavailable, got {e}"),
        Ok(Ok(_)) => panic!("joined while another process held the lock"),
        Err(_) => panic!("join still waiting on the lock after {bound:?}"),
    }

    holder.kill().unwrap();
    holder.wait().unwrap();
    let node = registry.join(registration("compute", "n1")).await.unwrap();
    node.leave().await.unwrap();
}

#[tokio::test]
async fn the_registry_honours_registry_backoff_max() {
    use svckit::config::{CommonArgs, Config};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let env = |name: &str| match name {
        "SVCKIT_REGISTRY" => Some(url.clone()),
        "SVCKIT_REGISTRY_BACKOFF_MAX" => Some("250ms".to_string()),
        _ => None,
    };
    let config = Config::load_registry_from(&CommonArgs::default(), env).unwrap();
    let registry = svckit::servicegroup::connect(config.registry(), &config.registry_options())
        .await
        .unwrap();
    assert_eq!(registry.backoff_max(), Duration::from_millis(250));
}
