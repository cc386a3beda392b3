# cordon-bench's allow rule for Cordon, equivalent to Squid's `dstdomain .bench.test` ACL and
# the mitmproxy addon's check: bench.test and its subdomains are allowed, at the connect stage
# and for every request; anything else is denied. Scenario 5 uses the realistic
# examples/policies/agent-egress bundle instead.
package cordon.egress

import rego.v1

import input.destination

default decision := {"allowed": false, "reason": "not a bench host"}

decision := {"allowed": true, "reason": "bench host"} if {
	bench_host
}

bench_host if destination.host == "bench.test"

bench_host if endswith(destination.host, ".bench.test")
