//! The child's environment: everything PID 1 was given, minus secrets and escape hatches,
//! plus the target user's HOME/USER/LOGNAME/SHELL. PID 1 also wipes the secrets from its own
//! initial environment block, which is what /proc/1/environ shows.

use crate::policy::identity::Identity;
use std::collections::{BTreeMap, HashMap};

/// Read once by the credentials stage, then removed from every environment.
pub const CREDENTIAL_INPUTS: &[&str] = &[
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CREDENTIALS",
    "ANTHROPIC_API_KEY",
];

/// Removed unless `environment.keep` names them. Exact names, `PREFIX*` or `*SUFFIX`.
/// Host secrets that leak through `docker run -e` or devcontainer `remoteEnv`, and sockets
/// or helpers that reach back into the host.
pub const DEFAULT_SCRUB: &[&str] = &[
    // Other credentials Claude Code or its SDKs read
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_REFRESH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN_FILE_DESCRIPTOR",
    "CLAUDE_CODE_API_KEY_FILE_DESCRIPTOR",
    // cloud providers
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "ARM_CLIENT_SECRET",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_API_KEY",
    "CLOUDSDK_AUTH_ACCESS_TOKEN",
    "DIGITALOCEAN_ACCESS_TOKEN",
    "HCLOUD_TOKEN",
    // forges, registries, model hubs
    "GH_TOKEN",
    "GITHUB_TOKEN",
    "GH_ENTERPRISE_TOKEN",
    "GITHUB_ENTERPRISE_TOKEN",
    "GITLAB_TOKEN",
    "CI_JOB_TOKEN",
    "NPM_TOKEN",
    "NODE_AUTH_TOKEN",
    "TWINE_PASSWORD",
    "CARGO_REGISTRY_TOKEN",
    "DOCKER_AUTH_CONFIG",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "OPENAI_API_KEY",
    // generic secret-shaped names
    "*_TOKEN",
    "*_SECRET",
    "*_SECRET_KEY",
    "*_PASSWORD",
    "*_API_KEY",
    // escape hatches back into the host
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "GPG_AGENT_INFO",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    "DOCKER_HOST",
    "VSCODE_IPC_HOOK_CLI",
    "VSCODE_GIT_IPC_HANDLE",
    "VSCODE_GIT_ASKPASS_MAIN",
    "VSCODE_GIT_ASKPASS_NODE",
    "VSCODE_GIT_ASKPASS_EXTRA_ARGS",
    "REMOTE_CONTAINERS_IPC",
    "REMOTE_CONTAINERS_SOCKETS",
    "REMOTE_CONTAINERS_DISPLAY_SOCK",
    "WAYLAND_DISPLAY",
    "DISPLAY",
    "XAUTHORITY",
    "DBUS_SESSION_BUS_ADDRESS",
    // linker tricks have no business crossing into the sandbox
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
];

/// Used when the image gives no PATH (a `FROM scratch` image).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn matches(pattern: &str, name: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix('*') {
        name.ends_with(suffix) && name.len() > suffix.len()
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        name.starts_with(prefix)
    } else {
        pattern == name
    }
}

/// Whether `name` is kept out of the child's environment. Credential inputs and
/// `SANDBOX_*` are always removed: `keep` cannot bring them back.
pub fn is_scrubbed(name: &str, extra: &[String], keep: &[String]) -> bool {
    if CREDENTIAL_INPUTS.contains(&name) || name.starts_with("SANDBOX_") {
        return true;
    }
    if extra.iter().any(|p| matches(p, name)) {
        return true;
    }
    if keep.iter().any(|p| matches(p, name)) {
        return false;
    }
    DEFAULT_SCRUB.iter().any(|p| matches(p, name))
}

/// The child's environment, sorted for a stable order.
pub fn child_env(
    parent: &HashMap<String, String>,
    identity: &Identity,
    defaults: &BTreeMap<String, String>,
    extra: &[String],
    keep: &[String],
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = parent
        .iter()
        .filter(|(k, _)| !is_scrubbed(k, extra, keep))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in defaults {
        if v.is_empty() {
            // An empty value in `environment.set` switches a default off.
            continue;
        }
        if !is_scrubbed(k, extra, keep) {
            env.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    env.insert("HOME".into(), identity.home.display().to_string());
    env.insert("USER".into(), identity.name.clone());
    env.insert("LOGNAME".into(), identity.name.clone());
    env.insert("SHELL".into(), identity.shell.clone());
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    env
}

extern "C" {
    /// The C runtime's environment array (POSIX).
    static mut environ: *mut *mut libc::c_char;
}

/// Removes the named variables from this process: from the `environ` array that libc and
/// Rust's `std::env` use, and byte by byte from the initial environment block on the stack
/// that the kernel shows as /proc/<pid>/environ.
///
/// Must run while the process is single-threaded (at the start of `main`).
pub fn wipe_own(names: &[String]) {
    for name in names {
        // SAFETY: single-threaded at this point (documented precondition). `environ` is a
        // NULL-terminated array of NUL-terminated strings owned by the C runtime; we only
        // overwrite the bytes of a string, never its terminator, and the string stays valid
        // (all NULs) whether it lies in the initial stack block or on the heap. No crate
        // reaches the initial block: std::env::remove_var drops the entry and leaves its
        // bytes readable in /proc/<pid>/environ.
        unsafe {
            let mut p = environ;
            while !p.is_null() && !(*p).is_null() {
                let entry = *p;
                let bytes = std::ffi::CStr::from_ptr(entry).to_bytes();
                let hit = bytes.len() > name.len()
                    && bytes.starts_with(name.as_bytes())
                    && bytes[name.len()] == b'=';
                if hit {
                    let len = bytes.len();
                    // Take it out of the array first, so no reader sees a blank entry.
                    let mut q = p;
                    while !(*q).is_null() {
                        *q = *q.add(1);
                        q = q.add(1);
                    }
                    std::ptr::write_bytes(entry, 0, len);
                    continue;
                }
                p = p.add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::test_util::claude as id;

    fn parent() -> HashMap<String, String> {
        [
            ("PATH", "/opt/bin:/usr/bin"),
            ("HOME", "/root"),
            ("USER", "root"),
            ("TERM", "xterm"),
            ("ANTHROPIC_BASE_URL", "http://mock"),
            ("ANTHROPIC_API_KEY", "sk-ant-secret"),
            ("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat"),
            ("CLAUDE_CREDENTIALS", "{}"),
            ("SANDBOX_ALLOW", "x"),
            ("GH_TOKEN", "ghp"),
            ("MY_SERVICE_TOKEN", "t"),
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("SSH_AUTH_SOCK", "/tmp/ssh"),
            ("VSCODE_IPC_HOOK_CLI", "/tmp/vs"),
            ("LD_PRELOAD", "/x.so"),
            ("TOKEN", "bare names are not suffixes"),
            ("DISABLE_AUTOUPDATER", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn defaults() -> BTreeMap<String, String> {
        crate::policy::config::DEFAULT_CHILD_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn secrets_and_sandbox_vars_never_reach_the_child() {
        let env = child_env(&parent(), &id(), &defaults(), &[], &[]);
        for gone in [
            "ANTHROPIC_API_KEY",
            "CLAUDE_CODE_OAUTH_TOKEN",
            "CLAUDE_CREDENTIALS",
            "SANDBOX_ALLOW",
            "GH_TOKEN",
            "MY_SERVICE_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "SSH_AUTH_SOCK",
            "VSCODE_IPC_HOOK_CLI",
            "LD_PRELOAD",
        ] {
            assert!(!env.contains_key(gone), "{gone} leaked");
        }
        assert_eq!(env["ANTHROPIC_BASE_URL"], "http://mock");
        assert_eq!(env["TERM"], "xterm");
        assert_eq!(env["TOKEN"], "bare names are not suffixes");
    }

    #[test]
    fn user_identity_and_image_path() {
        let env = child_env(&parent(), &id(), &defaults(), &[], &[]);
        assert_eq!(env["HOME"], "/home/claude");
        assert_eq!(env["USER"], "claude");
        assert_eq!(env["LOGNAME"], "claude");
        assert_eq!(env["SHELL"], "/bin/bash");
        assert_eq!(env["PATH"], "/opt/bin:/usr/bin");
        let env = child_env(&HashMap::new(), &id(), &defaults(), &[], &[]);
        assert_eq!(env["PATH"], DEFAULT_PATH);
    }

    #[test]
    fn defaults_do_not_override_what_the_user_set() {
        let env = child_env(&parent(), &id(), &defaults(), &[], &[]);
        assert_eq!(env["DISABLE_AUTOUPDATER"], "0");
        assert_eq!(env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"], "1");
        let mut off = defaults();
        off.insert(
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
            String::new(),
        );
        let env = child_env(&HashMap::new(), &id(), &off, &[], &[]);
        assert!(!env.contains_key("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"));
    }

    #[test]
    fn keep_and_extra_lists() {
        let keep = vec!["GH_TOKEN".to_string(), "AWS_*".to_string()];
        let extra = vec!["TERM".to_string(), "MY_*".to_string()];
        let env = child_env(&parent(), &id(), &defaults(), &extra, &keep);
        assert_eq!(env["GH_TOKEN"], "ghp");
        assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "k");
        assert!(!env.contains_key("TERM"));
        assert!(!env.contains_key("MY_SERVICE_TOKEN"));
        // keep cannot bring back credential inputs or SANDBOX_*
        let keep = vec!["ANTHROPIC_API_KEY".to_string(), "SANDBOX_*".to_string()];
        let env = child_env(&parent(), &id(), &defaults(), &[], &keep);
        assert!(!env.contains_key("ANTHROPIC_API_KEY"));
        assert!(!env.contains_key("SANDBOX_ALLOW"));
    }

    #[test]
    fn patterns() {
        assert!(matches("*_TOKEN", "GH_TOKEN"));
        assert!(!matches("*_TOKEN", "_TOKEN"));
        assert!(matches("AWS_*", "AWS_REGION"));
        assert!(!matches("AWS_*", "XAWS_REGION"));
        assert!(matches("FOO", "FOO"));
        assert!(!matches("FOO", "FOOD"));
    }
}
