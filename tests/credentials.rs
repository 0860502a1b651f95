//! Tier 2, credentials and first-run state: sandbox-init as PID 1 in a throwaway rootfs
//! writes what the environment gives into the user's home, as the user, link-proof; the
//! probe (the command) reports what it can see. Files are checked from the host side.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const NO_FW: &str = "--no-firewall";
const TOKEN: &str = "sk-ant-oat01-TESTTOKEN-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TOKEN2: &str = "sk-ant-oat01-SECONDTOKEN-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const API_KEY: &str = "sk-ant-api03-TESTAPIKEY-cccccccccccccccccccccccccccccccc";
const CREDS: &str = "home/claude/.claude/.credentials.json";
const STATE: &str = "home/claude/.claude.json";
const SETTINGS: &str = "home/claude/.claude/settings.json";

fn blob(scopes: &[&str]) -> String {
    json!({"claudeAiOauth": {"accessToken": TOKEN2, "refreshToken": "sk-ant-ort01-REFRESH",
        "expiresAt": 1767225600000u64, "scopes": scopes, "subscriptionType": "max",
        "rateLimitTier": "default_claude_max_20x"}, "mcpOAuth": {}})
    .to_string()
}

/// Runs the probe as the command, in /workspace, with debug logging (so that any secret
/// that reached a log line would show up in stderr).
fn run(root: &Rootfs, extra: &[&str], env: &[(&str, &str)], probe: &[&str]) -> Run {
    let mut args = vec![NO_FW, "--workdir", "/workspace"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", PROBE_IN_ROOT, "report"]);
    args.extend_from_slice(probe);
    let mut env = env.to_vec();
    env.push(("SANDBOX_LOG", "debug"));
    let r = root.run(&args, &env);
    for secret in [TOKEN, TOKEN2, API_KEY, "sk-ant-ort01-REFRESH"] {
        assert!(
            !r.stderr.contains(secret),
            "a secret was printed:\n{}",
            r.stderr
        );
    }
    r
}

fn json_at(root: &Rootfs, rel: &str) -> Value {
    let text = fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}: {text}"))
}

fn assert_user_file(root: &Rootfs, rel: &str, uid: u32) {
    let m = fs::symlink_metadata(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert!(m.file_type().is_file(), "{rel} is not a regular file");
    assert_eq!(m.permissions().mode() & 0o7777, 0o600, "{rel} mode");
    assert_eq!((m.uid(), m.gid()), (uid, uid), "{rel} owner");
}

fn mkdir_user(root: &Rootfs, rel: &str) {
    fs::create_dir_all(root.join(rel)).unwrap();
    std::os::unix::fs::chown(root.join(rel), Some(1000), Some(1000)).unwrap();
}

fn write_user(root: &Rootfs, rel: &str, content: &str) {
    root.write(rel, content);
    std::os::unix::fs::chown(root.join(rel), Some(1000), Some(1000)).unwrap();
}

/// Every file under a directory: path -> (bytes, mode, uid). For "byte-identical" checks.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            let bytes = if m.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                vec![]
            };
            out.insert(e.path(), (bytes, m.mode(), m.uid()));
        }
    }
    out
}

#[test]
fn oauth_token_becomes_the_users_credentials_file_and_no_env_holds_it() {
    require_root();
    let root = Rootfs::new();
    let r = run(
        &root,
        &[],
        &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)],
        &["--read", "/home/claude/.claude/.credentials.json"],
    );
    r.assert_code(0);
    assert_eq!(
        json_at(&root, CREDS),
        json!({"claudeAiOauth": {"accessToken": TOKEN, "refreshToken": null,
               "expiresAt": null, "scopes": ["user:inference"], "subscriptionType": null}})
    );
    assert_user_file(&root, CREDS, 1000);
    let dir = fs::metadata(root.join("home/claude/.claude")).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    assert_eq!(dir.uid(), 1000);
    assert!(r.stderr.contains("credentials: wrote"), "{}", r.stderr);

    let rep = r.report();
    // the command (the user) can read and use it ...
    assert_eq!(rep["read"][0]["result"], "ok");
    assert!(rep["read"][0]["content"].as_str().unwrap().contains(TOKEN));
    // ... but no environment it can see holds it
    let env = env_map(&rep);
    assert!(env.values().all(|v| !v.contains(TOKEN)), "{env:?}");
    assert!(!env.contains_key("CLAUDE_CODE_OAUTH_TOKEN"));
    let pid1 = &rep["pid1_environ"];
    assert!(!pid1.to_string().contains(TOKEN), "{pid1}");

    // first-run state is there too
    let state = json_at(&root, STATE);
    assert_eq!(state["hasCompletedOnboarding"], true);
    assert_eq!(
        state["projects"]["/workspace"]["hasTrustDialogAccepted"],
        true
    );
    assert_user_file(&root, STATE, 1000);
    assert_eq!(
        json_at(&root, SETTINGS),
        json!({"skipDangerousModePermissionPrompt": true})
    );
    assert_user_file(&root, SETTINGS, 1000);
}

#[test]
fn existing_credentials_are_kept_unless_forced() {
    require_root();
    let root = Rootfs::new();
    mkdir_user(&root, "home/claude/.claude");
    let refreshed = r#"{"claudeAiOauth":{"accessToken":"refreshed-on-the-volume"}}"#;
    write_user(&root, CREDS, refreshed);

    let r = run(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(0);
    assert_eq!(fs::read_to_string(root.join(CREDS)).unwrap(), refreshed);
    assert!(r.stderr.contains("kept the existing"), "{}", r.stderr);

    let r = run(
        &root,
        &["--force-credentials"],
        &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)],
        &[],
    );
    r.assert_code(0);
    assert_eq!(json_at(&root, CREDS)["claudeAiOauth"]["accessToken"], TOKEN);
    assert!(r.stderr.contains("replaced (forced)"), "{}", r.stderr);

    let r = run(
        &root,
        &[],
        &[
            ("CLAUDE_CODE_OAUTH_TOKEN", TOKEN2),
            ("SANDBOX_FORCE_CREDENTIALS", "1"),
        ],
        &[],
    );
    r.assert_code(0);
    assert_eq!(
        json_at(&root, CREDS)["claudeAiOauth"]["accessToken"],
        TOKEN2
    );
    assert_user_file(&root, CREDS, 1000);
}

#[test]
fn keychain_blob_is_written_as_given_and_wins_over_the_token() {
    require_root();
    let root = Rootfs::new();
    let b = blob(&["user:inference", "user:profile"]);
    let r = run(
        &root,
        &[],
        &[
            ("CLAUDE_CREDENTIALS", &b),
            ("CLAUDE_CODE_OAUTH_TOKEN", TOKEN),
        ],
        &[],
    );
    r.assert_code(0);
    assert_eq!(
        json_at(&root, CREDS),
        serde_json::from_str::<Value>(&b).unwrap()
    );
    assert_user_file(&root, CREDS, 1000);
    let warning = r
        .stderr
        .lines()
        .find(|l| l.contains("warning") && l.contains("CLAUDE_CODE_OAUTH_TOKEN"))
        .unwrap_or_else(|| panic!("no warning naming the ignored variable:\n{}", r.stderr));
    assert!(warning.contains("ignor"), "{warning}");
    assert!(!env_map(&r.report()).contains_key("CLAUDE_CREDENTIALS"));
}

#[test]
fn a_keychain_blob_the_cli_would_reject_stops_the_start_and_writes_nothing() {
    require_root();
    for (bad, says) in [
        (
            "{\"claudeAiOauth\": {\"accessToken\": ".to_string() + "\"" + TOKEN2,
            "JSON",
        ),
        (blob(&["user:profile"]), "user:inference"),
        (
            r#"{"claudeAiOauth": {"scopes": ["user:inference"]}}"#.to_string(),
            "accessToken",
        ),
    ] {
        let root = Rootfs::new();
        let before = snapshot(&root.join("home/claude"));
        let r = run(&root, &[], &[("CLAUDE_CREDENTIALS", &bad)], &[]);
        r.assert_code(78);
        assert!(r.stderr.contains(says), "{says}: {}", r.stderr);
        assert!(r.stderr.contains("CLAUDE_CREDENTIALS"), "{}", r.stderr);
        assert!(
            !r.stdout.contains("\"uid\""),
            "the command ran: {}",
            r.stdout
        );
        assert_eq!(
            snapshot(&root.join("home/claude")),
            before,
            "something was written"
        );
        assert!(before.is_empty());
    }
}

#[test]
fn api_key_becomes_primary_api_key_and_leaves_no_env() {
    require_root();
    let root = Rootfs::new();
    let r = run(&root, &[], &[("ANTHROPIC_API_KEY", API_KEY)], &[]);
    r.assert_code(0);
    let state = json_at(&root, STATE);
    assert_eq!(state["primaryApiKey"], API_KEY);
    assert_eq!(state["hasCompletedOnboarding"], true);
    assert_user_file(&root, STATE, 1000);
    assert!(!root.join(CREDS).exists());
    let rep = r.report();
    assert!(!env_map(&rep).contains_key("ANTHROPIC_API_KEY"));
    assert!(!rep["pid1_environ"].to_string().contains(API_KEY));
    assert!(r.stderr.contains("wrote primaryApiKey"), "{}", r.stderr);
}

#[test]
fn first_run_state_is_merged_without_losing_keys_even_with_no_credential() {
    require_root();
    let root = Rootfs::new();
    mkdir_user(&root, "home/claude/.claude");
    let existing = json!({
        "userID": "u-123", "firstStartTime": "2025-01-01T00:00:00Z",
        "oauthAccount": {"emailAddress": "a@example.test"},
        "projects": {"/other": {"allowedTools": ["Bash"]},
                     "/workspace": {"history": [{"display": "hi"}]}}
    });
    write_user(&root, STATE, &existing.to_string());
    fs::set_permissions(root.join(STATE), fs::Permissions::from_mode(0o644)).unwrap();
    write_user(&root, SETTINGS, r#"{"model": "opus", "env": {"A": "1"}}"#);

    let r = run(&root, &[], &[], &[]);
    r.assert_code(0);
    let state = json_at(&root, STATE);
    assert_eq!(state["userID"], "u-123");
    assert_eq!(state["firstStartTime"], "2025-01-01T00:00:00Z");
    assert_eq!(state["oauthAccount"]["emailAddress"], "a@example.test");
    assert_eq!(state["projects"]["/other"]["allowedTools"], json!(["Bash"]));
    assert_eq!(
        state["projects"]["/workspace"]["history"][0]["display"],
        "hi"
    );
    assert_eq!(
        state["projects"]["/workspace"]["hasTrustDialogAccepted"],
        true
    );
    assert_eq!(state["hasCompletedOnboarding"], true);
    assert_user_file(&root, STATE, 1000);
    let settings = json_at(&root, SETTINGS);
    assert_eq!(settings["model"], "opus");
    assert_eq!(settings["env"]["A"], "1");
    assert_eq!(settings["skipDangerousModePermissionPrompt"], true);
    assert!(!root.join(CREDS).exists());
}

#[test]
fn malformed_state_is_kept_as_a_backup() {
    require_root();
    let root = Rootfs::new();
    let broken = "{\"userID\": \"u-1\", \"projects\": {";
    write_user(&root, STATE, broken);
    let r = run(&root, &[], &[], &[]);
    r.assert_code(0);
    assert_eq!(json_at(&root, STATE)["hasCompletedOnboarding"], true);
    let backups: Vec<PathBuf> = fs::read_dir(root.join("home/claude"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".claude.json.invalid-")
        })
        .collect();
    assert_eq!(backups.len(), 1, "{}", r.stderr);
    assert_eq!(fs::read_to_string(&backups[0]).unwrap(), broken);
    assert_eq!(fs::metadata(&backups[0]).unwrap().uid(), 1000);
    assert!(r.stderr.contains("kept it as"), "{}", r.stderr);
}

#[test]
fn planted_file_symlinks_are_replaced_and_their_targets_untouched() {
    require_root();
    let root = Rootfs::new();
    root.write("etc/victim", "root's precious file\n");
    let passwd = fs::read(root.join("etc/passwd")).unwrap();
    let etc_before = snapshot(&root.join("etc"));
    mkdir_user(&root, "home/claude/.claude");
    for (link, target) in [
        (CREDS, "/etc/victim"),
        (SETTINGS, "/etc/victim"),
        (STATE, "/etc/passwd"),
    ] {
        symlink(target, root.join(link)).unwrap();
        lchown(root.join(link), Some(1000), Some(1000)).unwrap();
    }
    let r = run(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(0);
    assert_eq!(snapshot(&root.join("etc")), etc_before, "/etc changed");
    assert_eq!(fs::read(root.join("etc/passwd")).unwrap(), passwd);
    for f in [CREDS, SETTINGS, STATE] {
        assert_user_file(&root, f, 1000);
    }
    assert_eq!(json_at(&root, CREDS)["claudeAiOauth"]["accessToken"], TOKEN);
    assert!(r.stderr.contains("was a symlink"), "{}", r.stderr);
}

#[test]
fn a_planted_claude_dir_symlink_is_refused_and_its_target_untouched() {
    require_root();
    let root = Rootfs::new();
    let etc_before = snapshot(&root.join("etc"));
    symlink("/etc", root.join("home/claude/.claude")).unwrap();
    lchown(root.join("home/claude/.claude"), Some(1000), Some(1000)).unwrap();
    let r = run(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(78);
    assert!(r.stderr.contains("symlink"), "{}", r.stderr);
    assert!(!r.stdout.contains("\"uid\""), "the command ran");
    assert_eq!(snapshot(&root.join("etc")), etc_before, "/etc changed");
    // still the planted link: refused, not "repaired" through it
    assert!(fs::symlink_metadata(root.join("home/claude/.claude"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_home_or_claude_dir_owned_by_someone_else_is_refused() {
    require_root();
    // ~/.claude owned by root
    let root = Rootfs::new();
    fs::create_dir(root.join("home/claude/.claude")).unwrap();
    let r = run(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(78);
    assert!(r.stderr.contains("owned by uid 0"), "{}", r.stderr);
    assert!(!root.join(CREDS).exists());

    // the home itself a symlink to a root-owned directory
    let root = Rootfs::new();
    fs::remove_dir(root.join("home/claude")).unwrap();
    fs::create_dir_all(root.join("srv/elsewhere")).unwrap();
    symlink("/srv/elsewhere", root.join("home/claude")).unwrap();
    let r = run(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(78);
    assert!(
        r.stderr.contains("/home/claude is a symlink"),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read_dir(root.join("srv/elsewhere")).unwrap().count(), 0);
}

#[test]
fn claude_config_dir_receives_everything() {
    require_root();
    let root = Rootfs::new();
    let r = run(
        &root,
        &[],
        &[
            ("CLAUDE_CODE_OAUTH_TOKEN", TOKEN),
            ("ANTHROPIC_API_KEY", API_KEY),
            ("CLAUDE_CONFIG_DIR", "/home/claude/.config/claude"),
        ],
        &[],
    );
    r.assert_code(0);
    let dir = "home/claude/.config/claude";
    assert_eq!(
        json_at(&root, &format!("{dir}/.credentials.json"))["claudeAiOauth"]["accessToken"],
        TOKEN
    );
    let state = json_at(&root, &format!("{dir}/.claude.json"));
    assert_eq!(state["primaryApiKey"], API_KEY);
    assert_eq!(
        state["projects"]["/workspace"]["hasTrustDialogAccepted"],
        true
    );
    assert_eq!(
        json_at(&root, &format!("{dir}/settings.json"))["skipDangerousModePermissionPrompt"],
        true
    );
    for f in [".credentials.json", ".claude.json", "settings.json"] {
        assert_user_file(&root, &format!("{dir}/{f}"), 1000);
    }
    for d in ["home/claude/.config", dir] {
        let m = fs::metadata(root.join(d)).unwrap();
        assert_eq!(
            (m.uid(), m.permissions().mode() & 0o777),
            (1000, 0o700),
            "{d}"
        );
    }
    assert!(!root.join("home/claude/.claude").exists());
    assert!(!root.join(STATE).exists());
    // the command still sees where its config lives
    assert_eq!(
        env_map(&r.report())["CLAUDE_CONFIG_DIR"],
        "/home/claude/.config/claude"
    );
}

#[test]
fn files_follow_the_host_ids() {
    require_root();
    let root = Rootfs::new();
    let r = run(
        &root,
        &[],
        &[
            ("CLAUDE_CODE_OAUTH_TOKEN", TOKEN),
            ("SANDBOX_UID", "1234"),
            ("SANDBOX_GID", "1234"),
        ],
        &[],
    );
    r.assert_code(0);
    assert_user_file(&root, CREDS, 1234);
    assert_user_file(&root, STATE, 1234);
}

#[test]
fn host_gitconfig_is_copied_with_the_workspace_marked_safe() {
    require_root();
    let root = Rootfs::new();
    let host = "[user]\n\tname = Host User\n\temail = host@example.test\n";
    root.write("run/sandbox-init/host.gitconfig", host);
    fs::set_permissions(
        root.join("run/sandbox-init/host.gitconfig"),
        fs::Permissions::from_mode(0o444),
    )
    .unwrap();
    let r = run(&root, &[], &[], &[]);
    r.assert_code(0);
    let copied = fs::read_to_string(root.join("home/claude/.gitconfig")).unwrap();
    assert!(copied.starts_with(host), "{copied}");
    assert!(
        copied.contains("[safe]\n\tdirectory = \"/workspace\"\n"),
        "{copied}"
    );
    let m = fs::metadata(root.join("home/claude/.gitconfig")).unwrap();
    assert_eq!(m.uid(), 1000);
    assert_eq!(
        fs::read_to_string(root.join("run/sandbox-init/host.gitconfig")).unwrap(),
        host
    );
    // without the staging file nothing is written
    let root = Rootfs::new();
    run(&root, &[], &[], &[]).assert_code(0);
    assert!(!root.join("home/claude/.gitconfig").exists());
}
