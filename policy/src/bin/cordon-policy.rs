//! `cordon-policy`: evaluate, test and check Cordon egress policy bundles.
//!
//! Exit codes: 0 when a decision was made (allow or deny) or every check passed; 1 when a
//! policy test failed; 2 when the bundle or the input is bad (the message says what and where).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use cordon_policy::bundle::Bundle;
use cordon_policy::testing::{self, TestOutcome};
use cordon_policy::{
    BodyInput, BodyLimits, BodyRequest, ConnectionInput, DEFAULT_QUERY, EvalLimits, EvalPath,
    Generation, ListenerMode, PolicyInput, RequestInput, SessionInput, Stage, Transport,
};

#[derive(Parser)]
#[command(
    name = "cordon-policy",
    version,
    about = "Evaluate, test and check Cordon egress policy bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decide one input and print the normalised decision as JSON.
    Eval(EvalArgs),
    /// Print the input document the proxy would build for a request (what the policy sees).
    Input(RequestArgs),
    /// Run every `test_*` rule in the bundle, like `opa test`.
    Test {
        /// Bundle directory, .tar.gz archive or .rego file.
        path: PathBuf,
        /// Only run tests whose full rule path contains this text.
        #[arg(long)]
        run: Option<String>,
        /// Also list passing tests.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Load and compile a bundle, reporting every error with file:line.
    Check {
        path: PathBuf,
        /// The decision rule that must exist.
        #[arg(long, default_value = DEFAULT_QUERY)]
        query: String,
    },
}

#[derive(Args)]
struct EvalArgs {
    /// Bundle directory, .tar.gz archive or .rego file.
    #[arg(long)]
    bundle: PathBuf,
    /// The rule the decision is read from (`data.envoy.authz.allow` for OPA-Envoy policies).
    #[arg(long, default_value = DEFAULT_QUERY)]
    query: String,
    /// A whole input document (JSON), as `opa eval --input` takes it.
    #[arg(long, conflicts_with = "request")]
    input: Option<PathBuf>,
    #[command(flatten)]
    request: RequestArgs,
}

#[derive(Args)]
struct RequestArgs {
    /// "METHOD URL", e.g. "GET https://api.github.com/repos/o/r".
    #[arg(long)]
    request: Option<String>,
    /// A request header, "Name: value"; repeatable.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Session id (default: an unregistered source, session "unknown").
    #[arg(long)]
    session: Option<String>,
    /// Agent id of the session.
    #[arg(long)]
    agent: Option<String>,
    /// A session label, key=value; repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The sandbox address the request comes from.
    #[arg(long, default_value = "127.0.0.1:40000")]
    source: SocketAddr,
    /// Build the connect-stage input (no HTTP request) for the URL's host instead.
    #[arg(long)]
    connect: bool,
    /// The request body, read from a file (`-`: standard input). The input gets the body
    /// fields as the gateway builds them for a bundle that asks for bodies
    /// (`attributes.request.http.body`, `parsed_body`, `truncated_body`, `input.cordon.*`),
    /// within the bundle's limits (`metadata.cordon.request_body`), else the defaults. Set the
    /// type with --header "Content-Type: ...".
    #[arg(long, conflicts_with = "connect")]
    body: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cordon-policy: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Eval(args) => eval(args),
        Command::Input(args) => {
            let input = request_input(&args)?;
            let body = body_input(&args, &input, BodyLimits::default())?;
            let json = input.to_json_with_body(body.as_ref());
            print_json(&json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { path, run, verbose } => test(&path, run.as_deref(), verbose),
        Command::Check { path, query } => check(&path, &query),
    }
}

fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let generation = load(&args.bundle, &args.query)?;
    let input = match &args.input {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read input {}", path.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("input {} is not valid JSON", path.display()))?;
            regorus::Value::from(json)
        }
        None => {
            let input = request_input(&args.request)?;
            let limits = generation
                .request_body()
                .map_or_else(BodyLimits::default, |c| c.limits());
            let body = body_input(&args.request, &input, limits)?;
            input.to_value_with_body(body.as_ref())
        }
    };
    let decision = generation.decide_value(input.clone());
    // The proxy serves the RVM; `cordon-policy test` runs the interpreter. Say so when they
    // part ways for this input (a regorus RVM limitation: see docs/POLICY.md).
    let reference = Some(generation.decide_value_interpreted(input));
    if let Some(reference) = reference
        && reference != decision
    {
        eprintln!(
            "cordon-policy: warning: the RVM (what the proxy serves) and the interpreter (what \
             `cordon-policy test` runs) disagree on this input:\n  rvm:         {}\n  interpreter: {}",
            decision.to_json(),
            reference.to_json()
        );
    }
    print_json(&decision.to_json())?;
    Ok(ExitCode::SUCCESS)
}

fn request_input(args: &RequestArgs) -> anyhow::Result<PolicyInput> {
    let Some(request) = &args.request else {
        bail!("give --request \"METHOD URL\" (or --input FILE to eval a whole input document)");
    };
    let (method, url) = request
        .trim()
        .split_once(char::is_whitespace)
        .with_context(|| format!("--request {request:?} must be \"METHOD URL\""))?;
    let mut headers = Vec::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header {header:?} must be \"Name: value\""))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let request = RequestInput::from_url(method, url.trim(), headers)
        .map_err(|e| anyhow::anyhow!("--request: {e}"))?;
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let (k, v) = label
            .split_once('=')
            .with_context(|| format!("--label {label:?} must be key=value"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let session = SessionInput {
        id: args
            .session
            .clone()
            .unwrap_or_else(|| SessionInput::UNKNOWN_ID.to_string()),
        agent_id: args.agent.clone(),
        labels,
    };
    let tls = request.scheme == "https";
    let input_authority = request.authority.clone();
    let connection = ConnectionInput {
        mode: ListenerMode::Explicit,
        transport: if tls { Transport::Tls } else { Transport::Http },
        source: args.source,
        original_destination: None,
        sni: tls.then(|| host_of(&request.authority)),
        connect_target: None,
        dns_name: None,
    };
    let (stage, request) = if args.connect {
        (Stage::Connect, None)
    } else {
        (Stage::Request, Some(request))
    };
    let mut input = PolicyInput {
        stage,
        connection,
        session,
        request,
    };
    if args.connect && !tls {
        // A plaintext connection's first look has no SNI: name the target as CONNECT would.
        let target = cordon_policy::input::parse_authority(&input_authority, 80)
            .map(|a| format!("{}:{}", a.host, a.port))
            .unwrap_or(input_authority);
        input.connection.connect_target = Some(target);
    }
    Ok(input)
}

/// Prints a JSON document; a reader that stops early (`| head`) is not an error.
fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value)?;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The body of `--body`, parsed as the gateway parses it for the policy.
fn body_input(
    args: &RequestArgs,
    input: &PolicyInput,
    limits: BodyLimits,
) -> anyhow::Result<Option<BodyInput>> {
    let Some(path) = &args.body else {
        return Ok(None);
    };
    let bytes = if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .context("cannot read the body from standard input")?;
        bytes
    } else {
        std::fs::read(path).with_context(|| format!("cannot read --body {}", path.display()))?
    };
    let Some(request) = &input.request else {
        bail!("--body needs a request (not --connect)");
    };
    Ok(Some(BodyInput::parse(
        &bytes,
        false,
        &BodyRequest::of(request),
        limits,
    )))
}

fn host_of(authority: &str) -> String {
    cordon_policy::input::parse_authority(authority, 443)
        .map(|a| a.host)
        .unwrap_or_else(|| authority.to_string())
}

fn load(path: &Path, query: &str) -> anyhow::Result<Generation> {
    let bundle = Bundle::load(path)?;
    Ok(Generation::compile(&bundle, query, EvalLimits::default())?)
}

fn test(path: &Path, filter: Option<&str>, verbose: bool) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::load(path)?;
    let report = testing::run(&bundle, filter)?;
    for result in &report.results {
        match &result.outcome {
            TestOutcome::Pass if verbose => {
                println!("PASS {} ({:?})", result.rule, result.duration);
            }
            TestOutcome::Pass => {}
            TestOutcome::Fail(why) => println!("FAIL {} ({}): {why}", result.rule, result.file),
        }
    }
    if report.results.is_empty() {
        println!("no test_* rules found in {}", path.display());
    }
    println!("{} passed, {} failed", report.passed(), report.failed());
    Ok(if report.failed() == 0 && !report.results.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check(path: &Path, query: &str) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::load(path)?;
    // Parse every module, tests included, so each error is reported at once.
    cordon_policy::engine::check_modules(&bundle)?;
    let generation = Generation::compile(&bundle, query, EvalLimits::default())?;
    let info = generation.info();
    let path_note = match &info.path {
        EvalPath::Vm => "compiled to the RVM".to_string(),
        EvalPath::Interpreter { reason } => format!("served by the interpreter ({reason})"),
    };
    println!(
        "ok: {} module(s), {} test module(s), generation {}, {} {}",
        info.modules,
        bundle.modules.len() - info.modules,
        info.id,
        query,
        path_note
    );
    Ok(ExitCode::SUCCESS)
}
