//! The pipeline: preflight, firewall, credentials, lockdown, spawn, supervise — in that order,
//! and nothing after a failed stage. Either the command runs in the full sandbox, or it
//! does not run and the exit code says why.

use super::broker;
use super::check;
use super::context::Context;
use super::exit::{self, Error, Result};
use crate::policy::cli::{Cli, ModeKind};
use crate::policy::config::{self, Settings};
use crate::policy::environment;
use crate::policy::identity::{self, Identity};
use crate::runtime::{report, spawn, supervise};
use crate::stages::{credentials, firewall, home, lockdown, privileges};
use crate::sys;
use clap::Parser;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

pub fn main() -> i32 {
    match run() {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            // The logger may not be up yet (config errors): say it directly as well.
            if !log::log_enabled!(log::Level::Error) {
                eprintln!("sandbox-init: error: {e}");
            }
            exit::code(&e)
        }
    }
}

fn snapshot_env() -> HashMap<String, String> {
    let mut env = HashMap::new();
    for (k, v) in std::env::vars_os() {
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => {
                env.insert(k, v);
            }
            (Ok(k), Err(_)) => eprintln!("sandbox-init: warning: {k} is not UTF-8; dropped"),
            _ => eprintln!("sandbox-init: warning: a variable name is not UTF-8; dropped"),
        }
    }
    env
}

fn init_logging(filter: &str) {
    env_logger::Builder::new()
        // rustables logs every netlink attribute it writes at debug level (hundreds of
        // lines under -v); quiet unless asked for by name (`SANDBOX_LOG=rustables=debug`).
        .filter_module("rustables", log::LevelFilter::Warn)
        .parse_filters(filter)
        .format(|buf, record| {
            let level = report::level_prefix(record.level());
            let text = format!("sandbox-init: {level}{}", record.args());
            // Held while the command draws on the terminal; errors end the session anyway.
            if record.level() > log::Level::Error && report::terminal::keep(&text) {
                return Ok(());
            }
            writeln!(buf, "{text}")
        })
        .target(env_logger::Target::Stderr)
        .init();
}

fn run() -> Result<i32> {
    let env = snapshot_env();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return Ok(match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => exit::USAGE,
            });
        }
    };
    let (options, mode, command) = cli.into_parts();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(option) = crate::policy::cli::mistyped_option(&argv, &command) {
        eprintln!(
            "sandbox-init: unknown option '{option}' (see --help; a command that starts with \
             '-' goes right after --)"
        );
        return Ok(exit::USAGE);
    }
    if mode == Some(ModeKind::Hook) {
        // Runs as the sandboxed user inside the session: no configuration, no changes.
        return Ok(crate::app::hook::post_tool_use());
    }
    if let Some(code) = crate::runtime::control::client::for_mode(mode, &command) {
        return Ok(code);
    }
    if matches!(mode, None | Some(ModeKind::Apply)) {
        if let Some(why) = crate::runtime::control::refuse_rebuild(options.allow_host_pid_namespace)
        {
            return Err(Error::Refused(why));
        }
    }
    let settings = config::load(&options, &command, &env)?;
    if mode == Some(ModeKind::Config) {
        for (key, value, source) in settings.describe() {
            println!("{key:<28} {value}  <- {source}");
        }
        return Ok(0);
    }
    init_logging(&settings.log.value);
    let mut settings = settings;
    if mode == Some(ModeKind::Apply) && settings.broker.value {
        // The broker is a process PID 1 keeps for the session; a one-shot `apply` leaves
        // no one to hold the secret. Asked for, that is an error; on by default, `apply`
        // writes the real credentials as without it.
        if settings.broker.is_chosen() {
            return Err(Error::Refused(format!(
                "apply: the credential broker ({}) needs sandbox-init to stay PID 1 and hold \
                 the real credential for the session; a one-shot apply leaves no one to. Use \
                 the entrypoint, or apply with --no-broker",
                settings.broker.source
            )));
        }
        log::info!(
            "apply: the credential broker (on by default) needs sandbox-init to stay PID 1; \
             applying without it (the real credentials go into ~/.claude)"
        );
        settings.broker.value = false;
    }
    if matches!(mode, Some(ModeKind::Apply)) && settings.dns.value == config::DnsMode::Filter {
        // The DNS filter is PID 1 answering queries; a one-shot `apply` leaves no one to.
        let level = if !settings.dns.is_chosen() {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        log::log!(
            level,
            "apply: DNS mode 'filter' ({}) needs sandbox-init to stay PID 1; applying 'resolver' \
             (the child may query the resolvers of /etc/resolv.conf directly)",
            settings.dns.source
        );
        settings.dns.value = config::DnsMode::Resolver;
    }

    // PID 1's own copy of every secret goes now: /proc/1/environ is readable by anyone who
    // shares our uid, and the values live on in `env` only.
    let secrets: Vec<String> = env
        .keys()
        .filter(|k| environment::is_scrubbed(k, &settings.scrub.value, &settings.keep.value))
        .cloned()
        .collect();
    environment::wipe_own(&secrets);
    for typo in config::unknown_env_vars(&env) {
        log::warn!("{typo} is not a sandbox-init setting (see --help); ignored");
    }

    let identity = resolve_identity(&settings)?;
    if let Some(path) = &settings.config_file {
        refuse_agent_writable(path, &identity)?;
    }
    let workdir = match &settings.workdir.value {
        Some(w) => w.clone(),
        None => std::env::current_dir()
            .map_err(|e| Error::Preflight(format!("cannot read the current directory: {e}")))?,
    };
    let cx = Context {
        settings,
        identity,
        workdir,
        env,
    };

    match mode {
        // Answered right after loading, before anything is looked up.
        Some(ModeKind::Config) | Some(ModeKind::Hook) => Ok(0),
        Some(ModeKind::Check) => Ok(check::run(&cx)),
        Some(ModeKind::Exec) => Ok(exec_sandboxed(&cx)),
        // Answered by the control socket's client before the configuration is read.
        Some(ModeKind::Allow | ModeKind::Deny { .. } | ModeKind::Status | ModeKind::Blocked) => {
            Ok(exit::USAGE)
        }
        Some(ModeKind::Apply) => {
            // Held to the end: it holds the socket that committed the table.
            let _applied = build_sandbox(&cx, broker::plan(&cx)?, None)?;
            log::info!("sandbox applied; no command run (apply mode)");
            Ok(0)
        }
        None => {
            supervise::become_subreaper();
            crate::stages::workspace_guard::warn_at_start(&cx.workdir, &cx.identity);
            let mut credentials = broker::plan(&cx)?;
            let planned = credentials.broker.take();
            let route = planned.as_ref().map(|p| broker::route(&cx, p));
            // Before the reject rules exist: every packet they reject finds its reader (a
            // `docker exec` can run while PID 1 still starts).
            let nflog = report::listen(cx.settings.firewall.value);
            // PID 1 holds what the firewall was built from, and the socket that committed its
            // table, until it returns its exit code.
            let applied = build_sandbox(&cx, credentials, route.as_ref())?;
            start_and_supervise(&cx, applied.as_ref(), planned, nflog)
        }
    }
}

fn resolve_identity(s: &Settings) -> Result<Identity> {
    let read = |p: &str| {
        std::fs::read_to_string(p).or_else(|e| match e.kind() {
            // A scratch image may have no group file; a numeric user still works.
            std::io::ErrorKind::NotFound => Ok(String::new()),
            _ => Err(Error::Preflight(format!("cannot read {p}: {e}"))),
        })
    };
    Ok(identity::resolve(
        s.user.value.as_ref(),
        s.uid.value,
        s.gid.value,
        &read("/etc/passwd")?,
        &read("/etc/group")?,
        &s.drop_groups.value,
    )?)
}

/// A config file the sandboxed user can change would let the agent widen the next start's
/// allowlist. Refuse it (and a directory above it the user can write).
fn refuse_agent_writable(path: &Path, id: &Identity) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut p = Some(path);
    while let Some(cur) = p {
        if let Ok(m) = std::fs::metadata(cur) {
            let world = m.mode() & 0o002 != 0 && !(m.is_dir() && m.mode() & 0o1000 != 0);
            let group = m.mode() & 0o020 != 0 && id.groups.contains(&m.gid());
            let owner = m.uid() == id.uid || m.uid() == id.image_uid;
            if owner || group || world {
                return Err(Error::Preflight(format!(
                    "config file {} is writable by the sandboxed user ({} is {}); the agent \
                     could widen its own sandbox. Make it root-owned and not group/world-writable",
                    path.display(),
                    cur.display(),
                    if owner {
                        "owned by that user"
                    } else {
                        "writable by that user"
                    }
                )));
            }
        }
        p = cur.parent();
    }
    Ok(())
}

/// Every stage that changes the container, in order. Shared by entrypoint and `apply`.
/// Returns what the firewall was built from (`None` when it is off).
fn build_sandbox(
    cx: &Context,
    credentials: broker::Credentials,
    route: Option<&crate::policy::ruleset::BrokerRoute>,
) -> Result<Option<firewall::Applied>> {
    let started = std::time::Instant::now();
    let applied = firewall::setup(&cx.settings, &cx.env, route)?;
    let firewall_done = started.elapsed();
    if cx.identity.remapped() {
        let change = home::Reown {
            from_uid: cx.identity.image_uid,
            from_gid: cx.identity.image_gid,
            to_uid: cx.identity.uid,
            to_gid: cx.identity.gid,
        };
        let n = home::reown_home(&cx.identity.home, change).map_err(Error::Home)?;
        log::info!(
            "running as {}:{} (host ids); re-owned {n} entries in {}",
            cx.identity.uid,
            cx.identity.gid,
            cx.identity.home.display()
        );
    }
    credentials::install_plan(
        &cx.settings,
        &cx.identity,
        &cx.env,
        &cx.workdir,
        credentials.plan,
        credentials.replace,
    )?;
    let credentials_done = started.elapsed();
    lockdown::apply(&cx.settings, &cx.identity)?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    log::debug!(
        "sandbox built in {:.1} ms: firewall {:.1} ms, home and credentials {:.1} ms, lockdown \
         {:.1} ms",
        ms(started.elapsed()),
        ms(firewall_done),
        ms(credentials_done - firewall_done),
        ms(started.elapsed() - credentials_done),
    );
    Ok(applied)
}

/// Capabilities PID 1 still needs once the command runs.
fn supervisor_caps(cx: &Context) -> Vec<u32> {
    // CAP_KILL: the command runs under another uid, and signals must reach it.
    let mut caps = vec![privileges::CAP_KILL];
    if cx.settings.firewall.value {
        // The DNS filter adds answered addresses to the firewall's sets; the control
        // socket changes the live allowlist.
        caps.push(privileges::CAP_NET_ADMIN);
    }
    caps
}

fn dns_filter_on(cx: &Context) -> bool {
    cx.settings.firewall.value && cx.settings.dns.value == config::DnsMode::Filter
}

/// PID 1's duties beside supervision, set up before the command starts (so that nothing it
/// does races them), served after.
fn duties(
    cx: &Context,
    applied: Option<&firewall::Applied>,
    nflog: report::Listening,
) -> Result<Vec<Box<dyn supervise::Duty>>> {
    let reporter = report::Reporter::shared();
    // Names resolved at start (resolver or strict mode) name the addresses in reports from
    // the first packet on; in filter mode the DNS filter teaches the reporter each answer.
    if let Some(a) = applied {
        let mut r = reporter.borrow_mut();
        for (name, addrs) in &a.resolved {
            for addr in addrs {
                r.learned(*addr, name);
            }
        }
    }
    // The reader of blocked packets always; the DNS filter when it is on. Both feed the
    // same reporter (names learned, names denied).
    let setup = report::Setup {
        audit_log: cx.settings.audit_log.value.as_deref(),
        user_uids: [cx.identity.uid, cx.identity.image_uid],
        user_groups: &cx.identity.groups,
        blocked_gateways: applied.map(|a| a.plan.blocked_gateways.as_slice()),
        nflog,
    };
    let mut duties: Vec<Box<dyn supervise::Duty>> = vec![report::start(&reporter, setup)?];
    let mut policy = None;
    if let Some(a) = applied.filter(|_| dns_filter_on(cx)) {
        let filter = crate::runtime::dns::filter(
            a.names_policy(),
            &a.plan.upstreams,
            &a.resolved,
            reporter.clone(),
        )
        .map_err(Error::Start)?;
        policy = Some(filter.policy());
        duties.push(Box::new(filter));
    }
    if let Some(a) = applied {
        if let Some(server) =
            crate::runtime::control::serve(&cx.settings, a, policy, reporter.clone())
        {
            duties.push(Box::new(server));
        }
    }
    Ok(duties)
}

/// The command as the entrypoint's child runs it: the target user, the image's
/// environment without secrets, the working directory.
fn child_command(cx: &Context) -> spawn::Command {
    let env = environment::child_env(
        &cx.env,
        &cx.identity,
        &cx.settings.child_env.value,
        &cx.settings.scrub.value,
        &cx.settings.keep.value,
    );
    spawn::Command {
        argv: cx.settings.command.value.clone(),
        env,
        workdir: cx.workdir.clone(),
        identity: cx.identity.clone(),
    }
}

/// `sandbox-init exec`: this process becomes the command, dropped exactly as the
/// entrypoint's child is. Returns only when that failed.
fn exec_sandboxed(cx: &Context) -> i32 {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        eprintln!(
            "sandbox-init exec: you are uid {uid}, not root: it cannot switch to the sandboxed              user ({}) nor drop what it does not hold, so it does nothing; the command can run              directly with this session's privileges. For a sandboxed shell run, as root:              docker exec -it CONTAINER sandbox-init exec bash",
            cx.identity.name
        );
        return exit::USAGE;
    }
    let mut cmd = child_command(cx);
    // With the broker running, the session's CLI goes through it as the entrypoint's
    // child does; the container's own value is the broker's upstream, not for the agent.
    if let Some(url) = broker::published() {
        cmd.env.insert(broker::BASE_URL.into(), url);
    }
    let failure = spawn::exec_in_place(&cmd);
    eprintln!("sandbox-init: {}", failure.message);
    failure.code
}

fn start_and_supervise(
    cx: &Context,
    applied: Option<&firewall::Applied>,
    broker: Option<broker::Planned>,
    nflog: report::Listening,
) -> Result<i32> {
    let started = std::time::Instant::now();
    // Before the command and before PID 1 drops its privileges: the broker's uid change
    // needs them.
    let broker = broker.map(|b| broker::start(cx, b)).transpose()?;
    let duties = duties(cx, applied, nflog)?;
    log::debug!(
        "reports and DNS filter ready in {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let mut cmd = child_command(cx);
    broker::publish(broker.as_ref());
    if let Some(b) = &broker {
        // The container's own value is the broker's upstream; the command sees only the
        // broker.
        cmd.env.insert(broker::BASE_URL.into(), b.base_url());
        supervise::watch_exit(
            b.pid,
            format!(
                "the credential broker (pid {}) ended: requests to the API now fail; restart \
                 the container (or run it with {})",
                b.pid,
                broker::OFF_HOW
            ),
        );
    }
    let sfd = supervise::block_signals().map_err(Error::Start)?;
    // From here on the command may draw on the terminal PID 1 shares with it.
    report::terminal::hold_if_shared();
    let child = match spawn::spawn(&cmd) {
        Ok(c) => c,
        Err(e) => {
            report::terminal::release();
            return Err(Error::Start(e));
        }
    };
    log::debug!(
        "started {:?} as {} ({}:{}), pid {child}",
        cmd.argv,
        cx.identity.name,
        cx.identity.uid,
        cx.identity.gid
    );
    if let Err(e) = privileges::confine_supervisor(&sys::Real, &supervisor_caps(cx)) {
        // The command already runs with nothing; PID 1 keeping more than it needs is worth
        // a loud warning but not killing a working session.
        log::warn!("{e}");
    }
    let code = supervise::supervise(child, sfd, duties);
    // The reports' last duty prints what was held; anything logged after it goes out here.
    let (kept, _) = report::terminal::release();
    report::print_after_session(&kept, &[]);
    Ok(code)
}
