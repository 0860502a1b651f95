//! The target user: who the command runs as. Read straight from the container's
//! /etc/passwd and /etc/group (a static binary has no NSS), and never root.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Why the target user cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user asked for (or the default one) cannot be run as: not in /etc/passwd, root.
    #[error("{0}")]
    Unusable(String),
    /// A bug in sandbox-init: two of its own decisions disagree.
    #[error("internal error: {0}; please report this as a bug of sandbox-init")]
    Internal(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Groups that grant root-equivalent power; the user is never given them for the session.
pub const DEFAULT_DROP_GROUPS: &[&str] = &[
    "sudo", "wheel", "admin", "docker", "lxd", "libvirt", "disk", "kmem", "shadow",
];

/// What the configuration asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSpec {
    Name(String),
    Id { uid: u32, gid: Option<u32> },
}

impl FromStr for UserSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let spec = if s.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            let (u, g) = match s.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (s, None),
            };
            let num = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("'{s}' is not NAME or UID[:GID]"))
            };
            UserSpec::Id {
                uid: num(u)?,
                gid: g.map(num).transpose()?,
            }
        } else {
            let valid = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !valid {
                return Err(format!("'{s}' is not NAME or UID[:GID]"));
            }
            UserSpec::Name(s.to_string())
        };
        match &spec {
            UserSpec::Name(n) if n == "root" => Err(NEVER_ROOT.into()),
            UserSpec::Id { uid: 0, .. } | UserSpec::Id { gid: Some(0), .. } => {
                Err(NEVER_ROOT.into())
            }
            _ => Ok(spec),
        }
    }
}

const NEVER_ROOT: &str = "the command never runs as root (uid or gid 0); name an unprivileged user";

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserSpec::Name(n) => f.write_str(n),
            UserSpec::Id { uid, gid: None } => write!(f, "{uid}"),
            UserSpec::Id { uid, gid: Some(g) } => write!(f, "{uid}:{g}"),
        }
    }
}

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses /etc/passwd; malformed lines are skipped (as libc does).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].into(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].into(),
                shell: f[6].into(),
            })
        })
        .collect()
}

pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].into(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// Everything the later stages need to know about the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    /// The ids the command runs with (after `SANDBOX_UID`/`SANDBOX_GID`).
    pub uid: u32,
    pub gid: u32,
    /// The ids the image gave the user; files owned by them in the home are re-owned when
    /// they differ from `uid`/`gid`.
    pub image_uid: u32,
    pub image_gid: u32,
    /// Supplementary groups: the primary group plus the groups that list the user, minus
    /// the root-equivalent groups of the lockdown list.
    pub groups: Vec<u32>,
    /// Names of groups left out because they grant root-equivalent power.
    pub dropped_groups: Vec<String>,
    pub home: PathBuf,
    pub shell: String,
}

impl Identity {
    pub fn remapped(&self) -> bool {
        self.uid != self.image_uid || self.gid != self.image_gid
    }
}

/// Resolves the target user. `drop_groups` names the groups the user must not keep.
pub fn resolve(
    spec: Option<&UserSpec>,
    uid_override: Option<u32>,
    gid_override: Option<u32>,
    passwd: &str,
    group: &str,
    drop_groups: &[String],
) -> Result<Identity> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group);

    let entry = match spec {
        Some(UserSpec::Name(n)) => Some(users.iter().find(|u| &u.name == n).ok_or_else(|| {
            Error::Unusable(format!(
                "user '{n}' is not in /etc/passwd; create it in the image or set SANDBOX_USER \
                 to an existing user or UID[:GID]"
            ))
        })?),
        Some(UserSpec::Id { uid, .. }) => users.iter().find(|u| u.uid == *uid),
        None => users
            .iter()
            .find(|u| u.name == "claude")
            .or_else(|| users.iter().find(|u| u.uid == 1000))
            .map(Some)
            .ok_or_else(|| {
                Error::Unusable(
                    "no target user: /etc/passwd has neither 'claude' nor uid 1000; set \
                     SANDBOX_USER (a name or UID[:GID])"
                        .into(),
                )
            })?,
    };

    let (name, image_uid, image_gid, home, shell) = match (entry, spec) {
        (Some(e), Some(UserSpec::Id { gid: Some(g), .. })) => {
            (e.name.clone(), e.uid, *g, e.home.clone(), e.shell.clone())
        }
        (Some(e), _) => (
            e.name.clone(),
            e.uid,
            e.gid,
            e.home.clone(),
            e.shell.clone(),
        ),
        // A numeric user the image does not know: allowed, with a neutral home.
        (None, Some(UserSpec::Id { uid, gid })) => (
            uid.to_string(),
            *uid,
            gid.unwrap_or(*uid),
            "/".to_string(),
            "/bin/sh".to_string(),
        ),
        // A name that is not found was an error above; say so rather than panic if the two
        // ever drift apart.
        (None, _) => return Err(Error::Internal("no /etc/passwd entry for the target user")),
    };
    let uid = uid_override.unwrap_or(image_uid);
    let gid = gid_override.unwrap_or(image_gid);
    if uid == 0 || gid == 0 || image_uid == 0 {
        return Err(Error::Unusable(format!(
            "user '{name}' resolves to uid {uid} gid {gid}: {NEVER_ROOT}"
        )));
    }

    let mut ids = vec![gid];
    let mut dropped = vec![];
    for g in &groups {
        let member = g.members.iter().any(|m| m == &name) || g.gid == gid;
        if !member {
            continue;
        }
        if g.gid == 0 || drop_groups.iter().any(|d| d == &g.name) {
            dropped.push(g.name.clone());
            continue;
        }
        if !ids.contains(&g.gid) {
            ids.push(g.gid);
        }
    }
    Ok(Identity {
        name,
        uid,
        gid,
        image_uid,
        image_gid,
        groups: ids,
        dropped_groups: dropped,
        home: PathBuf::from(if home.is_empty() { "/" } else { &home }),
        shell: if shell.is_empty() {
            "/bin/sh".into()
        } else {
            shell
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment\n\
        broken line\n\
        node:x:1000:1000::/home/node:/bin/bash\n\
        claude:x:1001:1001:Claude:/home/claude:/bin/zsh\n\
        nohome:x:1002:1002:::\n";
    const GROUP: &str = "root:x:0:claude\n\
        sudo:x:27:claude,node\n\
        docker:x:998:claude\n\
        dev:x:500:node, claude\n\
        audio:x:29:node\n\
        node:x:1000:\n\
        claude:x:1001:\n";

    fn drops() -> Vec<String> {
        super::DEFAULT_DROP_GROUPS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn default_prefers_claude_then_uid_1000() {
        let id = resolve(None, None, None, PASSWD, GROUP, &drops()).unwrap();
        assert_eq!((id.name.as_str(), id.uid, id.gid), ("claude", 1001, 1001));
        assert_eq!(id.home, PathBuf::from("/home/claude"));
        assert_eq!(id.shell, "/bin/zsh");
        let without_claude = PASSWD.replace("claude:x:1001", "other:x:1001");
        let id = resolve(None, None, None, &without_claude, GROUP, &drops()).unwrap();
        assert_eq!(id.name, "node");
        let none = "root:x:0:0::/root:/bin/sh\n";
        let e = resolve(None, None, None, none, "", &drops()).unwrap_err();
        assert!(matches!(e, Error::Unusable(_)), "{e}");
        assert!(e.to_string().contains("SANDBOX_USER"));
    }

    #[test]
    fn supplementary_groups_are_the_users_own_minus_root_equivalents() {
        let id = resolve(None, None, None, PASSWD, GROUP, &drops()).unwrap();
        assert_eq!(id.groups, vec![1001, 500]);
        assert_eq!(id.dropped_groups, vec!["root", "sudo", "docker"]);
        let node = UserSpec::Name("node".into());
        let id = resolve(Some(&node), None, None, PASSWD, GROUP, &drops()).unwrap();
        assert_eq!(id.groups, vec![1000, 500, 29]);
    }

    #[test]
    fn by_numeric_id_known_and_unknown() {
        let spec: UserSpec = "1000".parse().unwrap();
        let id = resolve(Some(&spec), None, None, PASSWD, GROUP, &drops()).unwrap();
        assert_eq!(id.name, "node");
        let spec: UserSpec = "1000:29".parse().unwrap();
        let id = resolve(Some(&spec), None, None, PASSWD, GROUP, &drops()).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 29));
        let spec: UserSpec = "4242:4343".parse().unwrap();
        let id = resolve(Some(&spec), None, None, PASSWD, GROUP, &drops()).unwrap();
        assert_eq!((id.name.as_str(), id.uid, id.gid), ("4242", 4242, 4343));
        assert_eq!(id.home, PathBuf::from("/"));
        assert_eq!(id.groups, vec![4343]);
    }

    #[test]
    fn host_ids_replace_numbers_but_keep_name_and_home() {
        let id = resolve(None, Some(501), Some(20), PASSWD, GROUP, &drops()).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.image_uid, id.image_gid),
            (501, 20, 1001, 1001)
        );
        assert_eq!(id.home, PathBuf::from("/home/claude"));
        assert!(id.remapped());
        assert_eq!(id.groups[0], 20);
    }

    #[test]
    fn never_root() {
        for s in ["root", "0", "0:0", "1000:0"] {
            assert!(s.parse::<UserSpec>().is_err(), "{s}");
        }
        assert!(resolve(None, Some(0), None, PASSWD, GROUP, &drops()).is_err());
        assert!(resolve(None, None, Some(0), PASSWD, GROUP, &drops()).is_err());
        let alias = "toor:x:0:0::/root:/bin/sh\n";
        let spec = UserSpec::Name("toor".into());
        assert!(resolve(Some(&spec), None, None, alias, "", &drops()).is_err());
    }

    #[test]
    fn unknown_name_is_a_config_error() {
        let spec = UserSpec::Name("ghost".into());
        let e = resolve(Some(&spec), None, None, PASSWD, GROUP, &drops()).unwrap_err();
        assert!(matches!(e, Error::Unusable(_)), "{e}");
        assert!(e.to_string().contains("'ghost'"));
        assert!("bad name".parse::<UserSpec>().is_err());
        assert!("12x".parse::<UserSpec>().is_err());
    }

    #[test]
    fn empty_home_and_shell_get_safe_defaults() {
        let spec = UserSpec::Name("nohome".into());
        let id = resolve(Some(&spec), None, None, PASSWD, GROUP, &drops()).unwrap();
        assert_eq!(id.home, PathBuf::from("/"));
        assert_eq!(id.shell, "/bin/sh");
    }
}
