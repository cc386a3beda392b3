//! Local sessions end to end, root tier: `cordon-controller serve` with
//! `[controller] local_sessions`, a scripted OpenAI-compatible model (cordon_testkit::model)
//! behind the real proxy as `llm.example.test`, each session's own gVisor sandbox. The model's
//! key is a secret the proxy injects: the model server must receive it, and it must appear
//! nowhere else (the controller's log and audit log, the session's events, the sandbox).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cordon_testkit::free_port;
use cordon_testkit::model::{ModelScript, Reply, serve_connection};
use serde_json::{Value, json};
use support::cma::{Controller, MODEL_KEY, TOKEN, WEBHOOK_SECRET, demo, example_tools, logs};
use support::{Setup, World};

/// The example tools keep one warm sandbox for lookup_order (examples/tools/tools.toml).
const WARM_TOOL_SANDBOXES: usize = 1;

/// One script per model name: tests in one process do not share one.
fn scripts() -> &'static Mutex<HashMap<String, Arc<ModelScript>>> {
    static SCRIPTS: OnceLock<Mutex<HashMap<String, Arc<ModelScript>>>> = OnceLock::new();
    SCRIPTS.get_or_init(Mutex::default)
}

fn script(model: &str) -> Arc<ModelScript> {
    scripts()
        .lock()
        .unwrap()
        .entry(model.to_string())
        .or_insert_with(|| ModelScript::new([]))
        .clone()
}

/// Every host name's upstream: the scripted model for chat completions, the demo's echoing
/// API (the request head as the body) for anything else.
fn upstream(pki: &cordon_testkit::TestPki) -> (std::net::SocketAddr, cordon_testkit::Received) {
    let received = cordon_testkit::Received::default();
    let log = received.clone();
    let address = cordon_testkit::spawn_tls_server(pki, b"http/1.1", move |tls| {
        let log = log.clone();
        async move {
            serve_connection(
                tls,
                |model: &str| script(model),
                move |request| {
                    let log = log.clone();
                    async move {
                        let mut head =
                            format!("{} {} HTTP/1.1\r\n", request.method(), request.uri());
                        for (name, value) in request.headers() {
                            head.push_str(&format!(
                                "{name}: {}\r\n",
                                value.to_str().unwrap_or_default()
                            ));
                        }
                        log.lock().unwrap().push(head.clone());
                        cordon_testkit::model::respond(200, "text/plain", head)
                    }
                },
            )
            .await;
        }
    });
    (address, received)
}

/// A world for local sessions: the demo's policy and secrets (the model's endpoint and key
/// among them), the example custom tools, and a controller with `local_sessions = true` (no CMA environment).
fn local_world(second_octet: u8) -> (World, Controller) {
    let (listen, admin) = (free_port(), free_port());
    let secrets = std::fs::read_to_string(demo("secrets.toml")).unwrap();
    let controller = format!(
        "[credentials]\nstore = \"secrets.toml\"\n\
         [controller]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         webhook_secret_file = \"webhook-secret\"\nlocal_sessions = true\ntools = \"{}\"\n",
        example_tools().display()
    );
    let policy = std::fs::read_to_string(demo("policy/policy.rego")).unwrap();
    let world = World::build(
        second_octet,
        24,
        Setup {
            hosts: &[
                "api.example.test",
                "blocked.example.test",
                "llm.example.test",
            ],
            policy: &policy,
            extra_toml: &controller,
            sandbox_extra: "",
            files: &[
                ("secrets.toml", &secrets),
                ("example-api-token", TOKEN),
                ("demo-model-key", MODEL_KEY),
                ("webhook-secret", WEBHOOK_SECRET),
            ],
            upstream: Some(upstream),
        },
    );
    let controller = Controller::start(&world, admin, "controller.log");
    (world, controller)
}

/// The `/v1` API with the admin token.
struct Api {
    base: String,
    token: String,
    http: cordon_controller::http::HttpClient,
}

impl Api {
    fn new(world: &World, controller: &Controller) -> Api {
        // The admin port is bound before `serve` has written its token.
        let file = world.dir.path().join("state/controller/admin-token");
        let deadline = Instant::now() + Duration::from_secs(30);
        let token = loop {
            match std::fs::read_to_string(&file) {
                Ok(token) if token.len() >= 32 => break token,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => panic!("serve wrote no admin token\n{}", logs(world)),
            }
        };
        Api {
            base: format!("http://127.0.0.1:{}", controller.admin),
            token: token.trim().to_string(),
            http: cordon_controller::http::HttpClient::default(),
        }
    }

    async fn call(&self, method: http::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        use http_body_util::BodyExt;
        let response = self
            .http
            .send(
                method,
                &format!("{}{path}", self.base),
                Some(&self.token),
                body.map(|b| b.to_string()),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(http::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(http::Method::GET, path, None).await
    }

    async fn agent(&self, definition: Value) {
        let (status, body) = self.post("/v1/agents", definition).await;
        assert_eq!(status, 201, "{body}");
    }

    async fn session(&self, agent: &str) -> String {
        let (status, body) = self
            .post("/v1/sessions", json!({"agent": agent, "title": "test"}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    async fn say(&self, session: &str, text: &str) {
        let (status, body) = self
            .post(
                &format!("/v1/sessions/{session}/events"),
                json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn events(&self, session: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/v1/sessions/{session}/events?limit=10000"))
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"].as_array().unwrap().clone()
    }

    /// Waits (at most `within`) for the `n`th event (1-based) matching `what`.
    async fn wait_for(
        &self,
        world: &World,
        session: &str,
        n: usize,
        within: Duration,
        what: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let events = self.events(session).await;
            if events.iter().filter(|e| what(e)).count() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "no such event in time; events:\n{}\n{}",
                events
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                logs(world)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn idle(reason: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["type"] == "session.status_idle" && e["stop_reason"]["type"] == reason
}

fn calls(list: &[(&str, Value)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(name, input)| (name.to_string(), input.to_string()))
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The result event answering call `id`.
fn result_of<'a>(events: &'a [Value], id: &str) -> &'a Value {
    events
        .iter()
        .find(|e| {
            (e["type"] == "user.tool_result" && e["tool_use_id"] == id)
                || (e["type"] == "user.custom_tool_result" && e["custom_tool_use_id"] == id)
        })
        .unwrap_or_else(|| panic!("no result for {id}"))
}

fn text_of(event: &Value) -> String {
    event["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every file of the world's directory whose text holds `needle` (logs, audit logs, the
/// database), but the secret's own file and the store naming it.
fn files_holding(world: &World, needle: &str) -> Vec<String> {
    let out = Command::new("grep")
        .args(["-rlaF", "--exclude=demo-model-key", needle])
        .arg(world.dir.path())
        .output()
        .unwrap();
    support::text(&out.stdout)
        .lines()
        .filter(|l| !l.contains("/workspaces/"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_every_toolset_tool_and_a_custom_tool_through_the_proxy() {
    let (world, controller) = local_world(211);
    let api = Api::new(&world, &controller);
    let model = "scripted-tools";
    script(model).push([
        Reply::Calls(
            "I will start.".into(),
            calls(&[
                ("write", json!({"file_path": "/workspace/notes/a.md", "content": "hello local\n"})),
                ("bash", json!({"command": "curl -sS https://api.example.test/v1/user; echo; env | grep -ci model || true"})),
            ]),
        ),
        Reply::Calls(
            String::new(),
            calls(&[
                ("read", json!({"file_path": "/workspace/notes/a.md"})),
                ("edit", json!({"file_path": "/workspace/notes/a.md", "old_string": "hello", "new_string": "hi"})),
            ]),
        ),
        Reply::Calls(
            String::new(),
            calls(&[
                ("glob", json!({"pattern": "**/*.md", "path": "/workspace"})),
                ("grep", json!({"pattern": "hi local", "path": "/workspace"})),
            ]),
        ),
        Reply::Calls(String::new(), calls(&[("lookup_order", json!({"order_id": "ord_1002"}))])),
        Reply::Text("All done: the order has shipped.".into()),
    ]);
    // The CLI, as an operator uses it: a definition file, then `run`.
    let definition = world.dir.path().join("coder.toml");
    std::fs::write(
        &definition,
        format!(
            "name = \"coder\"\nsystem = \"You are a careful engineer.\"\n\
             [model]\nbase_url = \"https://llm.example.test/v1\"\nname = \"{model}\"\n\
             [tools]\ncustom = [\"lookup_order\"]\n"
        ),
    )
    .unwrap();
    let created = world.controller(&["agents", "create", "--file", definition.to_str().unwrap()]);
    assert!(
        created.status.success(),
        "{}",
        support::text(&created.stderr)
    );
    assert!(support::text(&created.stdout).contains("coder"));
    let listed = world.controller(&["agents", "list"]);
    assert!(
        support::text(&listed.stdout).contains(model),
        "{}",
        support::text(&listed.stdout)
    );

    let run = world.controller(&[
        "run",
        "--agent",
        "coder",
        "Look up order ord_1002 and take notes.",
    ]);
    let stdout = support::text(&run.stdout);
    let stderr = support::text(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}\n{}", logs(&world));
    for line in [
        "I will start.",
        "→ write /workspace",
        "✓ write",
        "✓ bash",
        "✓ read",
        "✓ edit",
        "✓ glob",
        "✓ grep",
        "→ lookup_order",
        "✓ lookup_order",
        "All done: the order has shipped.",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    let session = stderr
        .split_whitespace()
        .find(|w| w.starts_with("sesn_local"))
        .unwrap()
        .to_string();

    // The model saw the toolset and the custom tool, and every result, in order.
    let seen = script(model).requests();
    assert_eq!(seen.len(), 5, "{seen:?}");
    let tools: Vec<&str> = seen[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    for tool in [
        "bash",
        "read",
        "write",
        "edit",
        "glob",
        "grep",
        "lookup_order",
    ] {
        assert!(tools.contains(&tool), "{tools:?}");
    }
    assert_eq!(seen[0].body["messages"][0]["role"], "system");
    assert_eq!(seen[0].body["stream"], true);
    for request in &seen {
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("Bearer {MODEL_KEY}").as_str()),
            "the proxy injects the model's key"
        );
    }
    let second = seen[1].body["messages"].to_string();
    assert!(second.contains("GET /v1/user"), "{second}");
    assert!(
        !second.contains(TOKEN),
        "the demo token is scrubbed from what the model reads"
    );
    let last = seen[4].body["messages"].to_string();
    assert!(last.contains("ord_1002: shipped, Grace Hopper"), "{last}");
    assert!(last.contains("hi local"), "{last}");

    // The session's history, in CMA's shapes.
    let events = api.events(&session).await;
    let uses = of_type(&events, "agent.tool_use");
    assert_eq!(uses.len(), 6);
    for call in &uses {
        let result = result_of(&events, call["id"].as_str().unwrap());
        assert_eq!(result["is_error"], false, "{call} -> {result}");
    }
    let custom = of_type(&events, "agent.custom_tool_use");
    assert_eq!(custom.len(), 1);
    assert_eq!(
        result_of(&events, custom[0]["id"].as_str().unwrap())["type"],
        "user.custom_tool_result"
    );
    let usage = &of_type(&events, "span.model_request_end")[0]["model_usage"];
    assert_eq!(usage["input_tokens"], 120);
    assert_eq!(usage["output_tokens"], 30);

    // The key is nowhere but the proxy's secret store (and the wire to the model).
    assert_eq!(files_holding(&world, MODEL_KEY), Vec::<String>::new());
    assert!(!events.iter().any(|e| e.to_string().contains(MODEL_KEY)));
    // Audited: the proxy's decision for model:coder, the controller's model_call records.
    let audit =
        std::fs::read_to_string(world.dir.path().join("state/controller/audit.jsonl")).unwrap();
    let model_calls: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "model_call")
        .collect();
    assert_eq!(model_calls.len(), 5, "{audit}");
    assert_eq!(model_calls[0]["agent"], "coder");
    assert_eq!(model_calls[0]["model"], model);
    assert_eq!(model_calls[0]["host"], "llm.example.test");
    assert_eq!(model_calls[0]["input_tokens"], 120);
    assert!(!audit.contains("careful engineer"), "never the prompt");
    let proxy_records = files_holding(&world, "model:coder");
    assert!(
        proxy_records
            .iter()
            .any(|f| f.ends_with(".jsonl") || f.contains("audit")),
        "{proxy_records:?}"
    );
    let metrics = controller.admin("/metrics");
    assert!(
        metrics.contains("cordon_controller_model_requests_total{outcome=\"ok\"} 5"),
        "{metrics}"
    );
    assert!(metrics.contains("cordon_controller_model_tokens_total{direction=\"input\"} 600"));
    assert!(metrics.contains("cordon_controller_local_runs_total{stop_reason=\"end_turn\"} 1"));

    // Archived: its sandbox goes.
    let (status, body) = api
        .post(&format!("/v1/sessions/{session}/archive"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "terminated");
    support::cma::wait_for_teardown_leaving(&world, &session, WARM_TOOL_SANDBOXES);
    let (status, body) = api
        .post(
            &format!("/v1/sessions/{session}/events"),
            json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": "more"}]}]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_model_answers_become_events_and_the_session_recovers() {
    let (mut world, controller) = local_world(212);
    let api = Api::new(&world, &controller);
    let model = "scripted-faults";
    api.agent(json!({
        "name": "fussy",
        "model": {"base_url": "https://llm.example.test/v1", "name": model, "stream": false,
                  "retries": 1, "timeout_secs": 2},
        "tools": {"toolset": ["bash"]},
    }))
    .await;
    let s = script(model);
    s.push([
        Reply::Calls(
            String::new(),
            vec![("bash".into(), "{\"command\": \"echo hi".into())],
        ),
        Reply::Calls(String::new(), vec![("functions.bash".into(), "{}".into())]),
        Reply::Calls(
            String::new(),
            vec![("bash".into(), "{\"cmd\": \"ls\"}".into())],
        ),
        Reply::Calls(
            String::new(),
            vec![(
                "bash".into(),
                "```json\n{\"command\": \"echo repaired\"}\n```".into(),
            )],
        ),
        Reply::Status(503, "overloaded".into()),
        Reply::NotJson,
    ]);
    let session = api.session("fussy").await;
    api.say(&session, "go").await;
    let events = api
        .wait_for(
            &world,
            &session,
            1,
            Duration::from_secs(60),
            idle("retries_exhausted"),
        )
        .await;
    let uses = of_type(&events, "agent.tool_use");
    assert_eq!(uses.len(), 4, "{events:?}");
    let answers: Vec<String> = uses
        .iter()
        .map(|u| text_of(result_of(&events, u["id"].as_str().unwrap())))
        .collect();
    assert!(answers[0].contains("not a JSON object"), "{}", answers[0]);
    assert!(
        answers[1].contains("no tool named \"functions.bash\""),
        "{}",
        answers[1]
    );
    assert!(
        answers[2].contains("does not match its schema"),
        "{}",
        answers[2]
    );
    assert!(answers[3].contains("repaired"), "{}", answers[3]);
    assert_eq!(uses[0]["raw_arguments"], "{\"command\": \"echo hi");
    let error = of_type(&events, "session.error")[0];
    assert_eq!(error["error"]["type"], "model_response", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 attempt"),
        "{error}"
    );
    // The model read each refusal as the result of its call, and every call it made comes
    // back to it with arguments that are a JSON object (vLLM refuses a request otherwise).
    let fourth = s.requests()[3].body["messages"].to_string();
    assert!(fourth.contains("does not match its schema"), "{fourth}");
    for message in s.requests()[4].body["messages"].as_array().unwrap() {
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            let arguments = call["function"]["arguments"].as_str().unwrap();
            let parsed: Value = serde_json::from_str(arguments).unwrap();
            assert!(parsed.is_object(), "{arguments}");
        }
    }

    // Recovers: a slow answer times out and is retried; then a 4xx is not retried.
    s.push([
        Reply::Delay(
            Duration::from_secs(4),
            Box::new(Reply::Text("too late".into())),
        ),
        Reply::Text("recovered".into()),
        Reply::Status(400, "context length exceeded".into()),
    ]);
    api.say(&session, "again").await;
    let events = api
        .wait_for(
            &world,
            &session,
            1,
            Duration::from_secs(60),
            idle("end_turn"),
        )
        .await;
    let messages = of_type(&events, "agent.message");
    assert_eq!(text_of(messages.last().unwrap()), "recovered");
    api.say(&session, "once more").await;
    let events = api
        .wait_for(
            &world,
            &session,
            2,
            Duration::from_secs(60),
            idle("retries_exhausted"),
        )
        .await;
    let errors = of_type(&events, "session.error");
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[1]["error"]["type"], "model_status");
    assert!(
        errors[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context length exceeded")
    );
    assert!(
        errors[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 attempt")
    );
    let metrics = controller.admin("/metrics");
    assert!(
        metrics.contains("cordon_controller_model_requests_total{outcome=\"model_timeout\"} 1"),
        "{metrics}"
    );

    // The proxy down: the endpoint cannot be reached, retried, then reported; the proxy back
    // up, the session goes on.
    world.stop_proxy();
    api.say(&session, "while the proxy is down").await;
    let events = api
        .wait_for(
            &world,
            &session,
            3,
            Duration::from_secs(60),
            idle("retries_exhausted"),
        )
        .await;
    let errors = of_type(&events, "session.error");
    assert_eq!(
        errors[2]["error"]["type"], "model_unreachable",
        "{}",
        errors[2]
    );
    world.start_proxy();
    s.push([Reply::Text("back".into())]);
    api.say(&session, "and now").await;
    let events = api
        .wait_for(
            &world,
            &session,
            2,
            Duration::from_secs(60),
            idle("end_turn"),
        )
        .await;
    assert_eq!(
        text_of(of_type(&events, "agent.message").last().unwrap()),
        "back"
    );

    // An endpoint the policy does not allow: refused by the proxy, not retried, and the
    // request never reaches it.
    api.agent(json!({
        "name": "stray",
        "model": {"base_url": "https://blocked.example.test/v1", "name": "scripted-stray"},
        "tools": {"toolset": []},
    }))
    .await;
    let stray = api.session("stray").await;
    api.say(&stray, "hello").await;
    let events = api
        .wait_for(
            &world,
            &stray,
            1,
            Duration::from_secs(60),
            idle("retries_exhausted"),
        )
        .await;
    let error = of_type(&events, "session.error")[0];
    assert_eq!(error["error"]["type"], "model_refused_by_proxy", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("policy"),
        "{error}"
    );
    assert!(script("scripted-stray").requests().is_empty());

    // A model that never stops calling tools is stopped by max_turns.
    api.agent(json!({
        "name": "looping",
        "model": {"base_url": "https://llm.example.test/v1", "name": "scripted-looping"},
        "tools": {"toolset": ["glob"]},
        "limits": {"max_turns": 2},
    }))
    .await;
    script("scripted-looping").push(
        (0..5).map(|_| Reply::Calls(String::new(), calls(&[("glob", json!({"pattern": "*"}))]))),
    );
    let looping = api.session("looping").await;
    api.say(&looping, "go on forever").await;
    let events = api
        .wait_for(
            &world,
            &looping,
            1,
            Duration::from_secs(60),
            idle("max_turns"),
        )
        .await;
    assert_eq!(of_type(&events, "span.model_request_start").len(), 2);
    assert_eq!(script("scripted-looping").requests().len(), 2);

    // Bad input to the API says what was wrong.
    let (status, body) = api
        .post(
            &format!("/v1/sessions/{session}/events"),
            json!({"events": [{"type": "agent.message"}]}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be sent"),
        "{body}"
    );
    let (status, body) = api.post("/v1/sessions", json!({"agent": "nobody"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api
        .post("/v1/agents", json!({"name": "x", "model": {"base_url": "ftp://m", "name": "m"}, "tools": {"custom": ["nope"]}}))
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("model.base_url") && message.contains("\"nope\""),
        "{message}"
    );
    let (status, _) = api.call(http::Method::GET, "/v1/agents", None).await;
    assert_eq!(status, 200);
    let unauthenticated = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/v1/agents", controller.admin))
        .output()
        .unwrap();
    assert_eq!(support::text(&unauthenticated.stdout), "401");
    api.post(&format!("/v1/sessions/{session}/archive"), json!({}))
        .await;
    api.post(&format!("/v1/sessions/{stray}/archive"), json!({}))
        .await;
    api.post(&format!("/v1/sessions/{looping}/archive"), json!({}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while world.netns_exists(&looping) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    support::cma::wait_for_teardown_leaving(&world, &session, WARM_TOOL_SANDBOXES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_tools_wait_for_a_verdict_and_an_interrupt_stops_the_run() {
    let (world, controller) = local_world(213);
    let api = Api::new(&world, &controller);
    let model = "scripted-ask";
    api.agent(json!({
        "name": "careful",
        "model": {"base_url": "https://llm.example.test/v1", "name": model},
        "tools": {"toolset": ["bash", "write", "read"], "ask": ["bash"]},
    }))
    .await;
    let s = script(model);
    s.push([
        Reply::Calls(
            String::new(),
            calls(&[
                (
                    "write",
                    json!({"file_path": "/workspace/y", "content": "w"}),
                ),
                (
                    "bash",
                    json!({"command": "echo allowed-ran > /workspace/x"}),
                ),
            ]),
        ),
        Reply::Calls(
            String::new(),
            calls(&[("bash", json!({"command": "echo no > /workspace/z"}))]),
        ),
        Reply::Calls(
            String::new(),
            calls(&[("read", json!({"file_path": "/workspace/x"}))]),
        ),
        Reply::Text("ok".into()),
    ]);
    let session = api.session("careful").await;
    api.say(&session, "go").await;
    let events = api
        .wait_for(
            &world,
            &session,
            1,
            Duration::from_secs(60),
            idle("requires_action"),
        )
        .await;
    let held = of_type(&events, "agent.tool_use")[1].clone();
    assert_eq!(held["evaluated_permission"], "ask");
    let write = of_type(&events, "agent.tool_use")[0].clone();
    assert_eq!(
        result_of(&events, write["id"].as_str().unwrap())["is_error"],
        false,
        "the other call ran"
    );
    assert!(
        !events.iter().any(|e| e["tool_use_id"] == held["id"]),
        "held until the verdict"
    );
    let (status, body) = api
        .post(
            &format!("/v1/sessions/{session}/events"),
            json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": held["id"], "result": "allow"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let events = api
        .wait_for(
            &world,
            &session,
            2,
            Duration::from_secs(60),
            idle("requires_action"),
        )
        .await;
    assert_eq!(
        result_of(&events, held["id"].as_str().unwrap())["is_error"],
        false
    );
    // A verdict for a call that does not wait for one is refused, saying which do.
    let (status, body) = api
        .post(
            &format!("/v1/sessions/{session}/events"),
            json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": held["id"], "result": "allow"}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let second = of_type(&events, "agent.tool_use")[2].clone();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(second["id"].as_str().unwrap()),
        "{body}"
    );
    api.post(
        &format!("/v1/sessions/{session}/events"),
        json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": second["id"], "result": "deny", "deny_message": "not now"}]}),
    )
    .await;
    let events = api
        .wait_for(
            &world,
            &session,
            1,
            Duration::from_secs(60),
            idle("end_turn"),
        )
        .await;
    let denied = result_of(&events, second["id"].as_str().unwrap());
    assert_eq!(denied["is_error"], true);
    assert!(text_of(denied).contains("not now"));
    let read = of_type(&events, "agent.tool_use")[3].clone();
    assert!(text_of(result_of(&events, read["id"].as_str().unwrap())).contains("allowed-ran"));

    // The stream resumes after the event a client saw last (Last-Event-ID is its seq).
    let (_, page) = api
        .get(&format!("/v1/sessions/{session}/events?limit=3"))
        .await;
    let cursor = page["next_page"].as_str().unwrap().to_string();
    let streamed = Command::new("curl")
        .args(["-sN", "--max-time", "2", "-H"])
        .arg(format!("Authorization: Bearer {}", api.token))
        .args(["-H", &format!("Last-Event-ID: {cursor}")])
        .arg(format!(
            "http://127.0.0.1:{}/v1/sessions/{session}/events/stream",
            controller.admin
        ))
        .output()
        .unwrap();
    let streamed = support::text(&streamed.stdout);
    let ids: Vec<&str> = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids.len(), events.len() - 3, "{streamed}");
    assert!(streamed.starts_with("event: "), "{streamed}");
    let after: i64 = cursor.parse().unwrap();
    assert!(
        ids.iter().all(|id| id.parse::<i64>().unwrap() > after),
        "only events after the cursor: {ids:?}"
    );

    // An interrupt ends a run whose model takes its time.
    s.push([Reply::Delay(
        Duration::from_secs(30),
        Box::new(Reply::Text("late".into())),
    )]);
    api.say(&session, "think hard").await;
    api.wait_for(&world, &session, 2, Duration::from_secs(30), |e| {
        e["type"] == "span.model_request_start"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    api.post(
        &format!("/v1/sessions/{session}/events"),
        json!({"events": [{"type": "user.interrupt"}]}),
    )
    .await;
    api.wait_for(
        &world,
        &session,
        1,
        Duration::from_secs(10),
        idle("interrupted"),
    )
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // The abandoned request's proxy registration went with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while world.registrations().contains("model:careful") {
        assert!(Instant::now() < deadline, "{}", world.registrations());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.post(&format!("/v1/sessions/{session}/archive"), json!({}))
        .await;
    support::cma::wait_for_teardown_leaving(&world, &session, WARM_TOOL_SANDBOXES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_resumes_without_running_a_call_twice() {
    let (world, mut controller) = local_world(214);
    let api = Api::new(&world, &controller);
    let model = "scripted-restart";
    api.agent(json!({
        "name": "steady",
        "model": {"base_url": "https://llm.example.test/v1", "name": model},
        "tools": {"toolset": ["bash", "read"]},
    }))
    .await;
    let s = script(model);
    s.push([
        Reply::Calls(
            String::new(),
            calls(&[(
                "bash",
                json!({"command": "echo run >> /workspace/count; sleep 4; echo finished"}),
            )]),
        ),
        Reply::Calls(
            String::new(),
            calls(&[("read", json!({"file_path": "/workspace/count"}))]),
        ),
        Reply::Text("done after the restart".into()),
    ]);
    let session = api.session("steady").await;
    api.say(&session, "count once").await;
    api.wait_for(&world, &session, 1, Duration::from_secs(60), |e| {
        e["type"] == "span.tool_execution_start"
    })
    .await;
    // Killed mid-call (SIGKILL, by its pid), then started again on the same state.
    controller.child.kill().unwrap();
    controller.child.wait().unwrap();
    let admin = controller.admin;
    drop(controller);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let controller = Controller::start(&world, admin, "controller-2.log");
    let events = api
        .wait_for(
            &world,
            &session,
            1,
            Duration::from_secs(60),
            idle("end_turn"),
        )
        .await;
    let uses = of_type(&events, "agent.tool_use");
    let lost = result_of(&events, uses[0]["id"].as_str().unwrap());
    assert_eq!(lost["is_error"], true);
    assert!(text_of(lost).contains("not run again"), "{lost}");
    let read = text_of(result_of(&events, uses[1]["id"].as_str().unwrap()));
    assert_eq!(read.matches("run").count(), 1, "the call ran once: {read}");
    assert_eq!(
        text_of(of_type(&events, "agent.message").last().unwrap()),
        "done after the restart"
    );
    api.post(&format!("/v1/sessions/{session}/archive"), json!({}))
        .await;
    support::cma::wait_for_teardown_leaving(&world, &session, WARM_TOOL_SANDBOXES);
    drop(controller);
}
