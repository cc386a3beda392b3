//! Transparent mode as a sandbox meets it (root tier): a test-made network namespace joined to
//! the host by a veth pair, an nftables rule on the host that redirects the sandbox's TCP 80/443
//! to the proxy's transparent listener, and `curl https://...` inside the namespace with no
//! proxy settings at all. The proxy must recover the original destination (SO_ORIGINAL_DST),
//! name the session by the sandbox's source address, intercept, and decide by policy.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); without them it prints why and passes.
//! Everything it creates is named `cordon-test-<pid>` (the host veth end, limited to 15
//! characters, `cordon-t<pid in hex>`) and removed on drop, even when an assertion fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{Proxy, spawn_upstream, test_pki, text};

const POLICY: &str = r#"package cordon.egress
import rego.v1

default decision := {"allowed": false, "reason": "default deny"}

decision := {"allowed": true, "reason": "connect"} if input.connection.stage == "connect"

decision := {"allowed": true, "reason": "listed"} if {
	input.connection.stage == "request"
	input.destination.host == "allowed.test"
	input.attributes.request.http.method == "GET"
}

decision := {"allowed": false, "reason": "not on the transparent list", "http_status": 451} if {
	input.connection.stage == "request"
	input.destination.host != "allowed.test"
}
"#;

/// The address the sandbox believes it is talking to: an RFC 5737 documentation address
/// (TEST-NET-3). Nothing answers there; only the redirect makes the connection work, and the
/// proxy must resolve the host name itself (`connect_to`), never dial this address.
/// (Not TEST-NET-1: some of our machines use 192.0.2.0/24 as their real LAN.)
const SANDBOX_SEES: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("");
    if euid != "0" {
        return Some(format!("not running as root (effective uid {euid:?})"));
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Runs a command; panics with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command and ignores how it went (cleanup of what may not exist).
fn quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

/// The sandbox's network: a namespace, a veth pair (host end `host_if`, sandbox end `eth0` in
/// the namespace) on a /30, and the nftables redirect. Torn down on drop.
struct Sandbox {
    netns: String,
    host_if: String,
    table: String,
    host_ip: Ipv4Addr,
    sandbox_ip: Ipv4Addr,
}

impl Sandbox {
    /// Names and a /30 in 10.213.0.0/16, both from the pid so parallel runs do not collide.
    fn named() -> Sandbox {
        let pid = std::process::id();
        let base = (pid % (1 << 14)) * 4;
        let net = [10, 213, (base >> 8) as u8, (base & 0xff) as u8];
        Sandbox {
            netns: format!("cordon-test-{pid}"),
            host_if: format!("cordon-t{pid:x}"),
            table: format!("cordon-test-{pid}"),
            host_ip: Ipv4Addr::new(net[0], net[1], net[2], net[3] + 1),
            sandbox_ip: Ipv4Addr::new(net[0], net[1], net[2], net[3] + 2),
        }
    }

    fn teardown(&self) {
        // Deleting the namespace destroys its veth end and with it the host end; the explicit
        // delete covers a host end left from a half-done setup.
        quietly("ip", &["netns", "del", &self.netns]);
        quietly("ip", &["link", "del", &self.host_if]);
        quietly("nft", &["delete", "table", "ip", &self.table]);
    }

    /// Builds the network; `port` is the proxy's transparent listener on the host.
    fn set_up(&self, port: u16) {
        assert!(self.host_if.len() <= 15, "{} is too long", self.host_if);
        self.teardown();
        let host_cidr = format!("{}/30", self.host_ip);
        let sandbox_cidr = format!("{}/30", self.sandbox_ip);
        let host_ip = self.host_ip.to_string();
        run("ip", &["netns", "add", &self.netns]);
        run(
            "ip",
            &[
                "link",
                "add",
                &self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &self.netns,
            ],
        );
        run("ip", &["addr", "add", &host_cidr, "dev", &self.host_if]);
        run("ip", &["link", "set", &self.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &self.netns, "ip"];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &sandbox_cidr, "dev", "eth0"]);
        inside(&["link", "set", "eth0", "up"]);
        inside(&["route", "add", "default", "via", &host_ip]);

        let rules = format!(
            "table ip {table} {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname \"{veth}\" tcp dport {{ 80, 443 }} redirect to :{port}\n\
             \t}}\n\
             }}\n",
            table = self.table,
            veth = self.host_if,
        );
        let rules_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(rules_file.path(), rules).unwrap();
        run("nft", &["-f", rules_file.path().to_str().unwrap()]);
    }

    /// `curl` inside the namespace: no proxy settings, the name pinned to [`SANDBOX_SEES`].
    fn curl(&self, ca: &std::path::Path, url_host: &str, path: &str) -> Output {
        let resolve = format!("{url_host}:443:{SANDBOX_SEES}");
        let url = format!("https://{url_host}{path}");
        Command::new("ip")
            .args(["netns", "exec", &self.netns, "curl", "-s", "-S", "-i", "-v"])
            .args(["--max-time", "10", "--noproxy", "*", "--resolve", &resolve])
            .arg("--cacert")
            .arg(ca)
            .arg(url)
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .output()
            .unwrap()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Everything a failed assertion should show: curl's verbose output, the audit log, the proxy log.
fn evidence(proxy: &Proxy, out: &Output) -> String {
    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap_or_default();
    let log = std::fs::read_to_string(proxy.path("proxy.log")).unwrap_or_default();
    format!(
        "curl ({}):\n{}\n{}\naudit log:\n{audit}\nproxy log:\n{log}",
        out.status,
        text(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The audit log's records, once one satisfies `wanted` (records may land after the response).
fn audit_until(proxy: &Proxy, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = proxy.audit_records();
        if let Some(found) = records.iter().find(|r| wanted(r)) {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no matching audit record:\n{records:#?}\nproxy log:\n{}",
            std::fs::read_to_string(proxy.path("proxy.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn transparent_redirect_from_a_sandbox_netns() {
    if let Some(why) = unsupported() {
        println!("SKIPPED transparent_redirect_from_a_sandbox_netns: {why}");
        return;
    }
    let pki = test_pki(&["allowed.test", "denied.test"]);
    let upstream = spawn_upstream(&pki);
    let proxy = Proxy::start(
        POLICY,
        upstream,
        &pki.ca_pem,
        &["allowed.test", "denied.test"],
        "",
    );
    // The guard exists before any of its parts, so a failure halfway still cleans up.
    let sandbox = Sandbox::named();
    sandbox.set_up(proxy.transparent);
    let registered = proxy.admin(
        "PUT",
        "/sessions/sesn_transparent",
        Some(&format!(r#"{{"source": "{}"}}"#, sandbox.sandbox_ip)),
    );
    assert!(registered.contains("sesn_transparent"), "{registered}");
    let ca = proxy.ca();
    let original = format!("{SANDBOX_SEES}:443");

    // Allowed: redirected, intercepted with a leaf the sandbox trusts, forwarded by name.
    let out = sandbox.curl(&ca, "allowed.test", "/through-the-redirect");
    let body = text(&out);
    assert!(
        body.contains("HTTP/2 200") || body.contains("HTTP/1.1 200"),
        "{}",
        evidence(&proxy, &out)
    );
    assert!(
        body.contains("GET /through-the-redirect HTTP/1.1"),
        "{}",
        evidence(&proxy, &out)
    );
    assert!(
        body.to_ascii_lowercase().contains("host: allowed.test"),
        "{}",
        evidence(&proxy, &out)
    );

    // Denied by the request-stage policy: its status and the cordon-error header.
    let out = sandbox.curl(&ca, "denied.test", "/nope");
    let body = text(&out);
    assert!(
        body.contains("HTTP/2 451") || body.contains("HTTP/1.1 451"),
        "{}",
        evidence(&proxy, &out)
    );
    assert!(
        body.contains("cordon-error: policy"),
        "{}",
        evidence(&proxy, &out)
    );
    assert!(
        body.contains("not on the transparent list"),
        "{}",
        evidence(&proxy, &out)
    );
    assert!(
        !body.contains("GET /nope"),
        "a denied request reached the upstream: {body}"
    );

    // The audit log: transparent mode, the session by source address, the original destination,
    // and the allowed request went to the connect_to upstream, not to the address curl dialled.
    let ours = |r: &serde_json::Value| {
        r["mode"] == "transparent"
            && r["session"] == "sesn_transparent"
            && r["original_destination"] == original.as_str()
            && r["source"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{}:", sandbox.sandbox_ip)))
    };
    let allowed = audit_until(&proxy, |r| {
        ours(r) && r["decision"] == "allow" && r["host"] == "allowed.test"
    });
    assert_eq!(allowed["path"], "/through-the-redirect", "{allowed}");
    assert_eq!(allowed["status"], 200, "{allowed}");
    assert_eq!(
        allowed["upstream_address"],
        upstream.to_string(),
        "{allowed}"
    );
    assert_eq!(allowed["sni"], "allowed.test", "{allowed}");
    let denied = audit_until(&proxy, |r| {
        ours(r) && r["decision"] == "deny" && r["host"] == "denied.test"
    });
    assert_eq!(denied["status"], 451, "{denied}");
    assert_eq!(denied["reason_class"], "policy", "{denied}");
    assert_eq!(denied["reason"], "not on the transparent list", "{denied}");
    println!("transparent mode audit records:\n{allowed}\n{denied}");

    assert!(
        proxy
            .admin("DELETE", "/sessions/sesn_transparent", None)
            .contains("sesn_transparent")
    );
    drop(sandbox);
    for (program, args) in [
        ("ip", &["netns", "list"][..]),
        ("nft", &["list", "tables"][..]),
    ] {
        let listed = text(&run(program, args));
        assert!(
            !listed.contains(&format!("cordon-test-{}", std::process::id())),
            "left behind after cleanup: {listed}"
        );
    }
}
