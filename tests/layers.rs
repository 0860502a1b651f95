//! The source tree's structure: the library's layers import only downward, and no two
//! modules of a layer import each other (directly or round a cycle); netlink bytes are
//! framed in one module only; `unsafe` is rare and each use says why it is sound.
//! Reads every `.rs` file under src/: each `crate::`, `self::` and `super::` path, in `use`
//! items (grouped ones included) and in code, names a module; a module is a file or
//! directory directly under a layer, e.g. `policy::config` or `runtime::dns`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first: a layer may name the ones before it, never one after it.
const LAYERS: &[&str] = &["sys", "policy", "stages", "runtime", "app"];

/// The crate's roots: they declare the layers and name nothing else.
const ROOTS: &[&str] = &["lib.rs", "main.rs"];

/// A module of the library: its layer and its name in that layer ("" for the layer's own
/// mod.rs). A file outside every layer is a module of the layer "".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Module {
    layer: String,
    name: String,
}

impl std::fmt::Display for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.layer.as_str(), self.name.as_str()) {
            ("", n) => write!(f, "{n} (outside every layer)"),
            (l, "") => write!(f, "{l}"),
            (l, n) => write!(f, "{l}::{n}"),
        }
    }
}

/// The tree the checks read: src/ of this checkout, or SANDBOX_LAYERS_SRC (e.g. a checkout
/// of an older commit, to show a check fails there).
fn checked_src() -> PathBuf {
    std::env::var_os("SANDBOX_LAYERS_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

/// Writes `text` at `rel` under `dir` (the checks' made-up trees).
fn write_file(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// Every .rs file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
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

/// The module path of a file, e.g. src/runtime/dns/mod.rs -> [runtime, dns].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Which module a path (from the crate root) names: the first two segments when the second
/// is a file or directory of the layer, else the layer's own mod.rs.
fn module_of(src: &Path, path: &[String]) -> Option<Module> {
    let first = path.first()?;
    if rank(first).is_none() {
        let name = first.clone();
        // Outside every layer: a top-level module of its own (today's flat tree).
        let exists = src.join(format!("{name}.rs")).exists() || src.join(&name).is_dir();
        return exists.then(|| Module {
            layer: String::new(),
            name,
        });
    }
    let name = match path.get(1) {
        Some(m)
            if src.join(first).join(format!("{m}.rs")).exists()
                || src.join(first).join(m).is_dir() =>
        {
            m.clone()
        }
        _ => String::new(),
    };
    Some(Module {
        layer: first.clone(),
        name,
    })
}

/// The source with comments, string and character literals blanked (so that a path in a
/// doc comment or a message is not taken for an import).
fn code_only(s: &str) -> String {
    let b: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth: usize = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !b[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            'raw: while j < b.len() {
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break 'raw;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') {
                // Past the escaped character: '\'' and '\\' end after it.
                let mut j = i + 3;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Reads `a::b::{c, d::e}` from `chars[*i..]` into full paths (prefix included).
fn read_tree(chars: &[char], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
        match chars.get(*i) {
            Some('{') => {
                *i += 1;
                loop {
                    read_tree(chars, i, path.clone(), out);
                    while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
                        *i += 1;
                    }
                    match chars.get(*i) {
                        Some(',') => *i += 1,
                        Some('}') => {
                            *i += 1;
                            return;
                        }
                        _ => return,
                    }
                    while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
                        *i += 1;
                    }
                    if chars.get(*i) == Some(&'}') {
                        *i += 1;
                        return;
                    }
                }
            }
            Some(c) if is_ident(*c) => {
                let start = *i;
                while chars.get(*i).is_some_and(|c| is_ident(*c)) {
                    *i += 1;
                }
                let seg: String = chars[start..*i].iter().collect();
                if seg != "self" || path.is_empty() {
                    path.push(seg);
                }
                if chars.get(*i) == Some(&':') && chars.get(*i + 1) == Some(&':') {
                    *i += 2;
                    continue;
                }
                out.push(path);
                return;
            }
            _ => {
                // `*` or the end of the path.
                out.push(path);
                return;
            }
        }
    }
}

/// Every path that names something in the crate, from the crate root, as written in `file`.
fn crate_paths(src: &Path, file: &Path, text: &str) -> Vec<(String, Vec<String>)> {
    let here = module_path(src, file);
    let chars: Vec<char> = code_only(text).chars().collect();
    let mut found = vec![];
    // Inline modules (`mod tests { ... }`): their names and the brace depth they opened at,
    // so that `super::` inside one means the file's own module.
    let mut inline: Vec<(String, usize)> = vec![];
    let mut depth: usize = 0;
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !is_ident(chars[i - 1]) || chars[i - 1] == '$';
        let rest = |w: &str| chars[i..].iter().take(w.len()).copied().eq(w.chars());
        match chars[i] {
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        if starts_word && rest("mod ") {
            let mut j = i + 4;
            let start = j;
            while chars.get(j).is_some_and(|c| is_ident(*c)) {
                j += 1;
            }
            let name: String = chars[start..j].iter().collect();
            while chars.get(j).is_some_and(|c| c.is_whitespace()) {
                j += 1;
            }
            if !name.is_empty() && chars.get(j) == Some(&'{') {
                inline.push((name, depth));
                depth += 1;
                i = j + 1;
                continue;
            }
        }
        let here: Vec<String> = here
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        let base: Option<(usize, Vec<String>)> = if !starts_word {
            None
        } else if rest("crate::") && (i == 0 || chars[i - 1] != ':') {
            Some((7, vec![]))
        } else if rest("self::") && (i == 0 || chars[i - 1] != ':') {
            Some((6, here.clone()))
        } else if rest("super::") && (i == 0 || chars[i - 1] != ':') {
            let mut at = i;
            let mut up = here.clone();
            while chars[at..].iter().take(7).copied().eq("super::".chars()) {
                up.pop();
                at += 7;
            }
            Some((at - i, up))
        } else {
            None
        };
        let Some((skip, prefix)) = base else {
            i += 1;
            continue;
        };
        let start = i;
        i += skip;
        let mut paths = vec![];
        read_tree(&chars, &mut i, prefix, &mut paths);
        let written: String = chars[start..i.max(start + skip)].iter().collect();
        let written = written.split_whitespace().collect::<Vec<_>>().join(" ");
        for p in paths {
            found.push((written.clone(), p));
        }
        i = i.max(start + 1);
    }
    found
}

struct Graph {
    /// (from, to) -> the first place it was seen: "file: path".
    edges: BTreeMap<(Module, Module), String>,
    /// Files that are not in any layer.
    outside: Vec<String>,
}

fn graph(src: &Path) -> Graph {
    let mut files = vec![];
    sources(src, &mut files);
    let mut edges = BTreeMap::new();
    let mut outside = vec![];
    for file in &files {
        let rel = file.strip_prefix(src).unwrap();
        if ROOTS.iter().any(|r| rel == Path::new(r)) {
            continue;
        }
        let here = module_path(src, file);
        let Some(from) = module_of(src, &here) else {
            continue;
        };
        if from.layer.is_empty() {
            outside.push(format!("src/{}", rel.display()));
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (written, path) in crate_paths(src, file, &text) {
            let Some(to) = module_of(src, &path) else {
                continue;
            };
            if to != from {
                edges
                    .entry((from.clone(), to))
                    .or_insert_with(|| format!("src/{}: {written}", rel.display()));
            }
        }
    }
    Graph { edges, outside }
}

/// Everything wrong with the tree under `src`, one line each.
fn violations(src: &Path) -> Vec<String> {
    let g = graph(src);
    let mut out = vec![];
    for f in &g.outside {
        out.push(format!(
            "{f} is in no layer (put it under one of {})",
            LAYERS.join(", ")
        ));
    }
    for ((from, to), at) in &g.edges {
        if let (Some(a), Some(b)) = (rank(&from.layer), rank(&to.layer)) {
            if a < b {
                out.push(format!(
                    "{at}: {from} (layer {}) names {to} (layer {}), a higher layer",
                    from.layer, to.layer
                ));
            }
        }
    }
    // Cycles between modules of one layer (files outside every layer count as one layer).
    let same: BTreeMap<&Module, Vec<&Module>> =
        g.edges.keys().fold(BTreeMap::new(), |mut m, (a, b)| {
            if a.layer == b.layer {
                m.entry(a).or_default().push(b);
            }
            m
        });
    let mut reported: BTreeSet<Vec<Module>> = BTreeSet::new();
    for start in same.keys() {
        if let Some(cycle) = cycle_from(start, &same) {
            let mut key = cycle.clone();
            key.sort();
            if reported.insert(key) {
                let mut steps = vec![];
                for w in cycle.windows(2) {
                    steps.push(format!("    {}", g.edges[&(w[0].clone(), w[1].clone())]));
                }
                let close = (cycle[cycle.len() - 1].clone(), cycle[0].clone());
                steps.push(format!("    {}", g.edges[&close]));
                let names: Vec<String> = cycle.iter().map(|m| m.to_string()).collect();
                out.push(format!(
                    "import cycle: {} -> {}\n{}",
                    names.join(" -> "),
                    names[0],
                    steps.join("\n")
                ));
            }
        }
    }
    out
}

/// The shortest cycle through `start`, if any (breadth-first over the layer's edges).
fn cycle_from(start: &Module, edges: &BTreeMap<&Module, Vec<&Module>>) -> Option<Vec<Module>> {
    let mut came_from: BTreeMap<&Module, &Module> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(m) = queue.pop_front() {
        for next in edges.get(m).into_iter().flatten() {
            if *next == start {
                let mut path = vec![m.clone()];
                let mut at = m;
                while at != start {
                    at = came_from[at];
                    path.push(at.clone());
                }
                path.reverse();
                return Some(path);
            }
            if !came_from.contains_key(next) {
                came_from.insert(next, m);
                queue.push_back(next);
            }
        }
    }
    None
}

/// The module that owns netlink: src/sys/netlink.rs (or a directory of that name).
const NETLINK_LAYER: &str = "sys/netlink";

/// Names only the netlink layer writes: message headers, acks and attributes, their flags
/// and alignment, the socket's family, protocol and options, the framing crates.
const NETLINK_ONLY: &[&str] = &[
    "nlmsghdr",
    "nlmsgerr",
    "NLMSG_",
    "nlattr",
    "NLA_",
    "NLM_F_",
    "AF_NETLINK",
    "PF_NETLINK",
    "NETLINK_",
    "sockaddr_nl",
    "netlink_sys",
    "netlink_packet_core",
];

/// Netlink's 4-byte alignment written out (compared with all whitespace removed).
const ALIGN_BY_HAND: &[&str] = &["+3)&!3", "+3)&!0x3"];

/// Socket calls a file that uses netlink must leave to the layer.
const SOCKET_CALLS: &[&str] = &[
    "libc::send",
    "libc::recv",
    "libc::sendto",
    "libc::recvfrom",
    "libc::sendmsg",
    "libc::recvmsg",
];

/// Whether `word` occurs in `code` starting at an identifier boundary.
fn names(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        let starts = !before.is_some_and(is_ident);
        // A whole-word pattern (one that does not end in `_`) must end there too.
        let ends = word.ends_with('_') || !after.is_some_and(is_ident);
        starts && ends
    })
}

/// Every file outside the netlink layer that frames netlink itself, with what it names.
fn netlink_outside_its_layer(src: &Path) -> Vec<String> {
    let mut files = vec![];
    sources(src, &mut files);
    let mut out = vec![];
    for file in &files {
        let rel = file.strip_prefix(src).unwrap();
        if rel.starts_with(NETLINK_LAYER) || rel == Path::new(&format!("{NETLINK_LAYER}.rs")) {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let mut found: Vec<&str> = NETLINK_ONLY
            .iter()
            .copied()
            .filter(|w| names(&code, w))
            .collect();
        found.extend(ALIGN_BY_HAND.iter().filter(|w| compact.contains(**w)));
        if code.to_lowercase().contains("netlink") {
            found.extend(SOCKET_CALLS.iter().filter(|w| names(&code, w)));
        }
        if !found.is_empty() {
            out.push(format!(
                "src/{} frames netlink itself ({}): use crate::sys::netlink",
                rel.display(),
                found.join(", ")
            ));
        }
    }
    out
}

#[test]
fn netlink_messages_are_walked_in_one_module() {
    let src = checked_src();
    let problems = netlink_outside_its_layer(&src);
    assert!(
        problems.is_empty(),
        "{} file(s) of {} outside {NETLINK_LAYER}:\n{}",
        problems.len(),
        src.display(),
        problems.join("\n")
    );
}

/// The netlink check finds a walker outside the layer (its names, a hand-written alignment,
/// a raw recv on a netlink socket), leaves the layer itself alone, and ignores comments,
/// strings and longer identifiers that merely contain a name.
#[test]
fn the_netlink_check_finds_walkers_outside_the_layer() {
    let dir = std::env::temp_dir().join(format!("sandbox-netlink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |p: &str, s: &str| write_file(&dir, p, s);
    write(
        "sys/netlink.rs",
        "fn walk(b: &[u8]) { if ty == libc::NLMSG_ERROR { off += (len + 3) & !3; } }",
    );
    write(
        "runtime/a.rs",
        "fn f(t: u16) -> bool { t == libc::NLMSG_DONE as u16 }",
    );
    write(
        "runtime/b.rs",
        "use crate::sys::netlink;\nfn g(fd: i32) { let n = unsafe { libc::recv(fd, p, l, 0) }; \
         b = &b[(len+3)&!3..]; }",
    );
    write(
        "runtime/c.rs",
        "// libc::NLMSG_ERROR in a comment\nfn h() { let _ = \"NETLINK_CAP_ACK\"; \
         let NFULA_PAYLOAD = 9; let _ = libc::recv; }",
    );
    let problems = netlink_outside_its_layer(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let text = problems.join("\n");
    assert!(
        text.contains("src/runtime/a.rs frames netlink itself (NLMSG_)"),
        "{text}"
    );
    assert!(
        text.contains("src/runtime/b.rs frames netlink itself (+3)&!3, libc::recv)"),
        "{text}"
    );
    assert!(!text.contains("sys/netlink.rs"), "{text}");
    assert!(!text.contains("c.rs"), "{text}");
    assert_eq!(problems.len(), 2, "{text}");
}

#[test]
fn layers_import_only_downward_and_modules_have_no_cycles() {
    let src = checked_src();
    let problems = violations(&src);
    assert!(
        problems.is_empty(),
        "{} problem(s) in the module structure of {}:\n{}",
        problems.len(),
        src.display(),
        problems.join("\n")
    );
}

/// The checker itself finds what it must: an upward path (grouped, in code, through
/// `super::`) and a cycle, and ignores paths in comments and strings.
#[test]
fn the_check_finds_upward_paths_and_cycles() {
    let dir = std::env::temp_dir().join(format!("sandbox-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |p: &str, s: &str| write_file(&dir, p, s);
    write("lib.rs", "pub mod sys; pub mod policy; pub mod app;");
    write("sys/mod.rs", "pub mod fs;");
    write(
        "sys/fs.rs",
        "// crate::app::x in a comment\nfn f() { let _ = \"crate::app::y\"; }\n\
         fn g() { crate::policy::{a::b, config::Settings}::x(); }",
    );
    write("policy/mod.rs", "pub mod a; pub mod config;");
    write("policy/a.rs", "use super::config::X;");
    write("policy/config.rs", "use crate::policy::{a::Y};");
    write("app/mod.rs", "use crate::sys::fs;");
    let problems = violations(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let text = problems.join("\n");
    assert!(
        text.contains("src/sys/fs.rs: crate::policy::{a::b, config::Settings}")
            && text.contains("sys::fs (layer sys) names policy::a (layer policy)")
            && text.contains("sys::fs (layer sys) names policy::config"),
        "{text}"
    );
    assert!(
        text.contains("import cycle: policy::a -> policy::config -> policy::a"),
        "{text}"
    );
    assert!(
        !text.contains("app"),
        "comments and strings are not imports: {text}"
    );
    assert_eq!(problems.len(), 3, "{text}");
}

// ---- unsafe ------------------------------------------------------------------------------
// The crate's `unsafe` stays small and explained: at most 17 lines under src/ name it (a
// third of the 53 the architecture step started from), and every `unsafe` block, fn or impl
// has a `SAFETY:` comment (or, for an `unsafe fn`, a `# Safety` section) just above it.

const MAX_UNSAFE_LINES: usize = 17;
/// How far above an `unsafe` its SAFETY comment may start (a comment of a few lines).
const COMMENT_REACH: usize = 6;

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
    let src = checked_src();
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
