package cordon.egress_test

import rego.v1

import data.cordon.egress

request_input(method, host, path, query) := {
	"version": {"encoding": "protojson", "ext_authz": "v3"},
	"attributes": {
		"source": {"address": {"socketAddress": {"address": "10.200.0.2", "portValue": 40000}}},
		"tlsSession": {"sni": host},
		"request": {"http": {
			"method": method,
			"host": host,
			"path": path,
			"scheme": "https",
			"protocol": "HTTP/1.1",
			"headers": {
				":authority": host,
				":method": method,
				":path": path,
				":scheme": "https",
			},
		}},
	},
	"parsed_path": split(trim_left(split(path, "?")[0], "/"), "/"),
	"parsed_query": query,
	"destination": {"host": host, "port": 443},
	"session": {"id": "sesn_1", "labels": {}},
	"connection": {
		"stage": "request",
		"mode": "explicit",
		"transport": "tls",
		"source": {"address": "10.200.0.2", "port": 40000},
		"sni": host,
	},
}

zero := "0000000000000000000000000000000000000000"

a := "1111111111111111111111111111111111111111"

b := "2222222222222222222222222222222222222222"

command(old, new, ref) := {"old": old, "new": new, "ref": ref, "action": action(old, new)}

action(old, _) := "create" if old == zero

action(old, new) := "delete" if {
	old != zero
	new == zero
}

action(old, new) := "update" if {
	old != zero
	new != zero
}

# A push of `commands`, as input.cordon.git holds them. `truncated`: the pack went past
# max_bytes (the commands are whole all the same).
push(commands, truncated) := object.union(request_input("POST", "github.com", "/acme/widgets.git/git-receive-pack", {}), {
	"truncated_body": truncated,
	"cordon": object.union(
		{"git": {"commands": commands}},
		{"body_error": {"kind": "too_large", "message": "the body is larger than 65536 bytes"} | truncated},
	),
})

test_clone_allowed if {
	egress.decision.allowed with input as request_input("GET", "github.com", "/acme/widgets.git/info/refs?service=git-upload-pack", {"service": ["git-upload-pack"]})
	egress.decision.allowed with input as request_input("POST", "github.com", "/acme/widgets.git/git-upload-pack", {})
}

test_push_to_a_branch_allowed if {
	d := egress.decision with input as push([command(a, b, "refs/heads/fix-typo")], false)
	d.allowed
	d.reason == "git push to refs/heads/fix-typo"
}

test_large_push_with_whole_commands_allowed if {
	egress.decision.allowed with input as push([command(zero, b, "refs/heads/feature")], true)
}

test_push_to_main_denied if {
	d := egress.decision with input as push([command(a, b, "refs/heads/main")], false)
	not d.allowed
	d.reason == "git push may not update refs/heads/main"
}

test_deleting_main_denied if {
	d := egress.decision with input as push([command(a, zero, "refs/heads/main")], false)
	not d.allowed
	d.reason == "git push may not delete refs/heads/main"
}

test_creating_main_denied if {
	d := egress.decision with input as push([command(zero, b, "refs/heads/main")], false)
	not d.allowed
	d.reason == "git push may not create refs/heads/main"
}

test_main_hidden_among_other_refs_denied if {
	d := egress.decision with input as push([command(a, b, "refs/heads/feature"), command(a, b, "refs/heads/main"), command(zero, b, "refs/tags/v1")], false)
	not d.allowed
	d.reason == "git push may not update refs/heads/main"
}

test_deleting_a_tag_allowed if {
	egress.decision.allowed with input as push([command(a, zero, "refs/tags/old")], false)
}

test_unreadable_push_denied if {
	doc := object.union(request_input("POST", "github.com", "/acme/widgets.git/git-receive-pack", {}), {
		"truncated_body": false,
		"cordon": {"body_error": {"kind": "invalid_git", "message": "\"junk\" is not a ref update command"}},
	})
	d := egress.decision with input as doc
	not d.allowed
	contains(d.reason, "not a ref update command")
}

# Commands cut off by max_bytes: too_large and no git field.
test_push_whose_commands_did_not_fit_denied if {
	doc := object.union(request_input("POST", "github.com", "/acme/widgets.git/git-receive-pack", {}), {
		"truncated_body": true,
		"cordon": {"body_error": {"kind": "too_large", "message": "the body is larger than 65536 bytes"}},
	})
	d := egress.decision with input as doc
	not d.allowed
	d.reason == "no ref updates in the push"
}

# A request without body fields (a bundle or host that does not ask): fail closed.
test_push_without_body_fields_denied if {
	d := egress.decision with input as request_input("POST", "github.com", "/acme/widgets.git/git-receive-pack", {})
	not d.allowed
	d.reason == "no ref updates in the push"
}

test_other_hosts_and_requests_denied if {
	not egress.decision.allowed with input as request_input("GET", "gitlab.com", "/acme/widgets.git/info/refs", {})
	d := egress.decision with input as request_input("DELETE", "github.com", "/acme/widgets", {})
	not d.allowed
	contains(d.reason, "not git smart HTTP")
}
