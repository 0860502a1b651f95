//! Tier 2, the advice in our reports cannot be written by the sandboxed command. The probe
//! (the command) sends DNS queries for names built to become a command or a wider allowlist
//! when pasted: commas, CIDRs, `$(...)`, backticks, quotes, spaces, escape and control
//! bytes, dots inside a label; and it resolves such a name under an allowed wildcard, then
//! connects to the address on a port the wildcard does not allow, so the name rides along
//! on a blocked-connection line. Every output we produce is then read: stderr, the audit
//! log, status.json and `check` run in the running sandbox. Each "SANDBOX_ALLOW=" must be
//! one entry our parser takes, and no raw metacharacter of any name may appear.

mod common;

use common::netns::*;
use common::*;
use sandbox_init::policy::allowlist::Entry;
use serde_json::Value;
use std::time::Duration;

const AUDIT: &str = "/var/log/sandbox-init/audit.jsonl";
const LOCAL_DNS: &str = "127.0.0.1:53";

/// (what the probe sends, in `--query-raw` notation; the raw text that must never appear
/// in our output, if the name has one a shell or the SANDBOX_ALLOW split would act on).
const NAMES: &[(&str, &str)] = &[
    (
        "registry.example.org,0.0.0.0/0",
        "registry.example.org,0.0.0.0/0",
    ),
    ("a$(sh<x)", "a$(sh<x)"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("10.0.0.0/8,x.test", ",x.test"),
    ("a`id`.test", "`id`"),
    ("a'b.test", "a'b"),
    ("a\"b.test", "a\"b"),
    ("a\\x20b.test", "a b"),
    ("a\\x09b.test", "a\tb"),
    ("a\\x0ab.test", "a\nb"),
    ("a\\x1b[31mred.test", "\u{1b}"),
    ("a\\x00b.test", "a\u{0}b"),
    ("a\\x7f.test", "\u{7f}"),
    ("\\xc3\\xa9t\\xc3\\xa9.test", "\u{e9}"),
    ("x.test;id", ";id"),
    ("x.test|sh", "|sh"),
    ("x.test&&id", "&&id"),
    ("x.test>f", ">f"),
    ("a{b,c}.test", "{b,c}"),
    ("~root.test", "~root"),
    ("$HOME.test", "$HOME"),
    ("*.x.test", "*.x.test"),
    ("x.test:443", "x.test:443"),
    // one label "evil.other" under other.test: as text it reads evil.other.other.test
    ("evil\\x2eother.other.test", "evil.other.other.test"),
    // a backslash spelling the escape of a dot
    ("a\\x5c046b.test", "a\\046b"),
];

/// The name under the allowed wildcard `*.allowed.test:80` whose address is then blocked
/// on port 22.
const RIDING: &str = "a$(sh<x).allowed.test";

fn rootfs() -> Rootfs {
    let r = Rootfs::new();
    r.write("etc/resolv.conf", &format!("nameserver {DNS1}\n"));
    std::fs::create_dir_all(r.join("var/log/sandbox-init")).unwrap();
    r
}

/// The value of each `SANDBOX_ALLOW=` word as a shell gives it (our single quotes
/// removed): each must be exactly one entry of the allowlist grammar.
fn pasted_entries(text: &str, whence: &str) -> Vec<Entry> {
    let mut out = vec![];
    for (i, _) in text.match_indices("SANDBOX_ALLOW=") {
        let rest = &text[i + "SANDBOX_ALLOW=".len()..];
        let word = rest.split([' ', '\n', '"']).next().unwrap_or_default();
        let value = match word.strip_prefix('\'') {
            Some(q) => q
                .strip_suffix('\'')
                .unwrap_or_else(|| panic!("unclosed quote in {whence}: {word}")),
            None => word,
        };
        assert!(
            !value.is_empty() && !value.contains([',', '\'', '\\', '$', '`', '(', ')', ';']),
            "{whence}: advice that is not one plain entry: SANDBOX_ALLOW={word}"
        );
        let entry: Entry = value
            .parse()
            .unwrap_or_else(|e| panic!("{whence}: SANDBOX_ALLOW={word} does not parse: {e}"));
        // the text is exactly the entry, nothing trimmed around it
        assert_eq!(entry.to_string(), value, "{whence}");
        out.push(entry);
    }
    out
}

fn assert_no_raw_names(text: &str, whence: &str) {
    for (_, raw) in NAMES {
        assert!(
            !text.contains(raw),
            "{whence} holds the raw name {raw:?}:\n{text}"
        );
    }
    assert!(!text.contains(RIDING), "{whence} holds {RIDING:?}:\n{text}");
    let odd: Vec<char> = text
        .chars()
        .filter(|c| (c.is_control() && *c != '\n') || !c.is_ascii())
        .collect();
    assert!(
        odd.is_empty(),
        "{whence}: control or non-ASCII bytes {odd:?}"
    );
}

/// A JSON value the command chose (a name): only host-name bytes and `\xNN`.
fn assert_escaped(v: &Value, whence: &str) {
    let Some(s) = v.as_str() else { return };
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if let Some(tail) = rest.strip_prefix("\\x") {
            let hex = tail.get(..2).unwrap_or_default();
            assert!(
                hex.len() == 2 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "{whence}: {s:?}"
            );
            rest = &tail[2..];
        } else {
            assert!(
                c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c),
                "{whence}: {c:?} in {s:?}"
            );
            rest = &rest[1..];
        }
    }
}

#[test]
fn names_the_command_sends_never_become_advice_in_any_output() {
    let net = Net::new();
    let root = rootfs();
    let mut steps: Vec<String> = vec![];
    // the name rides on a blocked connection first, so its line is within the burst
    for s in [
        "--resolve-connect",
        LOCAL_DNS,
        RIDING,
        "22",
        "--query-raw",
        LOCAL_DNS,
        NAMES[0].0,
        "A",
        // a plain name that is not allowed: it is advice as before
        "--query",
        "udp",
        LOCAL_DNS,
        "other.test",
        "A",
    ] {
        steps.push(s.into());
    }
    for (name, _) in &NAMES[1..] {
        steps.extend(["--query-raw", LOCAL_DNS, name, "A"].map(String::from));
    }
    // PID 1 refreshes status.json at most once a second; then `check` runs meanwhile
    steps.extend(["--sleep", "1500", "--wait-file", "/tmp/checked"].map(String::from));
    let mut args: Vec<&str> = vec![
        "--dns",
        "filter",
        "--allow",
        "*.allowed.test:80",
        "--audit-log",
        AUDIT,
        "--",
        PROBE_IN_ROOT,
        "dns",
    ];
    args.extend(steps.iter().map(String::as_str));
    let mut cmd = root.command(&args, &[("SANDBOX_PRESETS", "")], Some(&net.box_ns));
    let run = Running::start(&mut cmd);
    let mut replies = vec![];
    for _ in 0..NAMES.len() + 2 {
        let l = run.line(Duration::from_secs(20));
        replies.push(serde_json::from_str::<Value>(&l).unwrap_or_else(|e| panic!("{e}: {l}")));
    }
    // the riding name resolved under the wildcard, and its port 22 was refused
    let riding = &replies[0];
    assert_eq!(riding["addrs"][0], ALLOWED4, "{riding}");
    assert_eq!(riding["connect"]["error"], "ECONNREFUSED", "{riding}");
    for r in &replies[1..] {
        assert_eq!(r["rcode"], "NXDOMAIN", "every hostile name is denied: {r}");
    }
    assert_eq!(
        run.line(Duration::from_secs(10)),
        r#"{"ms":1500,"step":"sleep"}"#
    );

    let check = root.run_in(
        &["check", "--dns", "filter", "--allow", "*.allowed.test:80"],
        &[("SANDBOX_PRESETS", "")],
        Some(&net.box_ns),
    );
    root.write("tmp/checked", "");
    let stderr = run.stderr.clone();
    let (code, _) = run.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0));
    let stderr = stderr.lock().unwrap().clone();
    let status_text = std::fs::read_to_string(root.join("run/sandbox-init/status.json")).unwrap();
    let audit_text = std::fs::read_to_string(root.join(AUDIT)).unwrap();
    // shown when an assertion fails (the control run against the old code shows the lines)
    eprintln!("stderr:\n{stderr}\ncheck:\n{}", check.stdout);

    // stderr: the riding name is shown escaped and the advice is by address
    let riding_line = stderr
        .lines()
        .find(|l| l.contains(&format!("blocked tcp {ALLOWED4}:22")))
        .unwrap_or_else(|| panic!("no line for the blocked connection:\n{stderr}"));
    assert!(
        riding_line.contains(
            "(a\\x24\\x28sh\\x3cx\\x29.allowed.test: not a valid host name); to allow it: \
             SANDBOX_ALLOW=10.77.0.10:22 (or --allow)"
        ),
        "{riding_line}"
    );
    let attack = stderr
        .lines()
        .find(|l| l.contains("blocked dns name registry.example.org"))
        .unwrap_or_else(|| panic!("no line for the comma name:\n{stderr}"));
    assert_eq!(
        attack,
        "sandbox-init: blocked dns name registry.example.org\\x2c0.0.0.0\\x2f0 (not in the \
         allowlist): not a valid host name, so no allowlist entry can allow it"
    );
    assert!(
        stderr.contains(
            "blocked dns name other.test (not in the allowlist); to allow it: \
             SANDBOX_ALLOW=other.test (or --allow)"
        ),
        "{stderr}"
    );
    // the burst of lines was spent on these names: more than a handful were shown
    assert!(stderr.matches("blocked dns name").count() >= 8, "{stderr}");

    // Every output: advice is one entry of the grammar, and nothing raw of any name.
    let outputs = [
        ("stderr", &stderr),
        ("status.json", &status_text),
        ("the audit log", &audit_text),
        ("check", &check.stdout),
    ];
    for (whence, text) in outputs {
        let entries = pasted_entries(text, whence);
        for e in &entries {
            let s = e.to_string();
            assert!(
                s == "other.test" || s == "10.77.0.10:22",
                "{whence}: unexpected advice {s}"
            );
        }
        assert_no_raw_names(text, whence);
    }
    assert!(
        check.stdout.contains("recent (oldest first):"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("SANDBOX_ALLOW=10.77.0.10:22 "),
        "{}",
        check.stdout
    );

    // The JSON: every event of the names, names escaped, `allow` one entry or null.
    let events: Vec<Value> = audit_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let status: Value = serde_json::from_str(&status_text).unwrap();
    let recent = status["recent"].as_array().unwrap().clone();
    let denied = events
        .iter()
        .filter(|e| e["event"] == "denied_name")
        .count();
    assert_eq!(denied, NAMES.len() + 1, "{events:#?}");
    for (whence, list) in [("audit", &events), ("status", &recent)] {
        for e in list {
            assert_escaped(&e["name"], whence);
            match e["allow"].as_str() {
                None => assert!(e["allow"].is_null(), "{e}"),
                Some(a) => {
                    let entry: Entry = a.parse().unwrap_or_else(|x| panic!("{whence}: {x}"));
                    assert_eq!(entry.to_string(), a);
                    assert!(a == "other.test" || a == "10.77.0.10:22", "{whence}: {e}");
                }
            }
        }
    }
    let blocked = events
        .iter()
        .find(|e| e["event"] == "blocked" && e["port"] == 22)
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(blocked["name"], "a\\x24\\x28sh\\x3cx\\x29.allowed.test");
    assert_eq!(blocked["allow"], "10.77.0.10:22");
}
