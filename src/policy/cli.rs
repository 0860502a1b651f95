//! Command-line interface. Flags are the highest configuration level; the merge with the
//! file and the environment happens in `config`.

use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

const EXIT_CODES: &str = "\
Exit codes:
  <child>  the command's own exit code; 128+N when it was killed by signal N
  0        apply/check: done, nothing wrong
  1        check: found a problem (each one printed with its fix)
  64       usage error on the command line
  70       the sandbox could not be built (firewall, privilege drop): the command did not run
  78       configuration or credential input error
  126      the command exists but cannot be executed
  127      the command was not found on the child's PATH

Configuration: /etc/sandbox-init/config.toml < SANDBOX_* environment < flags.
`sandbox-init check` shows every effective value and where it came from.";

#[derive(Debug, Parser)]
#[command(
    name = "sandbox-init",
    version,
    about = "PID 1 for a Claude Code container: default-deny egress, credentials written \
             safely, every privilege dropped, then the command runs as an unprivileged user.",
    long_about = "PID 1 for a Claude Code container.\n\n\
        Without a subcommand, sandbox-init builds the sandbox (firewall, credentials, \
        lockdown), then runs COMMAND (default: `claude --dangerously-skip-permissions`) as \
        the target user with no capabilities and no_new_privs, and stays PID 1 to forward \
        signals, reap zombies and exit with the command's code.\n\n\
        If the sandbox cannot be built, the command never runs.",
    after_help = EXIT_CODES,
    override_usage = "sandbox-init [OPTIONS] [--] [COMMAND [ARGS...]]\n       \
                      sandbox-init apply [OPTIONS]\n       sandbox-init check [OPTIONS]\n       \
                      sandbox-init config [OPTIONS]\n       \
                      sandbox-init allow|deny ENTRY...   (in a running sandbox, as root)\n       \
                      sandbox-init status|blocked\n       \
                      sandbox-init exec [--] COMMAND [ARGS...]\n       \
                      sandbox-init hook post-tool-use   (Claude Code's hook, as the user)",
    subcommand_value_name = "MODE",
    subcommand_help_heading = "Modes"
)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,

    #[command(subcommand)]
    pub mode: Option<Mode>,

    /// Command and arguments to run instead of the configured default
    /// (use `--` before a command named `apply` or `check`)
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Mode {
    /// One-shot: apply the firewall, write credentials and lock down, then exit 0 (for a
    /// devcontainer postStartCommand). Runs no command.
    #[command(after_help = EXIT_CODES)]
    Apply {
        #[command(flatten)]
        options: Options,
    },
    /// Diagnose without changing anything: effective configuration and where each value
    /// came from, capabilities, netfilter support, the firewall plan. Exit 0 when the
    /// sandbox could be built as configured, 1 when a problem was found, 78 for bad config.
    #[command(after_help = EXIT_CODES)]
    Check {
        #[command(flatten)]
        options: Options,
    },
    /// Validate the configuration only (file < environment < flags, e.g. each --allow and
    /// --preset) and print the effective values with their sources: no user lookup, no
    /// DNS, no changes. Exit 0, or 64/78 naming the bad value.
    #[command(after_help = EXIT_CODES)]
    Config {
        #[command(flatten)]
        options: Options,
    },
    /// In a running sandbox (docker exec, as root): allow ENTRY for new connections now,
    /// without a restart. Same grammar as SANDBOX_ALLOW. Exit 0 done, 1 refused, 64 usage.
    Allow {
        #[arg(value_name = "ENTRY", required = true)]
        entries: Vec<String>,
    },
    /// In a running sandbox: remove entries that `allow` added. New connections to them
    /// are refused at once; connections already established continue unless --kill.
    Deny {
        /// Also close the established connections to each address or network denied
        /// (its port and protocol when the entry names them): their connection-tracking
        /// entries are deleted, so their next packet is refused. Entries allowed since the
        /// start are never closed, nor are a name's (its learned addresses leave the
        /// firewall within 10 s of the deny; then deny --kill ADDRESS closes what is still
        /// open).
        #[arg(long)]
        kill: bool,
        #[arg(value_name = "ENTRY", required = true)]
        entries: Vec<String>,
    },
    /// In a running sandbox: what is allowed now, and where each entry came from.
    Status,
    /// In a running sandbox: the recent blocked destinations, their counts, and the
    /// `allow` that would admit each.
    Blocked,
    /// In a running sandbox (docker exec -it, as root): run COMMAND as the sandboxed user
    /// with the entrypoint child's drop (its groups only, no capability, no_new_privs,
    /// secrets scrubbed), e.g. `sandbox-init exec bash` for a sandboxed shell.
    Exec {
        #[arg(
            value_name = "COMMAND",
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        command: Vec<String>,
    },
    /// Claude Code's PostToolUse hook (run as the sandboxed user; the Claude image installs
    /// it for the Bash tool): prints what the sandbox blocked since its last call as
    /// context for the model, nothing when nothing new was blocked. Reads the hook's JSON
    /// on stdin; always exits 0.
    Hook {
        #[arg(value_name = "EVENT", value_parser = ["post-tool-use"])]
        event: String,
    },
}

/// Options shared by every mode. Each one overrides the matching `SANDBOX_*` variable and
/// the config file.
#[derive(Debug, Default, Clone, Args)]
pub struct Options {
    /// Config file [env: SANDBOX_CONFIG] [default: /etc/sandbox-init/config.toml; a
    /// missing default file means built-in defaults]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Target user: a name from /etc/passwd, or UID[:GID] [env: SANDBOX_USER]
    /// [default: `claude`, else the user with uid 1000]. Never root.
    #[arg(long, value_name = "NAME|UID[:GID]")]
    pub user: Option<String>,

    /// Run as this numeric uid instead of the target user's (the host's uid, so files in a
    /// bind-mounted project keep their owner); the home is re-owned [env: SANDBOX_UID]
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,

    /// Run with this numeric primary gid [env: SANDBOX_GID]
    #[arg(long, value_name = "GID")]
    pub gid: Option<u32>,

    /// Working directory of the command [env: SANDBOX_WORKDIR] [default: the current
    /// directory, i.e. the image's WORKDIR]
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,

    /// Allowlist preset; repeat for several; replaces the configured list
    /// [env: SANDBOX_PRESETS, comma list] [default: anthropic]
    #[arg(long = "preset", value_name = "NAME")]
    pub presets: Vec<String>,

    /// Extra allowlist entry, added to the file's and the environment's: host, host:443,
    /// host:53/udp, *.host, 10.0.0.0/8, 2001:db8::/32, [2001:db8::1]:443; repeatable
    /// [env: SANDBOX_ALLOW, comma or space list]
    #[arg(long = "allow", value_name = "ENTRY")]
    pub allow: Vec<String>,

    /// Run WITHOUT the egress firewall (loud warning) [env: SANDBOX_FIREWALL=off]
    #[arg(long)]
    pub no_firewall: bool,

    /// Make an allowlisted name that does not resolve fatal (exit 70) [env: SANDBOX_STRICT=1]
    #[arg(long)]
    pub strict: bool,

    /// Allow the default gateway / IPv6 default router addresses (not their subnets)
    /// [env: SANDBOX_ALLOW_GATEWAY=1]
    #[arg(long)]
    pub allow_gateway: bool,

    /// Overwrite credentials already on the volume [env: SANDBOX_FORCE_CREDENTIALS=1]
    #[arg(long)]
    pub force_credentials: bool,

    /// Require the credential broker (on by default): the CLI gets a placeholder and talks
    /// to the API through a broker process of its own uid, which alone holds the real
    /// credential (given at start, or a login made with /login, taken from ~/.claude at the
    /// next start). On by default it steps aside where it cannot run (warning); required,
    /// such a start fails (exit 70) [env: SANDBOX_BROKER=1]
    #[arg(long, conflicts_with = "no_broker")]
    pub broker: bool,

    /// No credential broker: the real credential goes into ~/.claude, readable by the agent
    /// (a login the broker kept goes back there). Needed by Claude Code features that bypass ANTHROPIC_BASE_URL (claude.ai MCP
    /// connectors, Remote Control) [env: SANDBOX_BROKER=0]
    #[arg(long)]
    pub no_broker: bool,

    /// DNS mode: `filter` (PID 1 answers allowlisted names only; the default) or
    /// `resolver` (the child may query the resolvers of /etc/resolv.conf) [env: SANDBOX_DNS]
    #[arg(long, value_name = "MODE", value_parser = ["filter", "resolver"])]
    pub dns: Option<String>,

    /// Append blocked connections and denied names as JSON lines to PATH
    /// [env: SANDBOX_AUDIT_LOG]
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,

    /// Build the sandbox even in the host's initial PID namespace (a container started
    /// with --pid=host); without it sandbox-init refuses to firewall and strip a host
    #[arg(long)]
    pub allow_host_pid_namespace: bool,

    /// More log output (-v debug, -vv trace) [env: SANDBOX_LOG or RUST_LOG]
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less log output (-q warnings only, -qq errors only)
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub quiet: u8,
}

/// The option a user mistyped before the command, if any: the trailing command accepts
/// arguments that start with `-`, so `sandbox-init --typo -- cmd` would otherwise run
/// `--typo`. A command may start with `-` only right after a `--` of its own.
pub fn mistyped_option<'a>(argv: &[OsString], command: &'a [String]) -> Option<&'a str> {
    let first = command.first().filter(|c| c.starts_with('-'))?;
    let start = argv.len().checked_sub(command.len())?;
    let after_separator = start >= 2 && argv.get(start - 1).is_some_and(|a| a == "--");
    (!after_separator).then_some(first.as_str())
}

impl Cli {
    /// The options given on the command line, wherever they stood (before or after the
    /// subcommand name).
    pub fn into_parts(self) -> (Options, Option<ModeKind>, Vec<String>) {
        match self.mode {
            None => (self.options, None, self.command),
            Some(Mode::Apply { options }) => {
                (merge(self.options, options), Some(ModeKind::Apply), vec![])
            }
            Some(Mode::Check { options }) => {
                (merge(self.options, options), Some(ModeKind::Check), vec![])
            }
            Some(Mode::Config { options }) => {
                (merge(self.options, options), Some(ModeKind::Config), vec![])
            }
            Some(Mode::Allow { entries }) => (self.options, Some(ModeKind::Allow), entries),
            Some(Mode::Deny { kill, entries }) => {
                (self.options, Some(ModeKind::Deny { kill }), entries)
            }
            Some(Mode::Status) => (self.options, Some(ModeKind::Status), vec![]),
            Some(Mode::Blocked) => (self.options, Some(ModeKind::Blocked), vec![]),
            Some(Mode::Exec { command }) => (self.options, Some(ModeKind::Exec), command),
            Some(Mode::Hook { .. }) => (self.options, Some(ModeKind::Hook), vec![]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeKind {
    Apply,
    Check,
    Config,
    /// The live modes: their arguments are the entries (allow, deny) or the command (exec).
    Allow,
    /// `kill`: also close the established connections (`deny --kill`).
    Deny {
        kill: bool,
    },
    Status,
    Blocked,
    Exec,
    /// Claude Code's PostToolUse hook (the only event so far).
    Hook,
}

/// Options before the subcommand name combine with those after it; the later one wins.
fn merge(before: Options, after: Options) -> Options {
    Options {
        config: after.config.or(before.config),
        user: after.user.or(before.user),
        uid: after.uid.or(before.uid),
        gid: after.gid.or(before.gid),
        workdir: after.workdir.or(before.workdir),
        presets: [before.presets, after.presets].concat(),
        allow: [before.allow, after.allow].concat(),
        no_firewall: before.no_firewall || after.no_firewall,
        strict: before.strict || after.strict,
        allow_gateway: before.allow_gateway || after.allow_gateway,
        force_credentials: before.force_credentials || after.force_credentials,
        // The later of the two wins, like every other option.
        broker: after.broker || (before.broker && !after.no_broker),
        no_broker: after.no_broker || (before.no_broker && !after.broker),
        allow_host_pid_namespace: before.allow_host_pid_namespace || after.allow_host_pid_namespace,
        dns: after.dns.or(before.dns),
        audit_log: after.audit_log.or(before.audit_log),
        verbose: before.verbose + after.verbose,
        quiet: before.quiet + after.quiet,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> (Options, Option<ModeKind>, Vec<String>) {
        let mut argv = vec!["sandbox-init"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("parse").into_parts()
    }

    #[test]
    fn broker_flags_conflict_and_the_later_wins_across_the_mode() {
        let mut argv = vec!["sandbox-init", "--broker", "--no-broker"];
        assert!(Cli::try_parse_from(&argv).is_err());
        argv = vec!["sandbox-init", "--broker", "check", "--no-broker"];
        let (o, _, _) = Cli::try_parse_from(&argv).unwrap().into_parts();
        assert!(o.no_broker && !o.broker);
        argv = vec!["sandbox-init", "--no-broker", "check", "--broker"];
        let (o, _, _) = Cli::try_parse_from(&argv).unwrap().into_parts();
        assert!(o.broker && !o.no_broker);
    }

    #[test]
    fn trailing_command_keeps_its_own_flags() {
        let (o, mode, cmd) = parse(&["--allow", "x.test", "bash", "-c", "echo --allow y"]);
        assert_eq!(mode, None);
        assert_eq!(o.allow, vec!["x.test"]);
        assert_eq!(cmd, vec!["bash", "-c", "echo --allow y"]);
    }

    #[test]
    fn double_dash_runs_a_command_named_like_a_subcommand() {
        let (_, mode, cmd) = parse(&["--", "check", "-x"]);
        assert_eq!(mode, None);
        assert_eq!(cmd, vec!["check", "-x"]);
    }

    #[test]
    fn subcommands_take_options_on_either_side() {
        let (o, mode, _) = parse(&["--strict", "check", "--allow", "a.test", "--preset", "npm"]);
        assert_eq!(mode, Some(ModeKind::Check));
        assert!(o.strict);
        assert_eq!(o.allow, vec!["a.test"]);
        assert_eq!(o.presets, vec!["npm"]);
        let (_, mode, _) = parse(&["apply"]);
        assert_eq!(mode, Some(ModeKind::Apply));
        let (o, mode, _) = parse(&["config", "--allow", "a.test"]);
        assert_eq!(mode, Some(ModeKind::Config));
        assert_eq!(o.allow, vec!["a.test"]);
        let (_, mode, _) = parse(&["hook", "post-tool-use"]);
        assert_eq!(mode, Some(ModeKind::Hook));
        assert!(Cli::try_parse_from(["sandbox-init", "hook", "pre-tool-use"]).is_err());
    }

    fn typo(args: &[&str]) -> Option<String> {
        let argv: Vec<OsString> = std::iter::once("sandbox-init")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let (_, _, cmd) = Cli::try_parse_from(&argv).expect("parse").into_parts();
        mistyped_option(&argv, &cmd).map(String::from)
    }

    #[test]
    fn an_unknown_option_before_the_command_is_named() {
        assert_eq!(typo(&["--typo", "--", "cmd"]).as_deref(), Some("--typo"));
        assert_eq!(typo(&["--typo", "cmd"]).as_deref(), Some("--typo"));
        assert_eq!(typo(&["--strict", "-x"]).as_deref(), Some("-x"));
        // A command that starts with `-` is fine right after `--`, and so are its own flags.
        assert_eq!(typo(&["--", "--typo", "cmd"]), None);
        assert_eq!(typo(&["--allow", "a.test", "--", "-x"]), None);
        assert_eq!(typo(&["bash", "--", "-c"]), None);
        assert_eq!(typo(&["bash", "-c", "echo --typo"]), None);
        assert_eq!(typo(&[]), None);
    }

    #[test]
    fn live_modes_take_their_arguments() {
        let (_, mode, args) = parse(&["allow", "a.test:443", "10.0.0.0/8"]);
        assert_eq!(mode, Some(ModeKind::Allow));
        assert_eq!(args, vec!["a.test:443", "10.0.0.0/8"]);
        let (_, mode, args) = parse(&["exec", "--", "bash", "-c", "id"]);
        assert_eq!(mode, Some(ModeKind::Exec));
        assert_eq!(args, vec!["bash", "-c", "id"]);
        let (_, mode, args) = parse(&["exec", "bash", "-l"]);
        assert_eq!(
            (mode, args),
            (Some(ModeKind::Exec), vec!["bash".into(), "-l".into()])
        );
        assert_eq!(parse(&["status"]).1, Some(ModeKind::Status));
        assert_eq!(parse(&["blocked"]).1, Some(ModeKind::Blocked));
        assert!(Cli::try_parse_from(["sandbox-init", "allow"]).is_err());
        assert!(Cli::try_parse_from(["sandbox-init", "exec"]).is_err());
        // a command named like a mode still runs after --
        assert_eq!(parse(&["--", "allow", "x"]).1, None);
    }

    #[test]
    fn bad_usage_is_an_error() {
        assert!(Cli::try_parse_from(["sandbox-init", "--dns", "bogus"]).is_err());
        assert!(Cli::try_parse_from(["sandbox-init", "--uid", "x"]).is_err());
        assert!(Cli::try_parse_from(["sandbox-init", "-v", "-q"]).is_err());
    }
}
