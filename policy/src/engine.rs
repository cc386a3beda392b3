//! Compiling bundles into policy generations, evaluating them, and swapping them on reload.
//!
//! A [`Generation`] is one bundle compiled for one decision query. It is immutable: a reload
//! builds a whole new generation off to the side and swaps it in with one atomic pointer store
//! ([`arc_swap`]), so every decision sees exactly one generation and a reload that fails leaves
//! the last good one serving.
//!
//! Evaluation takes the fast path when it can: the query is compiled to a regorus RVM program,
//! and each thread keeps its own VM per generation (VMs are not `Clone`, and a thread-local one
//! costs no lock). Policies that use a construct the RVM compiler does not support yet (the
//! `with` keyword in served rules, some partial object rules) fall back to the tree-walking
//! interpreter, which is slower but complete; [`GenerationInfo::path`] says which one serves.

mod vm_cache;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use regorus::languages::rego::compiler::Compiler;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{CompiledPolicy, Engine, Value};

use crate::bundle::{Bundle, BundleFile, BundleLoadError, RequestBodyConfig};
use crate::decision::{Decision, DecisionFailure};
use crate::input::{BodyInput, PolicyInput};

/// The query a decision is read from unless configured otherwise.
pub const DEFAULT_QUERY: &str = "data.cordon.egress.decision";
/// Wall-clock bound on one evaluation. A realistic policy takes microseconds; one that runs
/// away (a huge comprehension over data) is cut off and the request denied.
pub const DEFAULT_EVAL_TIMEOUT: Duration = Duration::from_millis(100);
/// Instruction bound on one RVM evaluation, the deterministic companion of the timeout.
pub const DEFAULT_MAX_INSTRUCTIONS: usize = 10_000_000;

/// Bounds on one evaluation; hitting one is an evaluation error, so a deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalLimits {
    pub timeout: Duration,
    pub max_instructions: usize,
}

impl Default for EvalLimits {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_EVAL_TIMEOUT,
            max_instructions: DEFAULT_MAX_INSTRUCTIONS,
        }
    }
}

/// Which evaluator a generation should serve with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvaluatorChoice {
    /// The RVM when the policy compiles to it, else the interpreter (the default).
    #[default]
    Auto,
    /// Always the interpreter: for a policy that meets an RVM limitation (see docs/POLICY.md),
    /// at several times the cost per decision.
    Interpreter,
}

/// Where policy comes from and what is asked of it.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// A bundle directory, `.tar.gz` archive or single `.rego` file.
    pub bundle: PathBuf,
    /// The rule the decision is read from, e.g. [`DEFAULT_QUERY`] or `data.envoy.authz.allow`.
    pub query: String,
    pub limits: EvalLimits,
    pub evaluator: EvaluatorChoice,
}

impl PolicyConfig {
    pub fn new(bundle: impl Into<PathBuf>) -> Self {
        Self {
            bundle: bundle.into(),
            query: DEFAULT_QUERY.to_string(),
            limits: EvalLimits::default(),
            evaluator: EvaluatorChoice::Auto,
        }
    }
}

/// Which evaluator serves a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalPath {
    /// The query compiled to an RVM program (the fast path).
    Vm,
    /// The tree-walking interpreter, with the reason the RVM compiler refused the policy.
    Interpreter { reason: String },
}

/// Why a bundle could not become a generation.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error(transparent)]
    Bundle(#[from] BundleLoadError),
    /// Every module that failed to parse, each message naming `file:line:column`.
    #[error("policy bundle {bundle} has errors:\n{}", .errors.join("\n"))]
    Rego {
        bundle: PathBuf,
        errors: Vec<String>,
    },
    #[error(
        "policy bundle {bundle} defines no rule {query}; the bundle defines: {}. \
         Set [policy] query to one of them, or add the rule",
        if .available.is_empty() { "no rules".to_string() } else { .available.join(", ") }
    )]
    MissingQuery {
        bundle: PathBuf,
        query: String,
        available: Vec<String>,
    },
    #[error("policy bundle {bundle}: cannot compile {query}: {message}")]
    Compile {
        bundle: PathBuf,
        query: String,
        message: String,
    },
}

/// What identifies and describes a generation (for audit records, metrics and logs).
#[derive(Debug, Clone)]
pub struct GenerationInfo {
    /// The bundle's manifest revision, or its content hash when it has none.
    pub id: Arc<str>,
    pub revision: Option<String>,
    /// `sha256:<hex>` of the bundle's files.
    pub content_hash: String,
    pub query: String,
    pub path: EvalPath,
    /// Modules served (test modules excluded).
    pub modules: usize,
    pub loaded_at: SystemTime,
    /// The manifest's `metadata.cordon.request_body`: whether (and within which limits) the
    /// proxy reads request bodies for this generation. `None`: decide on headers alone.
    pub request_body: Option<RequestBodyConfig>,
    /// The bundle's files as they were read for this generation, in path order: what an
    /// operator checks the serving policy against (files on disk may have changed since).
    pub files: Arc<[BundleFile]>,
}

/// One compiled bundle: immutable, shared by every decision made while it is current.
#[derive(Debug)]
pub struct Generation {
    info: GenerationInfo,
    /// Distinguishes generations in the per-thread VM cache (ids can repeat across reloads).
    serial: u64,
    /// The interpreter template (bundle, data and limits loaded); cloned per interpreted call.
    engine: Engine,
    compiled: CompiledPolicy,
    program: Option<Arc<regorus::rvm::Program>>,
    data: Value,
    limits: EvalLimits,
}

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

impl Generation {
    /// Loads and compiles the bundle at `config.bundle`.
    pub fn load(config: &PolicyConfig) -> Result<Self, PolicyLoadError> {
        let bundle = Bundle::load(&config.bundle)?;
        let mut generation = Self::compile(&bundle, &config.query, config.limits)?;
        if config.evaluator == EvaluatorChoice::Interpreter {
            generation.program = None;
            generation.info.path = EvalPath::Interpreter {
                reason: "configured (policy evaluator = interpreter)".to_string(),
            };
        }
        Ok(generation)
    }

    /// Compiles a loaded bundle for `query`. Test modules are left out.
    pub fn compile(
        bundle: &Bundle,
        query: &str,
        limits: EvalLimits,
    ) -> Result<Self, PolicyLoadError> {
        let served = bundle.modules.iter().filter(|m| !m.is_test());
        let mut engine = new_engine(bundle, served)?;
        engine.set_execution_timer_config(timer_config(limits));
        let compiled = compile_query(&mut engine, bundle, query)?;
        let (program, path) = match Compiler::compile_from_policy(&compiled, &[query]) {
            Ok(program) => (Some(program), EvalPath::Vm),
            Err(e) => (
                None,
                EvalPath::Interpreter {
                    reason: e.to_string(),
                },
            ),
        };
        let info = GenerationInfo {
            id: Arc::from(bundle.generation_id()),
            revision: bundle.manifest.revision.clone(),
            content_hash: bundle.content_hash.clone(),
            query: query.to_string(),
            path,
            modules: bundle.modules.iter().filter(|m| !m.is_test()).count(),
            loaded_at: SystemTime::now(),
            request_body: bundle.manifest.request_body.clone(),
            files: bundle.files.clone().into(),
        };
        Ok(Self {
            info,
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            engine,
            compiled,
            program,
            data: bundle.data.clone(),
            limits,
        })
    }

    pub fn info(&self) -> &GenerationInfo {
        &self.info
    }

    /// Whether this generation's policy reads request bodies, and with what limits: the
    /// proxy's question before it buffers a body (docs/POLICY.md, "Request bodies").
    pub fn request_body(&self) -> Option<&RequestBodyConfig> {
        self.info.request_body.as_ref()
    }

    /// Decides one connection or request.
    pub fn decide(&self, input: &PolicyInput) -> Decision {
        self.decide_value(input.to_value())
    }

    /// Decides one request on a connection whose constant parts are already built (the
    /// proxy's hot path: one [`crate::input::ConnectionDocument`] per connection).
    pub fn decide_request(
        &self,
        connection: &crate::input::ConnectionDocument,
        request: &crate::input::RequestInput,
    ) -> Decision {
        self.decide_value(connection.request(request))
    }

    /// [`Generation::decide`] with the request's body in the input.
    pub fn decide_with_body(&self, input: &PolicyInput, body: &BodyInput) -> Decision {
        self.decide_value(input.to_value_with_body(Some(body)))
    }

    /// [`Generation::decide_request`] with the request's body in the input.
    pub fn decide_request_with_body(
        &self,
        connection: &crate::input::ConnectionDocument,
        request: &crate::input::RequestInput,
        body: &BodyInput,
    ) -> Decision {
        self.decide_value(connection.request_with_body(request, body))
    }

    /// Decides from a whole input document (what `opa eval --input` takes).
    pub fn decide_value(&self, input: Value) -> Decision {
        let result = match &self.program {
            Some(program) => vm_cache::with_vm(self, program, |vm| {
                vm.set_input(input);
                let result = vm.execute().map_err(|e| e.to_string());
                // Do not keep the request's input alive in the cached VM until the next call.
                vm.set_input(Value::Undefined);
                result
            }),
            None => self.interpret(input),
        };
        self.to_decision(result)
    }

    /// Decides with the interpreter even when the RVM path exists: the baseline the benchmark
    /// and the equivalence tests compare the fast path against.
    pub fn decide_interpreted(&self, input: &PolicyInput) -> Decision {
        self.decide_value_interpreted(input.to_value())
    }

    /// [`Generation::decide_interpreted`] for a whole input document.
    pub fn decide_value_interpreted(&self, input: Value) -> Decision {
        let result = self.interpret(input);
        self.to_decision(result)
    }

    fn interpret(&self, input: Value) -> Result<Value, String> {
        let mut engine = self.engine.clone();
        engine.set_input(input);
        engine
            .eval_rule(self.info.query.clone())
            .map_err(|e| e.to_string())
    }

    fn to_decision(&self, result: Result<Value, String>) -> Decision {
        match result {
            Ok(value) => Decision::from_value(&value, &self.info.query, self.info.id.clone()),
            Err(message) => Decision::failed(
                DecisionFailure::EvaluationError,
                format!(
                    "policy evaluation of {} failed: {} (fail closed)",
                    self.info.query,
                    message.trim()
                ),
                self.info.id.clone(),
            ),
        }
    }
}

pub(crate) fn timer_config(limits: EvalLimits) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: limits.timeout,
        // Checking the clock every 256 work units keeps the check off the profile.
        check_interval: std::num::NonZeroU32::MIN.saturating_add(255),
    }
}

/// Parses every module of `bundle`, test modules included, reporting every error at once.
pub fn check_modules(bundle: &Bundle) -> Result<(), PolicyLoadError> {
    new_engine(bundle, bundle.modules.iter()).map(|_| ())
}

/// A fresh engine with the bundle's data and the given modules, collecting every module's parse
/// error rather than stopping at the first.
pub(crate) fn new_engine<'a>(
    bundle: &Bundle,
    modules: impl Iterator<Item = &'a crate::bundle::BundleModule>,
) -> Result<Engine, PolicyLoadError> {
    let mut engine = Engine::new();
    engine.set_rego_v0(bundle.manifest.rego_v0());
    let mut errors = Vec::new();
    for module in modules {
        match engine.add_policy(module.path.clone(), module.source.clone()) {
            Ok(package) => {
                if let Err(message) = bundle.manifest.check_package(&package) {
                    errors.push(format!("{}: {message}", module.path));
                }
            }
            Err(e) => errors.push(e.to_string().trim().to_string()),
        }
    }
    if let Err(e) = engine.add_data(bundle.data.clone()) {
        errors.push(format!("data: {e}"));
    }
    if errors.is_empty() {
        Ok(engine)
    } else {
        Err(PolicyLoadError::Rego {
            bundle: bundle.origin.clone(),
            errors,
        })
    }
}

fn compile_query(
    engine: &mut Engine,
    bundle: &Bundle,
    query: &str,
) -> Result<CompiledPolicy, PolicyLoadError> {
    let compile_error = |message: String| PolicyLoadError::Compile {
        bundle: bundle.origin.clone(),
        query: query.to_string(),
        message,
    };
    // Compiling the whole bundle (with the query as entry point) type-checks every rule, so a
    // reference to an undefined function is a load error, not a request-time one.
    let compiled = match engine.compile_with_entrypoint(&query.into()) {
        Ok(compiled) => compiled,
        Err(e) => {
            let message = e.to_string();
            if message.contains("not a valid rule path") {
                return Err(PolicyLoadError::MissingQuery {
                    bundle: bundle.origin.clone(),
                    query: query.to_string(),
                    available: defined_rules(engine),
                });
            }
            return Err(compile_error(message.trim().to_string()));
        }
    };
    // regorus's `get_rules()` leaves out `default` rules, so existence is checked against the
    // parsed modules, where a default-only rule is a rule like any other.
    let defined = defined_rules(engine);
    if !defined.iter().any(|rule| rule == query) {
        return Err(PolicyLoadError::MissingQuery {
            bundle: bundle.origin.clone(),
            query: query.to_string(),
            available: defined,
        });
    }
    Ok(compiled)
}

/// The rules a bundle defines, for the error that says the query names none of them.
fn defined_rules(engine: &mut Engine) -> Vec<String> {
    crate::rules::defined(engine)
        .into_iter()
        .filter(|rule| !rule.function)
        .map(|rule| rule.path)
        .collect()
}

/// The policy the proxy holds: the current generation, swapped atomically on reload.
#[derive(Debug)]
pub struct PolicyEngine {
    config: PolicyConfig,
    current: ArcSwap<Generation>,
}

impl PolicyEngine {
    /// Loads the first generation; an error here is a startup error.
    pub fn load(config: PolicyConfig) -> Result<Self, PolicyLoadError> {
        let generation = Generation::load(&config)?;
        Ok(Self {
            config,
            current: ArcSwap::from_pointee(generation),
        })
    }

    /// Loads the bundle again and swaps it in. On error the last good generation keeps serving
    /// and the error says why the new one was refused.
    pub fn reload(&self) -> Result<GenerationInfo, PolicyLoadError> {
        let generation = Generation::load(&self.config)?;
        let info = generation.info().clone();
        self.current.store(Arc::new(generation));
        Ok(info)
    }

    /// The generation serving now. Hold the `Arc` for the length of one decision (or one
    /// connection, to pin a connection's decisions to one generation).
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Decides with the current generation.
    pub fn decide(&self, input: &PolicyInput) -> Decision {
        self.current.load().decide(input)
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests;
