package cordon.egress_test

import rego.v1

import data.cordon.egress

# Inputs in the shape the proxy builds them, with the body fields a bundle that asks for
# bodies gets (docs/POLICY.md, "Request bodies").

mcp_host := "mcp.example.com"

connect_input(host) := {
	"version": {"encoding": "protojson", "ext_authz": "v3"},
	"attributes": {
		"source": {"address": {"socketAddress": {"address": "10.200.0.2", "portValue": 40000}}},
		"tlsSession": {"sni": host},
	},
	"destination": {"host": host, "port": 443},
	"session": {"id": "sesn_1", "labels": {}},
	"connection": {
		"stage": "connect",
		"mode": "explicit",
		"transport": "tls",
		"source": {"address": "10.200.0.2", "port": 40000},
		"sni": host,
		"connect_target": concat(":", [host, "443"]),
	},
}

request_input(method, host, path) := {
	"version": {"encoding": "protojson", "ext_authz": "v3"},
	"attributes": {
		"source": {"address": {"socketAddress": {"address": "10.200.0.2", "portValue": 40000}}},
		"tlsSession": {"sni": host},
		"request": {"http": {
			"method": method,
			"host": host,
			"path": path,
			"scheme": "https",
			"protocol": "HTTP/1.1",
			"headers": {
				":authority": host,
				":method": method,
				":path": path,
				":scheme": "https",
				"content-type": "application/json",
			},
		}},
	},
	"parsed_path": split(trim_left(path, "/"), "/"),
	"parsed_query": {},
	"destination": {"host": host, "port": 443},
	"session": {"id": "sesn_1", "labels": {}},
	"connection": {
		"stage": "request",
		"mode": "explicit",
		"transport": "tls",
		"source": {"address": "10.200.0.2", "port": 40000},
		"sni": host,
	},
}

# A POST whose body `body` (a JSON-RPC message or batch) Cordon read whole: `jsonrpc` is what
# input.cordon.jsonrpc holds for it.
post(body, jsonrpc) := object.union(request_input("POST", mcp_host, "/mcp"), {
	"parsed_body": body,
	"truncated_body": false,
	"cordon": {"jsonrpc": jsonrpc},
})

call(id, method, params) := {"jsonrpc": "2.0", "id": id, "method": method, "params": params}

as_message(c) := {"kind": "request", "method": c.method, "id": c.id, "params": c.params}

single(c) := post(c, as_message(c))

batch(calls) := post(calls, [as_message(c) | some c in calls])

test_connect_to_the_mcp_server_allowed if {
	d := egress.decision with input as connect_input(mcp_host)
	d.allowed
	d.mitm
}

test_connect_elsewhere_denied if {
	d := egress.decision with input as connect_input("pypi.org")
	not d.allowed
	contains(d.reason, "pypi.org")
}

test_tools_list_allowed if {
	d := egress.decision with input as single(call(1, "tools/list", {}))
	d.allowed
	d.reason == "MCP tools/list"
}

test_initialize_allowed if {
	egress.decision.allowed with input as single(call(0, "initialize", {"protocolVersion": "2025-06-18"}))
}

test_listed_tool_call_allowed if {
	egress.decision.allowed with input as single(call(2, "tools/call", {"name": "search_issues", "arguments": {"q": "bug"}}))
}

test_unlisted_tool_call_denied_naming_the_tool if {
	d := egress.decision with input as single(call(3, "tools/call", {"name": "delete_repository"}))
	not d.allowed
	d.reason == "MCP tool \"delete_repository\" is not allowed on mcp.example.com"
}

test_tool_call_without_a_name_denied if {
	d := egress.decision with input as single(call(3, "tools/call", {}))
	not d.allowed
	contains(d.reason, "without a tool name")
}

test_other_methods_denied_naming_the_method if {
	d := egress.decision with input as single(call(4, "resources/read", {"uri": "file:///etc/passwd"}))
	not d.allowed
	d.reason == "MCP method \"resources/read\" is not allowed on mcp.example.com"
}

test_notifications_and_responses_allowed if {
	note := {"jsonrpc": "2.0", "method": "notifications/initialized"}
	egress.decision.allowed with input as post(note, {"kind": "notification", "method": "notifications/initialized"})
	answer := {"jsonrpc": "2.0", "id": "s1", "result": {}}
	egress.decision.allowed with input as post(answer, {"kind": "response", "id": "s1"})
}

test_batch_of_allowed_calls_allowed if {
	d := egress.decision with input as batch([
		call(1, "tools/list", {}),
		call(2, "tools/call", {"name": "get_issue", "arguments": {"number": 7}}),
	])
	d.allowed
	d.reason == "MCP tools/call, tools/list"
}

test_batch_mixing_allowed_and_denied_calls_denied if {
	d := egress.decision with input as batch([
		call(1, "tools/list", {}),
		call(2, "tools/call", {"name": "get_issue"}),
		call(3, "tools/call", {"name": "push_files"}),
	])
	not d.allowed
	d.reason == "MCP tool \"push_files\" is not allowed on mcp.example.com"
}

test_batch_with_an_invalid_element_denied if {
	body := [call(1, "tools/list", {}), "junk"]
	d := egress.decision with input as post(body, [as_message(body[0]), {"kind": "invalid"}])
	not d.allowed
	contains(d.reason, "not a JSON-RPC 2.0 message")
}

test_body_error_denied_with_the_reason if {
	doc := object.union(request_input("POST", mcp_host, "/mcp"), {
		"truncated_body": false,
		"cordon": {"body_error": {"kind": "invalid_json", "message": "the content type is JSON but the body is not"}},
	})
	d := egress.decision with input as doc
	not d.allowed
	contains(d.reason, "body is not")
}

test_truncated_body_denied if {
	doc := object.union(request_input("POST", mcp_host, "/mcp"), {"truncated_body": true})
	d := egress.decision with input as doc
	not d.allowed
	d.reason == "the MCP request body was not seen whole"
}

# A request without body fields (a bundle or host that does not ask): fail closed.
test_post_without_body_fields_denied if {
	d := egress.decision with input as request_input("POST", mcp_host, "/mcp")
	not d.allowed
	d.reason == "not a JSON-RPC 2.0 request"
}

test_event_stream_and_session_end_allowed if {
	egress.decision.allowed with input as request_input("GET", mcp_host, "/mcp")
	egress.decision.allowed with input as request_input("DELETE", mcp_host, "/mcp")
}

test_other_paths_denied if {
	d := egress.decision with input as request_input("POST", mcp_host, "/admin")
	not d.allowed
	contains(d.reason, "not the MCP endpoint")
}

test_unknown_session_denied if {
	doc := object.union(single(call(1, "tools/list", {})), {"session": {"id": "unknown", "labels": {}}})
	not egress.decision.allowed with input as doc
}
