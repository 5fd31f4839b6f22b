use std::io::Write;

use super::*;

fn args() -> CommonArgs {
    CommonArgs::default()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn layers_override_in_order() {
    let f = file("report_interval = 2\nhost = \"from-file\"\nworkers = 3\n");
    let mut a = args();
    a.config = Some(f.path().into());
    a.workers = Some("4".into());
    let env = |k: &str| match k {
        "SVCKIT_HOST" => Some("from-env".to_string()),
        "SVCKIT_WORKERS" => Some("2".to_string()),
        _ => None,
    };
    let c = Config::load_from(&a, env).unwrap();
    assert_eq!(c.report_interval, Duration::from_secs(2));
    assert_eq!(c.host, "from-env");
    assert_eq!(c.workers, 4);
    assert_eq!(c.source("workers"), Source::Flag("--workers".into()));
    assert_eq!(c.source("host"), Source::Env("SVCKIT_HOST".into()));
    assert_eq!(
        c.source("report_interval"),
        Source::File {
            path: f.path().into(),
            line: Some(1)
        }
    );
    assert_eq!(c.source("drain_delay"), Source::Default);
}

#[test]
fn invalid_value_names_option_file_and_line() {
    let f = file("host = \"a\"\n\nreport_interval = \"soon\"\n");
    let mut a = args();
    a.config = Some(f.path().into());
    let err = Config::load_from(&a, |_| None).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.exit_code(), 78, "{msg}");
    assert!(msg.contains("`report_interval`"), "{msg}");
    assert!(msg.contains(&format!("{}:3", f.path().display())), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
}

#[test]
fn unknown_key_is_refused_with_its_line() {
    let f = file("host = \"a\"\nreport_intervall = 3\n");
    let mut a = args();
    a.config = Some(f.path().into());
    let err = Config::load_from(&a, |_| None).unwrap_err();
    assert_eq!(err.exit_code(), 78);
    assert!(
        err.to_string()
            .contains("unknown option `report_intervall`"),
        "{err}"
    );
    assert!(err.to_string().contains(":2"), "{err}");
}

#[test]
fn syntax_error_is_one_line_config_error() {
    let f = file("host = \"unterminated\n");
    let mut a = args();
    a.config = Some(f.path().into());
    let err = Config::load_from(&a, |_| None).unwrap_err();
    assert_eq!(err.exit_code(), 78);
    assert_eq!(err.to_string().lines().count(), 1, "{err}");
}

#[test]
fn unreadable_file_is_config_error() {
    let mut a = args();
    a.config = Some("/nonexistent/svckit.toml".into());
    let err = Config::load_from(&a, |_| None).unwrap_err();
    assert_eq!(err.exit_code(), 78);
    assert!(err.to_string().contains("/nonexistent/svckit.toml"));
}

#[test]
fn zero_workers_and_bad_registry_are_usage_errors() {
    let mut a = args();
    a.workers = Some("0".into());
    let err = Config::load_from(&a, |_| None).unwrap_err();
    assert_eq!(err.exit_code(), 64, "{err}");
    assert!(err.to_string().contains("--workers"), "{err}");

    let env = |k: &str| (k == "SVCKIT_REGISTRY").then(|| "zookeeper://x:1".to_string());
    let err = Config::load_from(&args(), env).unwrap_err();
    assert_eq!(err.exit_code(), 64, "{err}");
    assert!(err.to_string().contains("SVCKIT_REGISTRY"), "{err}");
}

#[test]
fn bad_env_value_names_the_variable() {
    let env = |k: &str| (k == "SVCKIT_RPC_LISTEN").then(|| "localhost".to_string());
    let err = Config::load_from(&args(), env).unwrap_err();
    assert_eq!(err.exit_code(), 78);
    assert!(err.to_string().contains("SVCKIT_RPC_LISTEN"), "{err}");
}

#[test]
fn sighup_applies_only_mutable_options() {
    let mut old = Config::default();
    let mut new = Config::default();
    new.set("log_level", "debug", Source::Default).unwrap();
    new.set("rpc_listen", "127.0.0.1:9", Source::Default)
        .unwrap();
    new.set("registry_password", "s3cret", Source::Default)
        .unwrap();
    let (mutable, restart) = old.apply_mutable(&new).unwrap();
    assert_eq!(mutable, vec!["log_level"]);
    assert_eq!(restart, vec!["rpc_listen", "registry_password"]);
    assert_eq!(old.log_level.0, "debug");
    assert_eq!(old.rpc_listen, Config::default().rpc_listen);
    assert_eq!(new.get("registry_password").as_deref(), Some("***"));
}

#[test]
fn host_and_topic_must_be_key_safe() {
    let mut a = args();
    a.host = Some("rack1/node2".into());
    let err = Config::load_from(&a, |_| None).unwrap_err();
    assert_eq!(err.exit_code(), 78);
    assert!(err.to_string().contains("`host` from flag --host"), "{err}");
    let mut a = args();
    a.topic = Some("compute.cell-1".into());
    assert!(Config::load_from(&a, |_| None).is_ok());
}
