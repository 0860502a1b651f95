//! `sandbox-init allow|deny|status|blocked`: one request to PID 1's control socket, its
//! answer on stdout. Exit 0 when PID 1 did it, 1 when it refused or cannot be reached,
//! 64 for a usage error (a bad entry, not root).

use super::protocol::{Request, Response};
use super::SOCKET;
use crate::policy::allowlist::Entry;
use crate::policy::exit;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// PID 1 answers within its own deadline; this covers a busy one.
const WAIT: Duration = Duration::from_secs(10);
/// The longest answer read (a full `status`).
const MAX_ANSWER: u64 = 1 << 20;

/// Parses the entries with the allowlist's own parser (the grammar of `SANDBOX_ALLOW`:
/// each argument may hold a comma or space list).
pub fn entries(args: &[String]) -> Result<Vec<Entry>, String> {
    let list: Vec<&str> = args
        .iter()
        .flat_map(|a| a.split([',', ' ']))
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() {
        return Err(
            "name at least one entry, as in: sandbox-init allow registry.example.org:443".into(),
        );
    }
    list.iter().map(|s| s.parse::<Entry>()).collect()
}

/// The client for a live mode (`allow`, `deny`, `status`, `blocked`): its exit code, or
/// `None` for every other mode.
pub fn for_mode(mode: Option<crate::policy::cli::ModeKind>, args: &[String]) -> Option<i32> {
    use crate::policy::cli::ModeKind;
    let parsed = |args: &[String]| match entries(args) {
        Ok(e) => Ok(e),
        Err(e) => {
            eprintln!("sandbox-init: {e}");
            Err(exit::USAGE)
        }
    };
    let req = match mode? {
        ModeKind::Allow => parsed(args).map(Request::Allow),
        ModeKind::Deny { kill } => parsed(args).map(|entries| Request::Deny { entries, kill }),
        ModeKind::Status => Ok(Request::Status),
        ModeKind::Blocked => Ok(Request::Blocked),
        _ => return None,
    };
    Some(match req {
        Ok(r) => run(&r),
        Err(code) => code,
    })
}

fn op_name(r: &Request) -> &'static str {
    match r {
        Request::Allow(_) => "allow",
        Request::Deny { .. } => "deny",
        Request::Status => "status",
        Request::Blocked => "blocked",
    }
}

/// Sends `req` and prints the answer; returns the exit code.
pub fn run(req: &Request) -> i32 {
    let op = op_name(req);
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        eprintln!(
            "sandbox-init {op}: only root in the container can use the live sandbox's control \
             socket (you are uid {uid}); from the host run `docker exec CONTAINER sandbox-init \
             {op} ...` (without -u: docker exec runs as root)"
        );
        return exit::USAGE;
    }
    match ask(req) {
        Ok(Response::Ok { lines, .. }) => {
            for l in lines {
                println!("{l}");
            }
            0
        }
        Ok(Response::Err(e)) => {
            eprintln!("sandbox-init {op}: refused: {e}");
            1
        }
        Err(e) => {
            eprintln!("sandbox-init {op}: {e}");
            1
        }
    }
}

fn ask(req: &Request) -> Result<Response, String> {
    let mut s = UnixStream::connect(SOCKET).map_err(|e| {
        format!(
            "no live sandbox answers at {SOCKET} ({e}): run this inside a container whose \
             PID 1 is sandbox-init with its firewall on (docker exec CONTAINER sandbox-init ...)"
        )
    })?;
    let _ = s.set_read_timeout(Some(WAIT));
    let _ = s.set_write_timeout(Some(WAIT));
    s.write_all(req.encode().as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut line = Vec::new();
    BufReader::new(std::io::Read::take(&s, MAX_ANSWER))
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading PID 1's answer: {e}"))?;
    if line.is_empty() {
        return Err("PID 1 closed the connection without an answer".into());
    }
    Response::decode(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_follow_the_sandbox_allow_grammar() {
        let e = entries(&["a.test:443,10.0.0.0/8".into(), "b.test".into()]).unwrap();
        assert_eq!(e.len(), 3);
        assert!(entries(&[]).is_err());
        assert!(entries(&["https://x.test/".into()])
            .unwrap_err()
            .contains("URL"));
    }
}
