//! The broker's own uid: neither root nor the sandboxed user, and no user or group of the
//! image. A fixed number from the range Debian reserves and never allocates (65000-65533),
//! checked against /etc/passwd and /etc/group; when the image uses it, the next free one
//! below is taken. A uid given in the configuration is used as is, or refused.

use crate::policy::identity::{parse_group, parse_passwd, Identity};
use std::path::PathBuf;

/// The broker's uid (and gid) unless the image already uses it.
pub const DEFAULT_UID: u32 = 65_432;
/// How far below `DEFAULT_UID` a free id is looked for.
const LOWEST_UID: u32 = 65_000;
/// The name shown for the broker in messages (the image has no such user).
pub const NAME: &str = "sandbox-broker";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

impl Account {
    /// The identity the privilege drop takes: no supplementary groups at all.
    pub fn identity(&self) -> Identity {
        Identity {
            name: NAME.into(),
            uid: self.uid,
            gid: self.gid,
            image_uid: self.uid,
            image_gid: self.gid,
            groups: vec![],
            dropped_groups: vec![],
            home: PathBuf::from("/"),
            shell: String::new(),
        }
    }
}

/// Picks the broker's account. `configured` is the uid the configuration names (used as
/// its gid too); `avoid` holds ids that must never be taken (the sandboxed user's uid and
/// gid after any remapping). `key` names the setting in the refusal message.
pub fn choose(
    configured: Option<u32>,
    passwd: &str,
    group: &str,
    avoid: &[u32],
    key: &str,
) -> Result<Account, String> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let taken = |id: u32| {
        id == 0
            || avoid.contains(&id)
            || users.iter().any(|u| u.uid == id || u.gid == id)
            || groups.iter().any(|g| g.gid == id)
    };
    if let Some(id) = configured {
        if taken(id) {
            return Err(format!(
                "{key} = {id}: that id is root, the sandboxed user, or a user or group of the \
                 image; the broker needs an id nothing else uses (leave {key} unset to pick one)"
            ));
        }
        return Ok(Account { uid: id, gid: id });
    }
    (LOWEST_UID..=DEFAULT_UID)
        .rev()
        .find(|id| !taken(*id))
        .map(|id| Account { uid: id, gid: id })
        .ok_or_else(|| {
            format!(
                "every id from {LOWEST_UID} to {DEFAULT_UID} is used by the image; set {key} \
                 to an id no user or group has"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0::/root:/bin/sh\nclaude:x:1000:1000::/home/claude:/bin/sh\n\
                          nobody:x:65534:65534::/:/bin/false\n";
    const GROUP: &str = "root:x:0:\nclaude:x:1000:\nnogroup:x:65534:\n";

    #[test]
    fn default_is_the_fixed_high_id() {
        let a = choose(None, PASSWD, GROUP, &[1000], "broker_uid").unwrap();
        assert_eq!(
            a,
            Account {
                uid: DEFAULT_UID,
                gid: DEFAULT_UID
            }
        );
        let id = a.identity();
        assert!(id.groups.is_empty());
        assert_eq!(id.uid, DEFAULT_UID);
    }

    #[test]
    fn an_image_user_or_group_at_the_default_moves_it_down() {
        let passwd = format!("{PASSWD}app:x:{DEFAULT_UID}:100::/:/bin/sh\n");
        let group = format!("{GROUP}odd:x:{}:\n", DEFAULT_UID - 1);
        let a = choose(None, &passwd, &group, &[], "k").unwrap();
        assert_eq!(a.uid, DEFAULT_UID - 2);
        // A remapped sandbox uid is avoided too, though /etc/passwd does not list it.
        let a = choose(None, PASSWD, GROUP, &[DEFAULT_UID], "k").unwrap();
        assert_eq!(a.uid, DEFAULT_UID - 1);
    }

    #[test]
    fn a_configured_id_is_used_or_refused() {
        assert_eq!(
            choose(Some(4242), PASSWD, GROUP, &[1000], "k").unwrap().uid,
            4242
        );
        for bad in [0, 1000, 65534] {
            let e =
                choose(Some(bad), PASSWD, GROUP, &[1000], "credentials.broker_uid").unwrap_err();
            assert!(e.contains("credentials.broker_uid"), "{e}");
        }
    }

    #[test]
    fn a_full_range_is_an_error_naming_the_key() {
        let passwd: String = (LOWEST_UID..=DEFAULT_UID)
            .map(|i| format!("u{i}:x:{i}:{i}::/:/bin/sh\n"))
            .collect();
        let e = choose(None, &passwd, "", &[], "credentials.broker_uid").unwrap_err();
        assert!(e.contains("credentials.broker_uid"), "{e}");
    }
}
