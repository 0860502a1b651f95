//! Starting the command: fork, and in the child take the terminal, drop every privilege,
//! enter the working directory, find the program on the child's PATH and exec it.
//!
//! Everything the child needs is prepared before the fork, so the child allocates little
//! and cannot fail halfway without saying why: it prints one line and exits 126/127/70/78.

use crate::policy::exit;
use crate::policy::identity::Identity;
use crate::stages::privileges;
use crate::sys::process::{self, Disposition};
use crate::sys::Real;
use nix::sys::signal::Signal;
use nix::unistd::{self, Pid};
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Command {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: PathBuf,
    pub identity: Identity,
}

/// Why the program could not be found or started.
#[derive(Debug, PartialEq, Eq)]
pub struct ExecFailure {
    pub code: i32,
    pub message: String,
}

/// How a candidate path looks to the (already unprivileged) child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Missing,
    NotExecutable,
    Executable,
}

/// `execvp` semantics made explicit: a name with `/` is used as is, otherwise each PATH
/// directory is tried in order; an empty element means the working directory.
pub fn find_program(
    name: &str,
    path_var: &str,
    access: impl Fn(&Path) -> Access,
) -> Result<PathBuf, ExecFailure> {
    if name.is_empty() {
        return Err(ExecFailure {
            code: exit::NOT_FOUND,
            message: "empty command name".into(),
        });
    }
    if name.contains('/') {
        let p = PathBuf::from(name);
        return match access(&p) {
            Access::Executable => Ok(p),
            Access::NotExecutable => Err(not_executable(name)),
            Access::Missing => Err(ExecFailure {
                code: exit::NOT_FOUND,
                message: format!("{name}: no such file"),
            }),
        };
    }
    let mut denied = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        match access(&candidate) {
            Access::Executable => return Ok(candidate),
            Access::NotExecutable => {
                denied.get_or_insert(candidate);
            }
            Access::Missing => {}
        }
    }
    match denied {
        Some(p) => Err(not_executable(&p.display().to_string())),
        None => Err(ExecFailure {
            code: exit::NOT_FOUND,
            message: format!(
                "{name}: command not found (PATH={path_var}); install it in the image or \
                 give the full path"
            ),
        }),
    }
}

fn not_executable(what: &str) -> ExecFailure {
    ExecFailure {
        code: exit::NOT_EXECUTABLE,
        message: format!("{what}: permission denied (not executable by the sandbox user)"),
    }
}

/// Checks a path as the calling (unprivileged) process sees it.
pub fn real_access(p: &Path) -> Access {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => {
            if nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() {
                Access::Executable
            } else {
                Access::NotExecutable
            }
        }
        // A directory or device of that name is not a program.
        Ok(_) => Access::NotExecutable,
        Err(_) => Access::Missing,
    }
}

fn cstring(s: &[u8]) -> Result<CString, String> {
    CString::new(s).map_err(|_| {
        format!(
            "'{}' contains a NUL byte",
            String::from_utf8_lossy(s).replace('\0', "\\0")
        )
    })
}

type Prepared = (Vec<CString>, Vec<CString>, String);

fn prepare(cmd: &Command) -> Result<Prepared, String> {
    let argv: Vec<CString> = cmd
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = cmd
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
        .collect::<Result<_, _>>()?;
    let path_var = cmd.env.get("PATH").cloned().unwrap_or_default();
    Ok((argv, envp, path_var))
}

/// The child's path in this very process (`sandbox-init exec`): the same drop, then exec.
/// Returns only on failure.
pub fn exec_in_place(cmd: &Command) -> ExecFailure {
    match prepare(cmd) {
        Ok((argv, envp, path_var)) => child_main(cmd, &argv, &envp, &path_var),
        Err(message) => ExecFailure {
            code: exit::USAGE,
            message,
        },
    }
}

/// Forks the child. In the parent, returns the child's pid (its process group id too).
pub fn spawn(cmd: &Command) -> Result<Pid, String> {
    let (argv, envp, path_var) = prepare(cmd)?;

    // The process is single-threaded here (the resolver's runtime is gone), so the child
    // may allocate; it only execs or exits.
    let child = process::fork_child(|_| {
        let failure = child_main(cmd, &argv, &envp, &path_var);
        eprintln!("sandbox-init: {}", failure.message);
        failure.code
    })
    .map_err(|e| format!("cannot fork: {e}"))?;
    // Also done in the child; doing it in both closes the race with signals sent to the
    // group before the child ran.
    let _ = unistd::setpgid(child, child);
    Ok(child)
}

/// The child's path to exec; returns only on failure.
fn child_main(cmd: &Command, argv: &[CString], envp: &[CString], path_var: &str) -> ExecFailure {
    process::reset_signals();
    take_terminal();

    if let Err(e) = privileges::drop_all(&Real, &cmd.identity) {
        return ExecFailure {
            code: exit::SANDBOX,
            message: e,
        };
    }
    if let Err(e) = unistd::chdir(&cmd.workdir) {
        return ExecFailure {
            code: exit::CONFIG,
            message: format!(
                "cannot enter the working directory {} as {}: {e}; set SANDBOX_WORKDIR or \
                 fix its permissions",
                cmd.workdir.display(),
                cmd.identity.name
            ),
        };
    }
    let program = match find_program(&cmd.argv[0], path_var, real_access) {
        Ok(p) => p,
        Err(f) => return f,
    };
    // No descriptor of ours reaches the command: only 0, 1 and 2 stay open. Close-on-exec,
    // so stderr and the rest stay usable to report a failed exec.
    process::mark_cloexec_from(3, &[]);
    let Ok(prog) = cstring(OsStr::new(&program).as_bytes()) else {
        return not_executable(&program.display().to_string());
    };
    let err = unistd::execve(&prog, argv, envp).unwrap_err();
    match err {
        nix::errno::Errno::ENOENT => ExecFailure {
            code: exit::NOT_FOUND,
            message: format!(
                "{}: cannot execute: a file it needs (its interpreter or loader) is missing",
                program.display()
            ),
        },
        e => ExecFailure {
            code: exit::NOT_EXECUTABLE,
            message: format!("{}: cannot execute: {e}", program.display()),
        },
    }
}

/// Own process group, and the terminal's foreground group when there is a terminal, so the
/// interactive UI reads the keyboard and Ctrl-C reaches it (tini does the same).
fn take_terminal() {
    let _ = unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    if unistd::isatty(std::io::stdin()).unwrap_or(false) {
        // tcsetpgrp from a background group would otherwise stop us.
        let _ = process::set_disposition(Signal::SIGTTOU, Disposition::Ignore);
        let _ = unistd::tcsetpgrp(std::io::stdin(), unistd::getpgrp());
        let _ = process::set_disposition(Signal::SIGTTOU, Disposition::Default);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(layout: &'static [(&'static str, Access)]) -> impl Fn(&Path) -> Access {
        move |p: &Path| {
            layout
                .iter()
                .find(|(q, _)| Path::new(q) == p)
                .map(|(_, a)| *a)
                .unwrap_or(Access::Missing)
        }
    }

    #[test]
    fn searches_path_in_order() {
        let look = fs(&[
            ("/usr/bin/claude", Access::Executable),
            ("/usr/local/bin/claude", Access::Executable),
        ]);
        let p = find_program("claude", "/usr/local/bin:/usr/bin", &look).unwrap();
        assert_eq!(p, PathBuf::from("/usr/local/bin/claude"));
    }

    #[test]
    fn skips_non_executable_but_reports_126_if_nothing_else() {
        let look = fs(&[
            ("/a/tool", Access::NotExecutable),
            ("/b/tool", Access::Executable),
        ]);
        assert_eq!(
            find_program("tool", "/a:/b", &look).unwrap(),
            PathBuf::from("/b/tool")
        );
        let f = find_program("tool", "/a", &look).unwrap_err();
        assert_eq!(f.code, 126);
        assert!(f.message.contains("/a/tool"));
    }

    #[test]
    fn not_found_is_127_and_names_the_path() {
        let f = find_program("nope", "/usr/bin:/bin", fs(&[])).unwrap_err();
        assert_eq!(f.code, 127);
        assert!(f
            .message
            .contains("nope: command not found (PATH=/usr/bin:/bin)"));
        assert_eq!(find_program("", "/bin", fs(&[])).unwrap_err().code, 127);
    }

    #[test]
    fn names_with_a_slash_are_not_searched() {
        let look = fs(&[
            ("/opt/x", Access::Executable),
            ("./rel", Access::NotExecutable),
        ]);
        assert_eq!(
            find_program("/opt/x", "/usr/bin", &look).unwrap(),
            PathBuf::from("/opt/x")
        );
        assert_eq!(find_program("./rel", "", &look).unwrap_err().code, 126);
        assert_eq!(
            find_program("/opt/missing", "/opt", &look)
                .unwrap_err()
                .code,
            127
        );
    }

    #[test]
    fn empty_path_element_is_the_working_directory() {
        let look = fs(&[("./here", Access::Executable)]);
        assert_eq!(
            find_program("here", "/bin::", &look).unwrap(),
            PathBuf::from("./here")
        );
    }
}
