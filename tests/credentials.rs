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

/// sandbox-init's arguments to run `sandbox-probe SUBCOMMAND ARGS...` as the command, in
/// /workspace, without the firewall (this tier is about files).
fn probe_command<'a>(subcommand: &'a str, probe_args: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        NO_FW,
        "--no-broker",
        "--workdir",
        "/workspace",
        "--",
        PROBE_IN_ROOT,
        subcommand,
    ];
    args.extend_from_slice(probe_args);
    args
}

/// Runs the probe as the command, in /workspace, with debug logging (so that any secret
/// that reached a log line would show up in stderr).
/// This tier is the credentials stage writing the real values, so the broker (on by
/// default) is off here but where a test names it; tests/broker_pipeline.rs covers it.
fn run(root: &Rootfs, extra: &[&str], env: &[(&str, &str)], probe: &[&str]) -> Run {
    let mut with = vec!["--no-broker"];
    with.extend_from_slice(extra);
    run_as_given(root, &with, env, probe)
}

fn run_as_given(root: &Rootfs, extra: &[&str], env: &[(&str, &str)], probe: &[&str]) -> Run {
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
fn by_default_the_broker_holds_the_token_and_the_home_gets_a_placeholder() {
    require_root();
    let root = Rootfs::new();
    let r = run_as_given(
        &root,
        &[],
        &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)],
        &["--read", "/home/claude/.claude/.credentials.json"],
    );
    r.assert_code(0);
    assert!(r.stderr.contains("credential broker: pid"), "{}", r.stderr);
    let written = fs::read_to_string(root.join(CREDS)).unwrap();
    assert!(!written.contains(TOKEN), "{written}");
    let doc: Value = serde_json::from_str(&written).unwrap();
    let held = doc["claudeAiOauth"]["accessToken"].as_str().unwrap();
    assert!(held.contains("sandbox-init-placeholder"), "{written}");
    let rep = r.report();
    let env = env_map(&rep);
    let base = env.get("ANTHROPIC_BASE_URL").cloned().unwrap_or_default();
    assert!(base.starts_with("http://127.0.0.1:"), "{env:?}");
    let out = root.run(&["check", NO_FW], &[]).stdout;
    assert!(out.contains("credential broker: on (default)"), "{out}");
    assert!(!out.contains("would step aside"), "{out}");
    let out = root.run(&["check", NO_FW, "--no-broker"], &[]).stdout;
    assert!(
        out.contains("credential broker: off (flag --no-broker)"),
        "{out}"
    );
    assert!(
        !rep.to_string().contains(TOKEN),
        "the child saw the token: {rep}"
    );

    // Without a credential there is nothing to hold: no broker, and at the default log
    // level not a word about it (every start without one would say it); -v says why.
    let quiet = Rootfs::new();
    let args = [
        NO_FW,
        "--workdir",
        "/workspace",
        "--",
        PROBE_IN_ROOT,
        "report",
    ];
    let r = quiet.run(&args, &[]);
    r.assert_code(0);
    assert!(!r.stderr.contains("broker"), "{}", r.stderr);
    let r = quiet.run(&[&["-v"][..], &args].concat(), &[]);
    assert!(r.stderr.contains("nothing to hold"), "{}", r.stderr);

    // Turned off at the next start, the placeholder (worthless) is replaced without
    // --force-credentials; a real login is kept (existing_credentials_are_kept_unless_forced).
    let r = run(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(0);
    assert!(
        r.stderr
            .contains("replaced the credential broker's placeholder"),
        "{}",
        r.stderr
    );
    assert_eq!(json_at(&root, CREDS)["claudeAiOauth"]["accessToken"], TOKEN);
}

#[test]
fn the_broker_says_so_when_its_placeholder_replaces_a_kept_login() {
    require_root();
    let root = Rootfs::new();
    // A login with a refresh token, kept from a start without the broker.
    run(
        &root,
        &[],
        &[("CLAUDE_CREDENTIALS", &blob(&["user:inference"]))],
        &[],
    )
    .assert_code(0);
    assert!(fs::read_to_string(root.join(CREDS))
        .unwrap()
        .contains("sk-ant-ort01-REFRESH"));
    let r = run_as_given(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(0);
    let warning = r
        .stderr
        .lines()
        .find(|l| l.contains("is replaced by a placeholder"))
        .unwrap_or_else(|| panic!("no warning:\n{}", r.stderr));
    assert!(
        warning.contains(CREDS.trim_start_matches("home/claude/")),
        "{warning}"
    );
    assert!(warning.contains("the one given at this start"), "{warning}");
    let written = fs::read_to_string(root.join(CREDS)).unwrap();
    assert!(!written.contains("sk-ant-ort01-REFRESH"), "{written}");
    // Its own placeholder, replaced at the next start, is not worth a word.
    let r = run_as_given(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(0);
    assert!(
        !r.stderr.contains("is replaced by a placeholder"),
        "{}",
        r.stderr
    );
}

#[test]
fn without_a_ca_bundle_the_default_broker_steps_aside_and_a_required_one_fails() {
    require_root();
    let root = Rootfs::new();
    fs::remove_file(root.join(CA_BUNDLE)).unwrap();
    // On by default: a warning that says what it means and how to require it; the real
    // token is written as without the broker.
    let r = run_as_given(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(0);
    let warning = r
        .stderr
        .lines()
        .find(|l| l.contains("credential broker (on by default) not started"))
        .unwrap_or_else(|| panic!("no warning:\n{}", r.stderr));
    for says in [
        "no CA certificates found",
        "the agent can read it",
        "--broker",
    ] {
        assert!(warning.contains(says), "{says}: {warning}");
    }
    assert!(!r.stderr.contains("credential broker: pid"), "{}", r.stderr);
    assert!(fs::read_to_string(root.join(CREDS))
        .unwrap()
        .contains(TOKEN));
    // `check` says so before any start: a note by default, a problem when asked for.
    let r = root.run(&["check", NO_FW], &[]);
    let out = &r.stdout;
    assert!(out.contains("credential broker: on (default)"), "{out}");
    assert!(
        out.contains("would step aside at start: no CA certificates"),
        "{out}"
    );
    assert!(!out.contains("problem: the credential broker"), "{out}");
    let r = root.run(&["check", NO_FW, "--broker"], &[]);
    let out = &r.stdout;
    assert_eq!(r.code, Some(1), "{out}");
    assert!(
        out.contains("problem: the credential broker (flag --broker) cannot start: no CA"),
        "{out}"
    );
    assert!(out.contains("--no-broker"), "{out}");

    // Asked for: the start fails (70), naming the way out, and the real token is never
    // written (the home keeps only this start's placeholder).
    let root = Rootfs::new();
    fs::remove_file(root.join(CA_BUNDLE)).unwrap();
    for (args, env) in [
        (&["--broker"][..], &[][..]),
        (&[][..], &[("SANDBOX_BROKER", "1")][..]),
    ] {
        let mut given = vec![("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)];
        given.extend_from_slice(env);
        let r = run_as_given(&root, args, &given, &[]);
        r.assert_code(70);
        assert!(
            r.stderr.contains("no CA certificates found"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("--no-broker"), "{}", r.stderr);
        assert!(!r.stderr.contains("(on by default)"), "{}", r.stderr);
        let written = fs::read_to_string(root.join(CREDS)).unwrap_or_default();
        assert!(!written.contains(TOKEN), "{written}");
    }
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
    // Both ways to replace it: this binary's and the launcher's.
    assert!(
        r.stderr.contains(
            "--force-credentials or SANDBOX_FORCE_CREDENTIALS=1 (run-claude.sh: --fresh-creds) \
             replaces it"
        ),
        "{}",
        r.stderr
    );

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
    // No login given and none on the volume: one line says how to log in.
    let how = "log in with /login inside Claude Code, or start the container with \
               CLAUDE_CODE_OAUTH_TOKEN (made by `claude setup-token`";
    assert_eq!(r.stderr.matches(how).count(), 1, "{}", r.stderr);
    // A login on the volume (a file, or an API key in the state): nothing to say.
    write_user(
        &root,
        CREDS,
        r#"{"claudeAiOauth":{"accessToken":"on-the-volume"}}"#,
    );
    let r = run(&root, &[], &[], &[]);
    r.assert_code(0);
    assert!(!r.stderr.contains(how), "{}", r.stderr);
    fs::remove_file(root.join(CREDS)).unwrap();
    let mut state = json_at(&root, STATE);
    state["primaryApiKey"] = json!("sk-ant-api03-INVENTED-on-the-volume");
    write_user(&root, STATE, &state.to_string());
    let r = run(&root, &[], &[], &[]);
    r.assert_code(0);
    assert!(!r.stderr.contains(how), "{}", r.stderr);
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

const STAGED: &str = "run/sandbox-init/host.gitconfig";

/// Secrets a real `.gitconfig` holds: a token in `url.*.insteadOf`, bearer and basic
/// `http.extraHeader`s, a credential helper, userinfo in a remote URL and in a value of a
/// key we would otherwise copy.
const GIT_SECRETS: &[&str] = &[
    "ghp_URLTOKEN0123456789",
    "BEARERSECRET0123456789",
    "BASICSECRET0123456789",
    "HELPERSECRET0123456789",
    "USERINFOSECRET0123456789",
    "VALUESECRET0123456789",
];

fn host_gitconfig() -> String {
    format!(
        "[user]\n\tname = Host User\n\temail = host@example.test\n\tsigningkey = 0xDEADBEEF12345678\n\
         [url \"https://x-access-token:{}@github.com/\"]\n\tinsteadOf = https://github.com/\n\
         [http]\n\textraHeader = Authorization: Bearer {}\n\
         [http \"https://git.example.test/\"]\n\textraheader = AUTHORIZATION: basic {}\n\
         [credential]\n\thelper = store --file /{}\n\
         [include]\n\tpath = /etc/other.gitconfig\n\
         [remote \"origin\"]\n\turl = https://me:{}@git.example.test/r.git\n\
         [init]\n\tdefaultBranch = main\n\
         [core]\n\tautocrlf = input\n\teol = \"https://me:{}@x.test/\"\n",
        GIT_SECRETS[0], GIT_SECRETS[1], GIT_SECRETS[2], GIT_SECRETS[3], GIT_SECRETS[4],
        GIT_SECRETS[5]
    )
}

/// The launcher's bind mount, as the tier can make it: the host file at the staging path,
/// in a directory Docker would create 0755.
fn stage_gitconfig(root: &Rootfs, text: &str) {
    root.write(STAGED, text);
    fs::set_permissions(root.join(STAGED), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(
        root.join("run/sandbox-init"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

/// The probe searches everything the sandboxed user can read for the secrets (passed
/// hex-encoded: its argv must not hold what it searches for); debug logging, and no
/// secret in it either.
fn search_readable(root: &Rootfs) -> (Run, Value) {
    let needles: Vec<String> = GIT_SECRETS
        .iter()
        .map(|n| n.bytes().map(|b| format!("{b:02x}")).collect())
        .collect();
    let needles = needles.join(",");
    let args = probe_command("search", &[&needles, "/"]);
    let r = root.run(&args, &[("SANDBOX_LOG", "debug")]);
    r.assert_code(0);
    for secret in GIT_SECRETS {
        assert!(!r.stderr.contains(secret), "{secret} logged:\n{}", r.stderr);
    }
    let found = r.report();
    (r, found)
}

#[test]
fn host_gitconfig_secrets_are_readable_nowhere_in_the_sandbox() {
    require_root();
    let root = Rootfs::new();
    let host = host_gitconfig();
    stage_gitconfig(&root, &host);
    // Positive control: the probe's search finds a secret wherever the user can read it.
    write_user(&root, "workspace/planted-by-the-test", GIT_SECRETS[0]);
    let (_, found) = search_readable(&root);
    let hits = found["hits"].as_array().unwrap();
    assert_eq!(
        hits,
        &[serde_json::json!({"needle": GIT_SECRETS[0], "where": "/workspace/planted-by-the-test"})],
        "{found}"
    );
    assert!(found["files"].as_u64().unwrap() > 3, "{found}");
    assert!(found["proc_read"].as_u64().unwrap() > 0, "{found}");
    fs::remove_file(root.join("workspace/planted-by-the-test")).unwrap();

    // The attack: read the staged file directly, and search everything readable.
    let r = run(
        &root,
        &[],
        &[],
        &["--read", "/run/sandbox-init/host.gitconfig"],
    );
    r.assert_code(0);
    let rep = r.report();
    assert_eq!(rep["read"][0]["error"], "EACCES", "{}", rep["read"][0]);
    let (r, found) = search_readable(&root);
    assert_eq!(found["hits"], serde_json::json!([]), "{found}");
    // the staging directory is root's alone; the staged file itself is untouched
    let dir = fs::metadata(root.join("run/sandbox-init")).unwrap();
    assert_eq!((dir.uid(), dir.permissions().mode() & 0o7777), (0, 0o700));
    assert_eq!(fs::read_to_string(root.join(STAGED)).unwrap(), host);

    // What was copied: the identity and the harmless settings, said in one line.
    let copied = fs::read_to_string(root.join("home/claude/.gitconfig")).unwrap();
    for want in [
        "\tname = \"Host User\"\n",
        "\temail = \"host@example.test\"\n",
        "\tsigningKey = \"0xDEADBEEF12345678\"\n",
        "[init]\n\tdefaultBranch = \"main\"\n",
        "[core]\n\tautocrlf = \"input\"\n",
        "[safe]\n\tdirectory = \"/workspace\"\n",
    ] {
        assert!(copied.contains(want), "{want:?} missing:\n{copied}");
    }
    for gone in ["url", "http", "credential", "include", "remote", "eol"] {
        assert!(!copied.contains(gone), "{gone} copied:\n{copied}");
    }
    assert_user_file(&root, "home/claude/.gitconfig", 1000);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("git configuration: copied"))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert_eq!(
        line,
        "sandbox-init: git configuration: copied user.name, user.email, user.signingKey, \
         init.defaultBranch, core.autocrlf from /run/sandbox-init/host.gitconfig to \
         /home/claude/.gitconfig; left out 7 other settings (in core, credential, http, \
         include, remote, url); safe.directory = /workspace"
    );

    // without the staging file nothing is written
    let root = Rootfs::new();
    run(&root, &[], &[], &[]).assert_code(0);
    assert!(!root.join("home/claude/.gitconfig").exists());
}

#[test]
fn a_staging_directory_that_cannot_be_sealed_stops_the_start() {
    require_root();
    // a custom staging path in a directory everyone can enter: refused, not tightened
    let root = Rootfs::new();
    root.write("etc/host.gitconfig", &host_gitconfig());
    root.write(
        "etc/sandbox-init/config.toml",
        "[credentials]\nhost_gitconfig = \"/etc/host.gitconfig\"\n",
    );
    let r = run(&root, &[], &[], &[]);
    r.assert_code(78);
    assert!(
        r.stderr.contains(
            "the host git configuration /etc/host.gitconfig would stay readable by the \
             sandboxed user: /etc has mode 755"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("\"uid\""), "the command ran");
    assert_eq!(
        fs::metadata(root.join("etc")).unwrap().permissions().mode() & 0o777,
        0o755
    );

    // the default directory on a read-only file system (docker run --read-only without a
    // tmpfs there): the start fails and says what to mount
    let root = Rootfs::new();
    let tmpfs = Tmpfs::mount(&root.join("run/sandbox-init"), "mode=0755");
    root.write(STAGED, &host_gitconfig());
    tmpfs.remount("remount,ro");
    let r = run(&root, &[], &[], &[]);
    r.assert_code(78);
    assert!(
        r.stderr
            .contains("/run/sandbox-init has mode 755 and cannot be made 0700"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("docker run --tmpfs /run/sandbox-init:mode=0700"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("\"uid\""), "the command ran");
}

/// How git itself reads a config text: `name[\nvalue]` per setting, or `None` when git
/// refuses the file.
fn git_reads(text: &str) -> Option<Vec<String>> {
    let dir = std::env::temp_dir().join(format!("sbx-gitcfg-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let f = dir.join(format!(
        "{:x}.cfg",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    fs::write(&f, text).unwrap();
    let out = std::process::Command::new("git")
        .args(["config", "--file"])
        .arg(&f)
        .args(["--list", "-z", "--no-includes"])
        .env("HOME", &dir)
        .output()
        .unwrap();
    let _ = fs::remove_file(&f);
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .split_terminator('\0')
            .map(String::from)
            .collect()
    })
}

/// Older git (2.39, Debian 12's) writes each unquoted tab or CR inside a value as a space; newer
/// (2.47) keeps the byte, as sandbox-init's reader does. Which one is installed is asked once; with
/// an older git both sides are compared with those bytes as spaces, everything else exact.
fn comparable(read: Option<Vec<String>>) -> Option<Vec<String>> {
    static OLD_GIT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let old =
        *OLD_GIT.get_or_init(|| git_reads("[a]k = x\ty") == Some(vec!["a.k\nx y".to_string()]));
    if !old {
        return read;
    }
    read.map(|v| {
        v.into_iter()
            .map(|s| s.replace(['\t', '\r'], " "))
            .collect()
    })
}

/// Both readers, in the form they can be compared in (see `comparable`).
fn both_read(text: &str) -> (Option<Vec<String>>, Option<Vec<String>>) {
    (comparable(we_read(text)), comparable(git_reads(text)))
}

/// The same, as sandbox-init's reader sees it.
fn we_read(text: &str) -> Option<Vec<String>> {
    use sandbox_init::stages::credentials::gitconfig::parse;
    parse(text).ok().map(|settings| {
        settings
            .iter()
            .map(|s| {
                let mut name = s.section.clone();
                if let Some(sub) = &s.subsection {
                    name = format!("{name}.{sub}");
                }
                // a key before any section header: git lists it alone
                name = if name.is_empty() && s.subsection.is_none() {
                    s.key.clone()
                } else {
                    format!("{name}.{}", s.key)
                };
                match &s.value {
                    Some(v) => format!("{name}\n{v}"),
                    None => name,
                }
            })
            .collect()
    })
}

#[test]
fn the_gitconfig_reader_agrees_with_git() {
    assert!(which("git"), "git is missing: apt-get install -y git");
    let cases = [
        "[user]\n\tname = Host User\n",
        "[User]\n\tNAME = x\n",
        "[url \"https://Tok@X/\"] insteadOf = y",
        "[remote \"a\\\"b\\\\c\\d\"]\nurl=1",
        "[Branch.Main]\nremote = o",
        "\u{feff}# c\r\n; c\r\n[a] k = 1 # c\r\n[b]k2=2;c\r\n",
        "[a]k",
        "[a]k=",
        "[a]k =   x  y \t ",
        "[a]k = \" x \" ",
        "[a]k = a\"#;\"b # c",
        "[a]k = a\\tb\\nc\\\\d\\\"e\\bf",
        "[a]k = one \\\n  two",
        "[a]k = \"one \\\ntwo\"",
        "[a]k = x # c \\\nj = y",
        "[a \"\"]k = v",
        "[a.]k = v",
        "[.a]k = v",
        "[a.b.c]k = v",
        "[a \"b\"]k\n[a \"b\"] k2 = \"\"",
        "k = v",
        "[a\n]",
        "[a \"b]",
        "[a \"b\" ]",
        "[a]k = \"open",
        "[a]k = \\q",
        "[a]k v",
        "[a]1k = v",
        "[a_b]k = v",
        "[]k = v",
        "[a]k = v\n%",
        "[a]k = v\r",
        "[a]\rk = v",
        "[a]k\t=\tv\t",
        "[a]k-1 = v",
        "[.]k=v",
        "[ \"x\"]k=v",
        "[a.b \"x\"]k=v",
        "k\n[a]\tk2",
        "a=[a]\r[a]",
    ];
    for text in cases {
        let (ours, git) = both_read(text);
        assert_eq!(ours, git, "{text:?}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// Random texts from the bytes that matter to the grammar: both readers agree on every
    /// setting, and on refusing.
    #[test]
    fn random_gitconfigs_read_as_git_reads_them(
        text in "(\\[(a|B|x\\.y|a \"[a\\\\\" .]{0,4}\")\\]|[aK1-]{1,3}|[ =\"\\\\#;\\t\\r\\n.xb]){0,14}"
    ) {
        let (ours, git) = both_read(&text);
        proptest::prop_assert_eq!(ours, git, "{:?}", text);
    }
}

const HOME: &str = "/home/claude";

/// A first start whose command is the attacker: it plants `specs` (see `sandbox-probe
/// plant`) in the home that the next start finds on the same volume.
fn plant(root: &Rootfs, specs: &[String]) {
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let args = probe_command("plant", &specs);
    let r = root.run(&args, &[]);
    r.assert_code(0);
}

/// Entries of `dir` (in the rootfs) whose names start with `prefix`: (name, file type).
fn aside(root: &Rootfs, dir: &str, prefix: &str) -> Vec<(String, fs::FileType)> {
    fs::read_dir(root.join(dir))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix)
                .then(|| (name, e.file_type().unwrap()))
        })
        .collect()
}

/// The one entry kept aside under `prefix` in `dir`, of the type `is`; its name.
fn aside_one(root: &Rootfs, dir: &str, prefix: &str, is: fn(&fs::FileType) -> bool) -> String {
    let found = aside(root, dir, prefix);
    assert!(
        found.len() == 1 && is(&found[0].1),
        "{dir}/{prefix}*: {found:?}"
    );
    found[0].0.clone()
}

/// A tmpfs mounted over a path of the rootfs for one test (as root, on the host side),
/// unmounted on drop.
struct Tmpfs(String);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let t = Tmpfs(at.display().to_string());
        t.run(&["-t", "tmpfs", "-o", options, "sbx-test", &t.0]);
        t
    }

    fn remount(&self, options: &str) {
        self.run(&["-o", options, &self.0]);
    }

    fn run(&self, args: &[&str]) {
        let st = std::process::Command::new("mount")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "mount {args:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn warned_aside(stderr: &str, path: &str, what: &str) {
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("warning")
                && l.contains(&format!("{path} {what}: moved it aside as "))),
        "no warning for {path} ({what}):\n{stderr}"
    );
}

#[test]
fn things_planted_in_the_home_never_stop_the_next_start() {
    require_root();
    let root = Rootfs::new();
    let mut specs: Vec<String> = [
        "fifo:/home/claude/.claude.json",
        "dir:/home/claude/.claude/settings.json",
        "file:/home/claude/.claude/settings.json/kept:x",
        "socket:/home/claude/.claude/.credentials.json",
        "fifo:/home/claude/.gitconfig",
    ]
    .map(String::from)
    .to_vec();
    // directories at every temporary name the writer used to use (pids are small in a
    // fresh pid namespace)
    for n in 1..=40 {
        for (dir, name) in [
            (HOME, ".claude.json"),
            ("/home/claude/.claude", ".credentials.json"),
            ("/home/claude/.claude", "settings.json"),
            (HOME, ".gitconfig"),
        ] {
            specs.push(format!("dir:{dir}/.{name}.sandbox-init-{n}.tmp"));
        }
    }
    plant(&root, &specs);
    assert!(fs::symlink_metadata(root.join(STATE))
        .unwrap()
        .file_type()
        .is_fifo());

    stage_gitconfig(&root, "[user]\n\tname = Host User\n");
    let r = run(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(0);
    assert!(r.report()["uid"] == 1000, "the command did not run");
    for (path, what) in [
        ("/home/claude/.claude.json", "is a FIFO"),
        ("/home/claude/.claude/settings.json", "is a directory"),
        ("/home/claude/.claude/.credentials.json", "is a socket"),
        ("/home/claude/.gitconfig", "is a FIFO"),
    ] {
        warned_aside(&r.stderr, path, what);
    }
    // everything written as it should be
    assert_eq!(json_at(&root, STATE)["hasCompletedOnboarding"], true);
    assert_eq!(
        json_at(&root, SETTINGS)["skipDangerousModePermissionPrompt"],
        true
    );
    assert_eq!(json_at(&root, CREDS)["claudeAiOauth"]["accessToken"], TOKEN);
    for f in [STATE, SETTINGS, CREDS, "home/claude/.gitconfig"] {
        assert_user_file(&root, f, 1000);
    }
    // and what was planted kept aside, not destroyed
    use std::os::unix::fs::FileTypeExt as _;
    aside_one(&root, "home/claude", ".claude.json.invalid-", |t| {
        t.is_fifo()
    });
    let dir = aside_one(
        &root,
        "home/claude/.claude",
        "settings.json.invalid-",
        |t| t.is_dir(),
    );
    assert_eq!(
        fs::read_to_string(root.join("home/claude/.claude").join(dir).join("kept")).unwrap(),
        "x"
    );
    aside_one(
        &root,
        "home/claude/.claude",
        ".credentials.json.invalid-",
        |t| t.is_socket(),
    );
    aside_one(&root, "home/claude", ".gitconfig.invalid-", |t| t.is_fifo());

    // the start after that is an ordinary one
    let r = run(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(0);
    assert!(!r.stderr.contains("moved it aside"), "{}", r.stderr);
}

/// Runs with a data-segment limit (RLIMIT_DATA: heap and private mappings) for
/// sandbox-init and everything it starts, like a container's memory limit.
fn run_with_memory_limit(root: &Rootfs, bytes: u64, env: &[(&str, &str)]) -> Run {
    use std::os::unix::process::CommandExt;
    let args = probe_command("ids", &[]);
    let mut cmd = root.command(&args, env, None);
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run_bounded(&mut cmd, std::time::Duration::from_secs(60))
}

#[test]
fn a_huge_state_file_is_moved_aside_not_parsed() {
    require_root();
    let root = Rootfs::new();
    plant(
        &root,
        &["json-mib:/home/claude/.claude.json:62".to_string()],
    );
    assert!(fs::metadata(root.join(STATE)).unwrap().len() > 60 << 20);
    // 64 MiB of data for the whole start: parsing 62 MiB of JSON needs many times that
    let r = run_with_memory_limit(&root, 64 << 20, &[("ANTHROPIC_API_KEY", API_KEY)]);
    r.assert_code(0);
    assert!(
        r.stdout.contains("\"uid\":1000"),
        "the command did not run: {}",
        r.stdout
    );
    warned_aside(
        &r.stderr,
        "/home/claude/.claude.json",
        "is larger than the 4 MiB sandbox-init reads (62 MiB)",
    );
    let state = json_at(&root, STATE);
    assert_eq!(state["primaryApiKey"], API_KEY);
    assert_eq!(state["hasCompletedOnboarding"], true);
    let kept = aside(&root, "home/claude", ".claude.json.invalid-");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        fs::metadata(root.join("home/claude").join(&kept[0].0))
            .unwrap()
            .len()
            > 60 << 20
    );
}

#[test]
fn files_and_directories_closed_to_their_owner_are_reopened() {
    require_root();
    let root = Rootfs::new();
    run(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]).assert_code(0);
    plant(
        &root,
        &[
            "mode:/home/claude/.claude/.credentials.json:0",
            "mode:/home/claude/.claude/settings.json:0",
            "mode:/home/claude/.claude.json:0",
            "mode:/home/claude/.claude:0",
            "mode:/home/claude:0",
        ]
        .map(String::from),
    );
    assert_eq!(
        fs::metadata(root.join("home/claude"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0
    );
    let r = run(&root, &[], &[("CLAUDE_CODE_OAUTH_TOKEN", TOKEN)], &[]);
    r.assert_code(0);
    assert!(r.stderr.contains("kept the existing"), "{}", r.stderr);
    for d in ["home/claude", "home/claude/.claude"] {
        let m = fs::metadata(root.join(d)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o700, "{d}");
    }
    for f in [STATE, SETTINGS, CREDS] {
        assert_user_file(&root, f, 1000);
    }
    assert_eq!(json_at(&root, STATE)["hasCompletedOnboarding"], true);
}

#[test]
fn what_cannot_be_moved_aside_is_named_for_removal() {
    require_root();
    let root = Rootfs::new();
    // a mount point at ~/.claude.json: rename(2) refuses to move it (EBUSY)
    let _tmpfs = Tmpfs::mount(&root.join(STATE), "mode=0755");
    let r = run(&root, &[], &[], &[]);
    r.assert_code(78);
    assert!(
        r.stderr.contains(
            "/home/claude/.claude.json is a directory; cannot move /home/claude/.claude.json \
             aside (EBUSY: Device or resource busy); remove /home/claude/.claude.json and \
             start again"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("\"uid\""), "the command ran");
}
