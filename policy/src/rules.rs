//! Listing the rules a bundle defines, from regorus's parsed modules.
//!
//! regorus exposes its AST only through `regorus::unstable`; the workspace pins regorus to an
//! exact version so this module changes only when we choose to upgrade.

use regorus::Engine;
use regorus::unstable::{Rule, RuleHead};

/// A rule defined by a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleDef {
    /// Full path, `data.cordon.egress.decision`.
    pub(crate) path: String,
    /// The module (bundle path) that defines it.
    pub(crate) file: String,
    /// The rule's name (its last path segment), `decision`.
    pub(crate) name: String,
    /// Whether it is a function (`f(x) := ...`), which cannot be a query or a test.
    pub(crate) function: bool,
}

/// Every rule of every module loaded in `engine`, deduplicated by path (a rule with several
/// bodies or a default is listed once), in definition order.
pub(crate) fn defined(engine: &mut Engine) -> Vec<RuleDef> {
    let mut rules: Vec<RuleDef> = Vec::new();
    for module in engine.get_modules().iter() {
        let package = module.package.refr.span().text().to_string();
        let file = module.package.span.source.get_path().to_string();
        for rule in &module.policy {
            let (refr, function) = match rule.as_ref() {
                Rule::Spec { head, .. } => match head {
                    RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => (refr, false),
                    RuleHead::Func { refr, .. } => (refr, true),
                },
                Rule::Default { refr, args, .. } => (refr, !args.is_empty()),
            };
            let head = refr.span().text().to_string();
            let name = head.rsplit('.').next().unwrap_or(&head).to_string();
            let path = format!("data.{package}.{head}");
            if !rules.iter().any(|r| r.path == path) {
                rules.push(RuleDef {
                    path,
                    file: file.clone(),
                    name,
                    function,
                });
            }
        }
    }
    rules
}
