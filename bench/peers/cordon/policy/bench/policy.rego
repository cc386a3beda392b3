# cordon-bench's allow rule for Cordon, equivalent to Squid's `dstdomain .bench.test` ACL and
# the mitmproxy addon's check: bench.test and its subdomains are allowed, at the connect stage
# and for every request; anything else is denied. Scenario 5 uses the realistic
# examples/policies/agent-egress bundle instead. Scenario 11's host, body.bench.test, is
# decided on the request body (the bundle's .manifest asks for it): only the listed model.
package cordon.egress

import rego.v1

import input.destination

default decision := {"allowed": false, "reason": "not a bench host"}

decision := {"allowed": true, "reason": "bench host"} if {
	bench_host
	destination.host != "body.bench.test"
}

decision := {"allowed": true, "reason": "bench host"} if {
	destination.host == "body.bench.test"
	input.connection.stage == "connect"
}

decision := {"allowed": true, "reason": "listed model"} if {
	destination.host == "body.bench.test"
	input.parsed_body.model == "bench-model"
}

bench_host if destination.host == "bench.test"

bench_host if endswith(destination.host, ".bench.test")
