# git over smart HTTP, with no push to main.
#
# Clones and fetches from the hosts in data.cordon.git.hosts are allowed. A push
# (POST .../git-receive-pack) is allowed when none of its ref updates (input.cordon.git.commands)
# touches a protected ref (data.cordon.git.protected_refs): creating, updating or deleting
# refs/heads/main is denied with a reason naming the ref; every other branch and tag may be
# pushed.
#
# A push's commands precede its pack, so Cordon reads them from the first max_bytes of the
# body however large the push (truncated_body is then true, and the commands are still whole).
# A push whose command list did not fit (or a proxy without body fields) is denied as "no ref
# updates".
package cordon.egress

import rego.v1

import data.cordon.git

default decision := {"allowed": false, "reason": "no rule allows this request"}

host := input.destination.host

http := input.attributes.request.http

path := split(http.path, "?")[0]

decision := {"allowed": false, "reason": "source is not registered to any session"} if {
	input.session.id == "unknown"
} else := {"allowed": true, "mitm": true, "reason": "git host"} if {
	input.connection.stage == "connect"
	host in git.hosts
} else := {"allowed": false, "reason": sprintf("%s is not a git host this policy allows", [host])} if {
	not host in git.hosts
} else := {"allowed": true, "reason": "git fetch"} if {
	fetch
} else := {"allowed": false, "reason": sprintf("%s %s is not git smart HTTP", [http.method, http.path])} if {
	not push
} else := {"allowed": false, "reason": sprintf("the push could not be read: %s", [input.cordon.body_error.message])} if {
	input.cordon.body_error.kind != "too_large"
} else := {"allowed": false, "reason": "no ref updates in the push"} if {
	not input.cordon.git.commands
} else := {"allowed": false, "reason": concat("; ", sort(refusals))} if {
	count(refusals) > 0
} else := {"allowed": true, "reason": sprintf("git push to %s", [concat(", ", sort(refs))])}

fetch if {
	http.method == "GET"
	endswith(path, "/info/refs")
	input.parsed_query.service == ["git-upload-pack"]
}

fetch if {
	http.method == "POST"
	endswith(path, "/git-upload-pack")
}

# Discovering refs before a push is a read too; the push itself is decided on its commands.
fetch if {
	http.method == "GET"
	endswith(path, "/info/refs")
	input.parsed_query.service == ["git-receive-pack"]
}

push if {
	http.method == "POST"
	endswith(path, "/git-receive-pack")
}

refs contains c.ref if {
	some c in input.cordon.git.commands
}

refusals contains sprintf("git push may not %s %s", [c.action, c.ref]) if {
	some c in input.cordon.git.commands
	c.ref in git.protected_refs
}
