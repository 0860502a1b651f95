//! Names -> addresses at start: A and AAAA for every name at once, through the resolvers of
//! /etc/resolv.conf (hickory-resolver). The tokio runtime lives only inside `resolve_all`:
//! PID 1 forks later and must be single-threaded by then.

use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::TokioResolver;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One query's wait before hickory retries (UDP, then TCP on truncation).
const QUERY_TIMEOUT: Duration = Duration::from_millis(1500);
/// One name (A and AAAA together) is given up after this.
pub const PER_NAME: Duration = Duration::from_secs(3);
/// All names together; a dead resolver must not hold the start for long.
pub const OVERALL: Duration = Duration::from_secs(5);
/// Names looked up at the same time.
const IN_FLIGHT: usize = 64;

/// Each name with its addresses (sorted, de-duplicated) or a one-line reason.
pub type Answers = BTreeMap<String, Result<Vec<IpAddr>, String>>;

pub fn resolve_all(names: &[String]) -> Answers {
    if names.is_empty() {
        return Answers::new();
    }
    let fail_all = |why: String| {
        names
            .iter()
            .map(|n| (n.clone(), Err(why.clone())))
            .collect()
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail_all(format!("cannot start the resolver runtime: {e}")),
    };
    let answers = rt.block_on(lookup_all(names));
    // Dropping joins the runtime's (blocking-pool) threads before anyone forks.
    drop(rt);
    answers.unwrap_or_else(fail_all)
}

async fn lookup_all(names: &[String]) -> Result<Answers, String> {
    let mut builder = TokioResolver::builder_tokio()
        .map_err(|e| format!("cannot use /etc/resolv.conf: {}", one_line(&e.to_string())))?;
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 1;
    let resolver = builder
        .build()
        .map_err(|e| format!("cannot build the resolver: {}", one_line(&e.to_string())))?;

    let mut set = tokio::task::JoinSet::new();
    let mut pending = names.iter();
    // Bounded: a thousand names at once would open thousands of sockets (and PID 1's
    // descriptor limit may be 1024).
    let mut spawn_next = |set: &mut tokio::task::JoinSet<_>| {
        if let Some(name) = pending.next() {
            set.spawn(lookup(resolver.clone(), name.clone()));
        }
    };
    for _ in 0..IN_FLIGHT {
        spawn_next(&mut set);
    }
    let deadline = tokio::time::Instant::now() + OVERALL;
    let mut answers = Answers::new();
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok((name, res)))) => {
                answers.insert(name, res);
                spawn_next(&mut set);
            }
            // A panicked lookup task: its name is reported as unanswered below.
            Ok(Some(Err(_))) => spawn_next(&mut set),
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                break;
            }
        }
    }
    for name in names {
        answers
            .entry(name.clone())
            .or_insert_with(|| Err(format!("no answer within {} s", OVERALL.as_secs())));
    }
    Ok(answers)
}

async fn lookup(r: TokioResolver, name: String) -> (String, Result<Vec<IpAddr>, String>) {
    // A dotted name is absolute: skip the search list. A single label (a Docker container
    // name, say) goes through it as the C library would.
    let query = if name.contains('.') {
        format!("{name}.")
    } else {
        name.clone()
    };
    let started = Instant::now();
    let res = match tokio::time::timeout(PER_NAME, r.lookup_ip(query.as_str())).await {
        Err(_) => Err(format!("no answer within {} s", PER_NAME.as_secs())),
        Ok(Err(e)) if e.is_nx_domain() => Err("NXDOMAIN (no such name)".to_string()),
        Ok(Err(e)) if e.is_no_records_found() => Err("no A or AAAA record".to_string()),
        Ok(Err(e)) => Err(one_line(&e.to_string())),
        Ok(Ok(lookup)) => {
            let mut addrs: Vec<IpAddr> = lookup.iter().collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                Err("no A or AAAA record".to_string())
            } else {
                Ok(addrs)
            }
        }
    };
    log::debug!("resolved {name} in {:?}: {res:?}", started.elapsed());
    (name, res)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Threads of this process (PID 1 must have exactly one when it forks).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_resolve_starts_no_runtime() {
        assert!(resolve_all(&[]).is_empty());
    }

    #[test]
    fn one_line_squashes_whitespace() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
