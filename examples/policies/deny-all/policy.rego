# Deny every connection and every request.
#
# The smallest useful Cordon policy: a sandbox under this bundle can reach nothing. Use it as a
# starting point, as a kill switch (reload with it and every decision after the swap is a
# deny), or to check that the proxy fails closed end to end.
package cordon.egress

import rego.v1

default decision := {
	"allowed": false,
	"reason": "all egress is denied by the deny-all policy",
}

# A source address no session registered gets a reason that says so, which makes a
# misconfigured sandbox easier to spot in the audit log.
decision := {
	"allowed": false,
	"reason": "source is not registered to any session; all egress is denied by the deny-all policy",
} if {
	input.session.id == "unknown"
}
