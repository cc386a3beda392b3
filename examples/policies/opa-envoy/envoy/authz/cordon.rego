# The one addition this bundle needs to run in Cordon rather than behind Envoy.
#
# Cordon also asks the policy once per connection, before any HTTP request is read (stage
# "connect"); there is no input.attributes.request then, so `allow` above would be false and
# every connection refused. Allow the connection here and let each request be decided by the
# RBAC rules (docs/POLICY.md, "Porting an OPA-Envoy policy").
package envoy.authz

allow {
	input.connection.stage == "connect"
}
