//! Loading a [`Config`]: the layers in order, the file's TOML, and the
//! checks a loaded config must pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{env_var_name, CommonArgs, Config, OptionValue, Source, OPTIONS, REGISTRY_OPTIONS};
use crate::error::{Error, Result};
use crate::servicegroup::{valid_name, VALID_NAME};

impl Config {
    /// Loads the layers: defaults, the config file (`--config` or
    /// `SVCKIT_CONFIG`), `SVCKIT_*` variables, then the flags given.
    pub fn load(args: &CommonArgs) -> Result<Self> {
        Self::load_from(args, |k| std::env::var(k).ok())
    }

    /// [`Config::load`] with the environment given as a lookup (for tests).
    pub fn load_from(args: &CommonArgs, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let config = Self::layers(args, &env, |_| true)?;
        config.validate()?;
        Ok(config)
    }

    /// Only the options that reach the registry ([`REGISTRY_OPTIONS`]), from
    /// the same layers: what an operator tool needs. Node options in the
    /// environment or the file are not read, so an operator's shell set up
    /// for a node (`SVCKIT_WORKERS=0`, another `SVCKIT_HOST`) cannot break
    /// `svckit members list`.
    pub fn load_registry(args: &CommonArgs) -> Result<Self> {
        Self::load_registry_from(args, |k| std::env::var(k).ok())
    }

    /// [`Config::load_registry`] with the environment given as a lookup.
    pub fn load_registry_from(
        args: &CommonArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let config = Self::layers(args, &env, |name| REGISTRY_OPTIONS.contains(&name))?;
        config.validate_registry()?;
        Ok(config)
    }

    /// Applies the file, environment and flag layers to the defaults, for
    /// the options `wanted` accepts. Unknown keys in the file are refused
    /// whatever `wanted` says: a typo is a typo.
    fn layers(
        args: &CommonArgs,
        env: &impl Fn(&str) -> Option<String>,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let mut config = Config::default();
        let file = args
            .config
            .clone()
            .or_else(|| env("SVCKIT_CONFIG").map(PathBuf::from));
        if let Some(path) = &file {
            config.merge_file(path, &wanted)?;
        }
        for option in OPTIONS.iter().filter(|o| wanted(o.name)) {
            let var = env_var_name(option.name);
            if let Some(raw) = env(&var) {
                config.set(option.name, &raw, Source::Env(var))?;
            }
        }
        for (name, raw) in args.values().into_iter().filter(|(n, _)| wanted(n)) {
            config.set(
                name,
                raw,
                Source::Flag(format!("--{}", name.replace('_', "-"))),
            )?;
        }
        Ok(config)
    }

    /// Merges a TOML file of top-level `key = value` pairs, one per option,
    /// taking those `wanted` accepts.
    fn merge_file(&mut self, path: &Path, wanted: impl Fn(&str) -> bool) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config_from(format!("cannot read config file {}", path.display()), e)
        })?;
        self.merge_text(&text, path, wanted)
    }

    /// Parses a config file's text over the defaults and validates the
    /// result, as `--config` does with a file (without the environment and
    /// flag layers); `path` names the file in messages. For tools that hold
    /// the text already, and for fuzzing the parser.
    ///
    /// ```
    /// use std::path::Path;
    /// let config = svckit::Config::from_file_text("workers = 4\n", Path::new("node.toml")).unwrap();
    /// assert_eq!(config.workers().0, 4);
    /// let err = svckit::Config::from_file_text("workers = 0\n", Path::new("node.toml")).unwrap_err();
    /// assert_eq!(err.exit_code(), 64);
    /// ```
    pub fn from_file_text(text: &str, path: &Path) -> Result<Self> {
        let mut config = Config::default();
        config.merge_text(text, path, |_| true)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::merge_file`] on the file's text.
    fn merge_text(&mut self, text: &str, path: &Path, wanted: impl Fn(&str) -> bool) -> Result<()> {
        let table: BTreeMap<String, toml::Spanned<toml::Value>> =
            toml::from_str(text).map_err(|e| {
                Error::config(format!(
                    "invalid config file {}: {}",
                    path.display(),
                    one_line(&e.to_string())
                ))
            })?;
        for (key, value) in &table {
            let source = Source::File {
                path: path.to_path_buf(),
                line: Some(line_at(text, value.span().start)),
            };
            if !OPTIONS.iter().any(|o| o.name == key) {
                return Err(Error::config(format!(
                    "unknown option `{key}` (from {source})"
                )));
            }
            if !wanted(key) {
                continue;
            }
            let raw = match value.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(Error::config(format!(
                    "invalid value for `{key}` from {source}: expected a string, number or boolean"
                )))
                }
            };
            self.set(key, &raw, source)?;
        }
        Ok(())
    }

    /// Checks what no single option can: ranges and combinations.
    pub fn validate(&self) -> Result<()> {
        check_workers(self.workers.0, self.source("workers"))?;
        self.check_ranges(|_| true)?;
        // Host and topic are path segments of registry keys and files.
        let names = [("host", Some(&self.host)), ("topic", self.topic.as_ref())];
        for (name, value) in names {
            if let Some(v) = value.filter(|v| !valid_name(v)) {
                return Err(Error::config(format!(
                    "invalid value for `{name}` from {}: {v:?} may only hold {VALID_NAME}",
                    self.source(name)
                )));
            }
        }
        self.check_pairs(&[("tls_cert_file", "tls_key_file")])?;
        if self.http_shared_port && self.http_listen.is_some() {
            return Err(Error::config(format!(
                "http_shared_port serves HTTP on rpc_listen: unset http_listen (from {})",
                self.source("http_listen")
            )));
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(Error::config(
                "tls_client_ca_file needs tls_cert_file and tls_key_file: client certificates are asked for only over TLS",
            ));
        }
        self.check_registry_pairs()
    }

    /// The checks of the registry options alone.
    fn validate_registry(&self) -> Result<()> {
        self.check_ranges(|name| REGISTRY_OPTIONS.contains(&name))?;
        self.check_registry_pairs()
    }

    /// Options that only work together, or only apart; the registry's and
    /// the RPC client's (what [`Config::load_registry`] reads).
    fn check_registry_pairs(&self) -> Result<()> {
        let pairs = [
            ("registry_cert_file", "registry_key_file"),
            ("tls_client_cert_file", "tls_client_key_file"),
        ];
        self.check_pairs(&pairs)?;
        if self.registry_password.is_some() && self.registry_password_file.is_some() {
            return Err(Error::config(
                "registry_password and registry_password_file are two ways to give one password: set one",
            ));
        }
        Ok(())
    }

    /// Each pair set together or not at all.
    fn check_pairs(&self, pairs: &[(&str, &str)]) -> Result<()> {
        for (a, b) in pairs {
            let set = |name| self.raw(name).is_some_and(|v| !v.is_empty());
            if set(a) != set(b) {
                return Err(Error::config(format!("{a} and {b} must be set together")));
            }
        }
        Ok(())
    }
}

/// Refuses a value outside `range` (the bounds in the option's text form).
pub(super) fn check_range<T: OptionValue + PartialOrd>(
    name: &str,
    value: &T,
    (lo, hi): (&str, &str),
    source: Source,
) -> Result<()> {
    let bound = |text: &str| {
        T::parse_value(text)
            .map_err(|e| Error::config(format!("option `{name}` has a bad bound {text:?}: {e}")))
    };
    if *value < bound(lo)? || *value > bound(hi)? {
        return Err(Error::config(format!(
            "invalid value for `{name}` from {source}: {} is outside {lo} to {hi}",
            value.show()
        )));
    }
    Ok(())
}

/// The 1-based line of a byte offset (from a `toml` span).
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// toml's errors span several lines (with a source excerpt); keep them to one.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^' || c == ' ')
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// The rule for a worker count, wherever one comes from (the config, or a
/// library caller of the launcher): at least 1.
/// `--workers 0` is a usage mistake (oslo raises ValueError), not a config
/// one: exit 64.
pub(crate) fn check_workers(workers: u32, source: impl std::fmt::Display) -> Result<()> {
    if workers == 0 {
        return Err(Error::usage(format!(
            "invalid value for `workers` from {source}: must be at least 1"
        )));
    }
    Ok(())
}
