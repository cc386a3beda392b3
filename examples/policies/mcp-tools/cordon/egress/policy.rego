# MCP over streamable HTTP, decided per JSON-RPC call.
#
# The sandbox may reach the MCP servers in data.cordon.mcp.servers and nothing else. On each
# server it may initialize, ping and list tools, and call the tools listed for that server;
# every other call is denied with a reason naming the tool or method. A JSON-RPC batch is
# allowed only when every call in it is.
#
# Reads input.cordon.jsonrpc, filled from the request body because the manifest asks for
# bodies (metadata.cordon.request_body). A POST without it (a body that is not JSON-RPC) is
# denied as "not a JSON-RPC request".
package cordon.egress

import rego.v1

import data.cordon.mcp

default decision := {"allowed": false, "reason": "no rule allows this request"}

host := input.destination.host

server := mcp.servers[host]

http := input.attributes.request.http

decision := {"allowed": false, "reason": "source is not registered to any session"} if {
	input.session.id == "unknown"
} else := {"allowed": true, "mitm": true, "reason": "MCP server"} if {
	input.connection.stage == "connect"
	server
} else := {"allowed": false, "reason": sprintf("%s is not an MCP server this policy allows", [host])} if {
	not server
} else := {"allowed": false, "reason": sprintf("%s is not the MCP endpoint of %s", [http.path, host])} if {
	input.parsed_path != server.path
} else := {"allowed": true, "reason": "MCP session stream or session end"} if {
	# GET opens the server's event stream; DELETE ends the session. Neither carries calls.
	http.method in {"GET", "DELETE"}
} else := {"allowed": false, "reason": sprintf("MCP %s requests are not allowed", [http.method])} if {
	http.method != "POST"
} else := {"allowed": false, "reason": sprintf("the MCP request body could not be read: %s", [input.cordon.body_error.message])} if {
	input.cordon.body_error
} else := {"allowed": false, "reason": "the MCP request body was not seen whole"} if {
	input.truncated_body
} else := {"allowed": false, "reason": "not a JSON-RPC 2.0 request"} if {
	not input.cordon.jsonrpc
} else := {"allowed": false, "reason": concat("; ", sort(denials))} if {
	count(denials) > 0
} else := {"allowed": true, "reason": sprintf("MCP %s", [concat(", ", sort(methods))])}

# A single message and a batch alike, as a list.
messages := [input.cordon.jsonrpc] if {
	is_object(input.cordon.jsonrpc)
} else := input.cordon.jsonrpc

methods contains m.method if {
	some m in messages
	m.method
}

denials contains denial(m) if {
	some m in messages
	not allowed(m)
}

allowed(m) if m.kind == "response"

allowed(m) if {
	m.kind == "notification"
	startswith(m.method, "notifications/")
}

allowed(m) if {
	m.kind == "request"
	m.method in mcp.methods
}

allowed(m) if {
	m.kind == "request"
	m.method == "tools/call"
	m.params.name in server.tools
}

denial(m) := "a batch element is not a JSON-RPC 2.0 message" if {
	m.kind == "invalid"
} else := sprintf("MCP tool %q is not allowed on %s", [m.params.name, host]) if {
	m.method == "tools/call"
	is_string(m.params.name)
} else := sprintf("MCP tools/call without a tool name is not allowed on %s", [host]) if {
	m.method == "tools/call"
} else := sprintf("MCP method %q is not allowed on %s", [m.method, host])
