//! The README and the manual promise things the code must keep: the
//! README walkthrough is the compiled `examples/hello_node.rs`, and
//! docs/config.md lists every option.

const README: &str = include_str!("../README.md");

#[test]
fn walkthrough_is_the_compiled_example() {
    let example = include_str!("../examples/hello_node.rs");
    let start = README
        .find("```rust\n//! The README walkthrough")
        .expect("walkthrough block in README")
        + "```rust\n".len();
    let len = README[start..].find("```").expect("end of block");
    assert_eq!(
        &README[start..start + len],
        example,
        "README walkthrough differs from examples/hello_node.rs"
    );
}

/// The manual's page on configuration.
const CONFIG: &str = include_str!("../docs/config.md");

#[test]
fn config_reference_lists_every_option() {
    let start = CONFIG
        .find("\n## Options")
        .or_else(|| CONFIG.find("| option |"))
        .expect("the option table in docs/config.md");
    let section = &CONFIG[start..];
    for option in svckit::config::OPTIONS {
        let row = format!("| `{}` |", option.name);
        let line = section
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("docs/config.md has no row for {}", option.name));
        let sighup = if option.mutable {
            "in place"
        } else {
            "restart"
        };
        assert!(
            line.contains(sighup),
            "{}: SIGHUP column should say {sighup}",
            option.name
        );
        if let Some((lo, hi)) = option.range {
            let range = format!("range {lo} to {hi}");
            assert!(line.contains(&range), "{}: should say {range}", option.name);
        }
    }
    // And no row for an option that does not exist.
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let name = line[3..].split('`').next().unwrap_or_default();
        assert!(
            svckit::config::OPTIONS.iter().any(|o| o.name == name),
            "docs/config.md lists `{name}`, which is no option"
        );
    }
}
