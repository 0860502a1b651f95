//! Configuration: the TOML file baked into the image < `SANDBOX_*` environment < flags.
//!
//! Every effective value remembers where it came from, so `sandbox-init check` can say why
//! the sandbox looks the way it does. Nothing here reads the workspace: the file path comes
//! from the image, the environment or a flag given at `docker run` (the agent must not be
//! able to choose its own configuration).

use crate::policy::allowlist::Entry;
use crate::policy::cli::Options;
use crate::policy::identity::{UserSpec, DEFAULT_DROP_GROUPS};
use crate::policy::presets;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/sandbox-init/config.toml";
pub const DEFAULT_COMMAND: &[&str] = &["claude", "--dangerously-skip-permissions"];
pub const DEFAULT_PRESETS: &[&str] = &["anthropic"];
pub const DEFAULT_HOST_GITCONFIG: &str = "/run/sandbox-init/host.gitconfig";

/// Variables set for the child unless the environment already has them; the CLI then
/// neither updates itself nor phones home beyond the API.
pub const DEFAULT_CHILD_ENV: &[(&str, &str)] = &[
    ("DISABLE_AUTOUPDATER", "1"),
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
];

/// A setting that cannot be used: given on the command line, or in the file or the
/// environment (a different exit class: `app::exit`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad flag or argument.
    #[error("{0}")]
    Usage(String),
    /// A bad value in the config file or a `SANDBOX_*` variable.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(fl) => write!(f, "flag {fl}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Sourced<T> {
    fn default(value: T) -> Self {
        Sourced {
            value,
            source: Source::Default,
        }
    }
    fn set(&mut self, value: T, source: Source) {
        *self = Sourced { value, source };
    }
    /// Whether a file, the environment or a flag chose this value (not the default).
    /// A default may give way where it cannot be had; a choice is held to.
    pub fn is_chosen(&self) -> bool {
        !matches!(self.source, Source::Default)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    /// The child may query the resolvers of /etc/resolv.conf directly.
    Resolver,
    /// Our forwarder answers allowlisted names only.
    Filter,
}

impl DnsMode {
    fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "resolver" => Ok(DnsMode::Resolver),
            "filter" => Ok(DnsMode::Filter),
            other => Err(format!(
                "'{other}' is not a DNS mode (use filter or resolver)"
            )),
        }
    }
}

impl fmt::Display for DnsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DnsMode::Resolver => "resolver",
            DnsMode::Filter => "filter",
        })
    }
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    pub user: Sourced<Option<UserSpec>>,
    pub uid: Sourced<Option<u32>>,
    pub gid: Sourced<Option<u32>>,
    pub workdir: Sourced<Option<PathBuf>>,
    pub command: Sourced<Vec<String>>,
    pub presets: Sourced<Vec<String>>,
    /// Union of file, environment and flags, in that order.
    pub allow: Vec<Sourced<Entry>>,
    pub firewall: Sourced<bool>,
    pub strict: Sourced<bool>,
    pub allow_gateway: Sourced<bool>,
    pub dns: Sourced<DnsMode>,
    pub force_credentials: Sourced<bool>,
    /// The credential broker: the CLI gets a placeholder, the real secret stays with a
    /// process of its own uid.
    pub broker: Sourced<bool>,
    pub host_gitconfig: Sourced<PathBuf>,
    pub audit_log: Sourced<Option<PathBuf>>,
    pub log: Sourced<String>,
    /// Extra variable names or `PREFIX*`/`*SUFFIX` patterns removed from the child's env.
    pub scrub: Sourced<Vec<String>>,
    /// Names exempted from the default scrub list (credential inputs and SANDBOX_* never are).
    pub keep: Sourced<Vec<String>>,
    /// Variables set for the child unless already present; an empty value unsets a default.
    pub child_env: Sourced<BTreeMap<String, String>>,
    pub strip_suid: Sourced<bool>,
    pub remove_sudo: Sourced<bool>,
    pub drop_groups: Sourced<Vec<String>>,
}

impl Default for Settings {
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Settings {
            config_file: None,
            user: Sourced::default(None),
            uid: Sourced::default(None),
            gid: Sourced::default(None),
            workdir: Sourced::default(None),
            command: Sourced::default(strings(DEFAULT_COMMAND)),
            presets: Sourced::default(strings(DEFAULT_PRESETS)),
            allow: vec![],
            firewall: Sourced::default(true),
            strict: Sourced::default(false),
            allow_gateway: Sourced::default(false),
            // Proven in tiers 2 and 3 (tests/dns.rs, the Docker tier): the default, as the
            // contract prescribes once the DNS-aware mode holds.
            dns: Sourced::default(DnsMode::Filter),
            force_credentials: Sourced::default(false),
            // Off until proven with the real CLI in every credential input end to end.
            broker: Sourced::default(true),
            host_gitconfig: Sourced::default(PathBuf::from(DEFAULT_HOST_GITCONFIG)),
            audit_log: Sourced::default(None),
            log: Sourced::default("info".into()),
            scrub: Sourced::default(vec![]),
            keep: Sourced::default(vec![]),
            child_env: Sourced::default(
                DEFAULT_CHILD_ENV
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            strip_suid: Sourced::default(true),
            remove_sudo: Sourced::default(true),
            drop_groups: Sourced::default(strings(DEFAULT_DROP_GROUPS)),
        }
    }
}

// ---- the file -------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    user: Option<Spanned<String>>,
    uid: Option<Spanned<u32>>,
    gid: Option<Spanned<u32>>,
    workdir: Option<Spanned<PathBuf>>,
    command: Option<Spanned<Vec<String>>>,
    log: Option<Spanned<String>>,
    audit_log: Option<Spanned<PathBuf>>,
    #[serde(default)]
    firewall: FileFirewall,
    #[serde(default)]
    credentials: FileCredentials,
    #[serde(default)]
    environment: FileEnvironment,
    #[serde(default)]
    lockdown: FileLockdown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFirewall {
    enabled: Option<Spanned<bool>>,
    presets: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    strict: Option<Spanned<bool>>,
    allow_gateway: Option<Spanned<bool>>,
    dns: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCredentials {
    force: Option<Spanned<bool>>,
    broker: Option<Spanned<bool>>,
    host_gitconfig: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEnvironment {
    scrub: Option<Spanned<Vec<String>>>,
    keep: Option<Spanned<Vec<String>>>,
    set: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLockdown {
    strip_suid: Option<Spanned<bool>>,
    remove_sudo: Option<Spanned<bool>>,
    drop_groups: Option<Spanned<Vec<String>>>,
}

/// Where a file value sits, for messages and provenance.
struct FileCtx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl FileCtx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }
    fn source<T>(&self, v: &Spanned<T>) -> Source {
        Source::File {
            path: self.path.to_path_buf(),
            line: self.line(v.span().start),
        }
    }
    fn error<T>(&self, v: &Spanned<T>, key: &str, msg: &str) -> Error {
        Error::Invalid(format!(
            "{}:{}: {key}: {msg}",
            self.path.display(),
            self.line(v.span().start)
        ))
    }
}

/// Turns a TOML or serde error into `file:line: key: message`.
fn file_error(path: &Path, text: &str, err: &toml::de::Error) -> Error {
    let Some(span) = err.span() else {
        return Error::Invalid(format!("{}: {}", path.display(), err.message()));
    };
    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    // The key is whatever stands left of `=` on the offending line (or the table header).
    let key = match line.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None => line.trim().to_string(),
    };
    let key = if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    };
    Error::Invalid(format!(
        "{}:{line_no}: {key}{}",
        path.display(),
        err.message()
    ))
}

fn apply_file(s: &mut Settings, path: &Path, text: &str) -> Result<()> {
    let file: FileConfig = toml::from_str(text).map_err(|e| file_error(path, text, &e))?;
    let cx = FileCtx { path, text };
    s.config_file = Some(path.to_path_buf());

    if let Some(v) = &file.user {
        let spec = v
            .get_ref()
            .parse::<UserSpec>()
            .map_err(|e| cx.error(v, "user", &e))?;
        s.user.set(Some(spec), cx.source(v));
    }
    if let Some(v) = &file.uid {
        s.uid.set(Some(*v.get_ref()), cx.source(v));
    }
    if let Some(v) = &file.gid {
        s.gid.set(Some(*v.get_ref()), cx.source(v));
    }
    if let Some(v) = &file.workdir {
        s.workdir.set(Some(v.get_ref().clone()), cx.source(v));
    }
    if let Some(v) = &file.command {
        if v.get_ref().is_empty() {
            return Err(cx.error(v, "command", "must name at least the program"));
        }
        s.command.set(v.get_ref().clone(), cx.source(v));
    }
    if let Some(v) = &file.log {
        s.log.set(v.get_ref().clone(), cx.source(v));
    }
    if let Some(v) = &file.audit_log {
        s.audit_log.set(Some(v.get_ref().clone()), cx.source(v));
    }

    let fw = &file.firewall;
    if let Some(v) = &fw.enabled {
        s.firewall.set(*v.get_ref(), cx.source(v));
    }
    if let Some(v) = &fw.presets {
        let mut names = vec![];
        for p in v.get_ref() {
            check_preset(p.get_ref()).map_err(|e| cx.error(p, "firewall.presets", &e))?;
            names.push(p.get_ref().clone());
        }
        s.presets.set(names, cx.source(v));
    }
    for a in &fw.allow {
        let entry = a
            .get_ref()
            .parse::<Entry>()
            .map_err(|e| cx.error(a, "firewall.allow", &e))?;
        s.allow.push(Sourced {
            value: entry,
            source: cx.source(a),
        });
    }
    if let Some(v) = &fw.strict {
        s.strict.set(*v.get_ref(), cx.source(v));
    }
    if let Some(v) = &fw.allow_gateway {
        s.allow_gateway.set(*v.get_ref(), cx.source(v));
    }
    if let Some(v) = &fw.dns {
        let mode = DnsMode::parse(v.get_ref()).map_err(|e| cx.error(v, "firewall.dns", &e))?;
        s.dns.set(mode, cx.source(v));
    }

    if let Some(v) = &file.credentials.force {
        s.force_credentials.set(*v.get_ref(), cx.source(v));
    }
    if let Some(v) = &file.credentials.broker {
        s.broker.set(*v.get_ref(), cx.source(v));
    }
    if let Some(v) = &file.credentials.host_gitconfig {
        s.host_gitconfig.set(v.get_ref().clone(), cx.source(v));
    }

    let env = &file.environment;
    if let Some(v) = &env.scrub {
        for pat in v.get_ref() {
            check_pattern(pat).map_err(|e| cx.error(v, "environment.scrub", &e))?;
        }
        s.scrub.set(v.get_ref().clone(), cx.source(v));
    }
    if let Some(v) = &env.keep {
        for pat in v.get_ref() {
            check_pattern(pat).map_err(|e| cx.error(v, "environment.keep", &e))?;
        }
        s.keep.set(v.get_ref().clone(), cx.source(v));
    }
    if let Some(v) = &env.set {
        let mut merged = s.child_env.value.clone();
        for (k, val) in v.get_ref() {
            check_pattern(k)
                .and_then(|_| {
                    if k.contains('*') {
                        Err("a variable name, not a pattern".into())
                    } else {
                        Ok(())
                    }
                })
                .map_err(|e| cx.error(v, "environment.set", &e))?;
            merged.insert(k.clone(), val.clone());
        }
        s.child_env.set(merged, cx.source(v));
    }

    let lock = &file.lockdown;
    if let Some(v) = &lock.strip_suid {
        s.strip_suid.set(*v.get_ref(), cx.source(v));
    }
    if let Some(v) = &lock.remove_sudo {
        s.remove_sudo.set(*v.get_ref(), cx.source(v));
    }
    if let Some(v) = &lock.drop_groups {
        s.drop_groups.set(v.get_ref().clone(), cx.source(v));
    }
    Ok(())
}

fn check_preset(name: &str) -> std::result::Result<(), String> {
    if presets::lookup(name).is_some() {
        Ok(())
    } else {
        Err(format!(
            "unknown preset '{name}' (known: {})",
            presets::names().join(", ")
        ))
    }
}

/// A variable name, optionally with one `*` at the start or the end.
fn check_pattern(p: &str) -> std::result::Result<(), String> {
    let core = p.trim_start_matches('*').trim_end_matches('*');
    let stars = p.matches('*').count();
    let ok = !core.is_empty()
        && stars <= 1
        && core.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{p}' is not a variable name or a NAME* / *NAME pattern"
        ))
    }
}

// ---- the environment ------------------------------------------------------------------

/// Every variable this level understands; anything else starting with `SANDBOX_` is
/// reported as a probable typo.
pub const ENV_VARS: &[&str] = &[
    "SANDBOX_CONFIG",
    "SANDBOX_USER",
    "SANDBOX_UID",
    "SANDBOX_GID",
    "SANDBOX_WORKDIR",
    "SANDBOX_PRESETS",
    "SANDBOX_ALLOW",
    "SANDBOX_FIREWALL",
    "SANDBOX_STRICT",
    "SANDBOX_ALLOW_GATEWAY",
    "SANDBOX_FORCE_CREDENTIALS",
    "SANDBOX_BROKER",
    "SANDBOX_DNS",
    "SANDBOX_AUDIT_LOG",
    "SANDBOX_LOG",
];

fn env_bool(name: &'static str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(Error::Invalid(format!(
            "{name}='{v}' is not a boolean (use 1 or 0)"
        ))),
    }
}

fn env_id(name: &'static str, v: &str) -> Result<u32> {
    v.trim()
        .parse()
        .map_err(|_| Error::Invalid(format!("{name}='{v}' is not a numeric id")))
}

/// Splits `a, b c` into entries: comma or whitespace separated.
pub fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
}

fn apply_env(s: &mut Settings, env: &HashMap<String, String>) -> Result<()> {
    let get = |k: &str| env.get(k).map(String::as_str);
    if let Some(v) = get("SANDBOX_USER") {
        let spec = v
            .parse::<UserSpec>()
            .map_err(|e| Error::Invalid(format!("SANDBOX_USER: {e}")))?;
        s.user.set(Some(spec), Source::Env("SANDBOX_USER"));
    }
    if let Some(v) = get("SANDBOX_UID") {
        s.uid
            .set(Some(env_id("SANDBOX_UID", v)?), Source::Env("SANDBOX_UID"));
    }
    if let Some(v) = get("SANDBOX_GID") {
        s.gid
            .set(Some(env_id("SANDBOX_GID", v)?), Source::Env("SANDBOX_GID"));
    }
    if let Some(v) = get("SANDBOX_WORKDIR") {
        s.workdir
            .set(Some(PathBuf::from(v)), Source::Env("SANDBOX_WORKDIR"));
    }
    if let Some(v) = get("SANDBOX_PRESETS") {
        let names: Vec<String> = split_list(v).map(str::to_string).collect();
        for n in &names {
            check_preset(n).map_err(|e| Error::Invalid(format!("SANDBOX_PRESETS: {e}")))?;
        }
        s.presets.set(names, Source::Env("SANDBOX_PRESETS"));
    }
    if let Some(v) = get("SANDBOX_ALLOW") {
        for raw in split_list(v) {
            let entry = raw
                .parse::<Entry>()
                .map_err(|e| Error::Invalid(format!("SANDBOX_ALLOW: {e}")))?;
            s.allow.push(Sourced {
                value: entry,
                source: Source::Env("SANDBOX_ALLOW"),
            });
        }
    }
    if let Some(v) = get("SANDBOX_FIREWALL") {
        let on = env_bool("SANDBOX_FIREWALL", v)?;
        s.firewall.set(on, Source::Env("SANDBOX_FIREWALL"));
    }
    for (var, field) in [
        ("SANDBOX_STRICT", &mut s.strict),
        ("SANDBOX_ALLOW_GATEWAY", &mut s.allow_gateway),
        ("SANDBOX_FORCE_CREDENTIALS", &mut s.force_credentials),
        ("SANDBOX_BROKER", &mut s.broker),
    ] {
        if let Some(v) = get(var) {
            field.set(env_bool(var, v)?, Source::Env(var));
        }
    }
    if let Some(v) = get("SANDBOX_DNS") {
        let mode = DnsMode::parse(v).map_err(|e| Error::Invalid(format!("SANDBOX_DNS: {e}")))?;
        s.dns.set(mode, Source::Env("SANDBOX_DNS"));
    }
    if let Some(v) = get("SANDBOX_AUDIT_LOG") {
        let path = (!v.is_empty()).then(|| PathBuf::from(v));
        s.audit_log.set(path, Source::Env("SANDBOX_AUDIT_LOG"));
    }
    if let Some(v) = get("SANDBOX_LOG") {
        s.log.set(v.to_string(), Source::Env("SANDBOX_LOG"));
    } else if let Some(v) = get("RUST_LOG") {
        s.log.set(v.to_string(), Source::Env("RUST_LOG"));
    }
    Ok(())
}

// ---- the flags ------------------------------------------------------------------------

fn apply_flags(s: &mut Settings, o: &Options, command: &[String]) -> Result<()> {
    if let Some(u) = &o.user {
        let spec = u
            .parse::<UserSpec>()
            .map_err(|e| Error::Usage(format!("--user: {e}")))?;
        s.user.set(Some(spec), Source::Flag("--user"));
    }
    if let Some(v) = o.uid {
        s.uid.set(Some(v), Source::Flag("--uid"));
    }
    if let Some(v) = o.gid {
        s.gid.set(Some(v), Source::Flag("--gid"));
    }
    if let Some(v) = &o.workdir {
        s.workdir.set(Some(v.clone()), Source::Flag("--workdir"));
    }
    if !command.is_empty() {
        s.command.set(command.to_vec(), Source::Flag("COMMAND"));
    }
    if !o.presets.is_empty() {
        for n in &o.presets {
            check_preset(n).map_err(|e| Error::Usage(format!("--preset: {e}")))?;
        }
        s.presets.set(o.presets.clone(), Source::Flag("--preset"));
    }
    for raw in &o.allow {
        let entry = raw
            .parse::<Entry>()
            .map_err(|e| Error::Usage(format!("--allow: {e}")))?;
        s.allow.push(Sourced {
            value: entry,
            source: Source::Flag("--allow"),
        });
    }
    if o.no_firewall {
        s.firewall.set(false, Source::Flag("--no-firewall"));
    }
    if o.strict {
        s.strict.set(true, Source::Flag("--strict"));
    }
    if o.allow_gateway {
        s.allow_gateway.set(true, Source::Flag("--allow-gateway"));
    }
    if o.force_credentials {
        s.force_credentials
            .set(true, Source::Flag("--force-credentials"));
    }
    if o.broker {
        s.broker.set(true, Source::Flag("--broker"));
    }
    if o.no_broker {
        s.broker.set(false, Source::Flag("--no-broker"));
    }
    if let Some(d) = &o.dns {
        let mode = DnsMode::parse(d).map_err(Error::Usage)?;
        s.dns.set(mode, Source::Flag("--dns"));
    }
    if let Some(p) = &o.audit_log {
        s.audit_log
            .set(Some(p.clone()), Source::Flag("--audit-log"));
    }
    let level = match (o.verbose, o.quiet) {
        (0, 0) => None,
        (1, _) => Some("debug"),
        (v, _) if v >= 2 => Some("trace"),
        (_, 1) => Some("warn"),
        _ => Some("error"),
    };
    if let Some(l) = level {
        let flag = if o.verbose > 0 { "-v" } else { "-q" };
        s.log.set(l.into(), Source::Flag(flag));
    }
    Ok(())
}

// ---- loading --------------------------------------------------------------------------

/// Which file to read: `--config` > `SANDBOX_CONFIG` > the default path. Only a missing
/// *default* file is fine; a file the user named must exist.
fn config_path(o: &Options, env: &HashMap<String, String>) -> (PathBuf, bool) {
    if let Some(p) = &o.config {
        return (p.clone(), true);
    }
    if let Some(p) = env.get("SANDBOX_CONFIG").filter(|p| !p.is_empty()) {
        return (PathBuf::from(p), true);
    }
    (PathBuf::from(DEFAULT_CONFIG_PATH), false)
}

/// Builds the effective settings from the three levels.
pub fn load(o: &Options, command: &[String], env: &HashMap<String, String>) -> Result<Settings> {
    let (path, named) = config_path(o, env);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => None,
        Err(source) => return Err(Error::Read { path, source }),
    };
    build(
        o,
        command,
        env,
        text.as_deref().map(|t| (path.as_path(), t)),
    )
}

/// The pure part of `load`, for tests.
pub fn build(
    o: &Options,
    command: &[String],
    env: &HashMap<String, String>,
    file: Option<(&Path, &str)>,
) -> Result<Settings> {
    let mut s = Settings::default();
    if let Some((path, text)) = file {
        apply_file(&mut s, path, text)?;
    }
    apply_env(&mut s, env)?;
    apply_flags(&mut s, o, command)?;
    Ok(s)
}

/// `SANDBOX_*` variables that no setting reads: almost always a typo worth a warning.
pub fn unknown_env_vars(env: &HashMap<String, String>) -> Vec<&str> {
    let mut v: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("SANDBOX_") && !ENV_VARS.contains(k))
        .collect();
    v.sort_unstable();
    v
}

impl Settings {
    /// `(key, value, source)` rows for `sandbox-init check`.
    pub fn describe(&self) -> Vec<(String, String, String)> {
        let mut rows = vec![];
        let mut row = |k: &str, v: String, s: &Source| rows.push((k.to_string(), v, s.to_string()));
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let file = self
            .config_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("(none; {DEFAULT_CONFIG_PATH} absent)"));
        row("config", file, &Source::Default);
        row(
            "user",
            opt(&self.user.value.as_ref().map(|u| u.to_string())),
            &self.user.source,
        );
        row(
            "uid",
            opt(&self.uid.value.map(|v| v.to_string())),
            &self.uid.source,
        );
        row(
            "gid",
            opt(&self.gid.value.map(|v| v.to_string())),
            &self.gid.source,
        );
        row(
            "workdir",
            opt(&self.workdir.value.as_ref().map(|p| p.display().to_string())),
            &self.workdir.source,
        );
        row(
            "command",
            format!("{:?}", self.command.value),
            &self.command.source,
        );
        row(
            "firewall.enabled",
            self.firewall.value.to_string(),
            &self.firewall.source,
        );
        row(
            "firewall.presets",
            format!("{:?}", self.presets.value),
            &self.presets.source,
        );
        for a in &self.allow {
            row("firewall.allow", a.value.to_string(), &a.source);
        }
        row(
            "firewall.strict",
            self.strict.value.to_string(),
            &self.strict.source,
        );
        row(
            "firewall.allow_gateway",
            self.allow_gateway.value.to_string(),
            &self.allow_gateway.source,
        );
        row("firewall.dns", self.dns.value.to_string(), &self.dns.source);
        row(
            "credentials.force",
            self.force_credentials.value.to_string(),
            &self.force_credentials.source,
        );
        row(
            "credentials.broker",
            self.broker.value.to_string(),
            &self.broker.source,
        );
        row(
            "credentials.host_gitconfig",
            self.host_gitconfig.value.display().to_string(),
            &self.host_gitconfig.source,
        );
        row(
            "audit_log",
            opt(&self
                .audit_log
                .value
                .as_ref()
                .map(|p| p.display().to_string())),
            &self.audit_log.source,
        );
        row("log", self.log.value.clone(), &self.log.source);
        row(
            "environment.scrub",
            format!("{:?}", self.scrub.value),
            &self.scrub.source,
        );
        row(
            "environment.keep",
            format!("{:?}", self.keep.value),
            &self.keep.source,
        );
        row(
            "environment.set",
            format!("{:?}", self.child_env.value),
            &self.child_env.source,
        );
        row(
            "lockdown.strip_suid",
            self.strip_suid.value.to_string(),
            &self.strip_suid.source,
        );
        row(
            "lockdown.remove_sudo",
            self.remove_sudo.value.to_string(),
            &self.remove_sudo.source,
        );
        row(
            "lockdown.drop_groups",
            format!("{:?}", self.drop_groups.value),
            &self.drop_groups.source,
        );
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::test_util::env;

    fn file(text: &str) -> Option<(&'static Path, &str)> {
        Some((Path::new("/etc/sandbox-init/config.toml"), text))
    }

    /// The error's kind ("usage" for the command line, "config" for the file and the
    /// environment) and its message.
    fn err(r: Result<Settings>) -> (&'static str, String) {
        let e = r.expect_err("expected an error");
        let kind = match e {
            Error::Usage(_) => "usage",
            Error::Invalid(_) | Error::Read { .. } => "config",
        };
        (kind, e.to_string())
    }

    #[test]
    fn defaults_without_any_level() {
        let s = build(&Options::default(), &[], &env(&[]), None).unwrap();
        assert_eq!(s.command.value, DEFAULT_COMMAND);
        assert_eq!(s.presets.value, DEFAULT_PRESETS);
        assert!(s.firewall.value);
        assert_eq!(s.dns.value, DnsMode::Filter);
        assert_eq!(s.user.value, None);
        assert_eq!(s.log.value, "info");
        assert_eq!(s.child_env.value.get("DISABLE_AUTOUPDATER").unwrap(), "1");
    }

    #[test]
    fn file_then_env_then_flags() {
        let text = "user = \"alice\"\n[firewall]\nstrict = false\nallow = [\"a.test\"]\npresets = [\"npm\"]\n";
        let e = env(&[
            ("SANDBOX_USER", "bob"),
            ("SANDBOX_STRICT", "1"),
            ("SANDBOX_ALLOW", "b.test, c.test d.test:443"),
            ("SANDBOX_PRESETS", "pypi,github"),
        ]);
        let flags = Options {
            user: Some("1001:1001".into()),
            allow: vec!["10.0.0.0/8".into()],
            ..Default::default()
        };
        let s = build(&flags, &["bash".into()], &e, file(text)).unwrap();
        assert_eq!(s.user.value.unwrap().to_string(), "1001:1001");
        assert_eq!(s.user.source, Source::Flag("--user"));
        assert!(s.strict.value);
        assert_eq!(s.strict.source, Source::Env("SANDBOX_STRICT"));
        // allow is a union of all three levels, in level order
        let allow: Vec<String> = s.allow.iter().map(|a| a.value.to_string()).collect();
        assert_eq!(
            allow,
            ["a.test", "b.test", "c.test", "d.test:443", "10.0.0.0/8"]
        );
        assert_eq!(
            s.allow[0].source,
            Source::File {
                path: "/etc/sandbox-init/config.toml".into(),
                line: 4
            }
        );
        // presets: replaced by the highest level that sets them
        assert_eq!(s.presets.value, ["pypi", "github"]);
        assert_eq!(s.command.value, ["bash"]);
    }

    #[test]
    fn empty_presets_env_means_none_and_flags_replace() {
        let s = build(
            &Options::default(),
            &[],
            &env(&[("SANDBOX_PRESETS", "")]),
            None,
        )
        .unwrap();
        assert!(s.presets.value.is_empty());
        let flags = Options {
            presets: vec!["npm".into(), "crates".into()],
            ..Default::default()
        };
        let s = build(&flags, &[], &env(&[("SANDBOX_PRESETS", "pypi")]), None).unwrap();
        assert_eq!(s.presets.value, ["npm", "crates"]);
    }

    #[test]
    fn broker_is_on_by_default_and_layers_file_env_flag() {
        let s = build(&Options::default(), &[], &env(&[]), None).unwrap();
        assert!(s.broker.value);
        assert_eq!(s.broker.source, Source::Default);
        let off = build(
            &Options::default(),
            &[],
            &env(&[]),
            file("[credentials]\nbroker = false\n"),
        )
        .unwrap();
        assert!(!off.broker.value);
        let text = "[credentials]\nbroker = true\n";
        let s = build(&Options::default(), &[], &env(&[]), file(text)).unwrap();
        assert!(s.broker.value);
        assert!(matches!(s.broker.source, Source::File { line: 2, .. }));
        let s = build(
            &Options::default(),
            &[],
            &env(&[("SANDBOX_BROKER", "0")]),
            file(text),
        )
        .unwrap();
        assert!(!s.broker.value);
        assert_eq!(s.broker.source, Source::Env("SANDBOX_BROKER"));
        let on = Options {
            broker: true,
            ..Default::default()
        };
        let s = build(&on, &[], &env(&[("SANDBOX_BROKER", "0")]), None).unwrap();
        assert!(s.broker.value);
        assert_eq!(s.broker.source, Source::Flag("--broker"));
        let off = Options {
            no_broker: true,
            ..Default::default()
        };
        let s = build(&off, &[], &env(&[("SANDBOX_BROKER", "1")]), file(text)).unwrap();
        assert!(!s.broker.value);
        assert_eq!(s.broker.source, Source::Flag("--no-broker"));
        let (kind, msg) = err(build(
            &Options::default(),
            &[],
            &env(&[("SANDBOX_BROKER", "maybe")]),
            None,
        ));
        assert_eq!(kind, "config");
        assert!(msg.contains("SANDBOX_BROKER"), "{msg}");
        let rows = build(&on, &[], &env(&[]), None).unwrap().describe();
        assert!(
            rows.iter().any(|(k, v, src)| k == "credentials.broker"
                && v == "true"
                && src.contains("--broker")),
            "{rows:?}"
        );
    }

    #[test]
    fn firewall_off_is_explicit_at_every_level() {
        let s = build(
            &Options::default(),
            &[],
            &env(&[]),
            file("[firewall]\nenabled = false\n"),
        )
        .unwrap();
        assert!(!s.firewall.value);
        let s = build(
            &Options::default(),
            &[],
            &env(&[("SANDBOX_FIREWALL", "off")]),
            None,
        )
        .unwrap();
        assert!(!s.firewall.value);
        let o = Options {
            no_firewall: true,
            ..Default::default()
        };
        let s = build(&o, &[], &env(&[]), None).unwrap();
        assert_eq!(s.firewall.source, Source::Flag("--no-firewall"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let (code, msg) = err(build(
            &Options::default(),
            &[],
            &env(&[]),
            file("user = \"a\"\n\n[firewall]\nalow = [\"x\"]\n"),
        ));
        assert_eq!(code, "config");
        assert!(
            msg.starts_with("/etc/sandbox-init/config.toml:4: alow"),
            "{msg}"
        );
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn bad_value_names_file_line_and_key() {
        let (code, msg) = err(build(
            &Options::default(),
            &[],
            &env(&[]),
            file("\nuid = \"x\"\n"),
        ));
        assert_eq!(code, "config");
        assert!(
            msg.starts_with("/etc/sandbox-init/config.toml:2: uid"),
            "{msg}"
        );

        let (code, msg) = err(build(
            &Options::default(),
            &[],
            &env(&[]),
            file("[firewall]\nallow = [\n  \"ok.test\",\n  \"bad host\",\n]\n"),
        ));
        assert_eq!(code, "config");
        assert!(
            msg.starts_with("/etc/sandbox-init/config.toml:4: firewall.allow:"),
            "{msg}"
        );
        assert!(msg.contains("'bad host'"), "{msg}");

        let (_, msg) = err(build(
            &Options::default(),
            &[],
            &env(&[]),
            file("[firewall]\npresets = [\"anthropic\", \"nope\"]\n"),
        ));
        assert!(
            msg.contains(":2: firewall.presets: unknown preset 'nope'"),
            "{msg}"
        );
        let (_, msg) = err(build(
            &Options::default(),
            &[],
            &env(&[]),
            file("command = []\n"),
        ));
        assert!(msg.contains(":1: command:"), "{msg}");
        let (_, msg) = err(build(
            &Options::default(),
            &[],
            &env(&[]),
            file("[firewall]\ndns = \"x\"\n"),
        ));
        assert!(msg.contains(":2: firewall.dns:"), "{msg}");
        let (_, msg) = err(build(
            &Options::default(),
            &[],
            &env(&[]),
            file("not toml at all"),
        ));
        assert!(msg.starts_with("/etc/sandbox-init/config.toml:1"), "{msg}");
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        for (k, v) in [
            ("SANDBOX_UID", "abc"),
            ("SANDBOX_STRICT", "maybe"),
            ("SANDBOX_ALLOW", "ok.test bad_entry:99999"),
            ("SANDBOX_PRESETS", "nope"),
            ("SANDBOX_DNS", "x"),
            ("SANDBOX_USER", "root"),
        ] {
            let (code, msg) = err(build(&Options::default(), &[], &env(&[(k, v)]), None));
            assert_eq!(code, "config", "{k}");
            assert!(msg.contains(k), "{msg}");
        }
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        let o = Options {
            allow: vec!["bad name".into()],
            ..Default::default()
        };
        assert_eq!(err(build(&o, &[], &env(&[]), None)).0, "usage");
        let o = Options {
            presets: vec!["nope".into()],
            ..Default::default()
        };
        assert_eq!(err(build(&o, &[], &env(&[]), None)).0, "usage");
    }

    #[test]
    fn environment_section() {
        let s = build(
            &Options::default(),
            &[],
            &env(&[]),
            file("[environment]\nscrub = [\"MY_*\", \"FOO\"]\nkeep = [\"GH_TOKEN\"]\nset = { DISABLE_AUTOUPDATER = \"\", EXTRA = \"1\" }\n"),
        )
        .unwrap();
        assert_eq!(s.scrub.value, ["MY_*", "FOO"]);
        assert_eq!(s.keep.value, ["GH_TOKEN"]);
        assert_eq!(s.child_env.value.get("EXTRA").unwrap(), "1");
        assert_eq!(s.child_env.value.get("DISABLE_AUTOUPDATER").unwrap(), "");
        let (_, msg) = err(build(
            &Options::default(),
            &[],
            &env(&[]),
            file("[environment]\nscrub = [\"A*B*\"]\n"),
        ));
        assert!(msg.contains("environment.scrub"), "{msg}");
    }

    #[test]
    fn typos_in_sandbox_vars_are_found() {
        let e = env(&[
            ("SANDBOX_ALOW", "x"),
            ("SANDBOX_ALLOW", "y.test"),
            ("OTHER", "1"),
        ]);
        assert_eq!(unknown_env_vars(&e), ["SANDBOX_ALOW"]);
    }

    #[test]
    fn missing_named_file_is_an_error_missing_default_is_not() {
        let o = Options {
            config: Some("/nonexistent/x.toml".into()),
            ..Default::default()
        };
        assert_eq!(err(load(&o, &[], &env(&[]))).0, "config");
        let e = env(&[("SANDBOX_CONFIG", "/nonexistent/y.toml")]);
        assert_eq!(err(load(&Options::default(), &[], &e)).0, "config");
    }

    #[test]
    fn describe_names_every_source() {
        let s = build(
            &Options {
                strict: true,
                ..Default::default()
            },
            &[],
            &env(&[("SANDBOX_ALLOW", "a.test")]),
            None,
        )
        .unwrap();
        let rows = s.describe();
        assert!(rows
            .iter()
            .any(|(k, v, src)| k == "firewall.strict" && v == "true" && src == "flag --strict"));
        assert!(rows.iter().any(|(k, v, src)| k == "firewall.allow"
            && v == "a.test"
            && src == "env SANDBOX_ALLOW"));
        assert!(rows
            .iter()
            .any(|(k, _, src)| k == "firewall.presets" && src == "default"));
    }
}
