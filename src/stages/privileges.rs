//! Dropping privileges: the child loses everything before exec; PID 1 keeps only what it
//! still needs to supervise. The order matters and is tested: groups and gid while we still
//! have CAP_SETGID, the bounding set while we still have CAP_SETPCAP, no_new_privs, and the
//! uid last (which also empties permitted and effective). Then the result is verified:
//! a drop that did not fully happen stops the start.

use crate::policy::identity::Identity;
use crate::sys::Kernel;

/// CAP_KILL: PID 1 signals a child that runs under another uid.
pub const CAP_KILL: u32 = 5;
/// CAP_NET_ADMIN: PID 1 updates firewall sets at run time (DNS-aware mode).
pub const CAP_NET_ADMIN: u32 = 12;

/// Drops every privilege of the calling process for good: the caller execs the command
/// next. Returns a message naming the step that failed and what to do about it.
pub fn drop_all(k: &dyn Kernel, id: &Identity) -> Result<(), String> {
    let step = |what: &str, r: std::io::Result<()>| {
        r.map_err(|e| format!("cannot {what}: {e}{}", hint(&e)))
    };
    step("set supplementary groups", k.set_groups(&id.groups))?;
    step("set gid", k.set_resgid(id.gid))?;
    for cap in 0..=k.last_cap() {
        step("clear the capability bounding set", k.drop_bounding(cap))?;
    }
    step("clear ambient capabilities", k.clear_ambient())?;
    // Inheritable goes now; permitted and effective stay until the uid change empties them
    // (CAP_SETUID is still needed for that very change).
    let have = k
        .cap_state()
        .map_err(|e| format!("cannot read capabilities: {e}"))?;
    step("clear inheritable capabilities", k.set_caps(have.permitted))?;
    step("set no_new_privs", k.set_no_new_privs())?;
    step("set uid", k.set_resuid(id.uid))?;

    let st = k
        .cap_state()
        .map_err(|e| format!("cannot verify the privilege drop: {e}"))?;
    if !st.all_empty() || !st.no_new_privs {
        return Err(format!("privilege drop incomplete: {st:?}"));
    }
    let (uid, gid) = k.ids();
    if (uid, gid) != (id.uid, id.gid) {
        return Err(format!(
            "privilege drop incomplete: running as {uid}:{gid}, wanted {}:{}",
            id.uid, id.gid
        ));
    }
    Ok(())
}

/// Reduces PID 1 to the capabilities in `keep` (numbers), with an empty bounding set and
/// no inheritable or ambient capabilities, and makes it non-dumpable so the sandboxed user
/// can neither ptrace it nor read its memory.
pub fn confine_supervisor(k: &dyn Kernel, keep: &[u32]) -> Result<(), String> {
    let mask = keep.iter().fold(0u64, |m, c| m | (1u64 << c));
    let step = |what: &str, r: std::io::Result<()>| {
        r.map_err(|e| format!("cannot {what} for PID 1: {e}{}", hint(&e)))
    };
    step("make it non-dumpable", k.set_dumpable(false))?;
    for cap in 0..=k.last_cap() {
        step("clear the bounding set", k.drop_bounding(cap))?;
    }
    step("clear ambient capabilities", k.clear_ambient())?;
    // Only ever lowers: capset cannot raise permitted.
    let have = k
        .cap_state()
        .map_err(|e| format!("cannot read PID 1's capabilities: {e}"))?;
    step("reduce capabilities", k.set_caps(mask & have.permitted))?;
    step("set no_new_privs", k.set_no_new_privs())?;
    Ok(())
}

fn hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EPERM) {
        " (the container lacks a capability sandbox-init needs: keep SETUID, SETGID and \
         SETPCAP, e.g. do not --cap-drop them)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeKernel;

    use crate::policy::test_util::claude as user;

    #[test]
    fn drops_in_the_only_safe_order() {
        let k = FakeKernel::root();
        drop_all(&k, &user()).unwrap();
        let calls = k.calls.borrow();
        let pos = |name: &str| {
            calls
                .iter()
                .position(|c| c.starts_with(name))
                .unwrap_or_else(|| panic!("{name} never called: {calls:?}"))
        };
        assert_eq!(calls[0], "setgroups [1000, 500]");
        assert!(pos("setresgid 1000") < pos("setresuid"));
        assert!(
            pos("capbset_drop 40") < pos("setresuid"),
            "bounding needs SETPCAP"
        );
        assert!(pos("no_new_privs") < pos("setresuid"));
        assert!(pos("capset") < pos("setresuid"));
        let last_read = calls.iter().rposition(|c| c == "read_caps").unwrap();
        assert!(last_read > pos("setresuid"), "verified after the drop");
        assert_eq!(
            calls
                .iter()
                .filter(|c| c.starts_with("capbset_drop"))
                .count(),
            41
        );
        assert!(k.state.borrow().all_empty());
    }

    #[test]
    fn any_failed_step_stops_before_the_uid_changes() {
        for step in [
            "setgroups",
            "setresgid",
            "capbset_drop",
            "ambient_clear",
            "capset",
            "no_new_privs",
        ] {
            let k = FakeKernel {
                fail: Some(step),
                ..FakeKernel::root()
            };
            let err = drop_all(&k, &user()).unwrap_err();
            assert!(err.starts_with("cannot "), "{err}");
            assert!(
                !k.calls.borrow().iter().any(|c| c.starts_with("setresuid")),
                "{step}"
            );
        }
        let k = FakeKernel {
            fail: Some("capbset_drop"),
            ..FakeKernel::root()
        };
        assert!(drop_all(&k, &user()).unwrap_err().contains("SETPCAP"));
    }

    #[test]
    fn an_incomplete_drop_is_caught_by_verification() {
        let k = FakeKernel {
            leave_bounding: true,
            ..FakeKernel::root()
        };
        let err = drop_all(&k, &user()).unwrap_err();
        assert!(err.contains("incomplete"), "{err}");
    }

    #[test]
    fn supervisor_keeps_only_what_it_asks_for() {
        let k = FakeKernel::root();
        confine_supervisor(&k, &[CAP_KILL]).unwrap();
        let st = *k.state.borrow();
        assert_eq!(st.permitted, 1 << CAP_KILL);
        assert_eq!(st.effective, 1 << CAP_KILL);
        assert_eq!(st.bounding, 0);
        assert!(st.no_new_privs);
        assert_eq!(k.calls.borrow()[0], "dumpable false");
    }

    #[test]
    fn supervisor_cannot_gain_what_it_lacks() {
        let k = FakeKernel::root();
        k.state.borrow_mut().permitted = 0;
        confine_supervisor(&k, &[CAP_KILL, CAP_NET_ADMIN]).unwrap();
        assert!(k.calls.borrow().contains(&"capset 0x0".to_string()));
    }
}
