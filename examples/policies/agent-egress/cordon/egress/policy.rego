# Egress for a coding agent.
#
# - Package registries and documentation (data.cordon.allowlist.read_only_hosts): GET and HEAD.
# - api.github.com: reads anywhere the token reaches; writes only under
#   /repos/{org}/{repo}/... of a write org. The proxy injects the `github` secret.
# - github.com: git smart HTTP only. Clone and fetch from read (and write) orgs; push to write
#   orgs, and only from sessions labelled github-write=true. The proxy injects `github-git`.
# - api.anthropic.com: POST /v1/messages and /v1/messages/count_tokens. The proxy injects the
#   `anthropic` secret as x-api-key and strips any authorization header the agent sent.
# - Everything else, and everything from a source address no session registered, is denied.
#
# Credentials are never in this policy or its data: a decision names a secret and the header it
# goes in, and the proxy resolves the value.
#
# Query: data.cordon.egress.decision. Data: data.cordon.allowlist (cordon/allowlist/data.json);
# `api_hosts` there maps each API host to the rules that handle it, so a GitHub Enterprise host,
# say, is one line of data.
#
# Every decision is an object with a human `reason`. The rules are `else` chains, so exactly one
# value is produced for any input and the first matching branch wins.
#
# Written for speed (the policy is benchmarked; see README.md): every rule call and every `else`
# branch costs the RVM a fraction of a microsecond, so input and data are reached through
# imports (compile-time aliases, not rules), conditions are written inline, and host lists are
# matched with `in` against the data array directly: a set built from data by a comprehension
# would be rebuilt on every decision.
package cordon.egress

import rego.v1

import data.cordon.allowlist
import input.attributes.request.http as request
import input.connection
import input.destination
import input.parsed_path
import input.session

# --- Decision helpers -----------------------------------------------------------------------

deny(reason) := {"allowed": false, "reason": reason}

# git over HTTPS wants Basic credentials, the API a Bearer token: two secrets in the store
# (examples/secrets.toml), possibly with one value.
allow_with_github_git(reason) := {
	"allowed": true,
	"reason": reason,
	"inject": [{"secret": allowlist.github.git_secret, "header": "authorization"}],
}

allow_with_github(reason) := {
	"allowed": true,
	"reason": reason,
	"inject": [{"secret": allowlist.github.secret, "header": "authorization"}],
}

# The path without its query string, for reasons (a query may carry tokens; reasons are logged).
shown_path := split(request.path, "?")[0]

# --- The decision -------------------------------------------------------------------------------

default decision := {
	"allowed": false,
	"reason": "no rule of the agent-egress policy applies to this input (fail closed)",
}

decision := deny("source address is not registered to any session") if {
	session.id == "unknown"
} else := deny("the proxy could not name the destination host") if {
	not destination.host
} else := connect_decision if {
	connection.stage == "connect"
} else := request_decision if {
	connection.stage == "request"
}

# --- Stage connect: once per connection, before any HTTP is read ------------------------------

connect_decision := deny(sprintf(
	"raw %s connections are not allowed (to %s port %v); only TLS and HTTP can be inspected",
	[connection.transport, destination.host, destination.port],
)) if {
	not connection.transport in {"tls", "http"}
} else := {
	"allowed": true,
	"mitm": true,
	"reason": sprintf("%s is on the egress allowlist: intercept and decide each request", [destination.host]),
} if {
	destination.host in allowlist.read_only_hosts
} else := {
	"allowed": true,
	"mitm": true,
	"reason": sprintf("%s is an allowed API host: intercept and decide each request", [destination.host]),
} if {
	allowlist.api_hosts[destination.host]
} else := {
	"allowed": true,
	"mitm": true,
	"reason": sprintf("plaintext HTTP to %s: each request is decided by the host it names", [destination.host]),
} if {
	# A transparently redirected plaintext connection is known only by its IP address until
	# the request's Host arrives. Let it through to the request stage, which decides by name
	# (the proxy resolves that name itself; it never dials the address the client chose).
	connection.transport == "http"
	destination.host == connection.original_destination.address
} else := deny(sprintf("host %s is not on the egress allowlist", [destination.host]))

# --- Stage request: once per HTTP request ---------------------------------------------------------

# Each chain lists its allow branches first (the common cases, reached in the fewest steps),
# then the deny branches, whose order decides which reason a refused request gets.
request_decision := {"allowed": true, "reason": sprintf("read-only access to %s", [destination.host])} if {
	# A GET to a public read-only host needs none of the API checks below: the worst a fronted
	# Host or a dot segment can do there is read another public page.
	destination.host in allowlist.read_only_hosts
	request.method in {"GET", "HEAD"}
} else := anthropic_decision if {
	allowlist.api_hosts[destination.host] == "anthropic"
	credential_safe
} else := github_api_decision if {
	allowlist.api_hosts[destination.host] == "github-api"
	credential_safe
	not has_dot_segment
} else := github_git_decision if {
	allowlist.api_hosts[destination.host] == "github-git"
	credential_safe
	not has_dot_segment
} else := deny(sprintf(
	"%s is read-only: %s is not allowed, only GET and HEAD",
	[destination.host, request.method],
)) if {
	destination.host in allowlist.read_only_hosts
} else := deny(sprintf("host %s is not on the egress allowlist", [destination.host])) if {
	not allowlist.api_hosts[destination.host]
} else := deny(sprintf(
	"%s is only reached over HTTPS (credentials are injected); refusing %s://",
	[destination.host, request.scheme],
)) if {
	request.scheme != "https"
} else := deny(sprintf(
	"request for host %s on a TLS connection to %s (host and server name must match)",
	[destination.host, connection.sni],
)) if {
	connection.sni != destination.host
} else := deny(sprintf("path %s has a . or .. segment", [shown_path])) if {
	has_dot_segment
} else := deny(sprintf("request for %s on a TLS connection without a server name", [destination.host])) if {
	not connection.sni
} else := deny(sprintf(
	"no rule of the agent-egress policy allows this request to %s (is data.cordon.allowlist.api_hosts[%q] a known rule set?)",
	[destination.host, destination.host],
))

# A request a credential may be added to: over TLS, to the host the connection was opened to.
# Domain fronting (a TLS connection to one host carrying requests for another) would otherwise
# let a request be judged, and credentialed, by a host it is not going to. (The proxy also
# refuses a mismatch with 421 before asking; this keeps the policy correct on its own.)
credential_safe if {
	request.scheme == "https"
	connection.sni == destination.host
}

# Iteration lives in its own rule, not in an `else` body: regorus 0.14.1's RVM makes a whole
# else chain undefined when a loop in one of its bodies finds nothing (the interpreter, and so
# `cordon-policy test`, gets it right). See README.md.
has_dot_segment if {
	some segment in parsed_path
	segment in {".", ".."}
}

# api.github.com. Reads anywhere the token reaches. A write needs a sub-resource
# (/repos/{org}/{repo}/issues, .../pulls, ...): deleting, renaming or reconfiguring a repository
# itself is left to people. GitHub org names are case-insensitive, so they are compared
# lower-case (the data lists them lower-case). Dot segments (/repos/acme/app/../../user/keys)
# were refused before this rule is asked.
github_api_decision := allow_with_github("GitHub API read") if {
	request.method in {"GET", "HEAD"}
} else := allow_with_github(sprintf("GitHub API write to a repository of %s", [parsed_path[1]])) if {
	request.method in {"POST", "PATCH", "PUT", "DELETE"}
	github_repo_write_path
	lower(parsed_path[1]) in allowlist.github.write_orgs
} else := deny(sprintf("GitHub API: method %s is not allowed", [request.method])) if {
	not request.method in {"POST", "PATCH", "PUT", "DELETE"}
} else := deny(sprintf(
	"GitHub API: %s %s is not allowed; writes must be under /repos/{org}/{repo}/ of an allowed organisation",
	[request.method, shown_path],
)) if {
	not github_repo_write_path
} else := deny(sprintf("GitHub API: organisation %s is not allowed for writing", [parsed_path[1]]))

github_repo_write_path if {
	count(parsed_path) >= 4
	parsed_path[0] == "repos"
	parsed_path[1] != ""
	parsed_path[2] != ""
	parsed_path[3] != ""
}

# github.com: git smart HTTP (https://git-scm.com/docs/http-protocol).
#   GET  /{org}/{repo}/info/refs?service=git-upload-pack | git-receive-pack
#   POST /{org}/{repo}/git-upload-pack | git-receive-pack
# Undefined for anything else on github.com.
git_service := input.parsed_query.service[0] if {
	request.method == "GET"
	count(parsed_path) == 4
	parsed_path[2] == "info"
	parsed_path[3] == "refs"
	count(input.parsed_query.service) == 1
} else := parsed_path[2] if {
	request.method == "POST"
	count(parsed_path) == 3
}

github_git_decision := allow_with_github_git(sprintf("git fetch from %s/%s", [parsed_path[0], parsed_path[1]])) if {
	git_service == "git-upload-pack"
	lower(parsed_path[0]) in allowlist.github.read_orgs
} else := allow_with_github_git(sprintf("git fetch from %s/%s", [parsed_path[0], parsed_path[1]])) if {
	# A write org is readable too.
	git_service == "git-upload-pack"
	lower(parsed_path[0]) in allowlist.github.write_orgs
} else := allow_with_github_git(sprintf("git push to %s/%s", [parsed_path[0], parsed_path[1]])) if {
	git_service == "git-receive-pack"
	lower(parsed_path[0]) in allowlist.github.write_orgs
	session.labels[allowlist.github.write_label] == "true"
} else := deny(sprintf(
	"github.com: only git over smart HTTP is allowed (clone, fetch, push); %s %s is not",
	[request.method, shown_path],
)) if {
	not git_service in {"git-upload-pack", "git-receive-pack"}
} else := deny(sprintf("git: organisation %s is not allowed for reading", [parsed_path[0]])) if {
	git_service == "git-upload-pack"
} else := deny(sprintf("git push: organisation %s is not allowed for writing", [parsed_path[0]])) if {
	not lower(parsed_path[0]) in allowlist.github.write_orgs
} else := deny(sprintf(
	"git push to %s/%s needs a session labelled %s=true",
	[parsed_path[0], parsed_path[1], allowlist.github.write_label],
))

# api.anthropic.com: the Messages API only. The proxy sets x-api-key; any authorization header
# the agent sent is removed so it cannot bring a key of its own.
anthropic_decision := {
	"allowed": true,
	"reason": "Anthropic Messages API",
	"inject": [{"secret": allowlist.anthropic.secret, "header": "x-api-key"}],
	"request_headers_to_remove": ["authorization"],
} if {
	request.method == "POST"
	parsed_path in allowlist.anthropic.paths
} else := deny(sprintf(
	"api.anthropic.com: only POST /v1/messages and /v1/messages/count_tokens are allowed; %s %s is not",
	[request.method, shown_path],
))
