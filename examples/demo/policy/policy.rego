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
