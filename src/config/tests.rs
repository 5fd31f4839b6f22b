use std::io::Write;
use std::path::Path;

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
    assert_eq!(c.workers, Workers(4));
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

#[test]
fn out_of_range_values_are_refused_naming_the_option() {
    for (flag, value) in [
        ("report_interval", "1e19"),
        ("report_interval", "0"),
        ("service_down_time", "1000000000000"),
        ("graceful_shutdown_timeout", "1000000000000"),
        ("service_down_time", "-1"),
        ("workers", "5000"),
    ] {
        let mut a = args();
        match flag {
            "report_interval" => a.report_interval = Some(value.into()),
            "service_down_time" => a.service_down_time = Some(value.into()),
            "graceful_shutdown_timeout" => a.graceful_shutdown_timeout = Some(value.into()),
            _ => a.workers = Some(value.into()),
        }
        let err = Config::load_from(&a, |_| None).unwrap_err();
        assert_eq!(err.exit_code(), 78, "{flag}={value}: {err}");
        assert!(err.to_string().contains(&format!("`{flag}`")), "{err}");
    }
    let env = |k: &str| (k == "SVCKIT_RPC_RESPONSE_TIMEOUT").then(|| "1e12".to_string());
    let err = Config::load_from(&args(), env).unwrap_err();
    assert!(err.to_string().contains("`rpc_response_timeout`"), "{err}");
}

#[test]
fn every_range_bound_parses_and_the_defaults_are_within_them() {
    let defaults = Config::default();
    for option in OPTIONS {
        if let Some((lo, hi)) = option.range {
            let mut c = Config::default();
            c.set(option.name, lo, Source::Default).unwrap();
            c.set(option.name, hi, Source::Default).unwrap();
        }
    }
    defaults.check_ranges(|_| true).unwrap();
}

#[test]
fn an_operator_tool_reads_only_the_registry_options() {
    let f = file("workers = 0\nhost = \"bad host!\"\nregistry = \"memory://ops\"\n");
    let mut a = args();
    a.config = Some(f.path().into());
    let env = |k: &str| match k {
        "SVCKIT_WORKERS" => Some("0".to_string()),
        "SVCKIT_HOST" => Some("bad host!".to_string()),
        "SVCKIT_REGISTRY_TIMEOUT" => Some("2".to_string()),
        _ => None,
    };
    let c = Config::load_registry_from(&a, env).unwrap();
    assert_eq!(c.registry.to_string(), "memory://ops");
    assert_eq!(c.registry_timeout, Duration::from_secs(2));
    // A typo in the file is still a typo.
    let f = file("registry_timout = 2\n");
    a.config = Some(f.path().into());
    let err = Config::load_registry_from(&a, |_| None).unwrap_err();
    assert_eq!(err.exit_code(), 78, "{err}");
}

#[test]
fn tls_options_come_in_pairs() {
    let load = |vars: &[(&str, &str)]| {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(&args(), move |k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    };
    for (vars, named) in [
        (&[("SVCKIT_TLS_CERT_FILE", "/c.pem")][..], "tls_key_file"),
        (
            &[("SVCKIT_TLS_CLIENT_KEY_FILE", "/k.pem")][..],
            "tls_client_cert_file",
        ),
        (
            &[("SVCKIT_TLS_CLIENT_CA_FILE", "/ca.pem")][..],
            "tls_cert_file",
        ),
        (
            &[
                ("SVCKIT_REGISTRY_USER", "u"),
                ("SVCKIT_REGISTRY_PASSWORD", "p"),
                ("SVCKIT_REGISTRY_PASSWORD_FILE", "/p"),
            ][..],
            "registry_password_file",
        ),
    ] {
        let err = load(vars).unwrap_err();
        assert_eq!(err.exit_code(), 78, "{err}");
        assert!(err.to_string().contains(named), "{err}");
    }
    let mut a = args();
    a.tls_cert_file = Some("/c.pem".into());
    a.tls_key_file = Some("/k.pem".into());
    let c = Config::load_from(&a, |_| None).unwrap();
    assert_eq!(
        c.source("tls_key_file"),
        Source::Flag("--tls-key-file".into())
    );
}

#[test]
fn debug_output_hides_secrets() {
    let mut c = Config::default();
    c.set("registry_password", "s3cret-in-debug", Source::Default)
        .unwrap();
    assert!(!format!("{c:?}").contains("s3cret-in-debug"));
    assert!(!format!("{:?}", c.registry_options()).contains("s3cret-in-debug"));
}

/// The property the `config` fuzz target checks, on the fuzzer's seed: a
/// config that every option sets shows each one in a form that parses back.
#[test]
fn every_option_shows_in_a_form_that_parses_back() {
    let text = include_str!("../../fuzz/seeds/config/all.toml");
    let config = Config::from_file_text(text, Path::new("all.toml")).unwrap();
    assert_eq!(config.rpc_max_connections, 5);
    for option in OPTIONS.iter().filter(|o| !o.secret) {
        let shown = config.get(option.name).unwrap();
        let mut again = config.clone();
        again.set(option.name, &shown, Source::Default).unwrap();
        assert_eq!(again.get(option.name), Some(shown), "{}", option.name);
    }
}
