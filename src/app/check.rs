//! `sandbox-init check`: says what the sandbox would look like and what stands in its way,
//! changing nothing. Exit 0 when it could be built as configured, 1 when not.

use super::context::Context;
use crate::stages::firewall::{self, Diagnosis};
use crate::sys::{Kernel, Real};

/// A problem found, with the fix the user should apply.
pub struct Problem {
    pub what: String,
    pub fix: String,
}

/// Capabilities the start needs from the container, with why.
const NEEDED: &[(u32, &str, &str)] = &[
    (6, "SETGID", "set the user's groups and gid"),
    (7, "SETUID", "set the user's uid"),
    (8, "SETPCAP", "empty the command's capability bounding set"),
    (5, "KILL", "forward signals to the command"),
];
const NET_ADMIN: (u32, &str, &str) = (12, "NET_ADMIN", "program the egress firewall");

pub fn run(cx: &Context) -> i32 {
    let mut problems = vec![];
    println!("configuration (value <- source):");
    for (key, value, source) in cx.settings.describe() {
        println!("  {key:<28} {value}  <- {source}");
    }
    let id = &cx.identity;
    println!(
        "target user: {} uid={} gid={} groups={:?} home={} shell={}",
        id.name,
        id.uid,
        id.gid,
        id.groups,
        id.home.display(),
        id.shell
    );
    if !id.dropped_groups.is_empty() {
        println!(
            "  groups withheld for the session: {}",
            id.dropped_groups.join(", ")
        );
    }
    println!("workdir: {}", cx.workdir.display());

    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        // The capabilities, the kernel's tables and PID 1's status are root's to see; a
        // user's check must not call their absence problems.
        return crate::runtime::report::events::check_as_user(uid.as_raw());
    }
    match Real.cap_state() {
        Ok(st) => {
            println!(
                "capabilities of sandbox-init: effective={:#018x}",
                st.effective
            );
            let mut needed: Vec<_> = NEEDED.to_vec();
            if cx.settings.firewall.value {
                needed.push(NET_ADMIN);
            }
            for (bit, name, why) in needed {
                if st.effective & (1u64 << bit) == 0 {
                    problems.push(Problem {
                        what: format!("missing capability {name} (needed to {why})"),
                        fix: format!("run the container with --cap-add {name}"),
                    });
                }
            }
        }
        Err(e) => problems.push(Problem {
            what: format!("cannot read /proc/self/status: {e}"),
            fix: "mount /proc in the container".into(),
        }),
    }
    let (broker_lines, broker_problem) = super::broker::check_status(cx);
    for line in broker_lines {
        println!("{line}");
    }
    if let Some((what, fix)) = broker_problem {
        problems.push(Problem { what, fix });
    }
    let route = super::broker::route_for_check(cx);
    print_firewall(
        firewall::diagnose(&cx.settings, &cx.env, route.as_ref()),
        &mut problems,
    );
    let workspace = crate::stages::workspace_guard::observe(&cx.workdir, id);
    problems.extend(
        crate::stages::workspace_guard::findings(&workspace, &cx.workdir)
            .into_iter()
            .map(|f| Problem {
                what: f.what,
                fix: f.fix,
            }),
    );
    // Inside a running sandbox (docker exec): what was blocked so far. Read-only.
    for line in crate::runtime::report::status::check_lines() {
        println!("{line}");
    }

    if problems.is_empty() {
        println!("ok: the sandbox can be built as configured");
        0
    } else {
        for p in &problems {
            println!("problem: {}\n  fix: {}", p.what, p.fix);
        }
        1
    }
}

/// The firewall part of the report: the plan and each name's addresses, and the findings
/// as problems.
fn print_firewall(diagnosis: Diagnosis, problems: &mut Vec<Problem>) {
    let (findings, names, plan) = match diagnosis {
        Diagnosis::Off(source) => {
            println!("firewall: OFF ({source}); the command could reach any address");
            return;
        }
        Diagnosis::On {
            findings,
            names,
            plan,
        } => (findings, names, plan),
    };
    problems.extend(findings.into_iter().map(|f| Problem {
        what: f.what,
        fix: f.fix.to_string(),
    }));
    let Some(plan) = plan else {
        return;
    };
    println!("allowlist names ({}):", names.len());
    for (name, res) in &names {
        match res {
            Ok(addrs) => println!(
                "  {name}: {}",
                addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Err(why) => println!("  {name}: UNRESOLVED ({why})"),
        }
    }
    println!("firewall plan:");
    print!("{plan}");
    for w in &plan.warnings {
        println!("  warning: {w}");
    }
}
