//! Files in the workspace that tools on the HOST run later, without review: git hooks and
//! the repository's git config (at the next `git status`, which many shell prompts run on
//! every keystroke), the dev container recipe (at the next rebuild) and editor tasks (when
//! the folder is opened locally). The launcher and the dev container template mount them
//! read-only; this module tells plain `docker run -v $PWD:/workspace` users when they are
//! not, at start (a warning) and in `check` (a problem with its fix).
//!
//! `findings` is pure: it works on a `View` of the workspace. `observe` gathers that view
//! from the file system as the sandboxed user would see it.

use crate::policy::identity::Identity;
use std::path::{Path, PathBuf};

/// What the sandboxed user can do to one guarded path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Absent, and the user could create it (its parent is writable).
    Creatable,
    /// Absent, and the user could not create it.
    Absent,
    /// Present and writable (mode bits, owner, groups, and a file system that is not
    /// mounted read-only).
    Writable,
    /// Present, and the user cannot change it.
    Protected,
}

/// The guarded paths of one workspace, as the sandboxed user sees them.
#[derive(Debug, Default)]
pub struct View {
    /// (path as shown to the user, what the host runs from it, access)
    pub paths: Vec<(String, Kind, Access)>,
    /// The text of each git config the repository reads (its own and, for a linked
    /// worktree, the common one), with its path relative to the workspace.
    pub configs: Vec<(String, String)>,
}

/// What a guarded path is, which says what the host does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `.git` as a file (worktree, submodule): it names the git directory.
    GitFile,
    Hooks,
    GitConfig,
    DevContainer,
    VsCode,
    /// `commondir` in a `.git` directory: git reads the config and hooks of the directory it
    /// names. Only linked worktrees' own git directories have one.
    CommonDir,
}

impl Kind {
    fn risk(self) -> &'static str {
        match self {
            Kind::GitFile => {
                "names the git directory host-side git uses: the agent can point it at hooks \
                 of its own"
            }
            Kind::Hooks => "its scripts run on the host at your next git commit, checkout or push",
            Kind::GitConfig => {
                "can set core.fsmonitor, core.hooksPath and more: commands the host runs at \
                 your next git status"
            }
            Kind::DevContainer => {
                "the dev container recipe (allowlist, runArgs, postStartCommand): applied at \
                 the next rebuild"
            }
            Kind::VsCode => {
                "editor tasks and settings that run programs when the folder is opened on the \
                 host"
            }
            Kind::CommonDir => {
                "sends host-side git to the config and hooks of another directory, past any \
                 read-only mount of .git/config and .git/hooks"
            }
        }
    }
}

/// One thing in the workspace the agent could use to run commands on the host.
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    pub what: String,
    pub fix: String,
}

const MOUNT_FIX: &str = "mount it read-only over the workspace (scripts/run-claude.sh does, and \
                         the dev container template's mounts), e.g. docker run -v";

/// Findings for the guarded paths the user can change, and for git config keys that make
/// host-side git run a command. Key names only: values may hold secrets.
pub fn findings(view: &View, workdir: &Path) -> Vec<Finding> {
    let mut out = vec![];
    for (path, kind, access) in &view.paths {
        if *kind == Kind::CommonDir {
            if matches!(access, Access::Writable | Access::Protected) {
                out.push(Finding {
                    what: format!(
                        "{} exists: it {}",
                        workdir.join(path).display(),
                        kind.risk()
                    ),
                    fix: format!(
                        "unless you made it, move it away on the host: mv HOST_PROJECT/{path} \
                         HOST_PROJECT/{path}.bad"
                    ),
                });
            }
            continue;
        }
        let writable = match access {
            Access::Writable => true,
            // Only a missing hooks directory is worth a finding: git creates it at `git
            // init`, so its absence means nothing stops the agent creating it.
            Access::Creatable => *kind == Kind::Hooks,
            Access::Absent | Access::Protected => false,
        };
        if writable {
            let state = if *access == Access::Creatable {
                "can be created"
            } else {
                "is writable"
            };
            let target = workdir.join(path);
            out.push(Finding {
                what: format!(
                    "{} {state} by the sandboxed user: {}",
                    target.display(),
                    kind.risk()
                ),
                fix: format!(
                    "{MOUNT_FIX} HOST_PROJECT/{path}:{}:ro{}",
                    target.display(),
                    if *access == Access::Creatable {
                        " (create the empty directory on the host first)"
                    } else {
                        ""
                    }
                ),
            });
        }
    }
    for (path, text) in &view.configs {
        for key in command_keys(text) {
            out.push(Finding {
                what: format!(
                    "{} sets {key}: host-side git runs a command from it (or from the file it \
                     names)",
                    workdir.join(path).display()
                ),
                fix: format!(
                    "if you did not set it, remove it on the host: git config --file \
                     HOST_PROJECT/{path} --unset {key}"
                ),
            });
        }
    }
    out
}

/// Keys of a git config text that run a command, or name something that does, in git
/// itself (not in a tool the user calls by name). Written by hand: only the section and key
/// names are needed, and no crate in the tree reads git's config format.
pub fn command_keys(text: &str) -> Vec<String> {
    let mut keys = vec![];
    // (section lowercased, subsection as written)
    let mut section: Option<(String, Option<String>)> = None;
    for raw in text.lines() {
        let mut line = raw.trim();
        if line.starts_with('[') {
            let Some(end) = line.find(']') else {
                section = None;
                continue;
            };
            let header = &line[1..end];
            section = Some(match header.split_once(char::is_whitespace) {
                Some((name, sub)) => (
                    name.to_ascii_lowercase(),
                    Some(sub.trim().trim_matches('"').to_string()),
                ),
                // The old `[section.subsection]` form.
                None => match header.split_once('.') {
                    Some((name, sub)) => (name.to_ascii_lowercase(), Some(sub.to_string())),
                    None => (header.to_ascii_lowercase(), None),
                },
            });
            line = line[end + 1..].trim();
            if line.is_empty() {
                continue;
            }
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((name, sub)) = &section else {
            continue;
        };
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (line.trim().to_ascii_lowercase(), None),
        };
        if runs_command(name, sub.as_deref(), &key, value) {
            let shown = match sub {
                Some(s) => format!("{name}.{s}.{key}"),
                None => format!("{name}.{key}"),
            };
            if !keys.contains(&shown) {
                keys.push(shown);
            }
        }
    }
    keys
}

fn runs_command(section: &str, sub: Option<&str>, key: &str, value: Option<&str>) -> bool {
    let boolean = |v: Option<&str>| {
        matches!(
            v.map(|v| v.trim_matches('"').to_ascii_lowercase())
                .as_deref(),
            None | Some("true" | "false" | "yes" | "no" | "on" | "off" | "1" | "0" | "")
        )
    };
    match (section, sub, key) {
        // A boolean asks for git's own daemon; anything else is a program git runs.
        ("core", None, "fsmonitor") => !boolean(value),
        (
            "core",
            None,
            "hookspath"
            | "sshcommand"
            | "pager"
            | "editor"
            | "askpass"
            | "gitproxy"
            | "alternaterefscommand",
        ) => true,
        ("sequence", None, "editor") => true,
        ("diff", None, "external") => true,
        ("diff" | "merge", Some(_), "textconv" | "command" | "driver") => true,
        ("filter", Some(_), "clean" | "smudge" | "process") => true,
        ("credential", _, "helper") => true,
        ("gpg", _, "program") => true,
        ("gpg", Some(_), "defaultkeycommand") => true,
        ("remote", Some(_), "uploadpack" | "receivepack" | "proxy") => true,
        ("interactive", None, "difffilter") => true,
        ("pager", _, _) => !boolean(value),
        ("web", None, "browser") => true,
        ("browser" | "man" | "difftool" | "mergetool", Some(_), "cmd" | "path") => true,
        // Another file read as config: what it sets is not seen here.
        ("include", None, "path") | ("includeif", Some(_), "path") => true,
        // `!cmd` aliases are shell commands, run at `git ALIAS`.
        ("alias", _, _) => value.is_some_and(|v| v.trim_matches('"').starts_with('!')),
        _ => false,
    }
}

/// The guarded paths of `workdir` as `id` would see them. A `.git` file is followed to its
/// git directory (and a linked worktree's common directory) when that lies inside the
/// workspace; one outside it is not reachable from here, so nothing of it is guarded.
pub fn observe(workdir: &Path, id: &Identity) -> View {
    let mut view = View::default();
    let see = |view: &mut View, rel: &str, kind: Kind| {
        let access = access(&workdir.join(rel), id);
        view.paths.push((rel.to_string(), kind, access));
    };
    let dot_git = workdir.join(".git");
    let mut git_dirs: Vec<PathBuf> = vec![];
    match std::fs::symlink_metadata(&dot_git) {
        Ok(m) if m.is_dir() => {
            git_dirs.push(PathBuf::from(".git"));
            if std::fs::symlink_metadata(dot_git.join("commondir")).is_ok() {
                see(&mut view, ".git/commondir", Kind::CommonDir);
            }
        }
        Ok(m) if m.is_file() => {
            see(&mut view, ".git", Kind::GitFile);
            if let Some(dir) = gitdir_of(&dot_git).and_then(|d| inside(workdir, &d)) {
                if let Some(common) = std::fs::read_to_string(workdir.join(&dir).join("commondir"))
                    .ok()
                    .and_then(|c| inside(workdir, &workdir.join(&dir).join(c.trim())))
                {
                    git_dirs.push(common);
                }
                git_dirs.insert(0, dir);
            }
        }
        _ => {}
    }
    for dir in git_dirs {
        let shown = dir.display().to_string();
        see(&mut view, &format!("{shown}/hooks"), Kind::Hooks);
        see(&mut view, &format!("{shown}/config"), Kind::GitConfig);
        if let Ok(text) = std::fs::read_to_string(workdir.join(&dir).join("config")) {
            view.configs.push((format!("{shown}/config"), text));
        }
    }
    see(&mut view, ".devcontainer", Kind::DevContainer);
    see(&mut view, ".vscode", Kind::VsCode);
    view
}

/// One warning line per finding, for the start of a session.
pub fn warn_at_start(workdir: &Path, id: &Identity) {
    for f in findings(&observe(workdir, id), workdir) {
        log::warn!("{}; fix: {}", f.what, f.fix);
    }
}

/// The directory a `.git` file names (`gitdir: PATH`, relative to the file's directory).
fn gitdir_of(file: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(file).ok()?;
    let named = text.lines().find_map(|l| l.strip_prefix("gitdir:"))?.trim();
    Some(file.parent()?.join(named))
}

/// `path` relative to `workdir` when it resolves inside it (symbolic links followed).
fn inside(workdir: &Path, path: &Path) -> Option<PathBuf> {
    let root = workdir.canonicalize().ok()?;
    let real = path.canonicalize().ok()?;
    real.strip_prefix(&root).ok().map(Path::to_path_buf)
}

fn access(path: &Path, id: &Identity) -> Access {
    match std::fs::metadata(path) {
        Ok(m) => {
            if writable_by(&m, path, id) {
                Access::Writable
            } else {
                Access::Protected
            }
        }
        Err(_) => match path
            .parent()
            .and_then(|p| Some((p, std::fs::metadata(p).ok()?)))
        {
            Some((parent, m)) if writable_by(&m, parent, id) => Access::Creatable,
            _ => Access::Absent,
        },
    }
}

fn writable_by(m: &std::fs::Metadata, path: &Path, id: &Identity) -> bool {
    use std::os::unix::fs::MetadataExt;
    let read_only_mount = nix::sys::statvfs::statvfs(path)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false);
    let bits = if m.uid() == id.uid {
        m.mode() & 0o200
    } else if id.groups.contains(&m.gid()) || m.gid() == id.gid {
        m.mode() & 0o020
    } else {
        m.mode() & 0o002
    };
    !read_only_mount && bits != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(paths: &[(&str, Kind, Access)], configs: &[(&str, &str)]) -> View {
        View {
            paths: paths
                .iter()
                .map(|(p, k, a)| (p.to_string(), *k, *a))
                .collect(),
            configs: configs
                .iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect(),
        }
    }

    #[test]
    fn writable_paths_and_a_creatable_hooks_dir_are_findings() {
        let v = view(
            &[
                (".git/hooks", Kind::Hooks, Access::Creatable),
                (".git/config", Kind::GitConfig, Access::Writable),
                (".devcontainer", Kind::DevContainer, Access::Protected),
                (".vscode", Kind::VsCode, Access::Creatable),
            ],
            &[],
        );
        let f = findings(&v, Path::new("/workspace"));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0]
            .what
            .starts_with("/workspace/.git/hooks can be created"));
        assert!(f[0]
            .fix
            .contains("HOST_PROJECT/.git/hooks:/workspace/.git/hooks:ro"));
        assert!(f[0].fix.contains("create the empty directory"));
        assert!(f[1].what.starts_with("/workspace/.git/config is writable"));
        assert!(f[1].what.contains("core.fsmonitor"));
    }

    #[test]
    fn a_commondir_in_the_git_dir_is_a_finding_even_read_only() {
        let v = view(
            &[(".git/commondir", Kind::CommonDir, Access::Protected)],
            &[],
        );
        let f = findings(&v, Path::new("/workspace"));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].what.starts_with("/workspace/.git/commondir exists"));
        assert!(f[0].fix.contains("mv HOST_PROJECT/.git/commondir"));
    }

    #[test]
    fn protected_or_absent_paths_are_quiet() {
        let v = view(
            &[
                (".git/hooks", Kind::Hooks, Access::Protected),
                (".git/config", Kind::GitConfig, Access::Protected),
                (".devcontainer", Kind::DevContainer, Access::Absent),
                (".vscode", Kind::VsCode, Access::Protected),
            ],
            &[(".git/config", "[core]\n\tbare = false\n")],
        );
        assert_eq!(findings(&v, Path::new("/workspace")), vec![]);
    }

    #[test]
    fn command_keys_are_named_without_their_values() {
        let text = r#"
[core]
	repositoryformatversion = 0
	fsmonitor = "touch /tmp/pwned-SECRET"
	hooksPath = .husky
	sshCommand = ssh -i key
	pager = less
	editor = vim
[diff "img"]
	textconv = exif
[diff]
	external = difft
[filter "lfs"]
	smudge = git-lfs smudge -- %f
	process = git-lfs filter-process
	required = true
[merge "ours"]
	driver = true
[credential]
	helper = store
[credential "https://example.test"]
	helper = cache
[gpg]
	program = gpg2
[gpg.ssh]
	program = ssh-keygen
[remote "origin"]
	url = https://example.test/r.git
	uploadpack = evil
[alias]
	st = status
	x = "!sh -c 'id'"
[include]
	path = ../shared.gitconfig
[includeIf "gitdir:/x/"]
	path = other
[user]
	name = Somebody
"#;
        let keys = command_keys(text);
        assert_eq!(
            keys,
            [
                "core.fsmonitor",
                "core.hookspath",
                "core.sshcommand",
                "core.pager",
                "core.editor",
                "diff.img.textconv",
                "diff.external",
                "filter.lfs.smudge",
                "filter.lfs.process",
                "merge.ours.driver",
                "credential.helper",
                "credential.https://example.test.helper",
                "gpg.program",
                "gpg.ssh.program",
                "remote.origin.uploadpack",
                "alias.x",
                "include.path",
                "includeif.gitdir:/x/.path",
            ]
        );
        let f = findings(
            &view(&[], &[(".git/config", text)]),
            Path::new("/workspace"),
        );
        assert_eq!(f.len(), keys.len());
        for finding in &f {
            assert!(!finding.what.contains("SECRET") && !finding.fix.contains("SECRET"));
        }
        assert!(f[0]
            .what
            .starts_with("/workspace/.git/config sets core.fsmonitor"));
        assert!(
            f[0].fix
                .contains("--file HOST_PROJECT/.git/config --unset core.fsmonitor"),
            "{f:?}"
        );
    }

    #[test]
    fn harmless_configs_have_no_command_keys() {
        let text = "[core]\n\tfsmonitor = true\n\tbare = false\n[pager]\n\tbranch = false\n\
                    [remote \"origin\"]\n\turl = x\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n\
                    [branch \"main\"]\n\tremote = origin\n# core.pager = evil\n";
        assert_eq!(command_keys(text), Vec::<String>::new());
    }

    fn me() -> Identity {
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        Identity {
            name: "t".into(),
            uid,
            gid,
            image_uid: uid,
            image_gid: gid,
            groups: vec![gid],
            dropped_groups: vec![],
            home: "/nonexistent".into(),
            shell: "/bin/sh".into(),
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("guard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn observe_sees_a_repository_as_its_owner_does() {
        let ws = scratch("repo");
        std::fs::create_dir_all(ws.join(".git")).unwrap();
        std::fs::write(ws.join(".git/config"), "[core]\n\tsshCommand = x\n").unwrap();
        std::fs::create_dir_all(ws.join(".vscode")).unwrap();
        let v = observe(&ws, &me());
        let access_of = |p: &str| v.paths.iter().find(|(q, _, _)| q == p).map(|(_, _, a)| *a);
        assert_eq!(access_of(".git/hooks"), Some(Access::Creatable));
        assert_eq!(access_of(".git/config"), Some(Access::Writable));
        assert_eq!(access_of(".vscode"), Some(Access::Writable));
        assert_eq!(access_of(".devcontainer"), Some(Access::Creatable));
        assert_eq!(v.configs.len(), 1);
        let f = findings(&v, &ws);
        assert_eq!(f.len(), 4, "hooks, config, .vscode, core.sshcommand: {f:?}");
        std::fs::write(ws.join(".git/commondir"), "../elsewhere\n").unwrap();
        let v = observe(&ws, &me());
        assert!(
            v.paths
                .iter()
                .any(|(p, k, _)| p == ".git/commondir" && *k == Kind::CommonDir),
            "{v:?}"
        );
        std::fs::remove_dir_all(&ws).unwrap();
    }

    #[test]
    fn observe_follows_a_git_file_only_inside_the_workspace() {
        let ws = scratch("worktree");
        std::fs::create_dir_all(ws.join("main/.git/worktrees/wt/")).unwrap();
        std::fs::create_dir_all(ws.join("main/.git/hooks")).unwrap();
        std::fs::write(ws.join("main/.git/config"), "[core]\n\tpager = p\n").unwrap();
        std::fs::write(ws.join("main/.git/worktrees/wt/commondir"), "../..\n").unwrap();
        std::fs::write(ws.join(".git"), "gitdir: main/.git/worktrees/wt\n").unwrap();
        let v = observe(&ws, &me());
        let shown: Vec<&str> = v.paths.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            shown,
            [
                ".git",
                "main/.git/worktrees/wt/hooks",
                "main/.git/worktrees/wt/config",
                "main/.git/hooks",
                "main/.git/config",
                ".devcontainer",
                ".vscode"
            ]
        );
        assert_eq!(v.configs.len(), 1, "only the common dir has a config");
        // A planted `.git` that names a directory outside: nothing of it is looked at.
        std::fs::write(ws.join(".git"), "gitdir: /etc\n").unwrap();
        let v = observe(&ws, &me());
        let shown: Vec<&str> = v.paths.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(shown, [".git", ".devcontainer", ".vscode"]);
        assert!(v.configs.is_empty());
        std::fs::remove_dir_all(&ws).unwrap();
    }
}
