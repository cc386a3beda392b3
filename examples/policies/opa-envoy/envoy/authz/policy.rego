# Role-based access control, written as for opa-envoy-plugin (pre-1.0 Rego, no `if`).
#
# The user comes from a Basic authorization header; their roles and each role's permissions
# (method + path) from data.envoy.rbac (envoy/rbac/data.json). Guests may GET /people; admins
# may also POST /people. Everything else is denied.
#
# Query: data.envoy.authz.allow (a boolean). The manifest says "rego_version": 0, as OPA 1.x
# requires for this syntax too.
package envoy.authz

import input.attributes.request.http as http_request

default allow = false

allow {
	some role
	user_roles[role]
	permission := data.envoy.rbac.role_permissions[role][_]
	permission.method == http_request.method
	permission.path == request_path
}

user_roles[role] {
	role := data.envoy.rbac.user_roles[user_name][_]
}

# The user name of a Basic authorization header ("Basic " + base64 of "name:password"). The
# password is not checked here: as in the OPA-Envoy tutorials, authentication is someone else's
# job (the upstream's, or a JWT's), and this policy only authorizes. base64.is_valid keeps a
# malformed header a plain "no user" rather than a builtin error.
user_name = name {
	header := http_request.headers.authorization
	startswith(header, "Basic ")
	encoded := substring(header, count("Basic "), -1)
	base64.is_valid(encoded)
	credentials := base64.decode(encoded)
	colon := indexof(credentials, ":")
	colon > 0
	name := substring(credentials, 0, colon)
}

# The path without its query string: /people?page=2 is /people.
request_path = path {
	path := split(http_request.path, "?")[0]
}
