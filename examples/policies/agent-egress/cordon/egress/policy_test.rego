package cordon.egress_test

import rego.v1

import data.cordon.allowlist
import data.cordon.egress

# --- Inputs in the shape the proxy builds ---------------------------------------------------------
#
# These mirror `cordon-policy input` and docs/POLICY.md field for field: a sandbox at
# 10.200.0.2 redirected transparently (nftables), so the original destination is known and the
# destination host comes from the SNI (TLS) or the request's authority. The two fixtures at the
# end are verbatim documents, one printed by `cordon-policy input`, one from docs/POLICY.md.

sandbox := {"address": "10.200.0.2", "port": 40000}

upstream_ip := "151.101.0.223"

session(id) := {"id": id, "agent_id": "agent_7", "labels": {}}

labelled(id, labels) := {"id": id, "agent_id": "agent_7", "labels": labels}

registered := session("sesn_01HZX")

attributes(port, sni) := object.union(unnamed_attributes(port), {"tlsSession": {"sni": sni}}) if {
	sni != null
} else := unnamed_attributes(port)

unnamed_attributes(port) := {
	"source": {"address": {"socketAddress": {"address": sandbox.address, "portValue": sandbox.port}}},
	"destination": {"address": {"socketAddress": {"address": upstream_ip, "portValue": port}}},
}

connection(stage, transport, port, sni) := object.union(unnamed_connection(stage, transport, port), {"sni": sni}) if {
	sni != null
} else := unnamed_connection(stage, transport, port)

unnamed_connection(stage, transport, port) := {
	"stage": stage,
	"mode": "transparent",
	"transport": transport,
	"source": sandbox,
	"original_destination": {"address": upstream_ip, "port": port},
}

# Stage connect for a TLS connection to `host` (the SNI names it).
tls_connect(host, sess) := {
	"version": {"encoding": "protojson", "ext_authz": "v3"},
	"attributes": attributes(443, host),
	"destination": {"host": host, "port": 443},
	"session": sess,
	"connection": connection("connect", "tls", 443, host),
}

# Stage connect for a connection without a server name: plaintext HTTP or raw TCP. Only the
# original destination's address is known.
unnamed_connect(transport, port, sess) := {
	"version": {"encoding": "protojson", "ext_authz": "v3"},
	"attributes": attributes(port, null),
	"destination": {"host": upstream_ip, "port": port},
	"session": sess,
	"connection": connection("connect", transport, port, null),
}

# Stage request. `url` is "https://host/path?query" or "http://host/path?query".
request(method, url, sess) := request_with_headers(method, url, {}, sess)

request_with_headers(method, url, headers, sess) := doc if {
	[scheme, rest] := split(url, "://")
	host := split(rest, "/")[0]
	path := substring(rest, count(host), -1)
	tls := scheme == "https"
	port := {"https": 443, "http": 80}[scheme]
	path_only := split(path, "?")[0]
	query_string := trim_prefix(substring(path, count(path_only), -1), "?")
	pairs := [pair | some part in split(query_string, "&"); part != ""; pair := split(part, "=")]
	http := {
		"method": method,
		"host": host,
		"path": path,
		"scheme": scheme,
		"protocol": "HTTP/1.1",
		"headers": object.union(headers, {
			":authority": host,
			":method": method,
			":path": path,
			":scheme": scheme,
		}),
	}
	doc := {
		"version": {"encoding": "protojson", "ext_authz": "v3"},
		"attributes": object.union(
			attributes(port, sni_if(tls, host)),
			{"request": {"http": http}},
		),
		"parsed_path": split(trim_left(path_only, "/"), "/"),
		"parsed_query": {key: values |
			some [key, _] in pairs
			values := [value | some [k, value] in pairs; k == key]
		},
		"destination": {"host": host, "port": port},
		"session": sess,
		"connection": connection("request", {true: "tls", false: "http"}[tls], port, sni_if(tls, host)),
	}
}

sni_if(true, host) := host

sni_if(false, _) := null

# --- Assertions -----------------------------------------------------------------------------

allowed(d) if {
	d.allowed == true
	is_string(d.reason)
}

denied(d) if {
	d.allowed == false
	is_string(d.reason)
}

# Denied, with a reason that says why.
denied_because(d, text) if {
	denied(d)
	contains(d.reason, text)
}

github_injected(d) if d.inject == [{"secret": "github", "header": "authorization"}]

github_git_injected(d) if d.inject == [{"secret": "github-git", "header": "authorization"}]

no_injection(d) if not d.inject

# --- Unregistered sources -----------------------------------------------------------------------

test_unknown_session_denied_at_connect if {
	d := egress.decision with input as tls_connect("pypi.org", session("unknown"))
	denied_because(d, "not registered to any session")
}

test_unknown_session_denied_at_request if {
	d := egress.decision with input as request("GET", "https://pypi.org/simple/requests/", session("unknown"))
	denied_because(d, "not registered to any session")
}

test_unknown_session_denied_for_api_host if {
	d := egress.decision with input as request("POST", "https://api.anthropic.com/v1/messages", session("unknown"))
	denied_because(d, "not registered to any session")
	no_injection(d)
}

# --- Stage connect --------------------------------------------------------------------------------

test_connect_read_only_host_intercepted if {
	d := egress.decision with input as tls_connect("files.pythonhosted.org", registered)
	allowed(d)
	d.mitm == true
}

test_connect_every_api_host_intercepted if {
	every host in ["api.github.com", "github.com", "api.anthropic.com"] {
		d := egress.decision with input as tls_connect(host, registered)
		allowed(d)
		d.mitm == true
	}
}

test_connect_unknown_host_denied_with_its_name if {
	d := egress.decision with input as tls_connect("exfil.example.net", registered)
	denied_because(d, "host exfil.example.net is not on the egress allowlist")
}

test_connect_raw_tcp_denied if {
	d := egress.decision with input as unnamed_connect("tcp", 22, registered)
	denied_because(d, "raw tcp connections are not allowed")
}

test_connect_raw_tcp_to_known_host_denied if {
	# Even with a name on the allowlist (an explicit CONNECT carrying something that is not HTTP).
	doc := json.patch(tls_connect("pypi.org", registered), [{"op": "replace", "path": "/connection/transport", "value": "tcp"}])
	d := egress.decision with input as doc
	denied_because(d, "raw tcp connections are not allowed")
}

test_connect_transparent_plaintext_http_goes_to_request_stage if {
	d := egress.decision with input as unnamed_connect("http", 80, registered)
	allowed(d)
}

test_connect_explicit_plaintext_http_to_known_host if {
	d := egress.decision with input as {
		"version": {"encoding": "protojson", "ext_authz": "v3"},
		"attributes": {"source": {"address": {"socketAddress": {"address": sandbox.address, "portValue": sandbox.port}}}},
		"destination": {"host": "deb.debian.org", "port": 80},
		"session": registered,
		"connection": {
			"stage": "connect",
			"mode": "explicit",
			"transport": "http",
			"source": sandbox,
			"connect_target": "deb.debian.org:80",
		},
	}
	allowed(d)
}

test_connect_explicit_plaintext_http_to_unknown_host_denied if {
	d := egress.decision with input as {
		"version": {"encoding": "protojson", "ext_authz": "v3"},
		"attributes": {"source": {"address": {"socketAddress": {"address": sandbox.address, "portValue": sandbox.port}}}},
		"destination": {"host": "exfil.example.net", "port": 80},
		"session": registered,
		"connection": {
			"stage": "connect",
			"mode": "explicit",
			"transport": "http",
			"source": sandbox,
			"connect_target": "exfil.example.net:80",
		},
	}
	denied_because(d, "exfil.example.net is not on the egress allowlist")
}

test_connect_without_destination_denied if {
	doc := json.remove(tls_connect("pypi.org", registered), ["destination"])
	d := egress.decision with input as doc
	denied_because(d, "could not name the destination host")
}

test_unknown_stage_falls_to_default_deny if {
	doc := json.patch(tls_connect("pypi.org", registered), [{"op": "replace", "path": "/connection/stage", "value": "handshake"}])
	d := egress.decision with input as doc
	denied_because(d, "no rule of the agent-egress policy applies to this input")
}

# --- Read-only hosts ---------------------------------------------------------------------------------

test_pypi_get_allowed if {
	d := egress.decision with input as request("GET", "https://pypi.org/simple/requests/", registered)
	allowed(d)
	no_injection(d)
}

test_read_only_head_allowed if {
	d := egress.decision with input as request("HEAD", "https://static.crates.io/crates/serde/serde-1.0.0.crate", registered)
	allowed(d)
}

test_every_read_only_host_allows_get if {
	every host in allowlist.read_only_hosts {
		allowed(egress.decision) with input as request("GET", concat("", ["https://", host, "/"]), registered)
	}
}

test_pypi_post_denied if {
	d := egress.decision with input as request("POST", "https://pypi.org/legacy/", registered)
	denied_because(d, "pypi.org is read-only: POST is not allowed")
}

test_npm_put_denied if {
	d := egress.decision with input as request("PUT", "https://registry.npmjs.org/left-pad", registered)
	denied_because(d, "registry.npmjs.org is read-only: PUT is not allowed")
}

test_plaintext_debian_get_allowed if {
	d := egress.decision with input as request("GET", "http://deb.debian.org/debian/dists/bookworm/InRelease", registered)
	allowed(d)
}

test_unknown_host_request_denied if {
	d := egress.decision with input as request("GET", "https://exfil.example.net/?d=secret", registered)
	denied_because(d, "host exfil.example.net is not on the egress allowlist")
}

test_lookalike_host_denied if {
	d := egress.decision with input as request("GET", "https://pypi.org.evil.example/simple/", registered)
	denied_because(d, "is not on the egress allowlist")
}

# --- api.github.com --------------------------------------------------------------------------------

test_github_api_get_allowed_with_token if {
	d := egress.decision with input as request("GET", "https://api.github.com/repos/rust-lang/rust/pulls?state=open", registered)
	allowed(d)
	github_injected(d)
}

test_github_api_write_to_write_org_allowed if {
	every method in ["POST", "PATCH", "PUT", "DELETE"] {
		d := egress.decision with input as request(method, "https://api.github.com/repos/acme/widgets/issues/1", registered)
		allowed(d)
		github_injected(d)
	}
}

test_github_api_write_org_is_case_insensitive if {
	d := egress.decision with input as request("POST", "https://api.github.com/repos/ACME-Labs/widgets/pulls", registered)
	allowed(d)
}

test_github_api_write_to_other_org_denied if {
	d := egress.decision with input as request("POST", "https://api.github.com/repos/rust-lang/rust/issues", registered)
	denied_because(d, "organisation rust-lang is not allowed for writing")
	no_injection(d)
}

test_github_api_write_outside_repos_denied if {
	d := egress.decision with input as request("POST", "https://api.github.com/user/keys", registered)
	denied_because(d, "writes must be under /repos/{org}/{repo}/")
}

test_github_api_repository_itself_not_writable if {
	d := egress.decision with input as request("DELETE", "https://api.github.com/repos/acme/widgets", registered)
	denied_because(d, "writes must be under /repos/{org}/{repo}/")
}

test_github_api_dot_segments_denied if {
	d := egress.decision with input as request("POST", "https://api.github.com/repos/acme/widgets/../../../user/keys", registered)
	denied_because(d, "has a . or .. segment")
}

test_github_api_encoded_dot_segments_denied if {
	# The proxy percent-decodes each segment: %2e%2e arrives in parsed_path as "..".
	doc := json.patch(
		request("POST", "https://api.github.com/repos/acme/widgets/%2e%2e/%2e%2e/%2e%2e/user/keys", registered),
		[{"op": "replace", "path": "/parsed_path", "value": ["repos", "acme", "widgets", "..", "..", "..", "user", "keys"]}],
	)
	d := egress.decision with input as doc
	denied_because(d, "has a . or .. segment")
}

test_github_api_other_method_denied if {
	d := egress.decision with input as request("OPTIONS", "https://api.github.com/repos/acme/widgets/issues", registered)
	denied_because(d, "method OPTIONS is not allowed")
}

test_github_api_plaintext_denied if {
	d := egress.decision with input as request("GET", "http://api.github.com/user", registered)
	denied_because(d, "only reached over HTTPS")
	no_injection(d)
}

test_fronted_request_denied if {
	# A TLS connection opened to pypi.org carrying a request for api.github.com.
	doc := json.patch(
		request("POST", "https://api.github.com/repos/acme/widgets/issues", registered),
		[
			{"op": "replace", "path": "/connection/sni", "value": "pypi.org"},
			{"op": "replace", "path": "/attributes/tlsSession/sni", "value": "pypi.org"},
		],
	)
	d := egress.decision with input as doc
	denied_because(d, "host and server name must match")
	no_injection(d)
}

test_tls_without_server_name_denied if {
	doc := json.remove(
		request("GET", "https://api.github.com/user", registered),
		["connection/sni", "attributes/tlsSession"],
	)
	d := egress.decision with input as doc
	denied_because(d, "without a server name")
	no_injection(d)
}

test_api_host_with_unknown_rule_set_denied if {
	d := egress.decision with input as request("GET", "https://api.example.com/v1/things", registered)
		with data.cordon.allowlist.api_hosts as {"api.example.com": "example"}
	denied_because(d, "no rule of the agent-egress policy allows this request to api.example.com")
}

# --- github.com (git smart HTTP) --------------------------------------------------------------------

test_git_clone_from_read_org_allowed if {
	refs := egress.decision with input as request("GET", "https://github.com/rust-lang/rust.git/info/refs?service=git-upload-pack", registered)
	allowed(refs)
	github_git_injected(refs)
	pack := egress.decision with input as request("POST", "https://github.com/rust-lang/rust.git/git-upload-pack", registered)
	allowed(pack)
	github_git_injected(pack)
}

test_git_clone_from_write_org_allowed if {
	d := egress.decision with input as request("GET", "https://github.com/acme/widgets/info/refs?service=git-upload-pack", registered)
	allowed(d)
}

test_git_clone_from_other_org_denied if {
	d := egress.decision with input as request("GET", "https://github.com/someone-else/tool/info/refs?service=git-upload-pack", registered)
	denied_because(d, "organisation someone-else is not allowed for reading")
	no_injection(d)
}

test_git_push_without_label_denied if {
	refs := egress.decision with input as request("GET", "https://github.com/acme/widgets/info/refs?service=git-receive-pack", registered)
	denied_because(refs, "needs a session labelled github-write=true")
	pack := egress.decision with input as request("POST", "https://github.com/acme/widgets/git-receive-pack", registered)
	denied_because(pack, "needs a session labelled github-write=true")
	no_injection(pack)
}

test_git_push_with_label_false_denied if {
	d := egress.decision with input as request("POST", "https://github.com/acme/widgets/git-receive-pack", labelled("sesn_01HZX", {"github-write": "false"}))
	denied_because(d, "needs a session labelled github-write=true")
}

test_git_push_with_label_allowed if {
	writer := labelled("sesn_01HZX", {"github-write": "true"})
	refs := egress.decision with input as request("GET", "https://github.com/acme/widgets/info/refs?service=git-receive-pack", writer)
	allowed(refs)
	github_git_injected(refs)
	pack := egress.decision with input as request("POST", "https://github.com/acme/widgets/git-receive-pack", writer)
	allowed(pack)
	github_git_injected(pack)
}

test_git_push_to_read_only_org_denied if {
	writer := labelled("sesn_01HZX", {"github-write": "true"})
	d := egress.decision with input as request("POST", "https://github.com/rust-lang/rust/git-receive-pack", writer)
	denied_because(d, "organisation rust-lang is not allowed for writing")
}

test_git_dot_segments_denied if {
	writer := labelled("sesn_01HZX", {"github-write": "true"})
	d := egress.decision with input as request("POST", "https://github.com/acme/../git-receive-pack", writer)
	denied_because(d, "has a . or .. segment")
}

test_github_web_pages_denied if {
	every url in ["https://github.com/acme/widgets", "https://github.com/login", "https://github.com/acme/widgets/info/refs"] {
		d := egress.decision with input as request("GET", url, registered)
		denied_because(d, "only git over smart HTTP is allowed")
	}
}

test_git_ambiguous_service_denied if {
	d := egress.decision with input as request("GET", "https://github.com/acme/widgets/info/refs?service=git-upload-pack&service=git-receive-pack", registered)
	denied_because(d, "only git over smart HTTP is allowed")
}

# --- api.anthropic.com -------------------------------------------------------------------------------

anthropic_allowed(d) if {
	allowed(d)
	d.inject == [{"secret": "anthropic", "header": "x-api-key"}]
	d.request_headers_to_remove == ["authorization"]
}

test_anthropic_messages_allowed_with_key if {
	d := egress.decision with input as request_with_headers(
		"POST", "https://api.anthropic.com/v1/messages",
		{"content-type": "application/json", "anthropic-version": "2023-06-01"},
		registered,
	)
	anthropic_allowed(d)
}

test_anthropic_count_tokens_allowed if {
	anthropic_allowed(egress.decision) with input as request("POST", "https://api.anthropic.com/v1/messages/count_tokens", registered)
}

test_anthropic_query_string_ignored if {
	anthropic_allowed(egress.decision) with input as request("POST", "https://api.anthropic.com/v1/messages?beta=true", registered)
}

test_anthropic_own_authorization_still_allowed_and_stripped if {
	d := egress.decision with input as request_with_headers(
		"POST", "https://api.anthropic.com/v1/messages",
		{"authorization": "Bearer sk-ant-agent-own-key"},
		registered,
	)
	anthropic_allowed(d)
}

test_anthropic_wrong_path_denied if {
	every url in [
		"https://api.anthropic.com/v1/complete",
		"https://api.anthropic.com/v1/files",
		"https://api.anthropic.com/v1/messages/batches",
		"https://api.anthropic.com/v1/messages/",
	] {
		d := egress.decision with input as request("POST", url, registered)
		denied_because(d, "only POST /v1/messages and /v1/messages/count_tokens are allowed")
		no_injection(d)
	}
}

test_anthropic_wrong_method_denied if {
	d := egress.decision with input as request("GET", "https://api.anthropic.com/v1/messages", registered)
	denied_because(d, "GET /v1/messages is not")
}

# --- Data -----------------------------------------------------------------------------------------------

test_data_has_fifty_distinct_hosts if {
	count(allowlist.read_only_hosts) == 47
	count(object.keys(allowlist.api_hosts)) == 3
	hosts := {h | some h in allowlist.read_only_hosts} | object.keys(allowlist.api_hosts)
	count(hosts) == 50
}

test_data_hosts_and_orgs_are_lower_case if {
	every host in allowlist.read_only_hosts {
		host == lower(host)
	}
	every org in array.concat(allowlist.github.read_orgs, allowlist.github.write_orgs) {
		org == lower(org)
	}
}

test_data_api_hosts_name_known_rules if {
	every kind in allowlist.api_hosts {
		kind in {"github-api", "github-git", "anthropic"}
	}
}

# --- Verbatim documents -----------------------------------------------------------------------------

# Printed by: cordon-policy input --request "GET https://pypi.org/simple/requests/" \
#   --session sesn_01HZX --agent agent_7 -H "User-Agent: pip/24.2" \
#   -H "Accept: application/vnd.pypi.simple.v1+json"
cli_input := {"attributes": {"request": {"http": {"headers": {":authority": "pypi.org", ":method": "GET", ":path": "/simple/requests/", ":scheme": "https", "accept": "application/vnd.pypi.simple.v1+json", "user-agent": "pip/24.2"}, "host": "pypi.org", "method": "GET", "path": "/simple/requests/", "protocol": "HTTP/1.1", "scheme": "https"}}, "source": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 40000}}}, "tlsSession": {"sni": "pypi.org"}}, "connection": {"mode": "explicit", "sni": "pypi.org", "source": {"address": "127.0.0.1", "port": 40000}, "stage": "request", "transport": "tls"}, "destination": {"host": "pypi.org", "port": 443}, "parsed_path": ["simple", "requests", ""], "parsed_query": {}, "session": {"agent_id": "agent_7", "id": "sesn_01HZX", "labels": {}}, "version": {"encoding": "protojson", "ext_authz": "v3"}}

test_cli_document_allowed if {
	d := egress.decision with input as cli_input
	d == {"allowed": true, "reason": "read-only access to pypi.org"}
}

test_helper_builds_the_cli_document if {
	# The request() helper above builds the same document the proxy does, but for the
	# transparent-mode fields (original destination) and the source address.
	built := request_with_headers(
		"GET", "https://pypi.org/simple/requests/",
		{"accept": "application/vnd.pypi.simple.v1+json", "user-agent": "pip/24.2"},
		registered,
	)
	transparent_only := [["attributes", "destination"], ["connection", "original_destination"], ["connection", "mode"]]
	strip(built, transparent_only) == strip(cli_input, transparent_only)
}

strip(doc, paths) := json.remove(
	json.patch(doc, [
		{"op": "add", "path": "/attributes/source", "value": null},
		{"op": "add", "path": "/connection/source", "value": null},
	]),
	paths,
)

# The request-stage example of docs/POLICY.md.
docs_input := {
	"version": {"encoding": "protojson", "ext_authz": "v3"},
	"attributes": {
		"source": {"address": {"socketAddress": {"address": "10.200.0.6", "portValue": 51234}}},
		"destination": {"address": {"socketAddress": {"address": "198.51.100.7", "portValue": 443}}},
		"tlsSession": {"sni": "api.github.com"},
		"request": {"http": {
			"id": "01JDXK3Q6N8V4T2R",
			"method": "POST",
			"host": "api.github.com",
			"path": "/repos/acme/widgets/issues?labels=bug&labels=p1",
			"scheme": "https",
			"protocol": "HTTP/1.1",
			"headers": {
				":authority": "api.github.com",
				":method": "POST",
				":path": "/repos/acme/widgets/issues?labels=bug&labels=p1",
				":scheme": "https",
				"accept": "application/vnd.github+json",
				"content-type": "application/json",
				"user-agent": "gh/2.62.0",
			},
		}},
	},
	"parsed_path": ["repos", "acme", "widgets", "issues"],
	"parsed_query": {"labels": ["bug", "p1"]},
	"destination": {"host": "api.github.com", "port": 443},
	"session": {"id": "sesn_01HZX", "agent_id": "agent_7", "labels": {"team": "platform"}},
	"connection": {
		"stage": "request",
		"mode": "transparent",
		"transport": "tls",
		"source": {"address": "10.200.0.6", "port": 51234},
		"original_destination": {"address": "198.51.100.7", "port": 443},
		"sni": "api.github.com",
	},
}

test_docs_document_allowed if {
	d := egress.decision with input as docs_input
	allowed(d)
	github_injected(d)
}

test_docs_document_helper_equivalent if {
	built := request_with_headers(
		"POST", "https://api.github.com/repos/acme/widgets/issues?labels=bug&labels=p1",
		{"accept": "application/vnd.github+json", "content-type": "application/json", "user-agent": "gh/2.62.0"},
		labelled("sesn_01HZX", {"team": "platform"}),
	)
	built.parsed_path == docs_input.parsed_path
	built.parsed_query == docs_input.parsed_query
	built.attributes.request.http.headers == docs_input.attributes.request.http.headers
	built.destination == docs_input.destination
	object.remove(built.connection, ["source", "original_destination"]) == object.remove(docs_input.connection, ["source", "original_destination"])
}
