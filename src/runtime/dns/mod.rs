//! DNS `filter` mode: PID 1 answers the child's DNS itself. Only allowlisted names are
//! resolved (upstream, through the resolvers of /etc/resolv.conf); their addresses enter the
//! firewall's dynamic sets before the answer is released and expire after it; every other
//! name gets NXDOMAIN at once and never leaves the container.

pub mod forwarder;
pub mod sets;
pub mod upstream;
pub mod wire;

use crate::policy::names as policy;
use crate::runtime::report::SharedReporter;
use crate::stages::firewall::Applied;
use std::time::Instant;

/// The forwarder for this firewall, bound and seeded with the start-time answers. Runs
/// before the command starts (binding port 53 needs PID 1's privileges).
pub fn filter(applied: &Applied, reporter: SharedReporter) -> Result<forwarder::Forwarder, String> {
    let policy = policy::Policy::new(&applied.entries);
    let writer = match sets::SetWriter::open(crate::policy::ruleset::TABLE) {
        Ok(w) => Some(w),
        Err(e) => return Err(format!("DNS filter: cannot open a netlink socket: {e}")),
    };
    let mut f = forwarder::Forwarder::bind(policy, &applied.plan.upstreams, writer, reporter)?;
    let now = Instant::now();
    for (name, addrs) in &applied.resolved {
        f.seed_learned(name, addrs, now);
    }
    Ok(f)
}
