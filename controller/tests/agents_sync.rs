//! `cordon-controller agents sync` against the simulator's Agents API, as an operator runs it:
//! the tools file's tools are added to the agent, its other tools kept; a second run changes
//! nothing; a tool dropped from the file is removed, a hand-made one never; `--dry-run`
//! changes nothing; a concurrent edit is not overwritten; bad keys and unknown agents say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

use cordon_cma_sim::Sim;
use cordon_cma_sim::scenario::Scenario;
use cordon_cma_sim::world::WorldConfig;
use serde_json::Value;

const SCENARIO: &str = r#"
[[agents]]
id = "agent_ops"
name = "ops"
model = "claude-sonnet-4-5"
tools = [
    { type = "agent_toolset_20260401" },
    { type = "custom", name = "by_hand", description = "Someone's own", input_schema = { type = "object" } },
]

[[agents]]
id = "agent_old"
name = "old"
model = "claude-sonnet-4-5"

[[sessions]]
[[sessions.steps]]
tool = "bash"
input = { command = "true" }

[faults]
agent_edit_races = 0
"#;

fn tools(names: &[(&str, &str)]) -> String {
    names
        .iter()
        .map(|(name, description)| {
            format!(
                "[[tool]]\nname = \"{name}\"\ndescription = \"{description}\"\n\
                 input_schema = {{ type = \"object\", properties = {{ q = {{ type = \"string\" }} }} }}\n\
                 [tool.http]\nurl = \"https://desk.internal.test/{name}\"\n\n"
            )
        })
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    sim: Sim,
}

impl Setup {
    async fn new(scenario: &str) -> Setup {
        let sim = Sim::start(
            &Scenario::parse(scenario).unwrap(),
            WorldConfig::default(),
            None,
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cordon.toml"),
            format!(
                "[proxy]\nexplicit_listen = \"127.0.0.1:3128\"\ntransparent_listen = \"0.0.0.0:3129\"\n\
                 state_dir = \"state\"\n[dns]\nlisten = \"0.0.0.0:5300\"\n\
                 [controller]\nbase_url = \"{}\"\ntools = \"tools.toml\"\n\
                 [sandbox]\nimages_dir = \"images\"\n",
                sim.base_url()
            ),
        )
        .unwrap();
        Setup { dir, sim }
    }

    fn write_tools(&self, text: &str) {
        std::fs::write(self.dir.path().join("tools.toml"), text).unwrap();
    }

    fn sync(&self, key: &str, args: &[&str]) -> Output {
        run(self.dir.path(), key, args)
    }

    fn agent(&self, id: &str) -> Value {
        self.sim.world.agent(id).map_err(|e| e.message).unwrap()
    }
}

fn run(dir: &Path, key: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
        .args(["agents", "sync", "--config"])
        .arg(dir.join("cordon.toml"))
        .args(args)
        .env("ANTHROPIC_API_KEY", key)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn names(agent: &Value) -> Vec<String> {
    agent["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["name"]
                .as_str()
                .unwrap_or(t["type"].as_str().unwrap())
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_adds_updates_and_removes_only_cordons_tools() {
    let setup = Setup::new(SCENARIO).await;
    let key = WorldConfig::default().api_key;
    setup.write_tools(&tools(&[("lookup", "Look up"), ("search", "Search")]));

    // A dry run shows the change and makes none.
    let dry = setup.sync(&key, &["--agent", "agent_ops", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains("+ lookup") && text(&dry).contains("dry run: nothing changed"),
        "{}",
        text(&dry)
    );
    assert_eq!(setup.agent("agent_ops")["version"], 1);

    let first = setup.sync(&key, &["--agent", "agent_ops"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("updated to version 2"),
        "{}",
        text(&first)
    );
    let agent = setup.agent("agent_ops");
    assert_eq!(
        names(&agent),
        ["agent_toolset_20260401", "by_hand", "lookup", "search"]
    );
    assert_eq!(agent["metadata"]["cordon_tools"], "lookup,search");
    assert_eq!(
        agent["tools"][2]["input_schema"]["properties"]["q"]["type"],
        "string"
    );

    // Again: nothing to do, the version stays.
    let again = setup.sync(&key, &["--agent", "agent_ops"]);
    assert!(
        text(&again).contains("already has these tools"),
        "{}",
        text(&again)
    );
    assert_eq!(setup.agent("agent_ops")["version"], 2);

    // A changed description is updated in place; a dropped tool is removed; the hand-made
    // tool and the toolset stay.
    setup.write_tools(&tools(&[("lookup", "Look an order up")]));
    let changed = setup.sync(&key, &["--agent", "agent_ops"]);
    assert!(changed.status.success(), "{}", text(&changed));
    assert!(
        text(&changed).contains("~ lookup") && text(&changed).contains("- search"),
        "{}",
        text(&changed)
    );
    let agent = setup.agent("agent_ops");
    assert_eq!(
        names(&agent),
        ["agent_toolset_20260401", "by_hand", "lookup"]
    );
    assert_eq!(agent["tools"][2]["description"], "Look an order up");
    assert_eq!(agent["metadata"]["cordon_tools"], "lookup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_edit_is_kept_and_errors_say_what_to_do() {
    let setup = Setup::new(&SCENARIO.replace("agent_edit_races = 0", "agent_edit_races = 1")).await;
    let key = WorldConfig::default().api_key;
    setup.write_tools(&tools(&[("lookup", "Look up")]));
    // The first read is followed by another client's edit: the update based on it conflicts,
    // and the second round keeps what the other client added.
    let out = setup.sync(&key, &["--agent", "agent_ops"]);
    assert!(out.status.success(), "{}", text(&out));
    let agent = setup.agent("agent_ops");
    let names = names(&agent);
    assert!(
        names.iter().any(|n| n.starts_with("sim_concurrent_edit_")),
        "{names:?}"
    );
    assert!(names.contains(&"lookup".to_string()), "{names:?}");
    let report = setup.sim.world.report();
    assert_eq!(
        report.calls.get("update agent"),
        Some(&2),
        "{:?}",
        report.calls
    );

    let wrong = setup.sync("sk-ant-api03-wrong", &["--agent", "agent_ops"]);
    assert_eq!(wrong.status.code(), Some(69), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("invalid API key") && text(&wrong).contains("organization API key"),
        "{}",
        text(&wrong)
    );
    let environment_key = setup.sync(
        &WorldConfig::default().environment_key,
        &["--agent", "agent_ops"],
    );
    assert!(
        text(&environment_key).contains("organization API key, not an environment key"),
        "{}",
        text(&environment_key)
    );
    assert!(!text(&wrong).contains("sk-ant-api03-wrong"));

    let missing = setup.sync(&key, &["--agent", "agent_nope"]);
    assert_eq!(missing.status.code(), Some(66), "{}", text(&missing));

    let no_key = setup.sync("", &["--agent", "agent_ops"]);
    assert_eq!(no_key.status.code(), Some(64), "{}", text(&no_key));
    assert!(
        text(&no_key).contains("ANTHROPIC_API_KEY"),
        "{}",
        text(&no_key)
    );

    setup
        .sim
        .world
        .archive_agent("agent_old")
        .map_err(|e| e.message)
        .unwrap();
    let archived = setup.sync(&key, &["--agent", "agent_old"]);
    assert_eq!(archived.status.code(), Some(70), "{}", text(&archived));
    assert!(text(&archived).contains("archived"), "{}", text(&archived));

    // A tools file with errors is refused before anything is sent.
    setup.write_tools("[[tool]]\nname = \"bad name\"\n");
    let bad = setup.sync(&key, &["--agent", "agent_ops"]);
    assert_eq!(bad.status.code(), Some(65), "{}", text(&bad));
}
