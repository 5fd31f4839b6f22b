//! The README and the manual promise things the code must keep: the
//! README walkthrough is the compiled `examples/hello_node.rs`,
//! docs/config.md lists every option, and every link between the pages
//! resolves.

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

/// Every relative link of the README, the changelog and the manual names a
/// file that exists, and every `#anchor` a heading of that file (as GitHub
/// and mdBook make them: lower case, spaces to `-`, other punctuation
/// dropped).
#[test]
fn every_link_of_the_docs_resolves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !file.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
            } else if !anchor.is_empty()
                && file.extension().is_some_and(|e| e == "md")
                && !headings(&std::fs::read_to_string(&file).unwrap()).contains(&anchor.to_string())
            {
                broken.push(format!("{}: {target} (no such heading)", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The targets of the `[text](target)` links of a Markdown text, code
/// blocks left out.
fn links(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].trim());
            rest = &after[end..];
        }
    }
    out
}

/// The anchors of a Markdown text's headings.
fn headings(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}
