//! The crate's `unsafe` stays small and explained: at most 17 lines under src/ name it (a
//! third of the 53 the architecture step started from), and every `unsafe` block, fn or impl
//! has a `SAFETY:` comment (or, for an `unsafe fn`, a `# Safety` section) just above it.

use std::path::{Path, PathBuf};

const MAX_UNSAFE_LINES: usize = 17;
/// How far above an `unsafe` its SAFETY comment may start (a comment of a few lines).
const COMMENT_REACH: usize = 6;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// A line that uses `unsafe` as code (not only in a comment or a string's prose).
fn uses_unsafe(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w == "unsafe")
}

/// The unexplained uses in one file's text: (line number, line).
fn unexplained(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut bad = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !uses_unsafe(line) {
            continue;
        }
        let from = i.saturating_sub(COMMENT_REACH);
        let explained = lines[from..=i]
            .iter()
            .any(|l| l.contains("SAFETY:") || l.contains("# Safety"));
        if !explained {
            bad.push((i + 1, line.trim().to_string()));
        }
    }
    bad
}

/// Lines naming `unsafe` at all, as `grep -c unsafe` counts them.
fn count(text: &str) -> usize {
    text.lines().filter(|l| l.contains("unsafe")).count()
}

#[test]
fn unsafe_is_rare_and_every_use_says_why_it_is_sound() {
    // SANDBOX_UNSAFE_SRC checks another tree (e.g. a checkout of an older commit).
    let src = std::env::var_os("SANDBOX_UNSAFE_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut total = 0;
    let mut per_file = Vec::new();
    let mut missing = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read source");
        let n = count(&text);
        let rel = f.strip_prefix(&src).unwrap_or(f).display().to_string();
        if n > 0 {
            per_file.push(format!("{rel}: {n}"));
        }
        total += n;
        for (line, code) in unexplained(&text) {
            missing.push(format!("src/{rel}:{line}: {code}"));
        }
    }
    assert!(
        missing.is_empty(),
        "unsafe without a SAFETY comment above it:\n{}",
        missing.join("\n")
    );
    assert!(
        total <= MAX_UNSAFE_LINES,
        "{total} lines under src/ name unsafe (at most {MAX_UNSAFE_LINES}); per file:\n{}",
        per_file.join("\n")
    );
}

#[test]
fn the_check_finds_an_unexplained_unsafe_and_ignores_prose() {
    let bare = "fn f() {\n    let x = unsafe { g() };\n}\n";
    assert_eq!(unexplained(bare).len(), 1);
    let explained =
        "fn f() {\n    // SAFETY: g has no preconditions.\n    let x = unsafe { g() };\n}\n";
    assert!(unexplained(explained).is_empty());
    let documented = "/// # Safety\n/// Only before threads start.\nunsafe fn f() {}\n";
    assert!(unexplained(documented).is_empty());
    let prose = "// this is not unsafe code\nlet s = \"unsafe_name\";\n";
    assert!(unexplained(prose).is_empty());
    let far = format!(
        "// SAFETY: too far up\n{}let x = unsafe {{ g() }};\n",
        "\n".repeat(8)
    );
    assert_eq!(unexplained(&far).len(), 1);
    assert_eq!(count(bare), 1);
}
