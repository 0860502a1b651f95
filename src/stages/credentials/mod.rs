//! Credentials and first-run state: the secrets given in the environment become the files
//! Claude Code reads, and the first-run dialogs are answered, so that
//! `claude --dangerously-skip-permissions` starts straight at its prompt.
//!
//! Inputs are validated here, as root, before anything is written (a bad keychain blob is
//! exit 78 and nothing changes). All reading and writing in the home then happens in a
//! child process that runs as the user (`as_user`), with link-proof file operations
//! (`files`); the documents themselves are pure functions (`doc`).

pub mod as_user;
pub mod doc;
pub mod gitconfig;

use crate::policy::config::Settings;
use crate::policy::identity::Identity;
use crate::sys::{fs, Cause, Failure};
use doc::{Existing, KeyOutcome, Plan};
use files::Found;
use fs as files;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Why the credentials were not installed (the command does not start without them).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What was given (the credential variables, the host's git configuration) or what the
    /// home holds cannot be used as it is: the user's to fix.
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Os(#[from] Failure),
    #[error(transparent)]
    Fs(#[from] fs::Error),
}

impl Error {
    fn os(what: String, source: impl Into<Cause>) -> Error {
        Error::Os(Failure::new(what, source))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const CREDENTIALS_FILE: &str = ".credentials.json";
const STATE_FILE: &str = ".claude.json";
const SETTINGS_FILE: &str = "settings.json";
const GITCONFIG_FILE: &str = ".gitconfig";
const SECRET_MODE: u32 = 0o600;

/// Where Claude Code keeps its files for this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub home: PathBuf,
    /// `~/.claude`, or `$CLAUDE_CONFIG_DIR`.
    pub config_dir: PathBuf,
    /// `~/.claude.json`, or `$CLAUDE_CONFIG_DIR/.claude.json`.
    pub state_in_config_dir: bool,
}

impl Layout {
    /// `CLAUDE_CONFIG_DIR` as the command will see it: given at `docker run`, else from
    /// the configured child environment.
    pub fn new(
        home: &Path,
        env: &HashMap<String, String>,
        child_defaults: &BTreeMap<String, String>,
    ) -> Result<Layout> {
        let custom = env
            .get(doc::CONFIG_DIR)
            .or_else(|| child_defaults.get(doc::CONFIG_DIR))
            .filter(|v| !v.is_empty());
        match custom {
            None => Ok(Layout {
                home: home.to_path_buf(),
                config_dir: home.join(".claude"),
                state_in_config_dir: false,
            }),
            Some(dir) => {
                let p = PathBuf::from(dir);
                let clean = p.is_absolute()
                    && p.components()
                        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
                if !clean || p == Path::new("/") {
                    return Err(Error::Input(format!(
                        "{}={dir:?} must be an absolute path without '..' (and not /)",
                        doc::CONFIG_DIR
                    )));
                }
                Ok(Layout {
                    home: home.to_path_buf(),
                    config_dir: p,
                    state_in_config_dir: true,
                })
            }
        }
    }

    pub fn state_file(&self) -> PathBuf {
        if self.state_in_config_dir {
            self.config_dir.join(STATE_FILE)
        } else {
            self.home.join(STATE_FILE)
        }
    }
}

/// The host's git configuration as root read it from its staging path.
struct HostGit {
    shown: PathBuf,
    text: String,
}

/// A login's refresh token, held only to be compared (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(pub zeroize::Zeroizing<String>);

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(..)")
    }
}

/// What the credentials written replace of what the volume holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replace {
    /// Real credentials: a login kept there stays, unless `--force-credentials` (Claude
    /// Code may have refreshed it since).
    Nothing,
    /// The credential broker's placeholders, new at every start: they replace whatever is
    /// there, and a real login kept there must not stay in the user's reach beside them.
    All,
    /// The login kept there (with this refresh token when PID 1 read it), which the
    /// credential broker now holds: its placeholder takes its place. A login that changed
    /// since (Claude Code refreshed it in a `docker exec` session) is kept.
    HandedOver(RefreshToken),
}

/// Everything the as-user writer needs, prepared by root beforehand.
struct Job {
    plan: Plan,
    layout: Layout,
    uid: u32,
    force: bool,
    replace: Replace,
    workdir: String,
    gitconfig: Option<HostGit>,
}

/// Writes the credentials given in `env` and Claude's first-run state into the user's home.
pub fn install(
    settings: &Settings,
    identity: &Identity,
    env: &HashMap<String, String>,
    workdir: &Path,
) -> Result<()> {
    let plan = doc::plan(env).map_err(Error::Input)?;
    install_plan(settings, identity, env, workdir, plan, Replace::Nothing)
}

/// The `.credentials.json` Claude Code keeps on the volume (a login made with `/login`, or
/// a placeholder of an earlier broker session), read as the user and link-proof; `None`
/// when there is no home, no such regular file, or it is too big to be one.
pub fn read_kept(
    settings: &Settings,
    identity: &Identity,
    env: &HashMap<String, String>,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    let layout = Layout::new(&identity.home, env, &settings.child_env.value)?;
    // Most starts have no such file: a look by root (it reads nothing, and a link on the
    // way only makes the reader below run) spares them the fork.
    let shown = layout.config_dir.join(CREDENTIALS_FILE);
    if std::fs::symlink_metadata(&shown).is_err() {
        return Ok(None);
    }
    let bytes = as_user::run_reading(identity, || {
        // Read-only: nothing is created, moved or re-moded here (a start may still be
        // refused after this). The user reads what the user can read; a link on the way
        // leads nowhere else.
        let flags = nix::fcntl::OFlag::O_RDONLY
            | nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_CLOEXEC;
        let config = nix::fcntl::open(&layout.config_dir, flags, nix::sys::stat::Mode::empty())
            .map_err(|e| Error::os(format!("cannot open {}", layout.config_dir.display()), e))?;
        match files::read_existing(config.as_fd(), OsStr::new(CREDENTIALS_FILE), &shown)? {
            Found::File(bytes, _) if bytes.len() as u64 <= files::PARSE_LIMIT => Ok(bytes),
            Found::File(mut bytes, _) => {
                zeroize::Zeroize::zeroize(&mut bytes);
                Ok(Vec::new())
            }
            Found::Absent | Found::Symlink => Ok(Vec::new()),
        }
    })?;
    Ok((!bytes.is_empty()).then_some(bytes))
}

/// Writes what `plan` holds (the real credentials from `doc::plan`, or placeholders in
/// their place) and the first-run state; `replace` says what they replace on the volume.
pub fn install_plan(
    settings: &Settings,
    identity: &Identity,
    env: &HashMap<String, String>,
    workdir: &Path,
    plan: Plan,
    replace: Replace,
) -> Result<()> {
    if let Some(ignored) = plan.ignored {
        log::warn!(
            "both {} and {ignored} are set: using {}, ignoring {ignored}",
            doc::KEYCHAIN,
            doc::KEYCHAIN
        );
    }
    if plan.is_empty() {
        log::debug!(
            "no credential in the environment ({}, {}, {}): Claude Code uses a login already \
             on the volume, or asks for /login",
            doc::OAUTH_TOKEN,
            doc::KEYCHAIN,
            doc::API_KEY
        );
    }
    let layout = Layout::new(&identity.home, env, &settings.child_env.value)?;
    // Before anything else can return: the staged file must be out of the user's reach
    // whether or not a home exists to copy it into.
    let gitconfig = stage_host_gitconfig(&settings.host_gitconfig.value)?;

    if let Err(e) = std::fs::symlink_metadata(&identity.home) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(Error::os(
                format!("cannot look at the home {}", identity.home.display()),
                e,
            ));
        }
        if !plan.is_empty() {
            return Err(Error::Input(format!(
                "the home of {} ({}) does not exist: nowhere to store the credentials",
                identity.name,
                identity.home.display()
            )));
        }
        log::warn!(
            "the home of {} ({}) does not exist: Claude Code's first-run state not seeded",
            identity.name,
            identity.home.display()
        );
        return Ok(());
    }

    let job = Job {
        plan,
        layout,
        uid: identity.uid,
        force: settings.force_credentials.value || replace != Replace::Nothing,
        replace,
        workdir: workdir.to_string_lossy().into_owned(),
        gitconfig,
    };
    as_user::run(identity, || write_as_user(&job))
}

/// Runs in the child, as the user.
fn write_as_user(job: &Job) -> Result<()> {
    let home = files::open_owned_dir(&job.layout.home, job.uid)?;
    let config = open_config_dir(&home, &job.layout, job.uid)?;
    let cfg_path = &job.layout.config_dir;

    if let Some((document, from)) = &job.plan.credentials {
        write_credentials(
            config.as_fd(),
            &cfg_path.join(CREDENTIALS_FILE),
            document,
            from,
            job.force,
            &job.replace,
        )?;
    }

    let state_dir = if job.layout.state_in_config_dir {
        config.as_fd()
    } else {
        home.as_fd()
    };
    let has_key = write_state(state_dir, &job.layout.state_file(), job)?;
    if job.plan.is_empty() && !has_key {
        let name = OsStr::new(CREDENTIALS_FILE);
        let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        if nix::sys::stat::fstatat(config.as_fd(), name, flags).is_err() {
            log::info!("{LOGIN_HOW}");
        }
    }

    let settings_path = cfg_path.join(SETTINGS_FILE);
    update_json(config.as_fd(), &settings_path, |existing| {
        doc::merge_settings(existing)
    })?;

    if let Some(host) = &job.gitconfig {
        // Optional: a problem here is worth a warning, not a refused start.
        if let Err(e) = copy_gitconfig(home.as_fd(), &job.layout.home, host, &job.workdir) {
            log::warn!("host git configuration not copied: {e}");
        }
    }
    Ok(())
}

fn open_config_dir(home: &OwnedFd, l: &Layout, uid: u32) -> Result<OwnedFd> {
    if !l.state_in_config_dir {
        return Ok(files::ensure_dir(
            home.as_fd(),
            OsStr::new(".claude"),
            uid,
            &l.config_dir,
        )?);
    }
    // Inside the home: every component is checked on the way down (the user shaped them).
    if let Ok(rel) = l.config_dir.strip_prefix(&l.home) {
        let mut dir = home
            .try_clone()
            .map_err(|e| Error::os("cannot duplicate a descriptor".into(), e))?;
        let mut shown = l.home.clone();
        for c in rel.components() {
            shown.push(c);
            dir = files::ensure_dir(dir.as_fd(), c.as_os_str(), uid, &shown)?;
        }
        return Ok(dir);
    }
    // Elsewhere: the levels above are the image's; the directory itself must be the user's.
    let (Some(parent), Some(name)) = (l.config_dir.parent(), l.config_dir.file_name()) else {
        return Err(Error::Input(format!(
            "{} is not a usable {}",
            l.config_dir.display(),
            doc::CONFIG_DIR
        )));
    };
    std::fs::create_dir_all(parent).map_err(|e| {
        Error::Input(format!(
            "cannot create {} (for {}) as the user: {e}",
            parent.display(),
            doc::CONFIG_DIR
        ))
    })?;
    let p = nix::fcntl::open(
        parent,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::Input(format!("cannot open {}: {e}", parent.display())))?;
    Ok(files::ensure_dir(p.as_fd(), name, uid, &l.config_dir)?)
}

fn tighten(fd: &OwnedFd, shown: &Path) {
    if let Ok(st) = nix::sys::stat::fstat(fd) {
        if st.st_mode & 0o077 != 0 {
            match nix::sys::stat::fchmod(fd, nix::sys::stat::Mode::from_bits_truncate(SECRET_MODE))
            {
                Ok(()) => log::debug!("{}: mode tightened to 0600", shown.display()),
                Err(e) => log::warn!("cannot make {} mode 0600: {e}", shown.display()),
            }
        }
    }
}

fn write_credentials(
    dir: BorrowedFd<'_>,
    shown: &Path,
    document: &Value,
    from: &str,
    force: bool,
    replace: &Replace,
) -> Result<()> {
    let name = OsStr::new(CREDENTIALS_FILE);
    // Read to tell a broker session's placeholder (worthless, always replaced) from a
    // login worth keeping, and to keep the file's other tokens when only its login changes.
    let found = files::read_or_set_aside(dir, name, shown, Some(files::PARSE_LIMIT))?;
    let merged = match &found {
        Found::File(bytes, _) if *replace != Replace::Nothing || doc::holds_placeholder(bytes) => {
            Some(doc::with_login(bytes, document))
        }
        _ => None,
    };
    let document = merged.as_ref().unwrap_or(document);
    let verb = match found {
        Found::File(bytes, _) if !force && doc::holds_placeholder(&bytes) => {
            "replaced the credential broker's placeholder in"
        }
        Found::File(_, fd) if !force => {
            tighten(&fd, shown);
            log::info!(
                "credentials: kept the existing {} ({from} not written; it may hold a \
                 refreshed login; {FORCE_HOW} replaces it)",
                shown.display()
            );
            return Ok(());
        }
        Found::File(bytes, fd) if matches!(replace, Replace::HandedOver(_)) => {
            let read = doc::refresh_token(&bytes);
            match replace {
                Replace::HandedOver(RefreshToken(t))
                    if read.as_ref().map(|r| r.as_str()) != Some(t.as_str()) =>
                {
                    tighten(&fd, shown);
                    log::warn!(
                        "credentials: {} changed while this start handed its login to the \
                         credential broker (Claude Code refreshed it, or a new /login): kept \
                         as it is; the next start hands the new one over",
                        shown.display()
                    );
                    return Ok(());
                }
                _ => "replaced the login (now the credential broker's) in",
            }
        }
        Found::File(bytes, _)
            if *replace == Replace::All && doc::holds_refreshable_login(&bytes) =>
        {
            // Claude Code may have refreshed it since (rotating the refresh token of the
            // login given now): say so, since a placeholder now stands in its place.
            log::warn!(
                "credentials: the login kept in {} (from a start without the credential \
                 broker, perhaps refreshed by Claude Code since) is replaced by a \
                 placeholder; the broker holds the one given at this start. If that one can \
                 no longer be refreshed, the broker says so: then give a fresh login",
                shown.display()
            );
            "replaced (the broker's)"
        }
        Found::File(..) => "replaced (forced)",
        Found::Symlink => {
            log::warn!(
                "{} was a symlink; replacing it with a regular file (its target is left alone)",
                shown.display()
            );
            "wrote"
        }
        Found::Absent => "wrote",
    };
    files::write_atomic(dir, name, &doc::render(document), SECRET_MODE, shown)?;
    log::info!("credentials: {verb} {} from {from}", shown.display());
    Ok(())
}

/// An existing state file's object (if any) and its open descriptor (to fix its mode).
type Loaded = (Option<Map<String, Value>>, Option<OwnedFd>);

/// Reads an existing JSON state file: `(object, open file)`. A malformed one, or one that
/// is not a regular file or too big to parse, is moved aside (kept, named in a warning);
/// a symlink is reported and will be replaced.
fn load_json(dir: BorrowedFd<'_>, shown: &Path) -> Result<Loaded> {
    let name = shown.file_name().unwrap_or_default();
    match files::read_or_set_aside(dir, name, shown, Some(files::PARSE_LIMIT))? {
        Found::Absent => Ok((None, None)),
        Found::Symlink => {
            log::warn!(
                "{} was a symlink; replacing it with a regular file (its target is left alone)",
                shown.display()
            );
            Ok((None, None))
        }
        Found::File(bytes, fd) => match doc::parse_existing(Some(&bytes)) {
            Existing::Object(m) => Ok((Some(m), Some(fd))),
            Existing::Absent => Ok((None, None)),
            Existing::Malformed(why) => {
                let backup = files::move_aside(dir, name, shown)?;
                log::warn!(
                    "{}: {why}; kept it as {backup} and started a new one",
                    shown.display()
                );
                Ok((None, None))
            }
        },
    }
}

fn update_json(
    dir: BorrowedFd<'_>,
    shown: &Path,
    merge: impl FnOnce(Option<Map<String, Value>>) -> Option<Value>,
) -> Result<()> {
    let (existing, fd) = load_json(dir, shown)?;
    match merge(existing) {
        Some(doc) => {
            let name = shown.file_name().unwrap_or_default();
            files::write_atomic(dir, name, &doc::render(&doc), SECRET_MODE, shown)?;
            log::debug!("first-run state written to {}", shown.display());
        }
        None => {
            if let Some(fd) = fd {
                tighten(&fd, shown);
            }
        }
    }
    Ok(())
}

/// How to replace credentials kept on the volume, with the flag of either tool the user
/// may have started the container with.
const FORCE_HOW: &str = "--force-credentials or SANDBOX_FORCE_CREDENTIALS=1 (run-claude.sh: \
                         --fresh-creds)";

/// What to do when no login was given and none is on the volume.
pub const LOGIN_HOW: &str = "credentials: none given and none on the volume: log in with /login \
     inside Claude Code, or start the container with CLAUDE_CODE_OAUTH_TOKEN (made by `claude \
     setup-token` on your machine) or ANTHROPIC_API_KEY (run-claude.sh: those variables, or \
     --keychain on macOS)";

/// Returns whether the state file now holds an API key.
fn write_state(dir: BorrowedFd<'_>, shown: &Path, job: &Job) -> Result<bool> {
    let mut outcome = KeyOutcome::None;
    let mut had_key = false;
    update_json(dir, shown, |existing| {
        had_key = existing
            .as_ref()
            .is_some_and(|d| d.get("primaryApiKey").is_some_and(|k| k.is_string()));
        let m = doc::merge_state(
            existing,
            &job.workdir,
            job.plan.api_key.as_deref(),
            job.force,
        );
        if !m.replaced.is_empty() {
            log::warn!(
                "{}: {} had an unexpected type and was replaced",
                shown.display(),
                m.replaced.join(", ")
            );
        }
        outcome = m.key;
        m.changed.then_some(m.doc)
    })?;
    let s = shown.display();
    let from = job.plan.api_key_from;
    match outcome {
        KeyOutcome::None => {}
        KeyOutcome::Written => log::info!("credentials: wrote primaryApiKey in {s} from {from}"),
        KeyOutcome::Replaced => {
            log::info!("credentials: replaced primaryApiKey in {s} from {from} (forced)")
        }
        KeyOutcome::Same => log::info!("credentials: primaryApiKey in {s} already matches {from}"),
        KeyOutcome::Kept => log::info!(
            "credentials: kept the existing primaryApiKey in {s} ({from} not written; \
             {FORCE_HOW} replaces it)"
        ),
    }
    Ok(had_key || !matches!(outcome, KeyOutcome::None))
}

/// Size limit for the host's git configuration.
const GITCONFIG_LIMIT: u64 = 1 << 20;

/// Reads the host's git configuration at its staging path (a read-only bind mount the
/// launcher puts at `credentials.host_gitconfig`) as root, and makes sure the sandboxed
/// user can never read it there: the mount cannot be removed, so its directory must be
/// root's alone (0700) before the command starts. The default directory is ours and is
/// tightened; any other must already be root-only, else the start is refused. `None`
/// when nothing is staged, or when what is staged cannot be used (with a warning).
fn stage_host_gitconfig(path: &Path) -> Result<Option<HostGit>> {
    use nix::errno::Errno;
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::{fchmod, fstat, Mode};
    let (Some(dir_path), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let dir = match open(dir_path, dir_flags, Mode::empty()) {
        Ok(d) => d,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(Error::os(format!("cannot open {}", dir_path.display()), e)),
    };
    let file_flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let file = match openat(&dir, name, file_flags, Mode::empty()) {
        Err(Errno::ENOENT) => return Ok(None),
        other => other,
    };
    // Something is staged: its directory is sealed first, whatever it turns out to be.
    let st = fstat(&dir).map_err(|e| Error::os(format!("stat {}", dir_path.display()), e))?;
    let exposed = |why: String| {
        Error::Input(format!(
            "the host git configuration {} would stay readable by the sandboxed user: {why}. \
             Stage it in a directory only root can enter (the default {}; with a read-only \
             root file system mount one there: docker run --tmpfs {}:mode=0700), or mount \
             no .gitconfig",
            path.display(),
            crate::policy::config::DEFAULT_HOST_GITCONFIG,
            default_staging_dir().display()
        ))
    };
    if st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(exposed(format!(
            "{} is owned by uid {}",
            dir_path.display(),
            st.st_uid
        )));
    }
    if st.st_mode & 0o077 != 0 {
        if dir_path != default_staging_dir() {
            return Err(exposed(format!(
                "{} has mode {:o}",
                dir_path.display(),
                st.st_mode & 0o7777
            )));
        }
        fchmod(&dir, Mode::S_IRWXU).map_err(|e| {
            exposed(format!(
                "{} has mode {:o} and cannot be made 0700 ({e})",
                dir_path.display(),
                st.st_mode & 0o7777
            ))
        })?;
    }
    let unusable = |why: &str| {
        log::warn!(
            "host git configuration {} not copied: {why}",
            path.display()
        );
        Ok(None)
    };
    let file = match file {
        Ok(f) => f,
        Err(Errno::ELOOP) => return unusable("it is a symlink"),
        Err(e) => return unusable(&format!("cannot open it: {e}")),
    };
    let fst = fstat(&file).map_err(|e| Error::os(format!("stat {}", path.display()), e))?;
    if fst.st_mode & libc::S_IFMT != libc::S_IFREG {
        return unusable("it is not a regular file");
    }
    if fst.st_size as u64 > GITCONFIG_LIMIT {
        return unusable(&format!("it is larger than {} KiB", GITCONFIG_LIMIT >> 10));
    }
    let mut bytes = vec![];
    use std::io::Read;
    if let Err(e) = std::fs::File::from(file)
        .take(GITCONFIG_LIMIT)
        .read_to_end(&mut bytes)
    {
        return unusable(&format!("cannot read it: {e}"));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some(HostGit {
            shown: path.to_path_buf(),
            text,
        })),
        Err(_) => unusable("it is not UTF-8 text"),
    }
}

fn default_staging_dir() -> &'static Path {
    Path::new(crate::policy::config::DEFAULT_HOST_GITCONFIG)
        .parent()
        .unwrap_or(Path::new("/run"))
}

/// Writes the reduced copy (see `gitconfig`) as `~/.gitconfig`, and says in one line what
/// went into it (names only, never a value).
fn copy_gitconfig(
    home: BorrowedFd<'_>,
    home_path: &Path,
    host: &HostGit,
    workdir: &str,
) -> Result<()> {
    let reduced = match gitconfig::reduce(&host.text, workdir) {
        Ok(r) => r,
        Err(e) => {
            log::warn!(
                "host git configuration {}: {e}; nothing of it copied",
                host.shown.display()
            );
            gitconfig::reduce("", workdir).map_err(Error::Input)?
        }
    };
    let shown = home_path.join(GITCONFIG_FILE);
    // Replaced whole: only what is in the way (a directory, a FIFO) needs moving.
    files::read_or_set_aside(home, OsStr::new(GITCONFIG_FILE), &shown, None)?;
    files::write_atomic(
        home,
        OsStr::new(GITCONFIG_FILE),
        reduced.text.as_bytes(),
        SECRET_MODE,
        &shown,
    )?;
    let copied = if reduced.copied.is_empty() {
        "nothing".to_string()
    } else {
        reduced.copied.join(", ")
    };
    let left_out = if reduced.left_out == 0 {
        String::new()
    } else {
        let sections: Vec<&str> = reduced
            .left_out_sections
            .iter()
            .map(String::as_str)
            .collect();
        format!(
            "; left out {} other setting{} (in {})",
            reduced.left_out,
            if reduced.left_out == 1 { "" } else { "s" },
            sections.join(", ")
        )
    };
    log::info!(
        "git configuration: copied {copied} from {} to {}{left_out}; safe.directory = {workdir}",
        host.shown.display(),
        shown.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::test_util::env;

    #[test]
    fn a_handed_over_login_that_changed_since_it_was_read_is_kept() {
        let d = std::env::temp_dir().join(format!("sbx-handover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let dir = nix::fcntl::open(
            &d,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let file = d.join(CREDENTIALS_FILE);
        let login = |refresh: &str| {
            serde_json::json!({"claudeAiOauth": {"accessToken": "sk-ant-oat01-real",
                "refreshToken": refresh}, "mcpOAuth": {"s": "MCP"}})
            .to_string()
        };
        let ph = serde_json::json!({"claudeAiOauth": {
            "accessToken": format!("{}00", doc::OAUTH_PLACEHOLDER_PREFIX), "refreshToken": null}});
        let handed = |t: &str| Replace::HandedOver(RefreshToken(zeroize::Zeroizing::new(t.into())));
        // Claude Code rotated the refresh token after PID 1 read the file: kept.
        std::fs::write(&file, login("R-new")).unwrap();
        write_credentials(dir.as_fd(), &file, &ph, "ph", true, &handed("R-old")).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), login("R-new"));
        // Control: the login read is still there, and the placeholder takes its place
        // (the file's other tokens kept).
        write_credentials(dir.as_fd(), &file, &ph, "ph", true, &handed("R-new")).unwrap();
        let now: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(now["claudeAiOauth"], ph["claudeAiOauth"]);
        assert_eq!(now["mcpOAuth"]["s"], "MCP");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn layout_defaults_to_the_home() {
        let l = Layout::new(Path::new("/home/c"), &env(&[]), &BTreeMap::new()).unwrap();
        assert_eq!(l.config_dir, PathBuf::from("/home/c/.claude"));
        assert_eq!(l.state_file(), PathBuf::from("/home/c/.claude.json"));
    }

    #[test]
    fn claude_config_dir_holds_everything() {
        let l = Layout::new(
            Path::new("/home/c"),
            &env(&[("CLAUDE_CONFIG_DIR", "/data/claude")]),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(l.config_dir, PathBuf::from("/data/claude"));
        assert_eq!(l.state_file(), PathBuf::from("/data/claude/.claude.json"));
        // from the configured child environment when not given at run time
        let mut d = BTreeMap::new();
        d.insert("CLAUDE_CONFIG_DIR".to_string(), "/cfg".to_string());
        let l = Layout::new(Path::new("/home/c"), &env(&[]), &d).unwrap();
        assert_eq!(l.config_dir, PathBuf::from("/cfg"));
        // the run-time value wins; empty means unset
        let l = Layout::new(
            Path::new("/h"),
            &env(&[("CLAUDE_CONFIG_DIR", "")]),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(l.config_dir, PathBuf::from("/h/.claude"));
        for bad in ["rel/dir", "/a/../etc", "/"] {
            let e = Layout::new(
                Path::new("/h"),
                &env(&[("CLAUDE_CONFIG_DIR", bad)]),
                &BTreeMap::new(),
            );
            assert!(matches!(e, Err(Error::Input(_))), "{bad}");
        }
    }
}
