//! GraphQL requests: which operations a document holds, which one runs, and the top-level
//! fields each selects.
//!
//! Parsed with `apollo-parser` rather than `graphql-parser`: request bodies are hostile input,
//! and apollo-parser bounds both nesting depth (`recursion_limit`) and document size
//! (`token_limit`), where graphql-parser's recursive descent has no depth bound and a deeply
//! nested selection set can overflow the stack. It is also error-tolerant, so a syntax error is
//! reported with its position rather than as an opaque failure.

use std::collections::{HashMap, HashSet};

use apollo_parser::Parser;
use apollo_parser::cst;
use regorus::Value;

/// Nesting deeper than real queries go (GitHub's deepest documented queries nest about 15).
const RECURSION_LIMIT: usize = 128;
/// Tokens in one document: a 1 MiB document of short names is around 200,000 tokens; real
/// queries are a few thousand.
const TOKEN_LIMIT: usize = 100_000;
/// Selections visited while resolving fragments, over all operations: many operations each
/// spreading a long fragment chain would otherwise cost operations × chain length.
const SELECTION_BUDGET: usize = 4 * TOKEN_LIMIT;

/// `input.cordon.graphql`: one request, or a batch (a JSON array of requests) as a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphQl {
    Single(GraphQlRequest),
    Batch(Vec<GraphQlRequest>),
}

/// One GraphQL request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphQlRequest {
    /// The operation the server runs: the one `operationName` names, or the document's only
    /// one. `None` when the document does not say which (the server refuses such a request).
    pub operation: Option<GraphQlOperation>,
    /// Every operation in the document, in order.
    pub operations: Vec<GraphQlOperation>,
}

/// `{type, name, fields}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphQlOperation {
    pub operation_type: GraphQlOperationType,
    pub name: Option<String>,
    /// The top-level fields selected, by field name (aliases resolved: `safe: deleteRepo`
    /// selects `deleteRepo`), through fragments, each once.
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphQlOperationType {
    Query,
    Mutation,
    Subscription,
}

impl GraphQlOperationType {
    pub fn as_str(self) -> &'static str {
        match self {
            GraphQlOperationType::Query => "query",
            GraphQlOperationType::Mutation => "mutation",
            GraphQlOperationType::Subscription => "subscription",
        }
    }
}

/// The GraphQL request(s) of a JSON body (`{"query", "operationName", "variables"}`, or an
/// array of them). `Ok(None)` when the body is not one; an `Err` only when the path says
/// GraphQL (its last segment contains `graphql`), since another API's `query` member need not
/// be GraphQL at all.
pub(super) fn from_json(document: &Value, path: &str) -> Result<Option<GraphQl>, String> {
    let request = |value: &Value| -> Option<Result<GraphQlRequest, String>> {
        let query = value["query"].as_string().ok()?;
        let name = value["operationName"].as_string().ok();
        Some(parse(query, name.map(|n| n.as_ref())))
    };
    let parsed = match document {
        Value::Object(_) => match request(document) {
            None => return Ok(None),
            Some(result) => result.map(GraphQl::Single),
        },
        Value::Array(items) => {
            let requests: Vec<_> = items.iter().map(request).collect();
            if requests.iter().all(Option::is_none) {
                return Ok(None);
            }
            // Every element must be a GraphQL request: an element the policy cannot see into
            // must not ride along with ones it allows.
            requests
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    r.unwrap_or_else(|| Err("it has no query".to_string()))
                        .map_err(|e| format!("batch element {i}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(GraphQl::Batch)
        }
        _ => return Ok(None),
    };
    match parsed {
        Ok(graphql) => Ok(Some(graphql)),
        Err(e) if names_graphql(path) => Err(e),
        Err(_) => Ok(None),
    }
}

/// An `application/graphql` body: the document itself; `operationName` may be in the query
/// string.
pub(super) fn from_text(text: &str, path: &str) -> Result<GraphQl, String> {
    let query = crate::input::parse_query(path);
    let name = query
        .get("operationName")
        .and_then(|names| names.first())
        .map(String::as_str);
    parse(text, name).map(GraphQl::Single)
}

fn names_graphql(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    last.to_ascii_lowercase().contains("graphql")
}

fn parse(query: &str, operation_name: Option<&str>) -> Result<GraphQlRequest, String> {
    let tree = Parser::new(query)
        .recursion_limit(RECURSION_LIMIT)
        .token_limit(TOKEN_LIMIT)
        .parse();
    if let Some(error) = tree.errors().next() {
        return Err(format!(
            "GraphQL syntax error at byte {}: {}",
            error.index(),
            error.message()
        ));
    }
    let document = tree.document();
    let mut fragments = HashMap::new();
    let mut definitions = Vec::new();
    for definition in document.definitions() {
        match definition {
            cst::Definition::OperationDefinition(op) => definitions.push(op),
            cst::Definition::FragmentDefinition(fragment) => {
                if let (Some(name), Some(selections)) = (
                    fragment.fragment_name().and_then(|n| n.name()),
                    fragment.selection_set(),
                ) {
                    fragments.insert(name.text().to_string(), selections);
                }
            }
            // Type-system definitions are not executable; the server refuses the document.
            _ => {}
        }
    }
    if definitions.is_empty() {
        return Err("the GraphQL document has no operation".to_string());
    }
    let mut budget = SELECTION_BUDGET;
    let operations = definitions
        .iter()
        .map(|op| operation(op, &fragments, &mut budget))
        .collect::<Result<Vec<_>, _>>()?;
    let operation = match operation_name {
        Some(wanted) => operations
            .iter()
            .find(|op| op.name.as_deref() == Some(wanted))
            .cloned(),
        None if operations.len() == 1 => operations.first().cloned(),
        None => None,
    };
    Ok(GraphQlRequest {
        operation,
        operations,
    })
}

fn operation(
    op: &cst::OperationDefinition,
    fragments: &HashMap<String, cst::SelectionSet>,
    budget: &mut usize,
) -> Result<GraphQlOperation, String> {
    let operation_type = match op.operation_type() {
        // `{ ... }` alone is the query shorthand.
        None => GraphQlOperationType::Query,
        Some(t) if t.mutation_token().is_some() => GraphQlOperationType::Mutation,
        Some(t) if t.subscription_token().is_some() => GraphQlOperationType::Subscription,
        Some(_) => GraphQlOperationType::Query,
    };
    let fields = match op.selection_set() {
        Some(set) => top_level_fields(set, fragments, budget)?,
        None => Vec::new(),
    };
    Ok(GraphQlOperation {
        operation_type,
        name: op.name().map(|n| n.text().to_string()),
        fields,
    })
}

/// The field names of a selection set, through fragment spreads and inline fragments. An
/// explicit stack, not recursion: a chain of thousands of fragments fits in the token limit.
fn top_level_fields(
    selections: cst::SelectionSet,
    fragments: &HashMap<String, cst::SelectionSet>,
    budget: &mut usize,
) -> Result<Vec<String>, String> {
    let mut fields: Vec<String> = Vec::new();
    let mut seen_fields: HashSet<String> = HashSet::new();
    let mut seen_fragments: HashSet<String> = HashSet::new();
    let mut stack = vec![selections];
    while let Some(set) = stack.pop() {
        for selection in set.selections() {
            *budget = budget.checked_sub(1).ok_or_else(|| {
                format!(
                    "the GraphQL document selects more than {SELECTION_BUDGET} fields \
                     through its fragments"
                )
            })?;
            match selection {
                cst::Selection::Field(field) => {
                    if let Some(name) = field.name() {
                        let name = name.text().to_string();
                        if seen_fields.insert(name.clone()) {
                            fields.push(name);
                        }
                    }
                }
                cst::Selection::InlineFragment(inline) => stack.extend(inline.selection_set()),
                cst::Selection::FragmentSpread(spread) => {
                    let Some(name) = spread.fragment_name().and_then(|n| n.name()) else {
                        continue;
                    };
                    let name = name.text().to_string();
                    if let Some(set) = fragments.get(&name)
                        && seen_fragments.insert(name)
                    {
                        stack.push(set.clone());
                    }
                }
            }
        }
    }
    Ok(fields)
}
