//! The config file parser and the registry URL parser on any text: each
//! answers, never panics; a config it accepts shows every option in a form
//! that parses back to the same value.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use svckit::config::{Source, OPTIONS};
use svckit::servicegroup::RegistryUrl;
use svckit::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(url) = RegistryUrl::parse(text) {
        let shown = url.to_string();
        assert_eq!(RegistryUrl::parse(&shown).ok(), Some(url), "{shown}");
    }
    let Ok(config) = Config::from_file_text(text, Path::new("fuzz.toml")) else {
        return;
    };
    for option in OPTIONS.iter().filter(|o| !o.secret) {
        let shown = config.get(option.name).expect("every option shows");
        let mut again = config.clone();
        again
            .set(option.name, &shown, Source::Default)
            .unwrap_or_else(|e| panic!("{} = {shown:?} does not parse back: {e}", option.name));
        assert_eq!(again.get(option.name), Some(shown), "{}", option.name);
    }
});
