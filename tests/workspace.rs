//! Docker tier: the workspace is not a way back to the host. The agent (the sandboxed user
//! in the Claude image) plants a git hook, sets `core.fsmonitor`/`core.hooksPath`, edits
//! `.devcontainer` and `.vscode`, and rewrites a worktree's `.git` file. The control runs
//! are plain `docker run -v PROJECT:/workspace` sessions: every write succeeds and host-side
//! git then runs what was planted (a `touch` of a marker file, nothing else), and `check`
//! and the start warning name the writable paths. The same attacks in launcher sessions
//! fail, the files are byte-identical on the host, host-side git runs nothing, and
//! everyday git inside the container still works.
//!
//! Needs root and a running dockerd. Containers use `--network none`; the volumes and
//! directories made here are removed at the end, failures included.

mod common;

use common::{run_bounded, Run};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const INIT: &str = env!("CARGO_BIN_EXE_sandbox-init");
const REPO: &str = env!("CARGO_MANIFEST_DIR");
const BASE: &str = "sandbox-init-test/debian:bookworm";
/// The Claude image built as the Docker tier builds it (its layers are shared through the
/// build cache), under a tag of its own so the two tiers never replace each other's image.
const CLAUDE_IMG: &str = "sandbox-init-test/workspace-claude";
/// The project's owner on the host, and the image's user the session runs as.
const OWNER: u32 = 1000;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Removes what the test made, failures included.
struct Scratch {
    dir: PathBuf,
    volumes: std::cell::RefCell<Vec<String>>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for v in self.volumes.borrow().iter() {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chown_tree(p: &Path) {
    ok(Command::new("chown")
        .args(["-R", &format!("{OWNER}:{OWNER}")])
        .arg(p));
}

/// Host-side git, as the project's owner (git refuses a repository someone else owns).
fn host_git(dir: &Path, home: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .uid(OWNER)
        .gid(OWNER)
        .output()
        .expect("run git")
}

fn host_git_ok(dir: &Path, home: &Path, args: &[&str]) -> String {
    let out = host_git(dir, home, args);
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A project: a repository with one commit, a dev container recipe and editor tasks.
fn project(s: &Scratch, name: &str) -> PathBuf {
    let p = s.dir.join(name);
    std::fs::create_dir_all(p.join(".devcontainer")).unwrap();
    std::fs::create_dir_all(p.join(".vscode")).unwrap();
    std::fs::write(p.join(".devcontainer/devcontainer.json"), "{}\n").unwrap();
    std::fs::write(p.join(".vscode/tasks.json"), "{}\n").unwrap();
    std::fs::write(p.join("README"), "hello\n").unwrap();
    chown_tree(&s.dir);
    let home = s.dir.join("home");
    host_git_ok(&p, &home, &["init", "-q", "-b", "main", "."]);
    host_git_ok(&p, &home, &["add", "-A"]);
    host_git_ok(&p, &home, &["commit", "-qm", "start"]);
    p
}

/// What the agent tries, as the sandboxed user: each write reports WROTE or REFUSED, with
/// the tool's own message. The planted commands only touch marker files in `markers`.
fn attack_script(markers: &Path) -> String {
    let m = markers.display();
    format!(
        r##"cd /workspace
try() {{ label=$1; shift; if out=$("$@" 2>&1); then echo "WROTE $label"; else echo "REFUSED $label: $out"; fi; }}
try hook sh -c 'printf "#!/bin/sh\ntouch {m}/hook-ran\n" > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit'
try fsmonitor git config core.fsmonitor 'touch {m}/fsmonitor-ran; false'
try hookspath git config core.hooksPath /tmp/agent-hooks
try devcontainer sh -c 'echo "// agent" >> .devcontainer/devcontainer.json'
try vscode sh -c 'echo "// agent" >> .vscode/tasks.json'
"##
    )
}

/// Everyday git inside the session; EVERYDAY-OK when all of it worked.
const EVERYDAY: &str = r#"cd /workspace && set -e
echo change >> README
git status --short
git diff --stat
git add README
git -c user.name=Agent -c user.email=agent@sandbox.test commit -qm agent-commit
git branch agent-branch
git log --oneline -3
echo EVERYDAY-OK
"#;

/// A plain `docker run -v PROJECT:/workspace` session of the image, as its users run it,
/// running `script` in bash.
fn plain_session(project: &Path, script: &str) -> Run {
    plain_run(project, &[], &["bash", "-c", script])
}

fn plain_run(project: &Path, docker_args: &[String], command: &[&str]) -> Run {
    run_bounded(
        Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--cap-add",
                "NET_ADMIN",
                "-e",
                &format!("SANDBOX_UID={OWNER}"),
                "-e",
                "SANDBOX_PRESETS=",
                "-v",
            ])
            .arg(format!("{}:/workspace", project.display()))
            .args(docker_args)
            .arg(CLAUDE_IMG)
            .args(command),
        Duration::from_secs(60),
    )
}

/// The dev container template's bind `mounts`, as the editor passes them to docker
/// (`--mount`), with `project` for `${localWorkspaceFolder}`.
fn template_mounts(project: &Path) -> Vec<String> {
    let json =
        std::fs::read_to_string(Path::new(REPO).join("images/devcontainer/devcontainer.json"))
            .unwrap();
    json.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("\"source=${localWorkspaceFolder}"))
        .flat_map(|l| {
            let spec = l.trim_end_matches(',').trim_matches('"');
            let spec = spec.replace("${localWorkspaceFolder}", &project.display().to_string());
            ["--mount".to_string(), spec]
        })
        .collect()
}

/// A launcher session running `script` in bash.
fn launcher_session(s: &Scratch, project: &Path, extra: &[&str], script: &str) -> Run {
    let launcher = Path::new(REPO).join("scripts/run-claude.sh");
    let launch = |dry: bool| {
        let mut c = Command::new(&launcher);
        c.env("HOME", s.dir.join("home"))
            .env("CLAUDE_SANDBOX_BIN", INIT)
            .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
            .env_remove("ANTHROPIC_API_KEY")
            .args(["--image", CLAUDE_IMG, "--network", "none"])
            .args(["--docker-arg=-e", "--docker-arg=SANDBOX_PRESETS="])
            .args(extra);
        if dry {
            c.arg("--dry-run");
        }
        c.arg(project).args(["--", "bash", "-c", script]);
        c
    };
    let dry = run_bounded(&mut launch(true), Duration::from_secs(30));
    dry.assert_code(0);
    let volume = dry
        .stdout
        .split_whitespace()
        .find_map(|w| w.strip_suffix(":/home/claude"))
        .unwrap_or_else(|| panic!("no home volume in the dry run: {}", dry.stdout))
        .to_string();
    s.volumes.borrow_mut().push(volume);
    run_bounded(&mut launch(false), Duration::from_secs(90))
}

fn snapshot(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    for rel in [
        ".git/config",
        ".devcontainer/devcontainer.json",
        ".vscode/tasks.json",
    ] {
        out.push((rel.to_string(), std::fs::read(p.join(rel)).unwrap()));
    }
    let mut hooks: Vec<String> = std::fs::read_dir(p.join(".git/hooks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    hooks.sort();
    out.push((".git/hooks/".into(), hooks.join("\n").into_bytes()));
    out
}

/// Host-side git as the user runs it after a session: status (a prompt does it at every
/// keystroke), then a commit.
fn host_uses_git(p: &Path, home: &Path) {
    let _ = host_git(p, home, &["status", "--short"]);
    let _ = host_git(p, home, &["commit", "-q", "--allow-empty", "-m", "host"]);
}

/// Asserts that the session printed `word` (both streams shown when not).
fn says(r: &Run, word: &str) {
    assert!(
        r.stdout.contains(word),
        "{word:?}\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
}

/// Host-side `git status` in `dir`: did it touch `marker`? (Removed again for the next case.)
fn host_status_runs(dir: &Path, home: &Path, marker: &Path) -> bool {
    let _ = host_git(dir, home, &["status", "--short"]);
    let ran = marker.exists();
    if ran {
        std::fs::remove_file(marker).unwrap();
    }
    ran
}

fn build_image() {
    let t = std::time::Instant::now();
    ok(Command::new(Path::new(REPO).join("scripts/debian-image.sh")).arg(BASE));
    ok(
        Command::new(Path::new(REPO).join("scripts/build-images.sh"))
            .args(["--bin", INIT, "--base", BASE, "--tag", CLAUDE_IMG, "claude"]),
    );
    eprintln!("workspace tier: image ready in {:?}", t.elapsed());
}

#[test]
fn the_workspace_is_not_a_way_back_to_the_host() {
    common::require_root();
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    assert!(
        matches!(&info, Ok(o) if o.status.success()),
        "this tier needs a running dockerd (docker info does not answer): {info:?}"
    );
    build_image();
    let base = std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let s = Scratch {
        dir: PathBuf::from(base).join(format!("workspace-tier-{}", std::process::id())),
        volumes: Default::default(),
    };
    let _ = std::fs::remove_dir_all(&s.dir);
    let home = s.dir.join("home");
    let markers = s.dir.join("markers");
    for d in [&home, &markers] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::set_permissions(&markers, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(
        home.join(".gitconfig"),
        "[user]\n\tname = Host User\n\temail = host@sandbox.test\n",
    )
    .unwrap();

    // Control: a plain session. Every write succeeds; host-side git then runs both.
    let open = project(&s, "open");
    let r = plain_session(&open, &attack_script(&markers));
    r.assert_code(0);
    for label in ["hook", "fsmonitor", "hookspath", "devcontainer", "vscode"] {
        assert!(
            r.stdout.contains(&format!("WROTE {label}")),
            "{label}: {}",
            r.stdout
        );
    }
    for warned in [
        "/workspace/.git/hooks is writable",
        "/workspace/.git/config is writable",
    ] {
        assert!(
            r.stderr.contains(warned),
            "start warning {warned:?}: {}",
            r.stderr
        );
    }
    // hooksPath would send git elsewhere: unset it on the host so the planted hook runs.
    host_git_ok(&open, &home, &["config", "--unset", "core.hooksPath"]);
    host_uses_git(&open, &home);
    assert!(
        markers.join("fsmonitor-ran").exists(),
        "control: a planted core.fsmonitor runs at host-side git status"
    );
    assert!(
        markers.join("hook-ran").exists(),
        "control: a planted pre-commit hook runs at host-side git commit"
    );
    // `check` in a plain session names the writable paths, with the fix.
    let check = plain_run(&open, &[], &["check"]);
    check.assert_code(1);
    for line in [
        "problem: /workspace/.git/hooks is writable by the sandboxed user",
        "problem: /workspace/.git/config is writable by the sandboxed user",
        "problem: /workspace/.devcontainer is writable by the sandboxed user",
        "problem: /workspace/.vscode is writable by the sandboxed user",
        "problem: /workspace/.git/config sets core.fsmonitor",
    ] {
        assert!(check.stdout.contains(line), "{line}: {}", check.stdout);
    }
    assert!(
        check.stdout.contains("fix: mount it read-only"),
        "{}",
        check.stdout
    );
    for f in ["fsmonitor-ran", "hook-ran"] {
        std::fs::remove_file(markers.join(f)).unwrap();
    }

    // The launcher: each write fails, with git's own message for git config.
    let guarded = project(&s, "guarded");
    let before = snapshot(&guarded);
    let script = format!("{}\n{EVERYDAY}", attack_script(&markers));
    let r = launcher_session(&s, &guarded, &[], &script);
    r.assert_code(0);
    for label in ["hook", "fsmonitor", "hookspath", "devcontainer", "vscode"] {
        assert!(
            r.stdout.contains(&format!("REFUSED {label}")),
            "{label}: {}",
            r.stdout
        );
    }
    assert!(
        r.stdout.contains("REFUSED fsmonitor: error: could not"),
        "git config fails with git's own message: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("EVERYDAY-OK"),
        "everyday git: {}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stderr
            .contains("read-only for the agent: .git/hooks .git/config .devcontainer .vscode"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("is writable by the sandboxed user"),
        "{}",
        r.stderr
    );
    assert_eq!(
        snapshot(&guarded),
        before,
        "the host's files are byte-identical"
    );
    host_uses_git(&guarded, &home);
    assert!(
        !markers.join("fsmonitor-ran").exists() && !markers.join("hook-ran").exists(),
        "host-side git ran something the agent planted"
    );
    let log = host_git_ok(&guarded, &home, &["log", "--format=%s", "agent-branch"]);
    assert!(
        log.starts_with("agent-commit\n"),
        "the agent's commit is there: {log}"
    );

    // --writable-git-config: the config is the agent's again, the hooks stay read-only.
    let config = std::fs::read(guarded.join(".git/config")).unwrap();
    let r = launcher_session(
        &s,
        &guarded,
        &["--writable-git-config"],
        &attack_script(&markers),
    );
    r.assert_code(0);
    assert!(r.stdout.contains("WROTE fsmonitor"), "{}", r.stdout);
    assert!(r.stdout.contains("REFUSED hook"), "{}", r.stdout);
    std::fs::write(guarded.join(".git/config"), config).unwrap();

    // The dev container template's mounts: the same writes fail.
    let mounts = template_mounts(&guarded);
    assert_eq!(mounts.len(), 8, "four read-only mounts: {mounts:?}");
    let r = plain_run(&guarded, &mounts, &["bash", "-c", &attack_script(&markers)]);
    r.assert_code(0);
    for label in ["hook", "fsmonitor", "hookspath", "devcontainer", "vscode"] {
        says(&r, &format!("REFUSED {label}"));
    }
    assert_eq!(
        snapshot(&guarded),
        before,
        "byte-identical under the template"
    );

    // What the mounts cannot stop, caught when the session ends: a `.git/commondir` (it
    // would send host-side git to the agent's config) is moved aside, and a replaced `.git`
    // is named. Control: a commondir makes host-side git run the agent's fsmonitor.
    let commondir = format!(
        "cd /workspace && cp -r .git agent-git && \
         git --git-dir=agent-git config core.fsmonitor 'touch {}/commondir-ran; false' && \
         echo ../agent-git > .git/commondir && echo WROTE commondir",
        markers.display()
    );
    let r = plain_session(&open, &commondir);
    says(&r, "WROTE commondir");
    assert!(
        host_status_runs(&open, &home, &markers.join("commondir-ran")),
        "control: a planted .git/commondir makes host-side git run the agent's config"
    );
    let r = launcher_session(&s, &guarded, &[], &commondir);
    says(&r, "WROTE commondir");
    assert!(
        r.stderr
            .contains("WARNING: the session created .git/commondir"),
        "{}",
        r.stderr
    );
    assert!(!guarded.join(".git/commondir").exists());
    assert!(
        !host_status_runs(&guarded, &home, &markers.join("commondir-ran")),
        "host-side git ran the agent's config"
    );
    let r = launcher_session(
        &s,
        &guarded,
        &[],
        "cd /workspace && mv .git .git-old && mkdir .git && echo RENAMED",
    );
    assert!(
        r.stdout.contains("RENAMED"),
        "renaming .git is not stopped: {}",
        r.stdout
    );
    assert!(
        r.stderr.contains("WARNING: the session replaced"),
        "{}",
        r.stderr
    );

    // A linked worktree: its `.git` file names the git directory. Control: a plain session
    // points it at a git directory of the agent's inside the project, whose fsmonitor the
    // host then runs.
    let main = project(&s, "main");
    let redirect = format!(
        "cd /workspace && git init -q --bare agent.git && \
         git --git-dir=agent.git config core.fsmonitor 'touch {}/worktree-ran; false' && \
         git --git-dir=agent.git config core.bare false && \
         echo 'gitdir: agent.git' > .git && echo WROTE gitfile || echo REFUSED gitfile",
        markers.display()
    );
    let add_worktree = |name: &str| {
        let wt = s.dir.join(name);
        host_git_ok(
            &main,
            &home,
            &["worktree", "add", "-q", wt.to_str().unwrap()],
        );
        wt
    };
    let wt_open = add_worktree("wt-open");
    let r = plain_session(&wt_open, &redirect);
    says(&r, "WROTE gitfile");
    assert!(
        host_status_runs(&wt_open, &home, &markers.join("worktree-ran")),
        "control: a redirected .git file makes host-side git run the agent's config"
    );

    let wt = add_worktree("wt-guarded");
    let before = std::fs::read(wt.join(".git")).unwrap();
    let r = launcher_session(&s, &wt, &[], &redirect);
    says(&r, "REFUSED gitfile");
    assert!(
        r.stderr.contains("read-only for the agent: .git "),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(wt.join(".git")).unwrap(), before);
    assert!(
        !host_status_runs(&wt, &home, &markers.join("worktree-ran")),
        "host-side git ran the agent's config"
    );
}
