//! The ruleset as data: what the kernel will be told, computed without touching it. Pure,
//! so every decision here (merging, ports, DNS, gateway) is unit-tested without root.

use super::hostnet::HostNet;
pub use super::names::{broker_set_name, set_name};
use crate::policy::allowlist::{Entry, Port, Target};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The one nftables table sandbox-init owns (`inet sandbox_init`); nothing else is touched.
pub const TABLE: &str = "sandbox_init";
/// The base chains of the table.
pub const OUTPUT_CHAIN: &str = "output";
pub const INPUT_CHAIN: &str = "input";
/// DNS `filter` mode: the child's port-53 traffic to PID 1's forwarder.
pub const DNS_REDIRECT_CHAIN: &str = "dns_redirect";
/// The conntrack mark bit of a flow a root process opened to port 53 (one bit, so other
/// users of the mark keep theirs).
pub const ROOT_DNS_MARK: u32 = 0x2000_0000;
/// Where the DNS filter listens, and the port the child's DNS is redirected to.
pub const DNS_PORT: u16 = 53;
pub const DNS_LISTEN_V4: Ipv4Addr = Ipv4Addr::LOCALHOST;
pub const DNS_LISTEN_V6: Ipv6Addr = Ipv6Addr::LOCALHOST;
/// The timeout of every element of a dynamic set: PID 1 re-adds an address well within it
/// while the answer that allowed it is valid.
pub const SET_TIMEOUT: Duration = Duration::from_secs(10);
/// The NFLOG group of the firewall's reject rules (any fixed number works: a netns has its
/// own groups; this one is unlikely to collide with a logger an image ships).
pub const NFLOG_GROUP: u16 = 7041;
/// The log prefix the reject rules carry (shown by `nft list`; also in every message).
pub const NFLOG_PREFIX: &str = "sandbox-init blocked";

/// Addresses allowed for one port (or for every port): single addresses go into kernel
/// sets, networks become one rule each (sets of rustables 0.9 cannot hold intervals).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrGroup {
    pub v4: BTreeSet<Ipv4Addr>,
    pub v6: BTreeSet<Ipv6Addr>,
    /// Merged, non-overlapping networks (the kernel rejects a batch with overlaps).
    pub nets: Vec<IpNet>,
}

impl AddrGroup {
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty() && self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let in_set = match ip {
            IpAddr::V4(a) => self.v4.contains(&a),
            IpAddr::V6(a) => self.v6.contains(&a),
        };
        in_set || self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Networks are merged (adjacent single addresses are not: they stay set elements, one
    /// lookup, instead of becoming a rule each); whatever a network or `covered_by`
    /// already allows is left out.
    fn from_nets(nets: Vec<IpNet>, covered_by: Option<&AddrGroup>) -> AddrGroup {
        let (singles, wide): (Vec<IpNet>, Vec<IpNet>) = nets
            .into_iter()
            .partition(|n| n.prefix_len() == n.max_prefix_len());
        let covered = |net: &IpNet| {
            covered_by.is_some_and(|any| {
                any.nets.iter().any(|n| n.contains(net))
                    || (net.prefix_len() == net.max_prefix_len() && any.contains(net.addr()))
            })
        };
        let mut g = AddrGroup {
            nets: IpNet::aggregate(&wide)
                .into_iter()
                .filter(|n| !covered(n))
                .collect(),
            ..AddrGroup::default()
        };
        for n in singles {
            if covered(&n) || g.nets.iter().any(|w| w.contains(&n)) {
                continue;
            }
            match n.addr() {
                IpAddr::V4(a) => {
                    g.v4.insert(a);
                }
                IpAddr::V6(a) => {
                    g.v6.insert(a);
                }
            }
        }
        g
    }
}

/// Who may send DNS past the resolvers of /etc/resolv.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootDns {
    /// Nobody: the resolvers are reachable directly.
    Off,
    /// Sockets owned by uid 0 (a loopback resolver such as Docker's 127.0.0.11 forwarding
    /// from inside this namespace), to these upstream servers only.
    To(Vec<IpAddr>),
    /// As above, to any server: the upstream is not known from inside the container.
    Any,
}

/// With the credential broker on: destinations only the broker's uid may reach (the API's
/// fixed ranges and the upstream's own address, and the addresses of the broker's own
/// names). Everyone else, the sandboxed user included, is rejected at those networks before
/// the allowlist is consulted; the names' addresses are simply not the allowlist's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRoute {
    pub uid: u32,
    pub nets: Vec<IpNet>,
    /// The hosts the broker connects to by name (its upstream's, its token endpoint's),
    /// lower case.
    pub names: Vec<String>,
    /// Of `names`, those that are the broker's alone (its upstream's host, as an upstream
    /// address is): no allowlist entry, explicit or not, gives them to the sandboxed user.
    pub exclusive: Vec<String>,
    /// Preset hosts the sandboxed user's allowlist does without while the broker runs (its
    /// placeholder never logs in nor refreshes), unless an explicit entry names them.
    pub withdrawn: Vec<String>,
    /// What `agent_entries` did: the hosts that left the allowlist, those an explicit
    /// entry kept, and the entries dropped for naming an exclusive host.
    pub left: Vec<String>,
    pub kept: Vec<String>,
    pub dropped: Vec<String>,
    /// The addresses `names` resolved to at start (resolver mode; in filter mode the DNS
    /// filter adds them as they are asked for).
    pub addrs: AddrGroup,
}

impl BrokerRoute {
    /// The networks of the `anthropic` preset and its login and token hosts when it is
    /// selected; the upstream's host (the container's ANTHROPIC_BASE_URL, or the default):
    /// an address joins the networks, a name the exclusive names; the token endpoint's host
    /// (`token_url`) joins the names.
    pub fn new(
        uid: u32,
        presets: &[String],
        upstream: Option<&str>,
        token_url: Option<&str>,
    ) -> BrokerRoute {
        let mut route = BrokerRoute {
            uid,
            nets: vec![],
            names: vec![],
            exclusive: vec![],
            withdrawn: vec![],
            left: vec![],
            kept: vec![],
            dropped: vec![],
            addrs: AddrGroup::default(),
        };
        let mut nets: Vec<IpNet> = vec![];
        if presets.iter().any(|p| p == "anthropic") {
            let preset = super::presets::lookup("anthropic").map(|p| p.entries);
            for e in preset.into_iter().flatten() {
                if let Ok(Entry {
                    target: Target::Net(n),
                    ..
                }) = e.parse::<Entry>()
                {
                    nets.push(n);
                }
            }
            route.withdrawn = super::presets::BROKER_HOSTS
                .iter()
                .map(|h| h.to_string())
                .collect();
        }
        match upstream.and_then(url_host) {
            Some(Host::Address(ip)) => nets.push(IpNet::from(ip)),
            Some(Host::Name(name)) => route.exclusive.push(name),
            None => {}
        }
        if let Some(Host::Name(name)) = token_url.and_then(url_host) {
            if !route.exclusive.contains(&name) {
                route.names.push(name);
            }
        }
        route.names.extend(route.exclusive.iter().cloned());
        route.nets = IpNet::aggregate(&nets);
        route
    }

    /// The sandboxed user's allowlist with the broker running: the preset entries without
    /// the withdrawn hosts (an explicit entry naming one keeps it: explicit wins), then the
    /// explicit entries, less any entry naming an exclusive host. Records what it did.
    pub fn agent_entries(&mut self, from_presets: &[Entry], explicit: &[Entry]) -> Vec<Entry> {
        let named = super::names::Policy::new(explicit);
        let mut out = vec![];
        for e in from_presets {
            if let Target::Host(h) = &e.target {
                if self.withdrawn.contains(h) {
                    let explicitly = named.matches_entry(h);
                    let record = if explicitly {
                        &mut self.kept
                    } else {
                        &mut self.left
                    };
                    if !record.contains(h) {
                        record.push(h.clone());
                    }
                    if !explicitly {
                        continue;
                    }
                }
            }
            out.push(e.clone());
        }
        out.extend(explicit.iter().cloned());
        let exclusive = &self.exclusive;
        let (dropped, agent): (Vec<Entry>, Vec<Entry>) = out
            .into_iter()
            .partition(|e| matches!(&e.target, Target::Host(h) if exclusive.contains(h)));
        self.dropped = dropped.iter().map(|e| e.to_string()).collect();
        agent
    }

    /// What the DNS filter gives the broker's sets.
    pub fn dns_names(&self) -> super::names::BrokerNames {
        super::names::BrokerNames {
            names: self.names.clone(),
            exclusive: self.exclusive.clone(),
        }
    }
}

/// The host of a URL: an address or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Address(IpAddr),
    Name(String),
}

/// HOST in `scheme://[user@]HOST[:port][/path]`.
fn url_host(url: &str) -> Option<Host> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok().map(Host::Address);
    }
    let host = host.split(':').next()?.trim_end_matches('.');
    if host.is_empty() {
        return None;
    }
    Some(match host.parse() {
        Ok(ip) => Host::Address(ip),
        Err(_) => Host::Name(host.to_ascii_lowercase()),
    })
}

/// The address in `scheme://[user@]HOST[:port][/path]` when HOST is one.
#[cfg(test)]
fn url_address(url: &str) -> Option<IpAddr> {
    match url_host(url)? {
        Host::Address(ip) => Some(ip),
        Host::Name(_) => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every port and protocol.
    pub any: AddrGroup,
    /// TCP or UDP to one port.
    pub ports: BTreeMap<Port, AddrGroup>,
    /// udp+tcp 53 for every user; loopback resolvers are covered by the loopback rule.
    pub dns: Vec<IpAddr>,
    pub root_dns: RootDns,
    /// Gateway addresses rejected before the allowlist is consulted.
    pub blocked_gateways: Vec<IpAddr>,
    /// One line each, for the log.
    pub warnings: Vec<String>,
    /// DNS `filter` mode: the child's DNS goes to PID 1's forwarder only, and addresses of
    /// names live in the dynamic sets below (with a timeout), not in the static ones.
    pub filter: bool,
    /// Per port group (None = every port), the dynamic sets and the addresses the names
    /// resolved to at start. Empty unless `filter`.
    pub dynamic: BTreeMap<Option<Port>, AddrGroup>,
    /// The resolvers of /etc/resolv.conf: the forwarder's upstream servers.
    pub upstreams: Vec<IpAddr>,
    /// Loopback resolvers (Docker's 127.0.0.11): closed to the child in `filter` mode.
    pub loopback_resolvers: Vec<IpAddr>,
    /// Every resolver a process of the container asks (those of /etc/resolv.conf and
    /// Docker's ExtServers) but 127.0.0.1 and ::1: in both modes no user but root may send
    /// from one of these addresses to a local socket, so nobody answers in their name.
    pub resolver_addrs: Vec<IpAddr>,
    /// The credential broker's own destinations, when it runs.
    pub broker: Option<BrokerRoute>,
}

impl Plan {
    /// Gives `route`'s destinations to the broker's uid alone: its networks leave every
    /// group of the allowlist, and the builder puts the broker's accept and everyone
    /// else's reject before it; what its names resolved to (`resolved`) is the broker's
    /// to reach, and what an exclusive name resolved to leaves the allowlist's static
    /// groups (in resolver mode a wildcard entry allows its apex, which may be one).
    pub fn with_broker(
        mut self,
        mut route: BrokerRoute,
        resolved: &BTreeMap<String, Vec<IpAddr>>,
    ) -> Plan {
        let exclusive: BTreeSet<IpAddr> = route
            .exclusive
            .iter()
            .filter_map(|n| resolved.get(n))
            .flatten()
            .copied()
            .collect();
        let mine = |ip: IpAddr| route.nets.iter().any(|n| n.contains(&ip));
        let covered = |net: &IpNet| route.nets.iter().any(|n| n.contains(net));
        let theirs = |ip: IpAddr| mine(ip) || (!self.filter && exclusive.contains(&ip));
        for g in std::iter::once(&mut self.any).chain(self.ports.values_mut()) {
            g.v4.retain(|a| !theirs(IpAddr::V4(*a)));
            g.v6.retain(|a| !theirs(IpAddr::V6(*a)));
            g.nets.retain(|n| !covered(n));
        }
        let mut addrs = AddrGroup::default();
        for ip in route.names.iter().filter_map(|n| resolved.get(n)).flatten() {
            if mine(*ip) || self.blocked_gateways.contains(ip) {
                continue;
            }
            match ip {
                IpAddr::V4(a) => addrs.v4.insert(*a),
                IpAddr::V6(a) => addrs.v6.insert(*a),
            };
        }
        route.addrs = addrs;
        self.broker = Some(route);
        self
    }
}

/// The inputs: validated entries, the addresses each name resolved to (failed names are
/// absent), and the host facts.
pub fn build(
    entries: &[Entry],
    resolved: &BTreeMap<String, Vec<IpAddr>>,
    host: &HostNet,
    allow_gateway: bool,
) -> Plan {
    build_mode(entries, resolved, host, allow_gateway, false)
}

/// As `build`; `filter` selects the DNS-aware mode.
pub fn build_mode(
    entries: &[Entry],
    resolved: &BTreeMap<String, Vec<IpAddr>>,
    host: &HostNet,
    allow_gateway: bool,
    filter: bool,
) -> Plan {
    let mut warnings = vec![];
    let mut dynamic: BTreeMap<Option<Port>, AddrGroup> = BTreeMap::new();
    let is_gw = |ip: &IpAddr| host.gateways.contains(ip);
    // Gateways named exactly by an entry are opened; a wider network only warns.
    let mut opened: BTreeSet<IpAddr> = BTreeSet::new();
    let mut wildcards = vec![];
    let mut nets_by_port: BTreeMap<Option<Port>, Vec<IpNet>> = BTreeMap::new();

    for e in entries {
        let nets = nets_by_port.entry(e.port).or_default();
        match &e.target {
            Target::Net(n) => {
                if n.prefix_len() == n.max_prefix_len() && is_gw(&n.addr()) {
                    opened.insert(n.addr());
                } else if !allow_gateway {
                    for gw in host.gateways.iter().filter(|g| n.contains(*g)) {
                        warnings.push(format!(
                            "{e} covers the default gateway {gw}, which stays blocked \
                             (allow it with --allow-gateway or by its own address)"
                        ));
                    }
                }
                nets.push(*n);
            }
            Target::Host(name) | Target::Wildcard(name) => {
                if matches!(e.target, Target::Wildcard(_)) {
                    wildcards.push(e.to_string());
                }
                let mut dynamic = filter.then(|| dynamic.entry(e.port).or_default());
                for ip in resolved.get(name).into_iter().flatten() {
                    if is_gw(ip) && !allow_gateway {
                        warnings.push(format!(
                            "{name} resolves to the default gateway {ip}; not allowed \
                             (use --allow-gateway or allow {ip} itself)"
                        ));
                        continue;
                    }
                    match (ip, dynamic.as_deref_mut()) {
                        (IpAddr::V4(a), Some(d)) => {
                            d.v4.insert(*a);
                        }
                        (IpAddr::V6(a), Some(d)) => {
                            d.v6.insert(*a);
                        }
                        (_, None) => nets.push(IpNet::from(*ip)),
                    }
                }
            }
        }
    }
    if !wildcards.is_empty() && !filter {
        warnings.push(format!(
            "{}: only the apex name is allowed in dns=resolver mode; subdomains need the \
             DNS-aware mode (dns = filter)",
            wildcards.join(", ")
        ));
    }
    if allow_gateway {
        let any = nets_by_port.entry(None).or_default();
        any.extend(host.gateways.iter().map(|g| IpNet::from(*g)));
        opened.extend(host.gateways.iter().copied());
    }

    let any = AddrGroup::from_nets(nets_by_port.remove(&None).unwrap_or_default(), None);
    let ports = nets_by_port
        .into_iter()
        .filter_map(|(p, nets)| Some((p?, AddrGroup::from_nets(nets, Some(&any)))))
        .filter(|(_, g)| !g.is_empty())
        .collect();

    let mut dns: Vec<IpAddr> = host
        .resolvers
        .iter()
        .filter(|r| !r.is_loopback())
        .copied()
        .collect();
    let loopback_resolvers: Vec<IpAddr> = host
        .resolvers
        .iter()
        .filter(|r| r.is_loopback())
        .copied()
        .collect();
    let mut root_dns = if !loopback_resolvers.is_empty() {
        match &host.ext_servers {
            Some(list) if !list.is_empty() => RootDns::To(list.clone()),
            _ => RootDns::Any,
        }
    } else {
        RootDns::Off
    };
    if filter {
        // Only PID 1's forwarder (root) talks to the resolvers; the child talks to it.
        let direct = std::mem::take(&mut dns);
        root_dns = match root_dns {
            RootDns::Any => RootDns::Any,
            RootDns::To(mut l) => {
                l.extend(
                    direct
                        .iter()
                        .filter(|d| !l.contains(d))
                        .copied()
                        .collect::<Vec<_>>(),
                );
                RootDns::To(l)
            }
            RootDns::Off if direct.is_empty() => RootDns::Off,
            RootDns::Off => RootDns::To(direct),
        };
    }
    // 127.0.0.1 and ::1 are the source of all the user's own loopback traffic: a resolver
    // there is guarded by its port (53) alone.
    let mut resolver_addrs: Vec<IpAddr> = vec![];
    for a in host
        .resolvers
        .iter()
        .chain(host.ext_servers.iter().flatten())
    {
        let own = *a == IpAddr::V4(Ipv4Addr::LOCALHOST) || *a == IpAddr::V6(Ipv6Addr::LOCALHOST);
        if !own && !resolver_addrs.contains(a) {
            resolver_addrs.push(*a);
        }
    }
    let blocked_gateways = host
        .gateways
        .iter()
        .filter(|g| !opened.contains(g))
        .copied()
        .collect();
    Plan {
        any,
        ports,
        dns,
        root_dns,
        blocked_gateways,
        warnings,
        filter,
        dynamic,
        upstreams: host.resolvers.clone(),
        loopback_resolvers: if filter { loopback_resolvers } else { vec![] },
        resolver_addrs,
        broker: None,
    }
}

impl fmt::Display for Plan {
    /// The plan as `check` prints it, in rule order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: Vec<String>| {
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(" ")
            }
        };
        writeln!(f, "  table inet sandbox_init (replaced atomically)")?;
        if self.filter {
            writeln!(
                f,
                "  dns_redirect (nat output, before Docker's): udp+tcp 53 of every user but \
                 root -> PID 1's DNS filter on 127.0.0.1 / ::1 port 53"
            )?;
        }
        writeln!(f, "  output (policy drop):")?;
        // Answering for a resolver takes its address or port 53; riding a flow someone
        // else planted takes a root query in the reply direction: both are dropped.
        writeln!(
            f,
            "    drop    every user but root: from port 53, or to loopback from a resolver \
             address ({})",
            list(self.resolver_addrs.iter().map(|a| a.to_string()).collect())
        )?;
        writeln!(
            f,
            "    drop    root's udp+tcp 53 in a flow root did not open (conntrack mark)"
        )?;
        if self.filter {
            writeln!(
                f,
                "    accept  udp+tcp 53 to the DNS filter; reject other DNS of every user but root"
            )?;
            if !self.loopback_resolvers.is_empty() {
                writeln!(
                    f,
                    "    reject  every user but root to the loopback resolver {}",
                    list(
                        self.loopback_resolvers
                            .iter()
                            .map(|a| a.to_string())
                            .collect()
                    )
                )?;
            }
        }
        writeln!(
            f,
            "    accept  loopback; ct established,related; icmpv6 133-136"
        )?;
        writeln!(
            f,
            "    accept  udp+tcp 53 to {}",
            list(self.dns.iter().map(|a| a.to_string()).collect())
        )?;
        match &self.root_dns {
            RootDns::Off => {}
            RootDns::Any => writeln!(
                f,
                "    accept  udp+tcp 53 from uid 0 only (loopback resolver upstream), any server"
            )?,
            RootDns::To(l) => writeln!(
                f,
                "    accept  udp+tcp 53 from uid 0 only (loopback resolver upstream) to {}",
                list(l.iter().map(|a| a.to_string()).collect())
            )?,
        }
        if !self.blocked_gateways.is_empty() {
            writeln!(
                f,
                "    reject  gateway {}",
                list(
                    self.blocked_gateways
                        .iter()
                        .map(|a| a.to_string())
                        .collect()
                )
            )?;
        }
        if let Some(b) = &self.broker {
            let nets = list(b.nets.iter().map(|n| n.to_string()).collect());
            writeln!(
                f,
                "    accept  the credential broker (uid {}) to {nets}",
                b.uid
            )?;
            let mut addrs: Vec<String> = b.addrs.v4.iter().map(|a| a.to_string()).collect();
            addrs.extend(b.addrs.v6.iter().map(|a| a.to_string()));
            let how = if self.filter {
                "answers of the DNS filter, expiring"
            } else {
                "resolved at start"
            };
            writeln!(
                f,
                "    accept  the credential broker (uid {}) to the addresses of its names {} \
                 ({how}): {}",
                b.uid,
                list(b.names.clone()),
                list(addrs)
            )?;
            writeln!(
                f,
                "    reject  every other user to {nets} (the sandboxed user reaches the API \
                 through the broker only)"
            )?;
            if !b.exclusive.is_empty() {
                writeln!(
                    f,
                    "            {}: the broker's alone (its upstream): resolvable for \
                     everyone, reachable by no one else{}",
                    b.exclusive.join(" "),
                    if b.dropped.is_empty() {
                        String::new()
                    } else {
                        format!(", whatever the allowlist says ({})", b.dropped.join(" "))
                    }
                )?;
            }
            if !b.left.is_empty() {
                writeln!(
                    f,
                    "            {}: left the sandboxed user's allowlist (from the anthropic \
                     preset; the broker holds the login, so the command never logs in nor \
                     refreshes, and an open Anthropic host would carry out an attacker's \
                     own session or key; allow one explicitly to keep it)",
                    b.left.join(" ")
                )?;
            }
            if !b.kept.is_empty() {
                writeln!(
                    f,
                    "            {}: kept in the sandboxed user's allowlist (allowed \
                     explicitly: explicit wins)",
                    b.kept.join(" ")
                )?;
            }
        }
        let group = |f: &mut fmt::Formatter<'_>, what: &str, g: &AddrGroup| {
            let mut items: Vec<String> = g.v4.iter().map(|a| a.to_string()).collect();
            items.extend(g.v6.iter().map(|a| a.to_string()));
            items.extend(g.nets.iter().map(|n| n.to_string()));
            writeln!(f, "    accept  {what}: {}", list(items))
        };
        group(f, "any port", &self.any)?;
        for (p, g) in &self.ports {
            group(f, &format!("{} {}", p.proto, p.number), g)?;
        }
        for (p, g) in &self.dynamic {
            let what = p.map_or("any port".to_string(), |p| {
                format!("{} {}", p.proto, p.number)
            });
            group(
                f,
                &format!("{what}, names (answers of the DNS filter, expiring)"),
                g,
            )?;
        }
        writeln!(
            f,
            "    reject  everything else (tcp reset / icmpx admin-prohibited, counted)"
        )?;
        writeln!(
            f,
            "  input (policy drop): accept loopback; ct established,related; icmpv6 133-136"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::Proto;

    fn entries(list: &[&str]) -> Vec<Entry> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn resolved(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<IpAddr>> {
        list.iter()
            .map(|(n, a)| (n.to_string(), a.iter().map(|s| ip(s)).collect()))
            .collect()
    }
    fn host() -> HostNet {
        HostNet {
            resolvers: vec![ip("10.77.0.53")],
            ext_servers: None,
            gateways: vec![ip("10.77.0.1"), ip("fd77::1")],
        }
    }
    #[test]
    fn the_broker_alone_gets_the_api_ranges_and_the_upstream_address() {
        let presets = vec!["anthropic".to_string(), "npm".to_string()];
        let route = BrokerRoute::new(
            65432,
            &presets,
            Some("https://user@10.77.0.10:8443/v1"),
            None,
        );
        let shown: Vec<String> = route.nets.iter().map(|n| n.to_string()).collect();
        assert!(shown.contains(&"160.79.104.0/23".to_string()), "{shown:?}");
        assert!(shown.contains(&"2607:6bc0::/48".to_string()), "{shown:?}");
        assert!(shown.contains(&"10.77.0.10/32".to_string()), "{shown:?}");
        assert_eq!(url_address("http://[fd77::10]:80"), Some(ip("fd77::10")));
        assert_eq!(url_address("https://api.example.test/x"), None);
        assert!(BrokerRoute::new(1, &[], Some("https://gw.test"), None)
            .nets
            .is_empty());

        let plan = build(
            &entries(&[
                "160.79.104.0/23",
                "10.77.0.10",
                "10.77.0.10:443",
                "10.9.9.9",
                "npmjs.org",
            ]),
            &resolved(&[("npmjs.org", &["160.79.104.7", "10.8.8.8"])]),
            &host(),
            false,
        )
        .with_broker(route, &BTreeMap::new());
        let all: Vec<IpAddr> = std::iter::once(&plan.any)
            .chain(plan.ports.values())
            .flat_map(|g| {
                g.v4.iter()
                    .map(|a| IpAddr::V4(*a))
                    .chain(g.v6.iter().map(|a| IpAddr::V6(*a)))
                    .chain(g.nets.iter().map(|n| n.addr()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for gone in ["160.79.104.0", "160.79.104.7", "10.77.0.10"] {
            assert!(
                !all.contains(&ip(gone)),
                "{gone} still in the allowlist: {all:?}"
            );
        }
        for kept in ["10.9.9.9", "10.8.8.8"] {
            assert!(all.contains(&ip(kept)), "{kept} lost: {all:?}");
        }
        let text = plan.to_string();
        assert!(text.contains("credential broker (uid 65432)"), "{text}");
        assert!(text.contains("reject  every other user to"), "{text}");
    }

    fn texts(list: &[Entry]) -> Vec<String> {
        list.iter().map(|e| e.to_string()).collect()
    }

    fn anthropic() -> Vec<Entry> {
        entries(super::super::presets::lookup("anthropic").unwrap().entries)
    }

    #[test]
    fn with_the_broker_the_login_and_token_hosts_leave_the_agents_list_unless_explicit() {
        let explicit = entries(&["*.claude.com", "registry.npmjs.org"]);
        // Control: without the broker the preset gives the agent every login host.
        let all = texts(&[anthropic(), explicit.clone()].concat());
        for h in super::super::presets::BROKER_HOSTS {
            assert!(all.contains(&h.to_string()), "{h} not in {all:?}");
        }
        let mut route = BrokerRoute::new(
            9,
            &["anthropic".to_string()],
            Some("https://api.anthropic.com"),
            Some("https://platform.claude.com/v1/oauth/token"),
        );
        let agent = texts(&route.agent_entries(&anthropic(), &explicit));
        for gone in ["claude.ai", "console.anthropic.com", "api.anthropic.com"] {
            assert!(!agent.contains(&gone.to_string()), "{gone} in {agent:?}");
        }
        // *.claude.com names claude.com and platform.claude.com: explicit wins.
        for kept in [
            "claude.com",
            "platform.claude.com",
            "downloads.claude.ai",
            "mcp-proxy.anthropic.com",
            "code.claude.com",
            "*.claude.com",
            "registry.npmjs.org",
            "160.79.104.0/23",
        ] {
            assert!(agent.contains(&kept.to_string()), "{kept} lost: {agent:?}");
        }
        assert_eq!(route.left, ["claude.ai", "console.anthropic.com"]);
        assert_eq!(route.kept, ["claude.com", "platform.claude.com"]);
        assert_eq!(route.dropped, ["api.anthropic.com"]);
        assert_eq!(route.names, ["platform.claude.com", "api.anthropic.com"]);
        assert_eq!(route.exclusive, ["api.anthropic.com"]);

        let plan = build(&entries(&[]), &BTreeMap::new(), &host(), false)
            .with_broker(route, &BTreeMap::new());
        let text = plan.to_string();
        assert!(
            text.contains("claude.ai console.anthropic.com: left the sandboxed user's allowlist"),
            "{text}"
        );
        assert!(
            text.contains("claude.com platform.claude.com: kept in the sandboxed user's allowlist (allowed explicitly: explicit wins)"),
            "{text}"
        );
        assert!(
            text.contains("api.anthropic.com: the broker's alone"),
            "{text}"
        );

        // Without the anthropic preset nothing is withdrawn, and a preset host given
        // explicitly stays the agent's whatever the broker does.
        let mut route = BrokerRoute::new(9, &[], None, Some("https://platform.claude.com/t"));
        let agent = route.agent_entries(&[], &entries(&["claude.ai", "platform.claude.com"]));
        assert_eq!(texts(&agent), ["claude.ai", "platform.claude.com"]);
        assert!(route.left.is_empty() && route.kept.is_empty());
    }

    #[test]
    fn the_brokers_names_are_its_to_reach_and_its_upstreams_name_no_one_elses() {
        let explicit = entries(&["gw.test", "*.gw.test:443", "other.test"]);
        let answers = resolved(&[
            ("gw.test", &["10.77.0.20", "fd77::20"]),
            ("tok.test", &["10.77.0.21"]),
            ("other.test", &["10.77.0.21"]),
        ]);
        // Control: without the broker an explicit entry opens the upstream to the agent
        // (any port by name, tcp 443 by the wildcard's apex).
        let open = build(&explicit, &answers, &host(), false);
        assert!(open.any.contains(ip("10.77.0.20")));
        let apex = build(&explicit[1..], &answers, &host(), false);
        assert!(apex.ports[&tcp(443)].contains(ip("10.77.0.20")));

        let mut route = BrokerRoute::new(
            9,
            &[],
            Some("https://GW.test.:8443/v1"),
            Some("https://tok.test/oauth/token"),
        );
        assert_eq!(route.names, ["tok.test", "gw.test"]);
        assert_eq!(route.exclusive, ["gw.test"]);
        let agent = route.agent_entries(&[], &explicit);
        assert_eq!(texts(&agent), ["*.gw.test:443", "other.test"]);
        assert_eq!(route.dropped, ["gw.test"]);

        // Resolver mode: static sets; the upstream's addresses are nobody's but the
        // broker's, a token host's address another name shares stays that name's.
        let plan = build(&agent, &answers, &host(), false).with_broker(route.clone(), &answers);
        for g in std::iter::once(&plan.any).chain(plan.ports.values()) {
            assert!(!g.contains(ip("10.77.0.20")), "{g:?}");
            assert!(!g.contains(ip("fd77::20")), "{g:?}");
        }
        assert!(plan.any.contains(ip("10.77.0.21")));
        let b = plan.broker.as_ref().unwrap();
        for a in ["10.77.0.20", "fd77::20", "10.77.0.21"] {
            assert!(b.addrs.contains(ip(a)), "{a} not the broker's: {b:?}");
        }
        let text = plan.to_string();
        assert!(
            text.contains("to the addresses of its names tok.test gw.test (resolved at start): 10.77.0.20 10.77.0.21 fd77::20"),
            "{text}"
        );
        assert!(
            text.contains("whatever the allowlist says (gw.test)"),
            "{text}"
        );
        let pos = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle} in {text}"))
        };
        assert!(pos("addresses of its names") < pos("reject  every other user"));
        assert!(pos("reject  every other user") < pos("accept  any port"));

        // Filter mode: the DNS filter's policy sends the upstream's answers to the
        // broker's sets only, the token host's to both when an entry names it too.
        let names = crate::policy::names::Policy::new(&agent).with_broker(&route.dns_names());
        use crate::policy::names::Group;
        assert_eq!(names.groups("gw.test"), [Group::Broker].into());
        assert_eq!(
            names.groups("x.gw.test"),
            [Group::Agent(Some(tcp(443)))].into()
        );
        assert_eq!(names.groups("tok.test"), [Group::Broker].into());
        assert_eq!(names.groups("other.test"), [Group::Agent(None)].into());
        let control = crate::policy::names::Policy::new(&explicit);
        assert!(control.groups("gw.test").contains(&Group::Agent(None)));
        let plan = build_mode(&agent, &BTreeMap::new(), &host(), false, true)
            .with_broker(route, &BTreeMap::new());
        assert!(plan
            .to_string()
            .contains("(answers of the DNS filter, expiring): (none)"));
    }

    fn tcp(n: u16) -> Port {
        Port {
            proto: Proto::Tcp,
            number: n,
        }
    }

    #[test]
    fn names_fill_both_families_and_duplicates_are_harmless() {
        let p = build(
            &entries(&["a.test", "b.test", "a.test"]),
            &resolved(&[
                ("a.test", &["10.77.0.2", "fd77::2"]),
                ("b.test", &["10.77.0.2", "10.77.0.3"]),
            ]),
            &host(),
            false,
        );
        assert_eq!(
            p.any.v4.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["10.77.0.2", "10.77.0.3"]
        );
        assert_eq!(p.any.v6.len(), 1);
        assert!(p.any.nets.is_empty());
        assert!(p.ports.is_empty());
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn unresolved_names_contribute_nothing() {
        let p = build(&entries(&["gone.test"]), &BTreeMap::new(), &host(), false);
        assert!(p.any.is_empty());
    }

    #[test]
    fn networks_are_merged_and_never_overlap() {
        let p = build(
            &entries(&[
                "10.1.0.0/24",
                "10.1.1.0/24",
                "10.1.0.128/25",
                "10.9.9.9",
                "10.1.0.5",
                "2001:db8::/32",
                "2001:db8:1::/48",
            ]),
            &BTreeMap::new(),
            &host(),
            false,
        );
        let nets: Vec<String> = p.any.nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.1.0.0/23", "2001:db8::/32"]);
        assert!(p.any.v4.contains(&"10.9.9.9".parse().unwrap()));
        // inside a network: no separate element
        assert_eq!(p.any.v4.len(), 1);
    }

    #[test]
    fn ports_group_by_protocol_and_skip_what_any_port_covers() {
        let p = build(
            &entries(&[
                "web.test:443",
                "10.2.0.0/16:443",
                "dns.test:53/udp",
                "10.3.0.0/16",
                "10.3.4.5:22",
            ]),
            &resolved(&[("web.test", &["10.77.0.4"]), ("dns.test", &["fd77::53"])]),
            &host(),
            false,
        );
        let web = &p.ports[&tcp(443)];
        assert!(web.v4.contains(&"10.77.0.4".parse().unwrap()));
        assert_eq!(web.nets, vec!["10.2.0.0/16".parse::<IpNet>().unwrap()]);
        let udp53 = &p.ports[&Port {
            proto: Proto::Udp,
            number: 53,
        }];
        assert!(udp53.v6.contains(&"fd77::53".parse().unwrap()));
        // 10.3.4.5:22 is inside an any-port network: no separate rule
        assert!(!p.ports.contains_key(&tcp(22)));
        assert!(
            !p.any.contains(ip("10.77.0.4")),
            "a port entry must not open every port"
        );
    }

    #[test]
    fn gateway_blocked_unless_opened() {
        let h = host();
        // default: both gateways blocked; a wide network covering one only warns
        let p = build(&entries(&["10.0.0.0/8"]), &BTreeMap::new(), &h, false);
        assert_eq!(p.blocked_gateways, h.gateways);
        assert!(
            p.warnings.iter().any(|w| w.contains("10.77.0.1")),
            "{:?}",
            p.warnings
        );
        // a name resolving to the gateway does not open it
        let p = build(
            &entries(&["sneaky.test"]),
            &resolved(&[("sneaky.test", &["10.77.0.1", "10.77.0.9"])]),
            &h,
            false,
        );
        assert!(!p.any.contains(ip("10.77.0.1")));
        assert!(p.any.contains(ip("10.77.0.9")));
        assert_eq!(p.blocked_gateways.len(), 2);
        // the exact address opens that one only
        let p = build(&entries(&["10.77.0.1:8080"]), &BTreeMap::new(), &h, false);
        assert_eq!(p.blocked_gateways, vec![ip("fd77::1")]);
        assert!(p.ports[&tcp(8080)].contains(ip("10.77.0.1")));
        // allow_gateway opens the addresses, not their subnets
        let p = build(&[], &BTreeMap::new(), &h, true);
        assert!(p.blocked_gateways.is_empty());
        assert!(p.any.contains(ip("10.77.0.1")) && p.any.contains(ip("fd77::1")));
        assert!(!p.any.contains(ip("10.77.0.2")));
        assert!(p.any.nets.is_empty());
    }

    #[test]
    fn dns_only_to_resolvers_and_root_upstream_for_loopback_resolvers() {
        let mut h = host();
        let p = build(&[], &BTreeMap::new(), &h, false);
        assert_eq!(p.dns, vec![ip("10.77.0.53")]);
        assert_eq!(p.root_dns, RootDns::Off);
        // Docker's embedded DNS: loopback, forwarding upstream as root
        h.resolvers = vec![ip("127.0.0.11")];
        let p = build(&[], &BTreeMap::new(), &h, false);
        assert!(p.dns.is_empty());
        assert_eq!(p.root_dns, RootDns::Any);
        h.ext_servers = Some(vec![ip("192.168.65.7")]);
        let p = build(&[], &BTreeMap::new(), &h, false);
        assert_eq!(p.root_dns, RootDns::To(vec![ip("192.168.65.7")]));
        // no resolver at all: no DNS allowance
        h.resolvers.clear();
        let p = build(&[], &BTreeMap::new(), &h, false);
        assert!(p.dns.is_empty());
        assert_eq!(p.root_dns, RootDns::Off);
    }

    #[test]
    fn wildcards_allow_the_apex_and_warn_once() {
        let p = build(
            &entries(&["*.a.test", "*.b.test:443"]),
            &resolved(&[("a.test", &["10.77.0.5"]), ("b.test", &["10.77.0.6"])]),
            &host(),
            false,
        );
        assert!(p.any.contains(ip("10.77.0.5")));
        assert!(p.ports[&tcp(443)].contains(ip("10.77.0.6")));
        let w: Vec<_> = p
            .warnings
            .iter()
            .filter(|w| w.contains("subdomains"))
            .collect();
        assert_eq!(w.len(), 1, "{:?}", p.warnings);
        assert!(w[0].contains("*.a.test") && w[0].contains("*.b.test:443"));
    }

    #[test]
    fn filter_mode_moves_names_to_dynamic_sets_and_dns_to_root() {
        let mut h = host();
        let p = build_mode(
            &entries(&["a.test", "*.w.test:443", "10.5.0.0/16", "10.6.0.1"]),
            &resolved(&[
                ("a.test", &["10.77.0.5", "fd77::5"]),
                ("w.test", &["10.77.0.6"]),
            ]),
            &h,
            false,
            true,
        );
        assert!(p.filter);
        // names: in the dynamic sets only; addresses and networks: static
        assert!(!p.any.contains(ip("10.77.0.5")));
        assert!(p.any.contains(ip("10.6.0.1")));
        assert_eq!(p.any.nets.len(), 1);
        assert!(p.ports.is_empty());
        assert!(p.dynamic[&None].contains(ip("10.77.0.5")));
        assert!(p.dynamic[&None].contains(ip("fd77::5")));
        assert!(p.dynamic[&Some(tcp(443))].contains(ip("10.77.0.6")));
        // no apex-only warning: wildcards are real here
        assert!(
            p.warnings.iter().all(|w| !w.contains("subdomains")),
            "{:?}",
            p.warnings
        );
        // the child reaches no resolver; root (the forwarder) reaches them
        assert!(p.dns.is_empty());
        assert_eq!(p.root_dns, RootDns::To(vec![ip("10.77.0.53")]));
        assert_eq!(p.upstreams, vec![ip("10.77.0.53")]);
        assert!(p.loopback_resolvers.is_empty());
        // Docker's embedded DNS: root forwards through it, the child is kept off it
        h.resolvers = vec![ip("127.0.0.11")];
        h.ext_servers = Some(vec![ip("192.168.65.7")]);
        let p = build_mode(&[], &BTreeMap::new(), &h, false, true);
        assert_eq!(p.loopback_resolvers, vec![ip("127.0.0.11")]);
        assert_eq!(p.root_dns, RootDns::To(vec![ip("192.168.65.7")]));
        assert!(p.to_string().contains("loopback resolver 127.0.0.11"));
        // a name entry whose name did not resolve still gets its (empty) sets
        let p = build_mode(
            &entries(&["gone.test:80"]),
            &BTreeMap::new(),
            &host(),
            false,
            true,
        );
        assert!(p.dynamic[&Some(tcp(80))].is_empty());
    }

    #[test]
    fn nobody_but_root_sends_from_a_resolver_address_in_either_mode() {
        let mut h = host();
        h.resolvers = vec![
            ip("127.0.0.11"),
            ip("10.77.0.53"),
            ip("127.0.0.1"),
            ip("::1"),
        ];
        h.ext_servers = Some(vec![ip("192.168.65.7"), ip("10.77.0.53")]);
        for filter in [false, true] {
            let p = build_mode(&[], &BTreeMap::new(), &h, false, filter);
            // the user's own loopback traffic comes from 127.0.0.1 and ::1: never listed
            assert_eq!(
                p.resolver_addrs,
                vec![ip("127.0.0.11"), ip("10.77.0.53"), ip("192.168.65.7")]
            );
            let shown = p.to_string();
            assert!(
                shown.contains("from port 53, or to loopback from a resolver address"),
                "{shown}"
            );
            assert!(shown.contains("in a flow root did not open"), "{shown}");
            let pos = |needle: &str| shown.find(needle).unwrap();
            assert!(pos("from port 53") < pos("accept  loopback"));
        }
    }

    #[test]
    fn display_lists_rules_in_order() {
        let p = build(
            &entries(&["10.5.0.0/16", "x.test:443"]),
            &resolved(&[("x.test", &["10.77.0.7"])]),
            &host(),
            false,
        );
        let s = p.to_string();
        let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} in {s}"));
        assert!(pos("loopback") < pos("udp+tcp 53 to 10.77.0.53"));
        assert!(pos("53 to") < pos("reject  gateway 10.77.0.1 fd77::1"));
        assert!(pos("gateway") < pos("any port: 10.5.0.0/16"));
        assert!(pos("tcp 443: 10.77.0.7") < pos("everything else"));
    }
}
