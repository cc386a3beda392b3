//! The nftables table that makes the proxy a sandbox's only way out.
//!
//! One table per controller (`inet <name_prefix>`), rewritten whole and atomically (`nft -f`
//! runs a file as one transaction) whenever the set of live sessions changes, so it is never
//! half-applied and never drifts from the records. For packets arriving on a sandbox interface
//! (`<interface_prefix>*`):
//!
//! - IPv6: dropped.
//! - A source address that is not the one recorded for that interface: dropped, so no sandbox
//!   can pose as another (the proxy knows sessions by source address).
//! - UDP 53: redirected to the proxy's DNS stub. All other TCP: redirected to the proxy's
//!   transparent listener.
//! - To the host itself: only the two redirect targets, and replies on connections the host
//!   opened (the controller talking to the sandbox agent). Everything else (ICMP, other UDP,
//!   the admin and metrics ports, sshd) is dropped.
//! - Routed anywhere (another sandbox, the LAN, metadata addresses, the internet): dropped.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::command::{CommandError, run, run_with_input};

/// Reads the sessions the table must hold now: (host interface, sandbox address).
pub type LiveSessions = Arc<dyn Fn() -> Result<Vec<(String, Ipv4Addr)>, String> + Send + Sync>;

/// Applies the table for the live sessions, one `nft` run at a time and coalescing: every
/// request is answered by an apply that read the records after the request was made, so a
/// change recorded before [`Applier::apply`] is in the table when it returns. Twenty starts at
/// once cost about two `nft` runs instead of twenty, and no caller holds a lock while `nft`
/// runs: the one task that owns the table does.
#[derive(Clone)]
pub struct Applier {
    requests: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Applier")
    }
}

impl Applier {
    /// Starts the task that owns the table (on the current tokio runtime).
    pub fn spawn(firewall: Firewall, live: LiveSessions) -> Self {
        let (requests, mut queue) =
            mpsc::unbounded_channel::<oneshot::Sender<Result<(), String>>>();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut waiting = vec![first];
                while let Ok(more) = queue.try_recv() {
                    waiting.push(more);
                }
                let (firewall, live) = (firewall.clone(), live.clone());
                let result = tokio::task::spawn_blocking(move || {
                    firewall.apply(&live()?).map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(format!("the firewall task failed: {e}")));
                for waiter in waiting {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        Self { requests }
    }

    /// Returns once the table holds every change recorded before the call.
    pub async fn apply(&self) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.requests
            .send(done)
            .map_err(|_| "the firewall task has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the firewall task has stopped".to_string())?
    }
}

/// The table's shape for one controller.
#[derive(Debug, Clone)]
pub struct Firewall {
    pub table: String,
    pub interface_prefix: String,
    pub transparent_port: u16,
    pub dns_port: u16,
}

impl Firewall {
    /// The ruleset for `sessions` (host interface, sandbox address).
    pub fn ruleset(&self, sessions: &[(String, Ipv4Addr)]) -> String {
        let Firewall {
            table,
            interface_prefix: ifp,
            transparent_port: tport,
            dns_port: dport,
        } = self;
        let elements = if sessions.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = sessions
                .iter()
                .map(|(iface, addr)| format!("\"{iface}\" . {addr}"))
                .collect();
            format!("\t\telements = {{ {} }}\n", list.join(", "))
        };
        format!(
            "table inet {table}\n\
             delete table inet {table}\n\
             table inet {table} {{\n\
             \tset sources {{\n\t\ttype ifname . ipv4_addr\n{elements}\t}}\n\
             \tchain sandbox_guard {{\n\
             \t\ttype filter hook prerouting priority raw; policy accept;\n\
             \t\tiifname \"{ifp}*\" meta nfproto ipv6 counter drop\n\
             \t\tiifname \"{ifp}*\" iifname . ip saddr != @sources counter drop\n\
             \t}}\n\
             \tchain sandbox_redirect {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname \"{ifp}*\" udp dport 53 redirect to :{dport}\n\
             \t\tiifname \"{ifp}*\" meta l4proto tcp redirect to :{tport}\n\
             \t}}\n\
             \tchain sandbox_input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"{ifp}*\" ct state established,related accept\n\
             \t\tiifname \"{ifp}*\" ct status dnat tcp dport {tport} accept\n\
             \t\tiifname \"{ifp}*\" ct status dnat udp dport {dport} accept\n\
             \t\tiifname \"{ifp}*\" drop\n\
             \t}}\n\
             \tchain sandbox_forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"{ifp}*\" drop\n\
             \t\toifname \"{ifp}*\" drop\n\
             \t}}\n\
             }}\n"
        )
    }

    /// Replaces the table with the ruleset for `sessions`, atomically.
    pub fn apply(&self, sessions: &[(String, Ipv4Addr)]) -> Result<(), CommandError> {
        run_with_input("nft", ["-f", "-"], Some(&self.ruleset(sessions))).map(|_| ())
    }

    /// Removes the table (nothing left running needs it).
    pub fn remove(&self) -> Result<(), CommandError> {
        match run("nft", ["list", "table", "inet", &self.table]) {
            Ok(_) => run("nft", ["delete", "table", "inet", &self.table]).map(|_| ()),
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_pins_sources_and_redirects_only_to_the_proxy() {
        let fw = Firewall {
            table: "cordon".into(),
            interface_prefix: "cdn".into(),
            transparent_port: 3129,
            dns_port: 5353,
        };
        let rules = fw.ruleset(&[("cdn0".into(), "10.200.0.2".parse().unwrap())]);
        assert!(
            rules.contains("elements = { \"cdn0\" . 10.200.0.2 }"),
            "{rules}"
        );
        assert!(rules.contains("iifname . ip saddr != @sources counter drop"));
        assert!(rules.contains("redirect to :3129") && rules.contains("redirect to :5353"));
        assert!(rules.starts_with("table inet cordon\ndelete table inet cordon\n"));
        assert!(!fw.ruleset(&[]).contains("elements"));
    }
}
