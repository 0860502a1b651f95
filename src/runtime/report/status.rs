//! What `sandbox-init check` shows inside a running sandbox (`docker exec`): the kernel's
//! reject counters, read from our own table over netlink (nothing is changed; `nft` is not
//! in a scratch image), and PID 1's recent blocked destinations, which PID 1 keeps in
//! [`PATH`] (root-only: a directory 0700 and a file 0600, replaced atomically, never
//! through a link).

use crate::sys::fs as files;
use crate::sys::netlink::{self, cstr, Attrs, Socket};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

pub const DIR: &str = "/run/sandbox-init";
pub const FILE: &str = "status.json";
pub const PATH: &str = "/run/sandbox-init/status.json";

/// PID 1's status directory, created 0700 (and /run 0755 when a scratch image lacks it);
/// refused when it is a link or not root's.
pub fn open_dir() -> Result<OwnedFd, String> {
    use nix::fcntl::OFlag;
    let uid = nix::unistd::geteuid().as_raw();
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let root = nix::fcntl::open("/", flags, nix::sys::stat::Mode::empty())
        .map_err(|e| format!("cannot open /: {e}"))?;
    let run = ensure(&root, "run", 0o755, uid)?;
    let dir = ensure(&run, "sandbox-init", 0o700, uid)?;
    // An existing directory keeps no wider mode than ours.
    nix::sys::stat::fchmod(dir.as_fd(), nix::sys::stat::Mode::S_IRWXU)
        .map_err(|e| format!("cannot set the mode of {DIR}: {e}"))?;
    Ok(dir)
}

pub(super) fn ensure(parent: &OwnedFd, name: &str, mode: u32, uid: u32) -> Result<OwnedFd, String> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fstat, mkdirat, Mode};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let m = Mode::from_bits_truncate(mode);
    match mkdirat(parent, name, m) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(format!("cannot create /{name}: {e}")),
    }
    let fd = openat(parent, name, flags, Mode::empty())
        .map_err(|e| format!("cannot open {name} (a link?): {e}"))?;
    let st = fstat(fd.as_fd()).map_err(|e| format!("stat {name}: {e}"))?;
    if st.st_uid != uid {
        return Err(format!("{name} is owned by uid {}, not {uid}", st.st_uid));
    }
    Ok(fd)
}

pub fn write(dir: &OwnedFd, status: &serde_json::Value) -> Result<(), String> {
    let mut bytes = status.to_string().into_bytes();
    bytes.push(b'\n');
    files::write_atomic(
        dir.as_fd(),
        OsStr::new(FILE),
        &bytes,
        0o600,
        Path::new(PATH),
    )
    .map_err(|e| e.to_string())
}

/// The status PID 1 wrote, if this is a running sandbox.
pub fn read() -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(PATH).ok()?;
    serde_json::from_str(&text).ok()
}

/// The reject rules' counters in table `inet sandbox_init`, chain output.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// (rule kind, packets, bytes): "tcp reset", "admin-prohibited".
    pub rules: Vec<(String, u64, u64)>,
    /// Whether the rules send packets to our NFLOG group.
    pub logged: bool,
}

impl Counters {
    pub fn packets(&self) -> u64 {
        self.rules.iter().map(|r| r.1).sum()
    }
}

// nf_tables.h
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_LOG_GROUP: u16 = 1;
const NFT_REJECT_TCP_RST: u32 = 1;

fn be64(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| b.get(..8))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// One rule's attributes → a reject rule's counter, if it is one.
pub fn reject_counter(rule: &Attrs) -> Option<(String, u64, u64, bool)> {
    let exprs = rule.get(NFTA_RULE_EXPRESSIONS)?;
    let (mut kind, mut packets, mut bytes, mut logged, mut counted) = (None, 0, 0, false, false);
    for (t, e) in netlink::attrs(exprs) {
        if t != NFTA_LIST_ELEM {
            continue;
        }
        let e = Attrs::parse(e);
        let name = e
            .get(NFTA_EXPR_NAME)
            .map(|n| n.strip_suffix(&[0]).unwrap_or(n));
        let data = Attrs::parse(e.get(NFTA_EXPR_DATA).unwrap_or(&[]));
        match name {
            Some(b"counter") => {
                counted = true;
                packets = be64(data.get(NFTA_COUNTER_PACKETS));
                bytes = be64(data.get(NFTA_COUNTER_BYTES));
            }
            Some(b"reject") => {
                let ty = data.be32(NFTA_REJECT_TYPE);
                kind = Some(if ty == Some(NFT_REJECT_TCP_RST) {
                    "tcp reset"
                } else {
                    "admin-prohibited"
                });
            }
            Some(b"log") => {
                logged |= data
                    .get(NFTA_LOG_GROUP)
                    .and_then(|b| b.get(..2))
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    == Some(super::nflog::GROUP);
            }
            _ => {}
        }
    }
    counted.then_some(())?;
    Some((kind?.to_string(), packets, bytes, logged))
}

/// Dumps the rules of our output chain and sums the reject counters by kind. Needs
/// CAP_NET_ADMIN (as every nfnetlink request), which `docker exec` as root has.
pub fn kernel_counters() -> Result<Option<Counters>, String> {
    let err = |e: i32| std::io::Error::from_raw_os_error(e).to_string();
    let sock = Socket::open(Some(Duration::from_secs(2))).map_err(|e| err(e.errno()))?;
    let filter = [
        (NFTA_RULE_TABLE, cstr(crate::policy::ruleset::TABLE)),
        (NFTA_RULE_CHAIN, cstr("output")),
    ];
    let ty = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | NFT_MSG_GETRULE;
    let rules = match sock.dump(ty, libc::NFPROTO_INET as u8, &filter) {
        Ok(rules) => rules,
        // no table (not a running sandbox, or the firewall is off)
        Err(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let mut c = Counters::default();
    for rule in &rules {
        if let Some((kind, p, by, logged)) = reject_counter(&rule.attrs) {
            c.logged |= logged;
            match c.rules.iter_mut().find(|r| r.0 == kind) {
                Some(r) => {
                    r.1 += p;
                    r.2 += by;
                }
                None => c.rules.push((kind, p, by)),
            }
        }
    }
    Ok(Some(c))
}

/// The lines `check` prints for a running sandbox; empty when this is not one.
pub fn check_lines() -> Vec<String> {
    let mut out = vec![];
    let counters = kernel_counters();
    let status = read();
    if matches!(counters, Ok(None)) && status.is_none() {
        return out;
    }
    out.push("blocked so far (this running sandbox):".into());
    match counters {
        Ok(Some(c)) => {
            let parts: Vec<String> = c
                .rules
                .iter()
                .map(|(k, p, _)| format!("{k} {p} packets"))
                .collect();
            out.push(format!(
                "  kernel reject counters: {} (total {}){}",
                parts.join(", "),
                c.packets(),
                if c.logged {
                    String::new()
                } else {
                    " — the reject rules do not log: blocked destinations are not reported".into()
                }
            ));
        }
        Ok(None) => out.push(format!("  no table inet {}", crate::policy::ruleset::TABLE)),
        Err(e) => out.push(format!(
            "  cannot read the reject counters ({e}; run check as root with NET_ADMIN)"
        )),
    }
    match status {
        None => out.push(format!(
            "  no report from PID 1 ({PATH} missing or unreadable; run check as root)"
        )),
        Some(s) => {
            let n = |k: &str| s[k].as_u64().unwrap_or(0);
            let reader = match s["nflog"]["error"].as_str() {
                Some(e) => format!("not listening: {e}"),
                None => format!("NFLOG group {}", s["nflog"]["group"]),
            };
            out.push(format!(
                "  reported by PID 1: {} events, {}{} distinct, {} not shown on stderr (rate \
                 limit); {reader}; {} kernel drops; updated {}",
                n("events"),
                n("distinct"),
                if s["distinct_capped"] == true {
                    "+"
                } else {
                    ""
                },
                n("not_shown"),
                s["nflog"]["overruns"].as_u64().unwrap_or(0),
                s["updated"].as_str().unwrap_or("?")
            ));
            if let Some(p) = s["audit_log"].as_str() {
                out.push(format!("  audit log: {p}"));
            }
            let recent = s["recent"].as_array().cloned().unwrap_or_default();
            if recent.is_empty() {
                out.push("  nothing blocked yet".into());
            } else {
                out.push("  recent (oldest first):".into());
                for r in recent {
                    out.push(format!(
                        "    {} x{} {}",
                        r["time"].as_str().unwrap_or("?"),
                        r["count"].as_u64().unwrap_or(0),
                        r["line"].as_str().unwrap_or("?")
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::{attr as nla, NESTED};

    fn expr(name: &str, data: Vec<u8>) -> Vec<u8> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        let mut e = nla(NFTA_EXPR_NAME, &n);
        e.extend(nla(NFTA_EXPR_DATA | NESTED, &data));
        nla(NFTA_LIST_ELEM | NESTED, &e)
    }

    #[test]
    fn reject_rules_give_their_counters() {
        let mut counter = nla(NFTA_COUNTER_BYTES, &600u64.to_be_bytes());
        counter.extend(nla(NFTA_COUNTER_PACKETS, &10u64.to_be_bytes()));
        let mut list = expr("counter", counter.clone());
        list.extend(expr(
            "log",
            nla(NFTA_LOG_GROUP, &super::super::nflog::GROUP.to_be_bytes()),
        ));
        list.extend(expr("reject", nla(NFTA_REJECT_TYPE, &1u32.to_be_bytes())));
        let rule = nla(NFTA_RULE_EXPRESSIONS | NESTED, &list);
        assert_eq!(
            reject_counter(&Attrs::parse(&rule)),
            Some(("tcp reset".into(), 10, 600, true))
        );
        let mut list = expr("counter", counter);
        list.extend(expr("reject", nla(NFTA_REJECT_TYPE, &2u32.to_be_bytes())));
        let rule = nla(NFTA_RULE_EXPRESSIONS | NESTED, &list);
        assert_eq!(
            reject_counter(&Attrs::parse(&rule)),
            Some(("admin-prohibited".into(), 10, 600, false))
        );
        // an accept rule, or garbage: none
        let rule = nla(NFTA_RULE_EXPRESSIONS | NESTED, &expr("immediate", vec![]));
        assert_eq!(reject_counter(&Attrs::parse(&rule)), None);
        for cut in 0..rule.len() {
            let _ = reject_counter(&Attrs::parse(&rule[..cut]));
        }
    }
}
