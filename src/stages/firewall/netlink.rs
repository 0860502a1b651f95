//! The plan as one nf_tables transaction (rustables 0.9 builds the messages), sent on our
//! own netlink socket, then read back. Only table `inet sandbox_init` is ever named: other
//! tables (Docker's nat rules for 127.0.0.11, for one) are never touched.

use crate::policy::allowlist::{Port, Proto};
use crate::policy::ruleset::{AddrGroup, Plan, RootDns};
use crate::sys::netlink::{self, cstr, Attrs, Socket};
use ipnet::IpNet;
use rustables::expr::{
    Bitwise, Cmp, CmpOp, ConnTrackState, Conntrack, ConntrackKey, Counter, HighLevelPayload,
    ICMPv6HeaderField, IPv4HeaderField, IPv6HeaderField, IcmpCode, Immediate, Lookup, Meta,
    MetaType, Nat, NatType, NetworkHeaderField, Register, Reject, RejectType, TCPHeaderField,
    TransportHeaderField, UDPHeaderField, VerdictKind,
};
use rustables::set::SetBuilder;
use rustables::{
    Batch, Chain, ChainPolicy, ChainType, Hook, HookClass, MsgType, ProtocolFamily, Rule, Table,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

pub use crate::policy::ruleset::TABLE;
use crate::policy::ruleset::{
    broker_set_name, set_name, DNS_LISTEN_V4, DNS_LISTEN_V6, DNS_PORT,
    DNS_REDIRECT_CHAIN as DNS_REDIRECT, INPUT_CHAIN as INPUT, NFLOG_GROUP, NFLOG_PREFIX,
    OUTPUT_CHAIN as OUTPUT, ROOT_DNS_MARK, SET_TIMEOUT,
};
/// Before Docker's nat output chain (-100, the 127.0.0.11 rule): the first chain that
/// translates a connection wins, so the child's queries to 127.0.0.11 come to us too.
const DNS_REDIRECT_PRIORITY: i32 = -150;
/// A regular chain the output chain jumps to before its final reject: what root allows in
/// a running sandbox (`sandbox-init allow`) lives there, replaced as a whole on each change.
pub const LIVE: &str = "live";
/// NFT_SET_TIMEOUT: the set's elements expire (the DNS filter re-adds them while valid).
const SET_FLAG_TIMEOUT: u32 = 0x10;

/// A finished transaction: the bytes, what each message does (index = sequence number - 1,
/// so a kernel error names the object it refused), and what the read-back must find.
pub struct Built {
    pub bytes: Vec<u8>,
    pub what: Vec<String>,
    pub expect: Expect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub marker: String,
    pub output_rules: usize,
    pub input_rules: usize,
    /// Rules of the DNS redirect chain (0 = no such chain: resolver mode).
    pub nat_rules: usize,
    /// Each set with its element count.
    pub sets: Vec<(String, usize)>,
}

struct Writer {
    batch: Batch,
    what: Vec<String>,
    output_rules: usize,
    input_rules: usize,
    nat_rules: usize,
    sets: Vec<(String, usize)>,
    log_blocked: bool,
}

impl Writer {
    fn new(log_blocked: bool) -> Writer {
        Writer {
            batch: Batch::new(),
            what: vec![],
            output_rules: 0,
            input_rules: 0,
            nat_rules: 0,
            sets: vec![],
            log_blocked,
        }
    }
}

// `Batch::add` is generic over a trait rustables does not export, so each call site names a
// concrete type; the macro keeps the description next to the message.
macro_rules! put {
    ($w:expr, $obj:expr, $kind:expr, $($what:tt)*) => {{
        $w.batch.add($obj, $kind);
        $w.what.push(format!($($what)*));
    }};
}

type BResult<T> = Result<T, String>;

fn berr(e: rustables::error::BuilderError) -> String {
    format!("building the ruleset: {e}")
}

/// `log_blocked`: whether reject rules also copy the packet to NFLOG for the reports of
/// blocked destinations (off only after a kernel refused the log expression).
pub fn build(plan: &Plan, marker: &str, log_blocked: bool) -> BResult<Built> {
    let mut w = Writer::new(log_blocked);
    // add + delete + add: replaces an existing table and works when there is none, all in
    // the one transaction (no moment without rules, no other table touched).
    let bare = Table::new(ProtocolFamily::Inet).with_name(TABLE);
    put!(w, &bare, MsgType::Add, "table inet {TABLE}");
    put!(
        w,
        &bare,
        MsgType::Del,
        "delete of the previous table inet {TABLE}"
    );
    let table = Table::new(ProtocolFamily::Inet)
        .with_name(TABLE)
        .with_userdata(comment_udata(marker));
    put!(w, &table, MsgType::Add, "table inet {TABLE}");

    let chain = |name: &str, hook: HookClass| {
        Chain::new(&table)
            .with_name(name)
            .with_hook(Hook::new(hook, 0))
            .with_type(ChainType::Filter)
            .with_policy(ChainPolicy::Drop)
    };
    let out = chain(OUTPUT, HookClass::Out);
    let inp = chain(INPUT, HookClass::In);
    put!(w, &out, MsgType::Add, "chain output (policy drop)");
    put!(w, &inp, MsgType::Add, "chain input (policy drop)");
    no_answers_for_resolvers(&mut w, &out, plan)?;
    if plan.filter {
        dns_filter_rules(&mut w, &table, &out, plan)?;
    }

    // Both chains start alike: loopback, replies, neighbour discovery. Input ends there
    // (policy drop); output goes on: DNS, gateway block, allowlist, reject.
    for (c, dir, lo) in [
        (&inp, "input", MetaType::IifName),
        (&out, "output", MetaType::OifName),
    ] {
        let is_input = dir == "input";
        let mut r = Rule::new(c).map_err(berr)?;
        iface(&mut r, lo, "lo");
        rule(&mut w, &r, is_input, format!("{dir}: accept loopback"));
        let est = format!("{dir}: accept ct established,related");
        rule(&mut w, &ct_established(c)?, is_input, est);
        let nd_what = format!("{dir}: accept icmpv6 neighbour discovery");
        rule(&mut w, &nd(c)?, is_input, nd_what);
    }

    for ip in &plan.dns {
        for proto in [Proto::Udp, Proto::Tcp] {
            let mut r = Rule::new(&out).map_err(berr)?;
            daddr_eq(&mut r, *ip);
            dport(&mut r, proto, 53);
            accept(&mut r);
            rule(
                &mut w,
                &r,
                false,
                format!("output: accept {proto} 53 to resolver {ip}"),
            );
        }
    }
    let root_targets: Vec<Option<IpAddr>> = match &plan.root_dns {
        RootDns::Off => vec![],
        RootDns::Any => vec![None],
        RootDns::To(list) => list.iter().map(|a| Some(*a)).collect(),
    };
    for target in root_targets {
        for proto in [Proto::Udp, Proto::Tcp] {
            let mut r = Rule::new(&out).map_err(berr)?;
            if let Some(ip) = target {
                daddr_eq(&mut r, ip);
            }
            dport(&mut r, proto, 53);
            // The sandboxed user is never uid 0: only PID 1 and a loopback resolver's
            // upstream forwarding (Docker's 127.0.0.11) match.
            r.add_expr(Meta::new(MetaType::SkUid));
            r.add_expr(Cmp::new(CmpOp::Eq, 0u32.to_ne_bytes()));
            accept(&mut r);
            let to = target.map_or("any server".to_string(), |a| a.to_string());
            rule(
                &mut w,
                &r,
                false,
                format!("output: accept {proto} 53 from uid 0 to {to}"),
            );
        }
    }
    for gw in &plan.blocked_gateways {
        reject_pair(
            &mut w,
            &out,
            |r| daddr_eq(r, *gw),
            &format!("to the default gateway {gw}"),
        )?;
    }

    if let Some(b) = &plan.broker {
        // Before the allowlist: the API's addresses are the broker's alone.
        for net in &b.nets {
            let mut r = Rule::new(&out).map_err(berr)?;
            dnet(&mut r, net)?;
            r.add_expr(Meta::new(MetaType::SkUid));
            r.add_expr(Cmp::new(CmpOp::Eq, b.uid.to_ne_bytes()));
            accept(&mut r);
            rule(
                &mut w,
                &r,
                false,
                format!(
                    "output: accept the credential broker (uid {}) to {net}",
                    b.uid
                ),
            );
        }
        broker_names(&mut w, &table, &out, plan, b)?;
        for net in &b.nets {
            // dnet cannot fail here: the same network passed it just above.
            reject_pair(
                &mut w,
                &out,
                |r| {
                    let _ = dnet(r, net);
                },
                &format!("every other user to {net} (the broker's)"),
            )?;
        }
    }
    group(&mut w, &table, &out, "any", None, &plan.any)?;
    for (port, g) in &plan.ports {
        let name = format!("{}{}", port.proto, port.number);
        group(&mut w, &table, &out, &name, Some(*port), g)?;
    }
    for (port, g) in &plan.dynamic {
        dynamic_group(&mut w, &table, &out, *port, g)?;
    }
    let live = Chain::new(&table).with_name(LIVE);
    put!(w, &live, MsgType::Add, "chain {LIVE} (the live allowlist)");
    let mut r = Rule::new(&out).map_err(berr)?;
    r.add_expr(Immediate::new_verdict(VerdictKind::Jump {
        chain: LIVE.to_string(),
    }));
    rule(&mut w, &r, false, format!("output: jump {LIVE}"));

    reject_pair(&mut w, &out, |_| {}, "to anything else")?;

    let expect = Expect {
        marker: marker.to_string(),
        output_rules: w.output_rules,
        input_rules: w.input_rules,
        nat_rules: w.nat_rules,
        sets: w.sets.clone(),
    };
    Ok(Built {
        bytes: w.batch.finalize(),
        what: w.what,
        expect,
    })
}

fn rule(w: &mut Writer, r: &Rule, input: bool, what: impl Into<String>) {
    let what: String = what.into();
    put!(w, r, MsgType::Add, "rule {what}");
    if input {
        w.input_rules += 1;
    } else {
        w.output_rules += 1;
    }
}

/// The accept rules of one address group: a set per family, a rule per network.
fn group(
    w: &mut Writer,
    table: &Table,
    out: &Chain,
    name: &str,
    port: Option<Port>,
    g: &AddrGroup,
) -> BResult<()> {
    let label = port.map_or("any port".to_string(), |p| {
        format!("{} {}", p.proto, p.number)
    });
    if !g.v4.is_empty() {
        let set_name = format!("{name}_v4");
        let mut b = SetBuilder::<Ipv4Addr>::new(&set_name, table).map_err(berr)?;
        g.v4.iter().for_each(|a| b.add(a));
        add_set_and_rule(
            w,
            out,
            b.finish(),
            SetKind::Static,
            &set_name,
            false,
            port,
            &label,
            g.v4.len(),
            None,
        )?;
    }
    if !g.v6.is_empty() {
        let set_name = format!("{name}_v6");
        let mut b = SetBuilder::<Ipv6Addr>::new(&set_name, table).map_err(berr)?;
        g.v6.iter().for_each(|a| b.add(a));
        add_set_and_rule(
            w,
            out,
            b.finish(),
            SetKind::Static,
            &set_name,
            true,
            port,
            &label,
            g.v6.len(),
            None,
        )?;
    }
    for net in &g.nets {
        let mut r = Rule::new(out).map_err(berr)?;
        dnet(&mut r, net)?;
        if let Some(p) = port {
            dport(&mut r, p.proto, p.number);
        }
        accept(&mut r);
        rule(w, &r, false, format!("output: accept {label} to {net}"));
    }
    Ok(())
}

/// A static set holds what the ruleset lists; a dynamic one what the DNS filter adds, each
/// element with a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetKind {
    Static,
    Dynamic,
}

#[allow(clippy::too_many_arguments)]
fn add_set_and_rule(
    w: &mut Writer,
    out: &Chain,
    (mut set, elems): (rustables::Set, rustables::set::SetElementList),
    kind: SetKind,
    set_name: &str,
    v6: bool,
    port: Option<Port>,
    label: &str,
    n: usize,
    only_uid: Option<u32>,
) -> BResult<()> {
    w.sets.push((set_name.to_string(), n));
    // The builder leaves the family unset; the id lets the rule find a set of this batch.
    set.family = ProtocolFamily::Inet;
    set.set_id(w.sets.len() as u32);
    if kind == SetKind::Dynamic {
        set.set_flags(SET_FLAG_TIMEOUT);
        set.set_timeout(SET_TIMEOUT.as_millis() as u64);
    }
    put!(w, &set, MsgType::Add, "set {set_name}");
    // A dynamic set may start empty (an element list must not be).
    if n > 0 {
        put!(w, &elems, MsgType::Add, "{n} elements of set {set_name}");
    }
    let mut r = Rule::new(out).map_err(berr)?;
    daddr_payload(&mut r, v6);
    r.add_expr(Lookup::new(&set).map_err(berr)?);
    if let Some(p) = port {
        dport(&mut r, p.proto, p.number);
    }
    if let Some(uid) = only_uid {
        r.add_expr(Meta::new(MetaType::SkUid));
        r.add_expr(Cmp::new(CmpOp::Eq, uid.to_ne_bytes()));
    }
    accept(&mut r);
    rule(
        w,
        &r,
        false,
        format!("output: accept {label} to @{set_name}"),
    );
    Ok(())
}

/// The sets of the broker's names' addresses and their accept rules for its uid alone:
/// static ones with what its names resolved to at start (resolver mode), or dynamic ones
/// the DNS filter fills (filter mode; created even when empty, as the filter adds to them).
fn broker_names(
    w: &mut Writer,
    table: &Table,
    out: &Chain,
    plan: &Plan,
    b: &crate::policy::ruleset::BrokerRoute,
) -> BResult<()> {
    let kind = if plan.filter {
        SetKind::Dynamic
    } else {
        SetKind::Static
    };
    let label = format!("the credential broker (uid {})", b.uid);
    let wanted = |n: usize| plan.filter || n > 0;
    if wanted(b.addrs.v4.len()) {
        let name = broker_set_name(plan.filter, false);
        let mut sb = SetBuilder::<Ipv4Addr>::new(&name, table).map_err(berr)?;
        b.addrs.v4.iter().for_each(|a| sb.add(a));
        let n = b.addrs.v4.len();
        add_set_and_rule(
            w,
            out,
            sb.finish(),
            kind,
            &name,
            false,
            None,
            &label,
            n,
            Some(b.uid),
        )?;
    }
    if wanted(b.addrs.v6.len()) {
        let name = broker_set_name(plan.filter, true);
        let mut sb = SetBuilder::<Ipv6Addr>::new(&name, table).map_err(berr)?;
        b.addrs.v6.iter().for_each(|a| sb.add(a));
        let n = b.addrs.v6.len();
        add_set_and_rule(
            w,
            out,
            sb.finish(),
            kind,
            &name,
            true,
            None,
            &label,
            n,
            Some(b.uid),
        )?;
    }
    Ok(())
}

/// The live chain's new content, one transaction: its old rules go, then a rule per live
/// address or network, and the dynamic sets (with their rules) of port groups only live
/// names use (re-adding an existing set changes nothing, so they persist across changes).
pub fn build_live(new_groups: &[Option<Port>], nets: &[(IpNet, Option<Port>)]) -> BResult<Built> {
    let mut w = Writer::new(false);
    let table = Table::new(ProtocolFamily::Inet).with_name(TABLE);
    let live = Chain::new(&table).with_name(LIVE);
    // A rule without a handle in a delete message: every rule of the chain (`nft flush chain`).
    put!(
        w,
        &Rule::new(&live).map_err(berr)?,
        MsgType::Del,
        "flush of chain {LIVE}"
    );
    for port in new_groups {
        dynamic_group(&mut w, &table, &live, *port, &AddrGroup::default())?;
    }
    let mut by_port: std::collections::BTreeMap<Option<Port>, AddrGroup> = Default::default();
    for (net, port) in nets {
        by_port.entry(*port).or_default().nets.push(*net);
    }
    for (port, g) in &by_port {
        group(&mut w, &table, &live, LIVE, *port, g)?;
    }
    let expect = Expect {
        marker: String::new(),
        output_rules: w.output_rules,
        input_rules: 0,
        nat_rules: 0,
        sets: w.sets.clone(),
    };
    Ok(Built {
        bytes: w.batch.finalize(),
        what: w.what,
        expect,
    })
}

/// Rejects what `matching` selects at once, never leaving it to time out: TCP gets a reset
/// (the fastest failure for a local connect, on IPv6 too), everything else ICMP
/// admin-prohibited. Both rules count and report.
fn reject_pair(
    w: &mut Writer,
    out: &Chain,
    matching: impl Fn(&mut Rule),
    what: &str,
) -> BResult<()> {
    let mut r = Rule::new(out).map_err(berr)?;
    matching(&mut r);
    l4proto(&mut r, libc::IPPROTO_TCP as u8);
    counted_and_logged(&mut r, w.log_blocked)?;
    r.add_expr(Reject::default().with_type(RejectType::TcpRst));
    rule(w, &r, false, format!("output: reset TCP {what}"));
    let mut r = Rule::new(out).map_err(berr)?;
    matching(&mut r);
    counted_and_logged(&mut r, w.log_blocked)?;
    r.add_expr(
        Reject::default()
            .with_type(RejectType::IcmpxUnreach)
            .with_icmp_code(IcmpCode::AdminProhibited),
    );
    rule(
        w,
        &r,
        false,
        format!("output: reject {what} (admin-prohibited)"),
    );
    Ok(())
}

/// Every reject rule counts and sends the packet's header to NFLOG group `NFLOG_GROUP`,
/// where PID 1 reads it to say what was blocked and how to allow it (with no reader bound,
/// the kernel discards the copy).
fn counted_and_logged(r: &mut Rule, log: bool) -> BResult<()> {
    r.add_expr(Counter::default());
    if log {
        r.add_expr(rustables::expr::Log::new(Some(NFLOG_GROUP), Some(NFLOG_PREFIX)).map_err(berr)?);
    }
    Ok(())
}

/// The dynamic sets of one port group (filled by PID 1's DNS filter) and their rules.
fn dynamic_group(
    w: &mut Writer,
    table: &Table,
    out: &Chain,
    port: Option<Port>,
    g: &AddrGroup,
) -> BResult<()> {
    let label = port.map_or("any port".to_string(), |p| {
        format!("{} {}", p.proto, p.number)
    });
    let name = set_name(port, false);
    let mut b = SetBuilder::<Ipv4Addr>::new(&name, table).map_err(berr)?;
    g.v4.iter().for_each(|a| b.add(a));
    add_set_and_rule(
        w,
        out,
        b.finish(),
        SetKind::Dynamic,
        &name,
        false,
        port,
        &label,
        g.v4.len(),
        None,
    )?;
    let name = set_name(port, true);
    let mut b = SetBuilder::<Ipv6Addr>::new(&name, table).map_err(berr)?;
    g.v6.iter().for_each(|a| b.add(a));
    add_set_and_rule(
        w,
        out,
        b.finish(),
        SetKind::Dynamic,
        &name,
        true,
        port,
        &label,
        g.v6.len(),
        None,
    )
}

/// DNS `filter` mode: a nat chain sends every port-53 packet of the child (any uid but 0)
/// to the forwarder on loopback; the output chain, first of all, lets DNS reach the
/// forwarder, rejects the child's DNS to anything else (should the redirect ever miss) and
/// keeps the child off loopback resolvers (Docker's 127.0.0.11 listens on a second,
/// unprivileged port that a redirect of port 53 would not cover).
fn dns_filter_rules(w: &mut Writer, table: &Table, out: &Chain, plan: &Plan) -> BResult<()> {
    let nat = Chain::new(table)
        .with_name(DNS_REDIRECT)
        .with_hook(Hook::new(HookClass::Out, DNS_REDIRECT_PRIORITY))
        .with_type(ChainType::Nat)
        .with_policy(ChainPolicy::Accept);
    put!(
        w,
        &nat,
        MsgType::Add,
        "chain {DNS_REDIRECT} (nat output, priority {DNS_REDIRECT_PRIORITY})"
    );
    let not_root = |r: &mut Rule| {
        r.add_expr(Meta::new(MetaType::SkUid));
        r.add_expr(Cmp::new(CmpOp::Neq, 0u32.to_ne_bytes()));
    };
    let targets = [
        (false, IpAddr::V4(DNS_LISTEN_V4), ProtocolFamily::Ipv4),
        (true, IpAddr::V6(DNS_LISTEN_V6), ProtocolFamily::Ipv6),
    ];
    for (v6, to, family) in targets {
        for proto in [Proto::Udp, Proto::Tcp] {
            let mut r = Rule::new(&nat).map_err(berr)?;
            r.add_expr(Meta::new(MetaType::NfProto));
            let nfproto = if v6 {
                libc::NFPROTO_IPV6
            } else {
                libc::NFPROTO_IPV4
            };
            r.add_expr(Cmp::new(CmpOp::Eq, [nfproto as u8]));
            dport(&mut r, proto, 53);
            not_root(&mut r);
            r.add_expr(Immediate::new_data(octets(to), Register::Reg1));
            r.add_expr(Immediate::new_data(
                DNS_PORT.to_be_bytes().to_vec(),
                Register::Reg2,
            ));
            r.add_expr(
                Nat::default()
                    .with_nat_type(NatType::DNat)
                    .with_family(family)
                    .with_ip_register(Register::Reg1)
                    .with_port_register(Register::Reg2),
            );
            put!(
                w,
                &r,
                MsgType::Add,
                "rule {DNS_REDIRECT}: {proto} 53 of non-root users to {to} port {DNS_PORT}"
            );
            w.nat_rules += 1;
        }
    }
    // After the redirect the destination is the forwarder (any user may ask it).
    for (_, to, _) in targets {
        for proto in [Proto::Udp, Proto::Tcp] {
            let mut r = Rule::new(out).map_err(berr)?;
            daddr_eq(&mut r, to);
            dport(&mut r, proto, DNS_PORT);
            accept(&mut r);
            rule(
                w,
                &r,
                false,
                format!("output: accept {proto} 53 to the DNS filter {to}"),
            );
        }
    }
    for proto in [Proto::Udp, Proto::Tcp] {
        let mut r = Rule::new(out).map_err(berr)?;
        dport(&mut r, proto, 53);
        not_root(&mut r);
        r.add_expr(Counter::default());
        r.add_expr(reject_for(proto));
        rule(
            w,
            &r,
            false,
            format!("output: reject other {proto} 53 of non-root users"),
        );
    }
    for lr in &plan.loopback_resolvers {
        for proto in [Some(Proto::Tcp), None] {
            let mut r = Rule::new(out).map_err(berr)?;
            daddr_eq(&mut r, *lr);
            if proto.is_some() {
                l4proto(&mut r, libc::IPPROTO_TCP as u8);
            }
            not_root(&mut r);
            r.add_expr(Counter::default());
            r.add_expr(reject_for(proto.unwrap_or(Proto::Udp)));
            rule(
                w,
                &r,
                false,
                format!("output: reject non-root users to the loopback resolver {lr}"),
            );
        }
    }
    Ok(())
}

/// Nobody but root answers in a resolver's name, in either DNS mode (first rules of the
/// output chain, before loopback is accepted):
///
/// - no packet of a non-root socket from a resolver's address to a local socket
///   (IPV6_FREEBIND lets any user bind an upstream's address and send from it over the
///   local route), and none from port 53 (any user may bind 127.0.0.11:53 in a container):
///   so no answer can come from where a resolver answers, and no conntrack flow can be
///   planted whose reply direction is a root process's next query (conntrack would then
///   deliver that query to the planter, past Docker's DNAT);
/// - a root process's packet to port 53 must belong to a flow root opened: its first
///   packet marks the flow (conntrack mark bit), and a root query that conntrack places in
///   someone else's flow, or finds invalid, is dropped.
///
/// The kernel offers no cheap match for "to the socket of PID 1" in the output hook, and
/// dropping at input comes after conntrack has confirmed a planted flow: hence the two
/// ends above, the sender's identity and the query's flow.
fn no_answers_for_resolvers(w: &mut Writer, out: &Chain, plan: &Plan) -> BResult<()> {
    let not_root = |r: &mut Rule, op: CmpOp| {
        r.add_expr(Meta::new(MetaType::SkUid));
        r.add_expr(Cmp::new(op, 0u32.to_ne_bytes()));
    };
    for addr in &plan.resolver_addrs {
        let mut r = Rule::new(out).map_err(berr)?;
        saddr_eq(&mut r, *addr);
        iface_is(&mut r, MetaType::OifName, "lo");
        not_root(&mut r, CmpOp::Neq);
        counted_drop(&mut r);
        rule(
            w,
            &r,
            false,
            format!("output: drop non-root users from the resolver address {addr}"),
        );
    }
    for proto in [Proto::Udp, Proto::Tcp] {
        let mut r = Rule::new(out).map_err(berr)?;
        sport(&mut r, proto, 53);
        not_root(&mut r, CmpOp::Neq);
        counted_drop(&mut r);
        rule(
            w,
            &r,
            false,
            format!("output: drop non-root users from {proto} port 53"),
        );
    }
    let mark = ROOT_DNS_MARK.to_ne_bytes();
    for proto in [Proto::Udp, Proto::Tcp] {
        let root_dns = |r: &mut Rule| {
            dport(r, proto, 53);
            not_root(r, CmpOp::Eq);
        };
        let mut r = Rule::new(out).map_err(berr)?;
        root_dns(&mut r);
        ct_state_is(&mut r, ConnTrackState::INVALID)?;
        counted_drop(&mut r);
        rule(
            w,
            &r,
            false,
            format!("output: drop root's {proto} 53 that conntrack finds invalid"),
        );
        // ct mark |= ROOT_DNS_MARK on the first packet of root's own flow.
        let mut r = Rule::new(out).map_err(berr)?;
        root_dns(&mut r);
        ct_state_is(&mut r, ConnTrackState::NEW)?;
        r.add_expr(Conntrack::new(ConntrackKey::Mark));
        r.add_expr(Bitwise::new((!ROOT_DNS_MARK).to_ne_bytes(), mark).map_err(berr)?);
        r.add_expr(Conntrack::default().with_mark_value(Register::Reg1));
        rule(
            w,
            &r,
            false,
            format!("output: mark the flow of root's new {proto} 53"),
        );
        let mut r = Rule::new(out).map_err(berr)?;
        root_dns(&mut r);
        r.add_expr(Conntrack::new(ConntrackKey::Mark));
        r.add_expr(Bitwise::new(mark, 0u32.to_ne_bytes()).map_err(berr)?);
        r.add_expr(Cmp::new(CmpOp::Eq, 0u32.to_ne_bytes()));
        counted_drop(&mut r);
        rule(
            w,
            &r,
            false,
            format!("output: drop root's {proto} 53 in a flow root did not open"),
        );
    }
    Ok(())
}

fn counted_drop(r: &mut Rule) {
    r.add_expr(Counter::default());
    r.add_expr(Immediate::new_verdict(VerdictKind::Drop));
}

/// `ct state` has one of the bits of `states`.
fn ct_state_is(r: &mut Rule, states: ConnTrackState) -> BResult<()> {
    r.add_expr(Conntrack::new(ConntrackKey::State));
    r.add_expr(Bitwise::new(states.bits().to_ne_bytes(), 0u32.to_ne_bytes()).map_err(berr)?);
    r.add_expr(Cmp::new(CmpOp::Neq, 0u32.to_ne_bytes()));
    Ok(())
}

/// TCP reset for TCP (the fastest failure), admin-prohibited for the rest.
fn reject_for(proto: Proto) -> Reject {
    match proto {
        Proto::Tcp => Reject::default().with_type(RejectType::TcpRst),
        Proto::Udp => Reject::default()
            .with_type(RejectType::IcmpxUnreach)
            .with_icmp_code(IcmpCode::AdminProhibited),
    }
}

fn iface(r: &mut Rule, key: MetaType, name: &str) {
    iface_is(r, key, name);
    accept(r);
}

fn iface_is(r: &mut Rule, key: MetaType, name: &str) {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    r.add_expr(Meta::new(key));
    r.add_expr(Cmp::new(CmpOp::Eq, v));
}

fn accept(r: &mut Rule) {
    r.add_expr(Immediate::new_verdict(VerdictKind::Accept));
}

fn ct_established(chain: &Chain) -> BResult<Rule> {
    let mut r = Rule::new(chain).map_err(berr)?;
    ct_state_is(
        &mut r,
        ConnTrackState::ESTABLISHED | ConnTrackState::RELATED,
    )?;
    accept(&mut r);
    Ok(r)
}

/// icmpv6 types 133-136 (router/neighbour solicitation and advertisement): without them
/// IPv6 stops resolving link-layer addresses under a drop policy.
fn nd(chain: &Chain) -> BResult<Rule> {
    let mut r = Rule::new(chain).map_err(berr)?;
    l4proto(&mut r, libc::IPPROTO_ICMPV6 as u8);
    r.add_expr(
        HighLevelPayload::Transport(TransportHeaderField::ICMPv6(ICMPv6HeaderField::Type)).build(),
    );
    r.add_expr(Cmp::new(CmpOp::Gte, [133u8]));
    r.add_expr(Cmp::new(CmpOp::Lte, [136u8]));
    accept(&mut r);
    Ok(r)
}

fn l4proto(r: &mut Rule, proto: u8) {
    r.add_expr(Meta::new(MetaType::L4Proto));
    r.add_expr(Cmp::new(CmpOp::Eq, [proto]));
}

fn dport(r: &mut Rule, proto: Proto, port: u16) {
    let field = match proto {
        Proto::Tcp => {
            l4proto(r, libc::IPPROTO_TCP as u8);
            TransportHeaderField::Tcp(TCPHeaderField::Dport)
        }
        Proto::Udp => {
            l4proto(r, libc::IPPROTO_UDP as u8);
            TransportHeaderField::Udp(UDPHeaderField::Dport)
        }
    };
    r.add_expr(HighLevelPayload::Transport(field).build());
    r.add_expr(Cmp::new(CmpOp::Eq, port.to_be_bytes()));
}

fn sport(r: &mut Rule, proto: Proto, port: u16) {
    let field = match proto {
        Proto::Tcp => {
            l4proto(r, libc::IPPROTO_TCP as u8);
            TransportHeaderField::Tcp(TCPHeaderField::Sport)
        }
        Proto::Udp => {
            l4proto(r, libc::IPPROTO_UDP as u8);
            TransportHeaderField::Udp(UDPHeaderField::Sport)
        }
    };
    r.add_expr(HighLevelPayload::Transport(field).build());
    r.add_expr(Cmp::new(CmpOp::Eq, port.to_be_bytes()));
}

/// `meta nfproto ipv4|ipv6` then the destination address into register 1.
fn daddr_payload(r: &mut Rule, v6: bool) {
    r.add_expr(Meta::new(MetaType::NfProto));
    let (proto, field) = if v6 {
        (
            libc::NFPROTO_IPV6,
            NetworkHeaderField::IPv6(IPv6HeaderField::Daddr),
        )
    } else {
        (
            libc::NFPROTO_IPV4,
            NetworkHeaderField::IPv4(IPv4HeaderField::Daddr),
        )
    };
    r.add_expr(Cmp::new(CmpOp::Eq, [proto as u8]));
    r.add_expr(HighLevelPayload::Network(field).build());
}

fn daddr_eq(r: &mut Rule, ip: IpAddr) {
    daddr_payload(r, ip.is_ipv6());
    r.add_expr(Cmp::new(CmpOp::Eq, octets(ip)));
}

fn saddr_eq(r: &mut Rule, ip: IpAddr) {
    r.add_expr(Meta::new(MetaType::NfProto));
    let (proto, field) = if ip.is_ipv6() {
        (
            libc::NFPROTO_IPV6,
            NetworkHeaderField::IPv6(IPv6HeaderField::Saddr),
        )
    } else {
        (
            libc::NFPROTO_IPV4,
            NetworkHeaderField::IPv4(IPv4HeaderField::Saddr),
        )
    };
    r.add_expr(Cmp::new(CmpOp::Eq, [proto as u8]));
    r.add_expr(HighLevelPayload::Network(field).build());
    r.add_expr(Cmp::new(CmpOp::Eq, octets(ip)));
}

fn dnet(r: &mut Rule, net: &IpNet) -> BResult<()> {
    daddr_payload(r, matches!(net, IpNet::V6(_)));
    let mask = octets(net.netmask());
    let zero = vec![0u8; mask.len()];
    r.add_expr(Bitwise::new(mask, zero).map_err(berr)?);
    r.add_expr(Cmp::new(CmpOp::Eq, octets(net.network())));
    Ok(())
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A table comment in nft's userdata format (type 0 = comment, NUL-terminated), so
/// `nft list` shows it and the read-back can recognise our own table.
fn comment_udata(text: &str) -> Vec<u8> {
    let mut s: Vec<u8> = text.bytes().take(250).collect();
    s.push(0);
    let mut v = vec![0u8, s.len() as u8];
    v.extend(s);
    v
}

/// A failure to program the kernel, with enough detail for a diagnosis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NlError {
    /// socket(AF_NETLINK, NETLINK_NETFILTER) failed: no nf_tables netlink here.
    Open(i32),
    Send(i32),
    Recv(i32),
    /// The kernel refused message `seq` (0 = the batch itself).
    Kernel {
        errno: i32,
        seq: u32,
    },
}

impl From<netlink::Error> for NlError {
    fn from(e: netlink::Error) -> NlError {
        match e {
            netlink::Error::Open(n) => NlError::Open(n),
            netlink::Error::Send(n) => NlError::Send(n),
            netlink::Error::Recv(n) => NlError::Recv(n),
            netlink::Error::Refused { errno, seq } => NlError::Kernel { errno, seq },
            netlink::Error::NoAnswer => NlError::Recv(libc::EAGAIN),
        }
    }
}

/// The socket that committed a transaction. Closing it right after the commit waits for an
/// RCU grace period (~8 ms here), so PID 1 keeps the one that committed its table for as
/// long as it runs (close-on-exec: the command never sees it) and reads the table back on it.
#[derive(Debug)]
#[must_use = "closing the socket that committed waits for an RCU grace period"]
pub struct Committed(Socket);

/// Sends the batch and waits for every acknowledgement. Our own socket (not rustables'):
/// a large allowlist exceeds the default send buffer, and the acks carry the sequence
/// number of a refused message.
pub fn send(built: &Built) -> Result<Committed, NlError> {
    let last_seq = built.what.len() as u32;
    let sock = Socket::open(Some(Duration::from_secs(5)))?;
    // Best effort: FORCE needs CAP_NET_ADMIN (without it the batch fails anyway, with EPERM).
    sock.force_send_buffer(built.bytes.len() + 65536);
    sock.force_recv_buffer(1 << 20);
    sock.cap_acks();
    sock.batch(&built.bytes, last_seq)?;
    Ok(Committed(sock))
}

// nf_tables attribute numbers (linux/netfilter/nf_tables.h) the read-back needs.
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;

/// Reads the table back over netlink and checks it is ours and complete: exactly one
/// `inet sandbox_init` with our marker, both base chains on their hooks with policy drop,
/// every rule, every set element. (Our own dump parsing: rustables 0.9 decodes a drop
/// policy as accept and cannot list set elements; and the socket that committed is
/// reused, as closing one right after a commit waits for an RCU grace period.)
pub fn verify(committed: &Committed, expect: &Expect) -> Result<(), String> {
    let fd = &committed.0;
    let rb = |e: i32| {
        format!(
            "reading the table back: {}",
            std::io::Error::from_raw_os_error(e)
        )
    };
    let tables: Vec<Attrs> = dump(fd, NFT_MSG_GETTABLE, &[])
        .map_err(rb)?
        .into_iter()
        .filter(|a| a.str(NFTA_TABLE_NAME) == Some(TABLE))
        .collect();
    let want = comment_udata(&expect.marker);
    match tables.as_slice() {
        [t] if t.get(NFTA_TABLE_USERDATA) == Some(&want[..]) => {}
        [_] => return Err(format!("table inet {TABLE} does not carry our marker")),
        other => {
            return Err(format!(
                "expected one table inet {TABLE}, found {}",
                other.len()
            ))
        }
    }
    let chains = dump(fd, NFT_MSG_GETCHAIN, &[]).map_err(rb)?;
    for (name, hook, want) in [
        (OUTPUT, HookClass::Out, expect.output_rules),
        (INPUT, HookClass::In, expect.input_rules),
    ] {
        let c = chains
            .iter()
            .find(|c| {
                c.str(NFTA_CHAIN_TABLE) == Some(TABLE) && c.str(NFTA_CHAIN_NAME) == Some(name)
            })
            .ok_or_else(|| format!("chain {name} is missing"))?;
        let hooknum = c
            .get(NFTA_CHAIN_HOOK)
            .and_then(|h| Attrs::parse(h).be32(NFTA_HOOK_HOOKNUM));
        if hooknum != Some(hook as u32) {
            return Err(format!("chain {name} is not on its hook"));
        }
        if c.be32(NFTA_CHAIN_POLICY) != Some(libc::NF_DROP as u32) {
            return Err(format!("chain {name} does not have policy drop"));
        }
        let filter = [
            (NFTA_RULE_TABLE, cstr(TABLE)),
            (NFTA_RULE_CHAIN, cstr(name)),
        ];
        let rules = dump(fd, NFT_MSG_GETRULE, &filter)
            .map_err(rb)?
            .into_iter()
            .filter(|r| {
                r.str(NFTA_RULE_TABLE) == Some(TABLE) && r.str(NFTA_RULE_CHAIN) == Some(name)
            })
            .count();
        if rules != want {
            return Err(format!("chain {name} has {rules} rules, expected {want}"));
        }
    }
    if expect.nat_rules > 0 {
        let c = chains
            .iter()
            .find(|c| {
                c.str(NFTA_CHAIN_TABLE) == Some(TABLE)
                    && c.str(NFTA_CHAIN_NAME) == Some(DNS_REDIRECT)
            })
            .ok_or_else(|| format!("chain {DNS_REDIRECT} is missing"))?;
        let hook = c.get(NFTA_CHAIN_HOOK).map(Attrs::parse);
        let hooknum = hook.as_ref().and_then(|h| h.be32(NFTA_HOOK_HOOKNUM));
        let prio = hook.as_ref().and_then(|h| h.be32(NFTA_HOOK_PRIORITY));
        if hooknum != Some(HookClass::Out as u32) || prio != Some(DNS_REDIRECT_PRIORITY as u32) {
            return Err(format!("chain {DNS_REDIRECT} is not on its hook"));
        }
        let filter = [
            (NFTA_RULE_TABLE, cstr(TABLE)),
            (NFTA_RULE_CHAIN, cstr(DNS_REDIRECT)),
        ];
        let rules = dump(fd, NFT_MSG_GETRULE, &filter)
            .map_err(rb)?
            .into_iter()
            .filter(|r| r.str(NFTA_RULE_CHAIN) == Some(DNS_REDIRECT))
            .count();
        if rules != expect.nat_rules {
            return Err(format!(
                "chain {DNS_REDIRECT} has {rules} rules, expected {}",
                expect.nat_rules
            ));
        }
    }
    for (set, want) in &expect.sets {
        let filter = [
            (NFTA_SET_ELEM_LIST_TABLE, cstr(TABLE)),
            (NFTA_SET_ELEM_LIST_SET, cstr(set)),
        ];
        let n: usize = dump(fd, NFT_MSG_GETSETELEM, &filter)
            .map_err(rb)?
            .iter()
            .filter_map(|m| m.get(NFTA_SET_ELEM_LIST_ELEMENTS))
            .map(|list| Attrs::parse(list).len())
            .sum();
        if n != *want {
            return Err(format!("set {set} holds {n} elements, expected {want}"));
        }
    }
    Ok(())
}

/// Whether this process could program nf_tables (same socket, capability and subsystem as
/// applying), changing nothing: lists the tables.
pub fn probe() -> Result<(), NlError> {
    let sock = Socket::open(None)?;
    dump(&sock, NFT_MSG_GETTABLE, &[])
        .map(|_| ())
        .map_err(|errno| NlError::Kernel { errno, seq: 0 })
}

/// One NLM_F_DUMP request of nf_tables message `msg` for family inet; the attributes of
/// every answer.
fn dump(sock: &Socket, msg: u16, attrs: &[(u16, Vec<u8>)]) -> Result<Vec<Attrs>, i32> {
    let ty = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | msg;
    let answers = sock.dump(ty, libc::NFPROTO_INET as u8, attrs)?;
    Ok(answers.into_iter().map(|d| d.attrs).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::hostnet::HostNet;
    use crate::policy::ruleset as plan;
    use std::collections::BTreeMap;

    #[test]
    fn a_live_change_replaces_the_live_chain_only() {
        let tcp = |number| {
            Some(Port {
                proto: Proto::Tcp,
                number,
            })
        };
        let nets = [
            ("10.250.7.20/32".parse().unwrap(), tcp(8081)),
            ("10.9.0.0/16".parse().unwrap(), None),
        ];
        let b = build_live(&[tcp(8443)], &nets).unwrap();
        assert_eq!(b.what[0], "flush of chain live");
        // the new group's two dynamic sets and their rules, one rule per network
        assert_eq!(b.expect.sets.len(), 2);
        assert_eq!(b.expect.output_rules, 2 + 2);
        assert!(b.what.iter().all(|w| !w.contains("table")), "{:?}", b.what);
        let empty = build_live(&[], &[]).unwrap();
        assert_eq!(empty.what, vec!["flush of chain live".to_string()]);
    }

    #[test]
    fn batch_describes_every_message_and_counts_rules() {
        let entries: Vec<crate::policy::allowlist::Entry> = ["a.test", "10.1.0.0/16", "b.test:443"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let resolved: BTreeMap<String, Vec<IpAddr>> = [
            (
                "a.test".to_string(),
                vec!["10.77.0.2".parse().unwrap(), "fd77::2".parse().unwrap()],
            ),
            ("b.test".to_string(), vec!["10.77.0.3".parse().unwrap()]),
        ]
        .into_iter()
        .collect();
        let host = HostNet {
            resolvers: vec!["10.77.0.53".parse().unwrap()],
            ext_servers: None,
            gateways: vec!["10.77.0.1".parse().unwrap()],
        };
        let p = plan::build(&entries, &resolved, &host, false);
        let b = build(&p, "sandbox-init test", true).unwrap();
        // Without NFLOG the same rules, only shorter (the fallback for kernels that lack it).
        let plain = build(&p, "sandbox-init test", false).unwrap();
        assert_eq!(plain.expect, b.expect);
        assert_eq!(plain.what, b.what);
        // The reject rules lose their log expression (and its prefix).
        assert!(plain.bytes.len() < b.bytes.len());
        let log_attr = NFLOG_PREFIX.as_bytes();
        let has = |bytes: &[u8]| bytes.windows(log_attr.len()).any(|w| w == log_attr);
        assert!(has(&b.bytes) && !has(&plain.bytes));
        assert_eq!(b.expect.input_rules, 3);
        // 9 against answering for a resolver (1 resolver address, 2 ports, 3 x 2 root
        // flow rules), lo, ct, nd, 2 dns, 2 gateway, any_v4, any_v6, 10.1/16, tcp443_v4,
        // the jump to the live chain, 2 rejects
        assert_eq!(b.expect.output_rules, 9 + 14);
        assert_eq!(b.expect.sets.len(), 3);
        assert!(b.expect.sets.contains(&("any_v6".to_string(), 1)));
        // 3 tables + 3 chains + 3 sets with elements + 26 rules
        assert_eq!(b.what.len(), 3 + 3 + 6 + 26);
        assert!(b.what.iter().any(|w| w == "rule output: jump live"));
        assert!(b.what[1].starts_with("delete of the previous table"));
        // They come first, before loopback is accepted.
        let first_rules: Vec<&String> = b.what.iter().filter(|w| w.starts_with("rule")).collect();
        assert_eq!(
            first_rules[0],
            "rule output: drop non-root users from the resolver address 10.77.0.53"
        );
        assert!(
            first_rules[1].contains("from udp port 53"),
            "{first_rules:?}"
        );
        assert!(first_rules[8].contains("tcp 53 in a flow root did not open"));
        assert!(
            first_rules[9].contains("accept loopback"),
            "{first_rules:?}"
        );
        assert!(b.what.iter().any(|w| w == "1 elements of set tcp443_v4"));
        assert!(!b.bytes.is_empty());
    }

    #[test]
    fn the_brokers_name_sets_are_its_uids_alone_next_to_its_networks() {
        let host = HostNet {
            resolvers: vec!["10.77.0.53".parse().unwrap()],
            ext_servers: None,
            gateways: vec![],
        };
        // A uid whose bytes nothing else in the batch holds.
        const UID: u32 = 0x5eed_b10c;
        let route = plan::BrokerRoute::new(
            UID,
            &["anthropic".to_string()],
            Some("https://gw.test"),
            None,
        );
        let answers: BTreeMap<String, Vec<IpAddr>> =
            [("gw.test".to_string(), vec!["10.77.0.20".parse().unwrap()])].into();
        let rules = |b: &Built| -> Vec<String> {
            b.what
                .iter()
                .filter(|w| w.starts_with("rule"))
                .cloned()
                .collect()
        };
        // Control: without the broker no such set.
        let bare = build(&plan::build(&[], &answers, &host, false), "t", true).unwrap();
        assert!(bare.expect.sets.iter().all(|(n, _)| !n.contains("broker")));

        // Resolver mode: a static set with what the names resolved to (none for an empty
        // family).
        let p = plan::build(&[], &answers, &host, false).with_broker(route.clone(), &answers);
        let b = build(&p, "t", true).unwrap();
        assert_eq!(b.expect.sets, vec![("broker_v4".to_string(), 1)]);
        let r = rules(&b);
        let pos = |r: &[String], needle: &str| {
            r.iter()
                .position(|w| w.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in {r:?}"))
        };
        let broker = format!("accept the credential broker (uid {UID}) to");
        let set_rule = pos(&r, &format!("{broker} @broker_v4"));
        assert!(pos(&r, &format!("{broker} 160.79.104.0/23")) < set_rule);
        assert!(set_rule < pos(&r, "every other user to 160.79.104.0/23"));

        // Filter mode: both dynamic sets, empty, with the timeout of every dynamic set.
        let p = plan::build_mode(&[], &BTreeMap::new(), &host, false, true)
            .with_broker(route, &BTreeMap::new());
        let b = build(&p, "t", true).unwrap();
        for name in ["dyn_broker_v4", "dyn_broker_v6"] {
            assert!(
                b.expect.sets.contains(&(name.to_string(), 0)),
                "{:?}",
                b.expect.sets
            );
        }
        let r = rules(&b);
        assert!(pos(&r, "to @dyn_broker_v6") < pos(&r, "every other user to"));
        // The uid match is in the rule: its uid's bytes follow the skuid load.
        let uid = UID.to_ne_bytes();
        assert!(b.bytes.windows(4).any(|w| w == uid));
        assert!(!bare.bytes.windows(4).any(|w| w == uid));
    }

    #[test]
    fn comment_is_nft_userdata() {
        assert_eq!(comment_udata("ab"), vec![0, 3, b'a', b'b', 0]);
    }
}
