//! A session's network: its own namespace, a veth pair to the host, a /30, a default route via
//! the host end, no IPv6. What may leave through it is the firewall's business.

use std::path::Path;

use super::names::SessionNames;
use crate::command::{CommandError, run, run_with_input};

/// Creates the namespace and the link. On failure, whatever was created is removed.
pub fn create(names: &SessionNames) -> Result<(), CommandError> {
    let host = format!(
        "netns add {netns}\n\
         link add {host_if} type veth peer name {sandbox_if} netns {netns}\n\
         addr add {host_addr}/30 dev {host_if}\n\
         link set {host_if} up\n",
        netns = names.netns,
        host_if = names.host_if,
        sandbox_if = names.sandbox_if,
        host_addr = names.host_addr,
    );
    let inside = format!(
        "link set lo up\n\
         addr add {sandbox_addr}/30 dev {sandbox_if}\n\
         link set {sandbox_if} up\n\
         route add default via {host_addr}\n",
        sandbox_if = names.sandbox_if,
        sandbox_addr = names.sandbox_addr,
        host_addr = names.host_addr,
    );
    let result = run_with_input("ip", ["-batch", "-"], Some(&host))
        .and_then(|_| run_with_input("ip", ["-n", &names.netns, "-batch", "-"], Some(&inside)))
        .and_then(|_| {
            // No IPv6 at all: not inside, not on the host end.
            run(
                "nsenter",
                [
                    format!("--net={}", names.netns_path().display()),
                    "sysctl".into(),
                    "-qw".into(),
                    "net.ipv6.conf.all.disable_ipv6=1".into(),
                    "net.ipv6.conf.default.disable_ipv6=1".into(),
                ],
            )
        })
        .and_then(|_| {
            run(
                "sysctl",
                [
                    "-qw",
                    &format!("net.ipv6.conf.{}.disable_ipv6=1", names.host_if),
                ],
            )
        });
    if result.is_err() {
        let _ = delete(names);
    }
    result.map(|_| ())
}

/// Removes the namespace (which takes the veth pair with it) and a host end left behind.
/// Removing what is already gone is not an error.
pub fn delete(names: &SessionNames) -> Result<(), CommandError> {
    if names.netns_path().exists() {
        run("ip", ["netns", "delete", &names.netns])?;
    }
    // The kernel removes the host end with the namespace, a moment later: only an end that
    // is still there after a failed delete is a problem.
    let host_end = Path::new("/sys/class/net").join(&names.host_if);
    if host_end.exists()
        && let Err(e) = run("ip", ["link", "delete", &names.host_if])
        && host_end.exists()
    {
        return Err(e);
    }
    Ok(())
}

/// This controller's namespaces: `<prefix>-<id>`, where ids have no `-` (so another
/// controller's `<prefix>-more-<id>` is not taken for one of ours).
pub fn list(prefix: &str) -> Vec<String> {
    let wanted = format!("{prefix}-");
    std::fs::read_dir("/var/run/netns")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    n.strip_prefix(&wanted)
                        .is_some_and(|id| !id.is_empty() && !id.contains('-'))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Host interfaces whose name is `<interface_prefix><digits>`.
pub fn list_host_interfaces(interface_prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    n.strip_prefix(interface_prefix).is_some_and(|rest| {
                        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}
