use super::*;

/// Images whose root is `dir/root`, with `true` and `python3` in /usr/bin.
fn context(dir: &Path) -> Context {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    for program in ["true", "python3"] {
        let path = root.join("usr/bin").join(program);
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let info = ImageInfo {
        root,
        path: "/usr/bin:/bin".into(),
    };
    Context {
        host_rootfs: false,
        images: [
            ("default".to_string(), info.clone()),
            ("python".to_string(), info),
        ]
        .into(),
        default_image: "default".into(),
        forbidden: vec![dir.join("state")],
        explicit_proxy: true,
    }
}

#[test]
fn a_good_file_gives_every_tool_with_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("orders.db"), b"").unwrap();
    std::fs::write(
        dir.path().join("schema.json"),
        r#"{"type": "object", "properties": {"q": {"type": "string"}}}"#,
    )
    .unwrap();
    let text = r#"
        [[tool]]
        name = "lookup_order"
        description = "Look an order up"
        input_schema = { type = "object", properties = { id = { type = "string" } }, required = ["id"] }
        timeout_ms = 5000
        warm = 1
        [tool.run]
        image = "python"
        command = ["python3", "/tool/lookup.py"]
        mounts = [{ source = "orders.db", target = "/data/orders.db" }]

        [[tool]]
        name = "search"
        description = "Search the wiki"
        input_schema_file = "schema.json"
        [tool.http]
        url = "https://wiki.internal/api/search"
        headers = { "x-team" = "infra" }
    "#;
    let set = parse(text, dir.path(), &context(dir.path())).unwrap();
    assert_eq!(set.names(), ["lookup_order", "search"]);
    let lookup = &set.tools["lookup_order"];
    assert_eq!(lookup.timeout, Duration::from_millis(5000));
    assert_eq!(lookup.max_output_bytes, DEFAULT_MAX_OUTPUT_KB * 1024);
    let Handler::Run(run) = &lookup.handler else {
        panic!("a run tool")
    };
    assert_eq!(run.image.as_deref(), Some("python"));
    assert_eq!(run.cwd, "/");
    assert_eq!(run.warm, 1);
    assert_eq!(run.mounts.len(), 1);
    assert!(!run.mounts[0].writable);
    assert!(run.mounts[0].source.is_absolute());
    let search = &set.tools["search"];
    assert_eq!(search.concurrency, DEFAULT_CONCURRENCY);
    let Handler::Http(http) = &search.handler else {
        panic!("an http tool")
    };
    assert_eq!(http.method, http::Method::POST);
    let entries = set.agent_entries();
    assert_eq!(entries[0]["type"], "custom");
    assert_eq!(entries[0]["input_schema"]["required"][0], "id");
    assert_eq!(
        entries[1]["input_schema"]["properties"]["q"]["type"],
        "string"
    );
}

#[test]
fn every_problem_is_reported_at_once_naming_the_tool() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let text = r#"
        [[tool]]
        name = "bad name"
        description = "x"
        input_schema = { type = "object" }
        [tool.run]
        command = ["true"]

        [[tool]]
        name = "refs"
        description = "x"
        input_schema = { type = "object", "$defs" = { a = { type = "string" } } }
        [tool.run]
        image = "missing"
        command = []
        mounts = [
            { source = "state", target = "/data" },
            { source = "nowhere", target = "/x" },
        ]

        [[tool]]
        name = "leaky"
        description = ""
        input_schema = { type = "string" }
        [tool.http]
        url = "ftp://x"
        method = "GET"
        headers = { authorization = "Bearer sk-secret" }

        [[tool]]
        name = "dup"
        description = "x"
        input_schema = { type = "object" }
        [tool.run]
        command = ["true"]

        [[tool]]
        name = "dup"
        description = "x"
        input_schema = { type = "object" }
        [tool.run]
        command = ["true"]

        [[tool]]
        name = "bash"
        description = "x"
        input_schema = { type = "object" }
    "#;
    let errors = parse(text, dir.path(), &context(dir.path())).unwrap_err();
    let all = errors.join("\n");
    for expected in [
        "tool \"bad name\": name \"bad name\"",
        "tool \"refs\": input_schema: ",
        "$defs",
        "run.image \"missing\" is not in the image store",
        "run.command is empty",
        "is or holds",
        "run.mounts nowhere",
        "tool \"leaky\": description is missing",
        "tool \"leaky\": input_schema: ",
        "http.url \"ftp://x\"",
        "http.method \"GET\"",
        "would put a credential in tools.toml",
        "tool \"dup\": declared twice",
        "tool \"bash\": name \"bash\" is a tool of CMA's own toolset",
        "tool \"bash\": has no handler",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    // The secret itself never appears in an error.
    assert!(!all.contains("sk-secret"), "{all}");
}

#[test]
fn mount_targets_cordon_owns_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ok")).unwrap();
    let text = r#"
        [[tool]]
        name = "t"
        description = "x"
        input_schema = { type = "object" }
        [tool.run]
        command = ["true"]
        mounts = [
            { source = "ok", target = "/run/cordon/x" },
            { source = "ok", target = "/data/../etc" },
            { source = "ok", target = "/data" },
            { source = "ok", target = "/data/" },
        ]
    "#;
    let errors = parse(text, dir.path(), &context(dir.path())).unwrap_err();
    let all = errors.join("\n");
    assert!(all.contains("Cordon's or the kernel's"), "{all}");
    assert!(all.contains("without '.' or '..'"), "{all}");
    assert!(all.contains("/data is mounted twice"), "{all}");
    assert_eq!(errors.len(), 3, "{all}");
}

#[test]
fn an_empty_file_serves_no_tools_and_unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        parse("", dir.path(), &context(dir.path()))
            .unwrap()
            .tools
            .is_empty()
    );
    let errors = parse(
        "[[tool]]\nname = \"t\"\ntimeout = 5\n",
        dir.path(),
        &context(dir.path()),
    )
    .unwrap_err();
    assert!(errors[0].contains("unknown field `timeout`"), "{errors:?}");
}

#[test]
fn writable_mounts_may_not_overlap_and_targets_may_not_cover_cordons() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("reports/templates")).unwrap();
    let text = r#"
        [[tool]]
        name = "writer"
        description = "x"
        input_schema = { type = "object" }
        [tool.run]
        command = ["true"]
        mounts = [{ source = "reports", target = "/reports", writable = true }]

        [[tool]]
        name = "reader"
        description = "x"
        input_schema = { type = "object" }
        [tool.run]
        command = ["true"]
        mounts = [{ source = "reports/templates", target = "/templates" }]

        [[tool]]
        name = "hider"
        description = "x"
        input_schema = { type = "object" }
        [tool.run]
        command = ["true"]
        mounts = [{ source = "reports/templates", target = "/etc" }]
    "#;
    let errors = parse(text, dir.path(), &context(dir.path())).unwrap_err();
    let all = errors.join("\n");
    assert!(all.contains("tool \"writer\": the writable mount"), "{all}");
    assert!(all.contains("Cordon's or the kernel's"), "{all}");
    let mut host = context(dir.path());
    host.host_rootfs = true;
    let errors = parse(
        "[[tool]]\nname = \"t\"\ndescription = \"x\"\ninput_schema = { type = \"object\" }\n[tool.run]\ncommand = [\"true\"]\n",
        dir.path(),
        &host,
    )
    .unwrap_err();
    assert!(errors[0].contains("danger_host_rootfs"), "{errors:?}");
    let long = "a".repeat(124);
    assert!(!valid_name(&long) && valid_name(&long[..123]));
}

#[test]
fn the_browser_built_in_adds_its_tools_and_keeps_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let context = context(dir.path());
    let set = parse("[builtins]\nbrowser = true\n", dir.path(), &context).unwrap();
    assert_eq!(set.names(), {
        let mut names = cordon_sandbox_agent::browser::TOOLS.to_vec();
        names.sort_unstable();
        names
    });
    let navigate = &set.tools["browser_navigate"];
    assert_eq!(navigate.handler, Handler::Browser);
    assert_eq!(
        navigate.input_schema["required"],
        serde_json::json!(["url"])
    );
    let entries = set.agent_entries();
    assert!(entries.iter().all(|e| e["type"] == "custom"));

    // Off by default, and off means none of them.
    let set = parse("[builtins]\nbrowser = false\n", dir.path(), &context).unwrap();
    assert!(set.tools.is_empty());

    // A declared tool may not take a built-in's name; an unknown built-in is named.
    let taken = "[builtins]\nbrowser = true\n[[tool]]\nname = \"browser_back\"\ndescription = \"x\"\ninput_schema = { type = \"object\" }\n[tool.run]\ncommand = [\"true\"]\n";
    let errors = parse(taken, dir.path(), &context).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("\"browser_back\": the name is the browser built-in's")),
        "{errors:?}"
    );
    let errors = parse("[builtins]\nterminal = true\n", dir.path(), &context).unwrap_err();
    assert!(errors[0].contains("unknown field `terminal`"), "{errors:?}");
}
