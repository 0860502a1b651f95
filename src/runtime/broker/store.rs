//! Refreshed OAuth tokens on the home volume, readable only by the broker's uid and root.
//!
//! The directory sits in the sandboxed user's home, so that user can rename or remove it
//! (an empty one), or leave something else at its name for the next start; it can never
//! read into it. Hence:
//! - PID 1 (root) prepares it with descriptor-relative calls only (`openat` with
//!   O_NOFOLLOW, `mkdirat`, `renameat`, `fchown` on the open directory): a symlink, a file or
//!   a directory of the wrong owner at that name is moved aside, never followed or reused.
//! - The broker gets the open directory as a descriptor and never looks it up by path; the
//!   directory's owner and mode and the file's owner, mode, type and link count are checked
//!   at every open. Writes are a new file (O_EXCL, 0600) renamed over the old one.
//! - The file records which input login it descends from (a SHA-256 of that login's refresh
//!   token), so a new login given at the next start replaces it, while a restart with the
//!   same, since rotated, login uses the refreshed pair.

use super::account::Account;
use super::secret::Secret;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, FileStat, Mode};
use nix::unistd::{fchown, fsync, Gid, Uid};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// The directory's name in the home.
pub const DIR_NAME: &str = ".sandbox-init-broker";
const FILE: &str = "oauth.json";
/// The login kept before the current one, when a login of another lineage replaced it.
const PREVIOUS: &str = "oauth.previous.json";
const MAX_FILE: u64 = 64 * 1024;

/// What is kept of a refreshed login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// Hex SHA-256 of the refresh token of the login this pair was refreshed from.
    pub source: String,
    pub access: Secret,
    pub refresh: Secret,
    pub expires_at_ms: Option<u64>,
    pub scopes: Vec<String>,
    /// The login's plan fields and OAuth client (no secrets): what a start that has only
    /// this file needs to write the CLI's placeholder and to refresh. Absent in files of
    /// earlier versions.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub subscription_type: serde_json::Value,
    #[serde(default)]
    pub rate_limit_tier: serde_json::Value,
}

impl Saved {
    /// A login as it is given, to be kept as it is (it descends from itself).
    pub fn of(real: &super::wire::OAuth) -> Option<Saved> {
        let refresh = real.refresh.clone()?;
        Some(Saved {
            source: real
                .lineage
                .clone()
                .unwrap_or_else(|| fingerprint(&refresh)),
            access: real.access.clone(),
            refresh,
            expires_at_ms: real.expires_at_ms,
            scopes: real.scopes.clone(),
            client_id: real.client_id.clone(),
            subscription_type: real.subscription_type.clone(),
            rate_limit_tier: real.rate_limit_tier.clone(),
        })
    }

    /// The login this file holds, as the broker takes one.
    pub fn login(&self) -> super::wire::OAuth {
        super::wire::OAuth {
            access: self.access.clone(),
            refresh: Some(self.refresh.clone()),
            expires_at_ms: self.expires_at_ms,
            scopes: self.scopes.clone(),
            client_id: self.client_id.clone(),
            subscription_type: self.subscription_type.clone(),
            rate_limit_tier: self.rate_limit_tier.clone(),
            lineage: Some(self.source.clone()),
        }
    }
}

/// Hex SHA-256 of a refresh token, naming the login it belongs to.
pub fn fingerprint(refresh: &Secret) -> String {
    let mut ctx = graviola::hashing::sha2::Sha256Context::new();
    ctx.update(refresh.expose().as_bytes());
    ctx.finish().iter().map(|b| format!("{b:02x}")).collect()
}

fn private(st: &FileStat, uid: u32) -> bool {
    st.st_uid == uid && st.st_mode & 0o077 == 0
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// An open directory of the broker's uid: the broker's own, or root's on its behalf.
pub struct Store {
    dir: OwnedFd,
    /// The broker's uid, which owns the directory and every file in it.
    uid: u32,
    /// Set when root writes here: the group a new file is handed to along with `uid`.
    chown_gid: Option<u32>,
}

impl Store {
    /// The broker's side: takes the directory descriptor, refusing one that is not a
    /// private directory of this process's uid.
    pub fn open(dir: OwnedFd) -> Result<Store, String> {
        let uid = nix::unistd::geteuid().as_raw();
        let store = Store {
            dir,
            uid,
            chown_gid: None,
        };
        store.check_dir()?;
        Ok(store)
    }

    /// PID 1's side (root): the broker's directory, whose files root reads and writes as
    /// the broker's, handing each new one to the broker's account.
    fn for_account(dir: OwnedFd, account: Account) -> Result<Store, String> {
        let store = Store {
            dir,
            uid: account.uid,
            chown_gid: Some(account.gid),
        };
        store.check_dir()?;
        Ok(store)
    }

    fn check_dir(&self) -> Result<(), String> {
        let st = fstat(&self.dir).map_err(|e| format!("token directory: {e}"))?;
        if !is_dir(&st) || !private(&st, self.uid) {
            return Err(format!(
                "the token directory is not a private directory of uid {} (owner {}, mode \
                 {:o}); not used",
                self.uid,
                st.st_uid,
                st.st_mode & 0o7777
            ));
        }
        Ok(())
    }

    /// The saved login, if there is a valid one.
    pub fn load(&self) -> Result<Option<Saved>, String> {
        self.check_dir()?;
        let fd = match openat(
            &self.dir,
            FILE,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(format!("cannot open the saved token: {e}")),
        };
        let st = fstat(&fd).map_err(|e| format!("saved token: {e}"))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || !private(&st, self.uid)
            || st.st_nlink != 1
            || st.st_size as u64 > MAX_FILE
        {
            return Err("the saved token file is not a private regular file; ignored".into());
        }
        let mut text = zeroize::Zeroizing::new(Vec::new());
        std::fs::File::from(fd)
            .take(MAX_FILE)
            .read_to_end(&mut text)
            .map_err(|e| format!("cannot read the saved token: {e}"))?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| format!("the saved token is not valid (line {}); ignored", e.line()))
    }

    /// Replaces the saved login atomically.
    pub fn save(&self, saved: &Saved) -> Result<(), String> {
        self.check_dir()?;
        let text = zeroize::Zeroizing::new(
            serde_json::to_vec(saved).map_err(|e| format!("cannot encode the token: {e}"))?,
        );
        let tmp = format!("{FILE}.tmp-{}", std::process::id());
        let create = || {
            openat(
                &self.dir,
                tmp.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
        };
        let fd = match create() {
            // Left by a broker that died mid-write: the directory is ours alone.
            Err(Errno::EEXIST) => {
                let _ = nix::unistd::unlinkat(
                    &self.dir,
                    tmp.as_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                create()
            }
            other => other,
        }
        .map_err(|e| format!("cannot create the token file: {e}"))?;
        if let Some(gid) = self.chown_gid {
            fchown(
                fd.as_fd(),
                Some(Uid::from_raw(self.uid)),
                Some(Gid::from_raw(gid)),
            )
            .map_err(|e| format!("cannot hand the token file to the broker: {e}"))?;
        }
        let mut file = std::fs::File::from(fd);
        file.write_all(&text)
            .and_then(|_| file.sync_all())
            .map_err(|e| format!("cannot write the token file: {e}"))?;
        renameat(&self.dir, tmp.as_str(), &self.dir, FILE)
            .map_err(|e| format!("cannot replace the token file: {e}"))?;
        fsync(&self.dir).map_err(|e| format!("cannot sync the token directory: {e}"))?;
        Ok(())
    }
}

/// PID 1's side, as root before the broker starts: the directory `home/DIR_NAME`, owned by
/// the broker's account, mode 0700, returned open. Whatever else is at that name is moved
/// aside (`DIR_NAME.invalid-<time>-<pid>`) and a new directory made.
pub fn prepare(home: &Path, account: Account) -> Result<OwnedFd, String> {
    let home_fd = nix::fcntl::open(
        home,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the home {}: {e}", home.display()))?;
    let mut created = false;
    for _ in 0..4 {
        let opened = openat(
            &home_fd,
            DIR_NAME,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        match opened {
            Ok(fd) => {
                let st = fstat(&fd).map_err(|e| format!("{DIR_NAME}: {e}"))?;
                if private(&st, account.uid) && st.st_gid == account.gid {
                    return Ok(fd);
                }
                if created && st.st_uid == 0 {
                    fchown(
                        fd.as_fd(),
                        Some(Uid::from_raw(account.uid)),
                        Some(Gid::from_raw(account.gid)),
                    )
                    .and_then(|_| fchmod(fd.as_fd(), Mode::from_bits_truncate(0o700)))
                    .map_err(|e| format!("cannot hand {DIR_NAME} to the broker: {e}"))?;
                    return Ok(fd);
                }
                move_aside(&home_fd, home)?;
            }
            Err(Errno::ENOENT) => {
                match mkdirat(&home_fd, DIR_NAME, Mode::from_bits_truncate(0o700)) {
                    Ok(()) => created = true,
                    Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(format!("cannot create {}/{DIR_NAME}: {e}", home.display()))
                    }
                }
            }
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => move_aside(&home_fd, home)?,
            Err(e) => return Err(format!("cannot open {}/{DIR_NAME}: {e}", home.display())),
        }
    }
    Err(format!(
        "{}/{DIR_NAME} keeps changing while it is prepared; not used",
        home.display()
    ))
}

/// PID 1 (root), before the broker starts: the login saved in `home/DIR_NAME`, if the
/// directory is the broker's own and holds a valid one. Nothing is created or moved.
pub fn load_as_root(home: &Path, account: Account) -> Result<Option<Saved>, String> {
    let home_fd = nix::fcntl::open(
        home,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the home {}: {e}", home.display()))?;
    let dir = match openat(
        &home_fd,
        DIR_NAME,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(format!("cannot open {}/{DIR_NAME}: {e}", home.display())),
    };
    Store::for_account(dir, account)?.load()
}

/// PID 1 (root), before the broker starts: keeps `saved` in the broker's directory
/// (prepared as for the broker), so that the next start finds it even if this one ends
/// before the broker ever refreshes it.
/// A saved login of another lineage is not destroyed: it stays beside the new one as
/// `PREVIOUS` (one generation; root can put it back).
pub fn hand_over(home: &Path, account: Account, saved: &Saved) -> Result<(), String> {
    let store = Store::for_account(prepare(home, account)?, account)?;
    if let Ok(Some(old)) = store.load() {
        if old.source != saved.source {
            renameat(&store.dir, FILE, &store.dir, PREVIOUS)
                .map_err(|e| format!("cannot keep the login saved before: {e}"))?;
            log::info!(
                "credential broker: the login it kept before is now {}/{DIR_NAME}/{PREVIOUS} \
                 (root can put it back)",
                home.display()
            );
        }
    }
    store.save(saved)
}

fn move_aside(home_fd: &OwnedFd, home: &Path) -> Result<(), String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = format!("{DIR_NAME}.invalid-{secs}-{}", std::process::id());
    log::warn!(
        "{}/{DIR_NAME} is not the broker's private directory; moved aside as {aside}",
        home.display()
    );
    match renameat(home_fd, DIR_NAME, home_fd, aside.as_str()) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!(
            "cannot move {}/{DIR_NAME} aside: {e}",
            home.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("broker-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn me() -> Account {
        Account {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    fn saved(tag: &str) -> Saved {
        Saved {
            source: fingerprint(&Secret::new("R0")),
            access: Secret::new(format!("A-{tag}")),
            refresh: Secret::new(format!("R-{tag}")),
            expires_at_ms: Some(42),
            scopes: vec!["user:inference".into()],
            client_id: None,
            subscription_type: serde_json::Value::Null,
            rate_limit_tier: serde_json::Value::Null,
        }
    }

    #[test]
    fn round_trip_private_and_atomic() {
        let home = tmp("rt");
        let store = Store::open(prepare(&home, me()).unwrap()).unwrap();
        assert!(store.load().unwrap().is_none());
        store.save(&saved("1")).unwrap();
        store.save(&saved("2")).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.access.expose(), "A-2");
        let dir = home.join(DIR_NAME);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let file = dir.join(FILE);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        // The same directory is found again at the next start.
        let again = Store::open(prepare(&home, me()).unwrap()).unwrap();
        assert_eq!(again.load().unwrap().unwrap().refresh.expose(), "R-2");
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn what_an_agent_leaves_at_the_name_is_moved_aside_never_followed() {
        let home = tmp("plant");
        let target = home.join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        // Control: following the link would land in a directory the agent controls.
        symlink(&target, home.join(DIR_NAME)).unwrap();
        let fd = prepare(&home, me()).unwrap();
        Store::open(fd).unwrap().save(&saved("x")).unwrap();
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "link followed"
        );
        assert!(std::fs::symlink_metadata(home.join(DIR_NAME))
            .unwrap()
            .is_dir());
        let aside = std::fs::read_dir(&home)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".sandbox-init-broker.invalid-")
            })
            .count();
        assert_eq!(aside, 1);

        // A file at the name, and a directory open to others.
        let home2 = tmp("plant2");
        std::fs::write(home2.join(DIR_NAME), "x").unwrap();
        assert!(prepare(&home2, me()).is_ok());
        let home3 = tmp("plant3");
        std::fs::create_dir(home3.join(DIR_NAME)).unwrap();
        std::fs::set_permissions(home3.join(DIR_NAME), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let fd = prepare(&home3, me()).unwrap();
        assert_eq!(fstat(&fd).unwrap().st_mode & 0o777, 0o700);
        for h in [home, home2, home3] {
            std::fs::remove_dir_all(h).unwrap();
        }
    }

    #[test]
    fn a_file_that_is_not_private_is_not_trusted() {
        let home = tmp("file");
        let store = Store::open(prepare(&home, me()).unwrap()).unwrap();
        let file = home.join(DIR_NAME).join(FILE);
        store.save(&saved("1")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(store.load().is_err());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::hard_link(&file, home.join("link")).unwrap();
        assert!(
            store.load().is_err(),
            "a second link could be read elsewhere"
        );
        std::fs::remove_file(home.join("link")).unwrap();
        std::fs::remove_file(&file).unwrap();
        symlink("/etc/hostname", &file).unwrap();
        assert!(store.load().is_err());
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn a_login_handed_over_keeps_its_lineage_and_sets_another_aside() {
        let home = tmp("handover");
        let first = saved("1");
        hand_over(&home, me(), &first).unwrap();
        // A refreshed pair of the same lineage replaces it in place.
        let mut refreshed = saved("2");
        refreshed.source = first.source.clone();
        hand_over(&home, me(), &refreshed).unwrap();
        let dir = home.join(DIR_NAME);
        assert!(!dir.join(PREVIOUS).exists());
        let back = load_as_root(&home, me()).unwrap().unwrap();
        assert_eq!(back.access.expose(), "A-2");
        // Taken again as the broker takes it, the pair still names its first login.
        let login = back.login();
        assert_eq!(login.lineage.as_deref(), Some(first.source.as_str()));
        assert_eq!(Saved::of(&login).unwrap().source, first.source);
        // Another login: the one kept before is set aside, not destroyed.
        let other = Saved {
            source: fingerprint(&Secret::new("R-other")),
            ..saved("3")
        };
        hand_over(&home, me(), &other).unwrap();
        assert_eq!(
            load_as_root(&home, me()).unwrap().unwrap().access.expose(),
            "A-3"
        );
        let previous = std::fs::read_to_string(dir.join(PREVIOUS)).unwrap();
        assert!(previous.contains("A-2"), "{previous}");
        // Nothing at the name: nothing to load, and nothing created by looking.
        let empty = tmp("handover-empty");
        assert!(load_as_root(&empty, me()).unwrap().is_none());
        assert!(!empty.join(DIR_NAME).exists());
        for h in [home, empty] {
            std::fs::remove_dir_all(h).unwrap();
        }
    }

    #[test]
    fn a_file_of_an_earlier_version_still_loads() {
        let home = tmp("compat");
        let store = Store::open(prepare(&home, me()).unwrap()).unwrap();
        let old = serde_json::json!({"source": "ab", "access": "A", "refresh": "R",
            "expires_at_ms": 5, "scopes": ["user:inference"]});
        let file = home.join(DIR_NAME).join(FILE);
        std::fs::write(&file, old.to_string()).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.refresh.expose(), "R");
        assert_eq!(back.subscription_type, serde_json::Value::Null);
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn fingerprints_name_the_login() {
        let a = fingerprint(&Secret::new("R0"));
        assert_eq!(a.len(), 64);
        assert_eq!(a, fingerprint(&Secret::new("R0")));
        assert_ne!(a, fingerprint(&Secret::new("R1")));
    }
}
