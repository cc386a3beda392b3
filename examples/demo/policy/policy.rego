# The demo's egress policy: the example API, with its token injected by the proxy; nothing else.
package cordon.egress

import rego.v1

default decision := {"allowed": false, "reason": "not on the demo allow list"}

# TLS is intercepted for the two demo hosts so that each request is decided on its own.
decision := {"allowed": true, "reason": "demo host"} if {
	input.session.id != "unknown"
	input.connection.stage == "connect"
	input.destination.host in {"api.example.test", "blocked.example.test"}
}

decision := {
	"allowed": true,
	"reason": "example API, read only",
	"inject": [{"secret": "example-api", "header": "authorization"}],
} if {
	input.session.id != "unknown"
	input.connection.stage == "request"
	input.destination.host == "api.example.test"
	input.attributes.request.http.method in {"GET", "HEAD"}
}

# The ticket_search custom tool (examples/tools/tools.toml) calls the desk's search endpoint
# under an identity of its own, "tool:ticket_search" (its labels name the calling session):
# POST to that one path, with the token injected. Sessions themselves may not POST there.
decision := {
	"allowed": true,
	"reason": sprintf("ticket_search for session %s", [input.session.labels.session]),
	"inject": [{"secret": "example-api", "header": "authorization"}],
} if {
	input.session.id == "tool:ticket_search"
	input.connection.stage == "request"
	input.destination.host == "api.example.test"
	input.attributes.request.http.method == "POST"
	input.attributes.request.http.path == "/v1/tickets/search"
}

# Local sessions (docs/OPEN-MODELS.md): a local agent's model requests come from session
# "model:<agent>". The demo's model is a scripted one at llm.example.test (no weights); the
# proxy injects its key, which the controller and the sandbox never hold.
decision := {"allowed": true, "reason": "the demo model endpoint"} if {
	startswith(input.session.id, "model:")
	input.connection.stage == "connect"
	input.destination.host == "llm.example.test"
}

decision := {
	"allowed": true,
	"reason": "the demo model endpoint",
	"inject": [{"secret": "demo-model", "header": "authorization"}],
} if {
	startswith(input.session.id, "model:")
	input.connection.stage == "request"
	input.destination.host == "llm.example.test"
	input.attributes.request.http.method == "POST"
	input.attributes.request.http.path == "/v1/chat/completions"
}
