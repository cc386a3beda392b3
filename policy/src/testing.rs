//! Running a bundle's `test_*` rules, as `opa test` does.
//!
//! Every module of the bundle is loaded, test modules included; each rule whose name starts
//! with `test_` (functions excluded) is evaluated with no input. A test passes when it is
//! defined and `true`; `false`, undefined and evaluation errors fail, with the reason.

use std::time::{Duration, Instant};

use regorus::Value;

use crate::bundle::Bundle;
use crate::engine::{EvalLimits, PolicyLoadError, new_engine, timer_config};

/// Wall-clock bound on one test rule (opa test's default is 5 s; debug builds on a loaded
/// machine are slower).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The result of one test rule.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// `data.cordon.egress_test.test_allows_pypi`.
    pub rule: String,
    /// The module that defines it.
    pub file: String,
    pub outcome: TestOutcome,
    pub duration: Duration,
}

/// Pass or fail, with why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestOutcome {
    Pass,
    Fail(String),
}

/// What a test run found.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    pub results: Vec<TestResult>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome == TestOutcome::Pass)
            .count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }
}

/// Runs every `test_*` rule of `bundle`. A bundle that does not load is an error, not a
/// failed test. `filter` keeps the tests whose full path contains it.
pub fn run(bundle: &Bundle, filter: Option<&str>) -> Result<TestReport, PolicyLoadError> {
    let mut engine = new_engine(bundle, bundle.modules.iter())?;
    // A test rule may sweep many inputs (`every` over a host list, with `with`); it gets the
    // budget `opa test` gives a test by default, not the 100 ms of one served decision.
    engine.set_execution_timer_config(timer_config(EvalLimits {
        timeout: TEST_TIMEOUT,
        ..EvalLimits::default()
    }));
    let tests = crate::rules::defined(&mut engine)
        .into_iter()
        .filter(|rule| !rule.function && rule.name.starts_with("test_"))
        .filter(|rule| filter.is_none_or(|f| rule.path.contains(f)));
    let mut report = TestReport::default();
    for rule in tests {
        let started = Instant::now();
        let mut run = engine.clone();
        let outcome = match run.eval_rule(rule.path.clone()) {
            Ok(Value::Bool(true)) => TestOutcome::Pass,
            Ok(Value::Undefined) => {
                TestOutcome::Fail("undefined (a condition did not hold)".into())
            }
            Ok(Value::Bool(false)) => TestOutcome::Fail("false".into()),
            Ok(other) => TestOutcome::Fail(format!("not a boolean: {other}")),
            Err(e) => TestOutcome::Fail(format!("error: {}", e.to_string().trim())),
        };
        report.results.push(TestResult {
            rule: rule.path,
            file: rule.file,
            outcome,
            duration: started.elapsed(),
        });
    }
    Ok(report)
}
