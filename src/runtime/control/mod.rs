//! Changing a running sandbox without restarting it. PID 1 serves a control socket that
//! only root in the container can use ([`SOCKET`], in a directory only root can enter);
//! `sandbox-init allow|deny|status|blocked`, run with `docker exec`, are its clients.
//! `sandbox-init exec` runs a command with the same drop as the entrypoint's child. A
//! second sandbox-init never rebuilds a live sandbox, and none runs on a host by mistake.

pub mod client;
pub mod live;
pub mod protocol;
pub mod server;

pub use crate::runtime::report::live::{allow_command, live_advice, live_target, LiveTarget};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

/// The socket. Its directory is PID 1's status directory: root's, mode 0700.
pub const SOCKET: &str = "/run/sandbox-init/control.sock";

/// The inode number the kernel gives the initial (the host's) PID namespace.
pub const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";

/// Binds the control socket (mode 0600) in the root-only directory. Never an abstract
/// name: those are reachable by any process of the network namespace.
pub fn listen() -> Result<UnixListener, String> {
    let _dir = crate::runtime::report::status::open_dir()?;
    match std::fs::remove_file(SOCKET) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove a stale {SOCKET}: {e}")),
    }
    let l = UnixListener::bind(SOCKET).map_err(|e| format!("cannot bind {SOCKET}: {e}"))?;
    std::fs::set_permissions(SOCKET, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set the mode of {SOCKET}: {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("control socket: {e}"))?;
    Ok(l)
}

/// The control socket's duty for this sandbox, or `None` (with a warning: the session
/// still runs, only live changes are unavailable) when the socket cannot be bound, as
/// under `--read-only` without a tmpfs on /run.
pub fn serve(
    settings: &crate::policy::config::Settings,
    applied: &crate::stages::firewall::Applied,
    policy: Option<crate::policy::names::Shared>,
    reporter: crate::runtime::report::SharedReporter,
) -> Option<server::Server> {
    let listener = match listen() {
        Ok(l) => l,
        Err(e) => {
            log::warn!(
                "{e}: `sandbox-init allow` cannot change this session (mount a tmpfs on                  /run/sandbox-init to have it)"
            );
            return None;
        }
    };
    let source_of = |e: &crate::policy::allowlist::Entry| {
        settings
            .allow
            .iter()
            .find(|a| &a.value == e)
            .map_or_else(|| "preset".to_string(), |a| a.source.to_string())
    };
    let state = live::Live {
        start: applied
            .entries
            .iter()
            .map(|e| (e.clone(), source_of(e)))
            .collect(),
        presets: (
            settings.presets.value.clone(),
            settings.presets.source.to_string(),
        ),
        filter: applied.plan.filter,
        start_groups: applied.plan.dynamic.keys().copied().collect(),
        broker: applied
            .plan
            .broker
            .as_ref()
            .map(|b| b.dns_names())
            .unwrap_or_default(),
        live: vec![],
    };
    let container = container_name();
    if let Some(c) = &container {
        crate::runtime::report::live::set_target(LiveTarget {
            container: c.clone(),
            names: applied.plan.filter,
        });
    }
    Some(server::Server::new(
        listener, state, policy, reporter, container,
    ))
}

/// The container's name as `docker exec` takes it, when the hostname can be one (the
/// launcher sets the hostname to the container's name; Docker's default is the short id,
/// which `docker exec` takes too). `None` for anything that is not one plain shell word.
pub fn container_name() -> Option<String> {
    let name = nix::unistd::gethostname().ok()?.into_string().ok()?;
    plain_container_name(name.trim())
}

fn plain_container_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    ok.then(|| name.to_string())
}

/// Why the entrypoint or `apply` must not run here, if it must not: PID 1 of this
/// container is a sandbox-init already (rebuilding would replace its firewall and drop
/// what its DNS filter learned), or this is the host's initial PID namespace (it would
/// firewall and strip the machine itself) and `host_ok` was not given.
pub fn rebuild_refusal(
    own_pid: u32,
    pid1_comm: Option<&str>,
    pid_namespace: Option<&str>,
    host_ok: bool,
) -> Option<String> {
    if own_pid != 1 && pid1_comm.map(str::trim) == Some("sandbox-init") {
        return Some(
            "PID 1 of this container is a sandbox-init serving a live sandbox; a second one \
             would rebuild it (replace its firewall, forget what its DNS filter learned). \
             Change it live instead: `sandbox-init allow ENTRY` (and `deny`, `status`, \
             `blocked`); for a sandboxed shell: `sandbox-init exec bash` (both as root, \
             `docker exec` without -u)"
                .into(),
        );
    }
    if own_pid != 1 && !host_ok && pid_namespace.map(str::trim) == Some(INITIAL_PID_NAMESPACE) {
        return Some(
            "this is the host's initial PID namespace, not a container: sandbox-init would \
             firewall this machine and strip its set-uid programs and sudo. Use it as a \
             container's ENTRYPOINT (see scripts/run-claude.sh); `sandbox-init check` \
             changes nothing. In a container started with --pid=host, add \
             --allow-host-pid-namespace"
                .into(),
        );
    }
    None
}

/// `rebuild_refusal` for this process.
pub fn refuse_rebuild(host_ok: bool) -> Option<String> {
    let comm = std::fs::read_to_string("/proc/1/comm").ok();
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.display().to_string());
    rebuild_refusal(std::process::id(), comm.as_deref(), ns.as_deref(), host_ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::Suggestion;

    #[test]
    fn a_second_sandbox_init_or_a_host_is_refused() {
        let ours = rebuild_refusal(57, Some("sandbox-init\n"), Some("pid:[4026532001]"), false);
        assert!(ours.unwrap().contains("sandbox-init allow"));
        // as PID 1 itself, or under another init, it runs
        assert_eq!(rebuild_refusal(1, Some("sandbox-init"), None, false), None);
        assert_eq!(
            rebuild_refusal(57, Some("docker-init"), Some("pid:[4026532001]"), false),
            None
        );
        let host = rebuild_refusal(4242, Some("systemd"), Some(INITIAL_PID_NAMESPACE), false);
        assert!(host.unwrap().contains("--allow-host-pid-namespace"));
        assert_eq!(
            rebuild_refusal(4242, Some("systemd"), Some(INITIAL_PID_NAMESPACE), true),
            None
        );
        // the override never lets a second one rebuild a live sandbox
        assert!(
            rebuild_refusal(9, Some("sandbox-init"), Some(INITIAL_PID_NAMESPACE), true).is_some()
        );
    }

    #[test]
    fn only_plain_names_become_advice() {
        assert_eq!(
            plain_container_name("claude-proj-1a2b3c4d").as_deref(),
            Some("claude-proj-1a2b3c4d")
        );
        assert_eq!(
            plain_container_name("3f2a9c01d4e5").as_deref(),
            Some("3f2a9c01d4e5")
        );
        for bad in ["", "-x", "a b", "a;rm", "a$(id)", "a'b", &"x".repeat(64)] {
            assert_eq!(plain_container_name(bad), None, "{bad}");
        }
        let s = Suggestion::new("reg.test:443".parse().unwrap()).unwrap();
        assert_eq!(
            allow_command(&s, Some("claude-p-1")),
            "docker exec claude-p-1 sandbox-init allow reg.test:443"
        );
        // in resolver mode a name cannot be allowed live: no such advice
        let mut t = LiveTarget {
            container: "c".into(),
            names: true,
        };
        assert!(live_advice(&s, &t).is_some());
        t.names = false;
        assert_eq!(live_advice(&s, &t), None);
        let a = Suggestion::new("10.0.0.1:443".parse().unwrap()).unwrap();
        assert!(live_advice(&a, &t).is_some());
    }
}
