//! The one place where the stages' typed errors become the exit classes of the interface
//! contract: 64 usage, 78 configuration or credential input, 70 the sandbox could not be
//! built (or sandbox-init failed). The command's own 126/127 come from the spawn.

pub use crate::policy::exit::*;

use crate::policy::{config, identity};
use crate::runtime::report::audit;
use crate::stages::{credentials, firewall, lockdown};
use crate::sys::fs;

/// Why sandbox-init stopped before (or instead of) running the command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Identity(#[from] identity::Error),
    #[error(transparent)]
    Firewall(#[from] firewall::Error),
    #[error(transparent)]
    Credentials(#[from] credentials::Error),
    #[error(transparent)]
    Lockdown(#[from] lockdown::Error),
    #[error(transparent)]
    AuditLog(#[from] audit::Error),
    /// What the pipeline reads before any stage: the current directory, the user database,
    /// who may write the config file.
    #[error("{0}")]
    Preflight(String),
    /// The home could not be re-owned for the host's ids.
    #[error(transparent)]
    Home(fs::Error),
    /// A duty of PID 1 (the DNS filter, signal handling) or the command could not start.
    #[error("{0}")]
    Start(String),
    /// The credential broker could not be started: the command does not run with a
    /// placeholder that nothing would replace.
    #[error("{0}")]
    Broker(String),
    /// Building a sandbox here is refused: one already runs in this container (its PID 1
    /// is sandbox-init), or this is the host's own PID namespace.
    #[error("{0}")]
    Refused(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A link or a file of the wrong kind or owner where the user's input was expected: theirs
/// to fix. Anything else the kernel refused means the sandbox could not be built.
fn fs_class(e: &fs::Error) -> i32 {
    match e {
        fs::Error::Refused(_) => CONFIG,
        fs::Error::Os(_) => SANDBOX,
    }
}

/// The exit code for `e`.
pub fn code(e: &Error) -> i32 {
    match e {
        Error::Config(config::Error::Usage(_)) => USAGE,
        Error::Config(config::Error::Invalid(_) | config::Error::Read { .. }) => CONFIG,
        Error::Identity(identity::Error::Unusable(_)) => CONFIG,
        Error::Identity(identity::Error::Internal(_)) => SOFTWARE,
        Error::Firewall(firewall::Error::Preset(_)) => CONFIG,
        Error::Firewall(
            firewall::Error::Strict(_)
            | firewall::Error::Build(_)
            | firewall::Error::Kernel(_)
            | firewall::Error::ReadBack(_),
        ) => SANDBOX,
        Error::Credentials(credentials::Error::Input(_)) => CONFIG,
        Error::Credentials(credentials::Error::Failed(_) | credentials::Error::Os(_)) => SANDBOX,
        Error::Credentials(credentials::Error::Fs(e)) => fs_class(e),
        Error::Lockdown(lockdown::Error::Os(_)) => SANDBOX,
        Error::Lockdown(lockdown::Error::Fs(e)) => fs_class(e),
        Error::AuditLog(audit::Error::Unusable(_)) => CONFIG,
        Error::Preflight(_) => CONFIG,
        // Whatever stopped it, the home is the user's to fix (or the ids to change).
        Error::Home(fs::Error::Refused(_) | fs::Error::Os(_)) => CONFIG,
        Error::Start(_) | Error::Broker(_) => SANDBOX,
        Error::Refused(_) => USAGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cli::Options;
    use std::collections::HashMap;

    #[test]
    fn flags_are_usage_the_file_and_environment_config() {
        let o = Options {
            allow: vec!["not an entry!".into()],
            ..Options::default()
        };
        let e = config::build(&o, &[], &HashMap::new(), None).unwrap_err();
        assert_eq!(code(&e.into()), USAGE);
        let env = HashMap::from([("SANDBOX_ALLOW".to_string(), "not an entry!".to_string())]);
        let e = config::build(&Options::default(), &[], &env, None).unwrap_err();
        assert_eq!(code(&e.into()), CONFIG);
    }

    #[test]
    fn an_unusable_user_is_config_and_a_bug_is_internal() {
        let root_only = "root:x:0:0::/root:/bin/sh\n";
        let e = identity::resolve(None, None, None, root_only, "", &[]).unwrap_err();
        assert_eq!(code(&e.into()), CONFIG);
        let bug = identity::Error::Internal("two decisions disagree");
        assert!(bug.to_string().starts_with("internal error: "), "{bug}");
        assert!(bug.to_string().contains("please report"), "{bug}");
        assert_eq!(code(&bug.into()), SOFTWARE);
    }

    #[test]
    fn refused_paths_are_input_and_kernel_failures_are_the_sandbox() {
        let refused = fs::Error::Refused("is a symlink".into());
        assert_eq!(code(&credentials::Error::Fs(refused).into()), CONFIG);
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        let os = fs::Error::Os(crate::sys::Failure::new("cannot write /x".into(), eio));
        assert!(os.to_string().starts_with("cannot write /x: "), "{os}");
        assert_eq!(code(&lockdown::Error::Fs(os).into()), SANDBOX);
        let preset = firewall::Error::Preset("unknown preset 'x'".into());
        assert_eq!(code(&preset.into()), CONFIG);
        let kernel = firewall::Error::Kernel("refused".into());
        assert_eq!(code(&kernel.into()), SANDBOX);
    }
}
