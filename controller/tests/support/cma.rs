//! CMA end-to-end helpers: the simulator in-process, a world wired to it (the demo policy,
//! secret store and custom tools), and `cordon-controller serve` as a child process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cordon_cma_sim::Sim;
use cordon_cma_sim::report::Report;
use cordon_cma_sim::scenario::Scenario;
use cordon_cma_sim::webhook::{Delivery, SigningKey};
use cordon_cma_sim::world::WorldConfig;
use cordon_testkit::free_port;

use super::{Setup, World};

/// The demo's token: the upstream must see it, the sandbox never.
pub const TOKEN: &str = "cordon-demo-token-4d1c2b";
pub const WEBHOOK_SECRET: &str = "whsec_Y29yZG9uLWUyZS13ZWJob29rLXNpZ25pbmcta2V5";
pub const ENVIRONMENT_KEY: &str = "sk-ant-oat01-cordon-e2e-environment-key";
/// The demo model's key (examples/demo/secrets.toml, `demo-model`): the model server must see
/// it, the controller and the sandbox never.
pub const MODEL_KEY: &str = "sk-demo-model-key-7f3e9a1c";

pub fn demo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/demo")
        .join(path)
}

/// `cordon-controller serve`, killed (by its pid) when dropped.
pub struct Controller {
    pub child: Child,
    pub admin: u16,
}

impl Controller {
    pub fn start(world: &World, admin: u16, log: &str) -> Controller {
        let child = Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
            .args(["serve", "--config"])
            .arg(world.config())
            .env("CORDON_TEST_ENV_KEY", ENVIRONMENT_KEY)
            .env("CORDON_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(world.dir.path().join(log)).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
            assert!(Instant::now() < deadline, "the controller did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Controller { child, admin }
    }

    pub fn admin(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", &format!("http://127.0.0.1:{}{path}", self.admin)])
            .output()
            .unwrap();
        super::text(&out.stdout)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A world wired for CMA: the demo policy and secret store, `[controller]` pointing at the
/// simulator.
pub fn cma_world(
    second_octet: u8,
    sim: &Sim,
    environment: &str,
    ports: (u16, u16),
    sandbox_extra: &str,
    tools: Option<&std::path::Path>,
) -> World {
    cma_world_with(
        second_octet,
        sim,
        environment,
        ports,
        sandbox_extra,
        tools,
        "",
        None,
    )
}

/// [`cma_world`] with `extra` (whole sections, e.g. `[dashboard]`) added to cordon.toml.
#[allow(clippy::too_many_arguments)] // two callers here, each argument distinct
pub fn cma_world_with(
    second_octet: u8,
    sim: &Sim,
    environment: &str,
    (listen, admin): (u16, u16),
    sandbox_extra: &str,
    tools: Option<&std::path::Path>,
    extra: &str,
    upstream: Option<super::Upstream>,
) -> World {
    let policy = std::fs::read_to_string(demo("policy/policy.rego")).unwrap();
    let secrets = std::fs::read_to_string(demo("secrets.toml")).unwrap();
    let controller = format!(
        "[credentials]\nstore = \"secrets.toml\"\n\
         [controller]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         webhook_secret_file = \"webhook-secret\"\nenvironment_id = \"{environment}\"\n\
         environment_key_env = \"CORDON_TEST_ENV_KEY\"\nbase_url = \"{}\"\n\
         drain_interval_ms = 1000\nmax_idle_ms = 2000\nlease_ttl_secs = 30\n{}{extra}",
        sim.base_url(),
        tools.map_or(String::new(), |t| format!("tools = \"{}\"\n", t.display()))
    );
    World::build(
        second_octet,
        24,
        Setup {
            hosts: &["api.example.test", "blocked.example.test"],
            policy: &policy,
            extra_toml: &controller,
            sandbox_extra,
            files: &[
                ("secrets.toml", &secrets),
                ("example-api-token", TOKEN),
                ("demo-model-key", MODEL_KEY),
                ("webhook-secret", WEBHOOK_SECRET),
            ],
            upstream,
        },
    )
}

pub async fn start_sim(scenario: &Scenario, webhook_port: u16) -> Sim {
    Sim::start(
        scenario,
        WorldConfig {
            environment_key: ENVIRONMENT_KEY.into(),
            ..WorldConfig::default()
        },
        Some(Delivery {
            url: format!("http://127.0.0.1:{webhook_port}/webhooks"),
            key: SigningKey::parse(WEBHOOK_SECRET).unwrap(),
            backoff: Duration::from_millis(300),
        }),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

/// The example custom tools (examples/tools/tools.toml), which the demo scenario calls.
pub fn example_tools() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/tools/tools.toml")
}

/// A simulator playing `scenario`, a world wired to it, and a controller serving it; the
/// scenario's sessions are open. A scenario with custom tool calls is served the example
/// tools.
pub async fn start(scenario: &Scenario, second_octet: u8) -> (Sim, World, Controller) {
    let custom = scenario
        .sessions
        .iter()
        .any(|s| s.steps.iter().any(|step| step.custom));
    let tools = custom.then(example_tools);
    start_with(scenario, second_octet, "", tools.as_deref()).await
}

/// [`start`] with `sandbox_extra` added to `[sandbox]`, and `tools` as `[controller] tools`.
pub async fn start_with(
    scenario: &Scenario,
    second_octet: u8,
    sandbox_extra: &str,
    tools: Option<&std::path::Path>,
) -> (Sim, World, Controller) {
    start_on(scenario, second_octet, sandbox_extra, tools, None).await
}

/// [`start_with`], every upstream host name served by `upstream`.
pub async fn start_on(
    scenario: &Scenario,
    second_octet: u8,
    sandbox_extra: &str,
    tools: Option<&std::path::Path>,
    upstream: Option<super::Upstream>,
) -> (Sim, World, Controller) {
    let (sim, world, controller) = prepare_on(
        scenario,
        second_octet,
        sandbox_extra,
        tools,
        "",
        upstream,
        |_| {},
    )
    .await;
    sim.open_sessions();
    (sim, world, controller)
}

/// [`start_with`] with `extra` added to cordon.toml and `before` run on the world before the
/// controller starts; the scenario's sessions are not opened yet.
pub async fn prepare(
    scenario: &Scenario,
    second_octet: u8,
    sandbox_extra: &str,
    tools: Option<&std::path::Path>,
    extra: &str,
    before: impl FnOnce(&World),
) -> (Sim, World, Controller) {
    prepare_on(
        scenario,
        second_octet,
        sandbox_extra,
        tools,
        extra,
        None,
        before,
    )
    .await
}

/// [`prepare`] with every upstream host name served by `upstream`.
pub async fn prepare_on(
    scenario: &Scenario,
    second_octet: u8,
    sandbox_extra: &str,
    tools: Option<&std::path::Path>,
    extra: &str,
    upstream: Option<super::Upstream>,
    before: impl FnOnce(&World),
) -> (Sim, World, Controller) {
    let (listen, admin) = (free_port(), free_port());
    let sim = start_sim(scenario, listen).await;
    let mut world = cma_world_with(
        second_octet,
        &sim,
        &scenario.environment_id,
        (listen, admin),
        sandbox_extra,
        tools,
        extra,
        upstream,
    );
    world
        .sessions
        .extend(scenario.sessions.iter().map(|s| s.id().to_string()));
    before(&world);
    let controller = Controller::start(&world, admin, "controller.log");
    (sim, world, controller)
}

/// Waits until the sandbox of `session` is gone (its netns removed), at most 20 s; then no
/// container is left.
pub fn wait_for_teardown(world: &World, session: &str) {
    wait_for_teardown_leaving(world, session, 0);
}

/// [`wait_for_teardown`], with `others` containers left (warm tool sandboxes).
pub fn wait_for_teardown_leaving(world: &World, session: &str, others: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while world.netns_exists(session) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !world.netns_exists(session),
        "the sandbox of {session} is still there"
    );
    assert_eq!(
        world.containers().len(),
        others,
        "{:?}\n{}",
        world.containers(),
        logs(world)
    );
}

pub fn logs(world: &World) -> String {
    let mut out = String::new();
    for name in ["controller.log", "controller-2.log", "proxy.log"] {
        if let Ok(text) = std::fs::read_to_string(world.dir.path().join(name)) {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {name} (last lines) ---\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

pub fn assert_passed(report: &Report, world: &World) {
    let failed: Vec<String> = report
        .sessions
        .iter()
        .flat_map(|s| &s.steps)
        .filter(|step| step.outcome == "failed")
        .map(|step| format!("step {} result: {:?}", step.index, step.result))
        .collect();
    assert!(
        report.passed,
        "{}\n{}\n{}",
        report.summary(),
        failed.join("\n"),
        logs(world)
    );
}
