//! The sandbox lifecycle through the CLI, as a user drives it: start, exec, stop, list,
//! reconcile, and every refusal leaving nothing half-created. Root tier (real runsc).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{World, text};

#[test]
fn a_sandbox_runs_commands_and_leaves_nothing_behind() {
    let mut world = World::new(234, 24, "");
    let address = world.start("s1").unwrap_or_else(|out| panic!("{out:?}"));
    assert!(address.starts_with("10.234."), "{address}");
    assert!(world.netns_exists("s1"));
    assert!(world.registrations().contains(&address));
    let list = text(&world.controller(&["sandbox", "list"]).stdout);
    assert!(list.contains("s1") && list.contains("running"), "{list}");

    // Output streams come back separately, with the exit status.
    let out = world.exec("s1", &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err"));
    assert_eq!(out.status.code(), Some(7));
    // The workspace is the host directory; no Anthropic variable is inside.
    let out = world.exec("s1", &["sh", "-c", "echo hi > /workspace/f; env"]);
    assert!(out.status.success());
    assert!(
        !text(&out.stdout).contains("ANTHROPIC"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(world.workspace("s1").join("f")).unwrap(),
        "hi\n"
    );
    // coreutils work (runsc 20221219 needs the statx compatibility library for them).
    let out = world.exec(
        "s1",
        &["sh", "-c", "ls /workspace && stat -c %s /workspace/f"],
    );
    assert_eq!(text(&out.stdout), "f\n3\n", "{out:?}");
    // The CMA toolset, inside gVisor.
    let tool = |name: &str, input: &str| {
        world.controller(&[
            "sandbox",
            "tool",
            "--session",
            "s1",
            "--name",
            name,
            "--input",
            input,
        ])
    };
    let out = tool(
        "write",
        r#"{"file_path": "notes/a.txt", "content": "alpha\nbeta\n"}"#,
    );
    assert!(out.status.success(), "{out:?}");
    let out = tool(
        "edit",
        r#"{"file_path": "notes/a.txt", "old_string": "beta", "new_string": "gamma"}"#,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&tool("read", r#"{"file_path": "/workspace/notes/a.txt"}"#).stdout),
        "alpha
gamma

"
    );
    assert!(
        text(&tool("glob", r#"{"pattern": "**/*.txt"}"#).stdout).contains("/workspace/notes/a.txt")
    );
    assert!(text(&tool("grep", r#"{"pattern": "gam+a"}"#).stdout).contains("a.txt:2:gamma"));
    let out = tool("bash", r#"{"command": "cd notes && ls && export K=v"}"#);
    assert_eq!(
        text(&out.stdout),
        "a.txt

",
        "{out:?}"
    );
    let out = tool(
        "bash",
        r#"{"command": "pwd; echo $K; env | grep -c ANTHROPIC; exit_code=$?; true"}"#,
    );
    assert_eq!(
        text(&out.stdout),
        "/workspace/notes
v
0

",
        "{out:?}"
    );
    let out = tool("read", r#"{"file_path": "/etc/passwd"}"#);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("outside the working directory"));
    let out = tool("fetch", "{}");
    assert!(text(&out.stdout).contains("this sandbox serves bash, read, write, edit, glob, grep"));

    // A timeout kills the command (124); a missing program is 127.
    let out = world.exec_with_timeout("s1", 300, &["sleep", "30"]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    let out = world.exec("s1", &["/no/such/program"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("/no/such/program"));

    // A live session cannot start twice; an unknown one cannot run commands.
    let out = world.controller(&["sandbox", "start", "--session", "s1"]);
    assert!(text(&out.stderr).contains("already live"), "{out:?}");
    let out = world.exec("nope", &["true"]);
    assert_eq!(out.status.code(), Some(66));
    assert!(text(&out.stderr).contains("no session \"nope\""));

    let out = world.controller(&["sandbox", "stop", "--session", "s1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!world.netns_exists("s1"));
    assert!(
        world.host_interfaces().is_empty(),
        "{:?}",
        world.host_interfaces()
    );
    assert!(world.containers().is_empty(), "{:?}", world.containers());
    assert!(!world.registrations().contains(&address));
    let list = text(&world.controller(&["sandbox", "list"]).stdout);
    assert!(list.contains("stopped"), "{list}");
    let out = world.exec("s1", &["true"]);
    assert!(
        text(&out.stderr).contains("is stopped, not running"),
        "{out:?}"
    );

    // A second stop of s1 must not touch s2, which now holds the same slot.
    world.start("s2").unwrap_or_else(|out| panic!("{out:?}"));
    let out = world.controller(&["sandbox", "stop", "--session", "s1"]);
    assert!(out.status.success(), "{out:?}");
    let out = world.exec("s2", &["true"]);
    assert!(
        out.status.success(),
        "s2 survived s1's second stop: {out:?}"
    );

    // s1's next sandbox has what its first one wrote; s2 never sees it.
    world.start("s1").unwrap_or_else(|out| panic!("{out:?}"));
    let out = world.exec("s1", &["cat", "/workspace/f", "/workspace/notes/a.txt"]);
    assert_eq!(text(&out.stdout), "hi\nalpha\ngamma\n", "{out:?}");
    let out = world.exec("s2", &["ls", "-A", "/workspace"]);
    assert_eq!(text(&out.stdout), "", "{out:?}");
    // Ending the session with no retention removes its workspace.
    let config = std::fs::read_to_string(world.config()).unwrap();
    std::fs::write(
        world.config(),
        config.replace("[sandbox]\n", "[sandbox]\nworkspace_retention_hours = 0\n"),
    )
    .unwrap();
    let out = world.controller(&["sandbox", "stop", "--end", "--session", "s1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!world.workspace("s1").exists());
    assert!(!world.workspace("s1").with_extension("img").exists());
}

#[test]
fn refusals_say_why_and_leave_nothing_half_created() {
    // A /29: two slots.
    let mut world = World::new(235, 29, "");
    world.start("x").unwrap_or_else(|out| panic!("{out:?}"));
    world.start("y").unwrap_or_else(|out| panic!("{out:?}"));
    let out = world.start("z").unwrap_err();
    assert!(
        text(&out.stderr).contains("address pool is exhausted"),
        "{out:?}"
    );
    assert!(!world.netns_exists("z"));
    world.controller(&["sandbox", "stop", "--session", "y"]);

    // With the proxy down, registration fails and what was set up is removed.
    world.stop_proxy();
    let out = world.start("w").unwrap_err();
    assert!(
        text(&out.stderr).contains("is cordon-proxy running"),
        "{out:?}"
    );
    assert!(!world.netns_exists("w"));
    assert_eq!(
        world.host_interfaces().len(),
        1,
        "only x's interface remains"
    );
    let list = text(&world.controller(&["sandbox", "list"]).stdout);
    assert!(list.contains("failed"), "{list}");
    world.start_proxy();

    // Reconcile: a stray namespace with the prefix goes; a recorded session whose sandbox
    // vanished is marked failed.
    let stray = format!("{}-stray", world.prefix);
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "add", &stray])
            .status()
            .unwrap()
            .success()
    );
    let root = format!(
        "--root={}",
        world.dir.path().join("state/controller/runsc").display()
    );
    let containers = world.containers();
    assert_eq!(containers.len(), 1, "x's container: {containers:?}");
    std::process::Command::new("runsc")
        .args([root.as_str(), "delete", "--force", &containers[0]])
        .status()
        .unwrap();
    // A registration of a pool address that no live session holds (a stop whose DELETE
    // failed) would make the proxy refuse that address to the next session.
    // Slot 1's sandbox address (y was stopped; the proxy was restarted and has no record).
    let stray_source = format!("10.235.{}.6", std::process::id() % 250);
    let put = std::process::Command::new("curl")
        .args([
            "-s",
            "-X",
            "PUT",
            "-d",
            &format!("{{\"source\": \"{stray_source}\"}}"),
        ])
        .arg(format!(
            "http://127.0.0.1:{}/sessions/stray",
            world.ports.admin
        ))
        .output()
        .unwrap();
    assert!(text(&put.stdout).contains("stray"), "{put:?}");
    let out = world.controller(&["sandbox", "reconcile"]);
    let report = text(&out.stdout);
    assert!(
        report.contains(&format!("removed netns {stray}")),
        "{report}"
    );
    assert!(report.contains("marked failed: x"), "{report}");
    assert!(
        report.contains("removed proxy registration stray"),
        "{report}"
    );
    assert!(!world.netns_exists("x"));

    // Bad ids, a bad [sandbox] key, and a missing runsc are refused with what to do.
    let out = world.controller(&["sandbox", "start", "--session", "../etc"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("not valid"));
    let config = std::fs::read_to_string(world.config()).unwrap();
    std::fs::write(
        world.config(),
        config.replace("[sandbox]\n", "[sandbox]\nmemroy_mb = 3\n"),
    )
    .unwrap();
    let out = world.controller(&["sandbox", "list"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("memroy_mb"), "{out:?}");
    // An interface prefix that would reach the host's own interfaces is refused.
    let host_like = config.replace(
        &format!("interface_prefix = \"{}\"", world.interface_prefix),
        "interface_prefix = \"eth\"",
    );
    assert_ne!(host_like, config);
    std::fs::write(world.config(), host_like).unwrap();
    let out = world.controller(&["sandbox", "list"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("not overlapping the host"),
        "{out:?}"
    );
    std::fs::write(
        world.config(),
        config.replace("[sandbox]\n", "[sandbox]\nrunsc = \"/nonexistent/runsc\"\n"),
    )
    .unwrap();
    let out = world.controller(&["sandbox", "start", "--session", "v"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        text(&out.stderr).contains("apt-get install runsc"),
        "{out:?}"
    );
    assert!(!world.netns_exists("v"));
    std::fs::write(world.config(), config).unwrap();
}
