//! The body's parts of the input document, added to a request-stage document only when the
//! policy asked for bodies (the fast path never comes here).

use std::collections::BTreeMap;

use regorus::Value;

use super::{FIXED, object, text};
use crate::input::body::{
    BodyInput, GitPush, GraphQl, GraphQlOperation, GraphQlRequest, JsonRpc, JsonRpcMessage,
    ParsedBody,
};

/// Adds `attributes.request.http.body`, the `x-envoy-auth-partial-body` header, `parsed_body`,
/// `truncated_body` and `cordon` to `document`, a request-stage document.
pub(super) fn apply(document: &mut Value, body: &BodyInput) {
    let f = &*FIXED;
    let Ok(root) = document.as_object_mut() else {
        return;
    };
    if let Some(http) = root
        .get_mut(&f.attributes)
        .and_then(|a| a.as_object_mut().ok())
        .and_then(|a| a.get_mut(&f.request))
        .and_then(|r| r.as_object_mut().ok())
        .and_then(|r| r.get_mut(&f.http))
        .and_then(|h| h.as_object_mut().ok())
    {
        if !body.text.is_empty() {
            http.insert(f.body.clone(), Value::from(body.text.as_str()));
        }
        // Envoy sets this header whenever it sends a body, replacing any the client sent, so
        // a client cannot claim its truncated body is whole.
        if let Some(headers) = http
            .get_mut(&f.headers)
            .and_then(|h| h.as_object_mut().ok())
        {
            let partial = if body.truncated { &f.true_ } else { &f.false_ };
            headers.insert(f.partial_body_header.clone(), partial.clone());
        }
    }
    root.insert(f.truncated_body.clone(), Value::from(body.truncated));
    if let Some(parsed) = &body.parsed {
        root.insert(f.parsed_body.clone(), parsed_body(parsed));
    }
    let mut cordon = Vec::new();
    if let Some(error) = &body.error {
        cordon.push((
            &f.body_error,
            object([
                (&f.kind, Value::from(error.kind.as_str())),
                (&f.message, Value::from(error.message.as_str())),
            ]),
        ));
    }
    if let Some(jsonrpc) = &body.jsonrpc {
        cordon.push((&f.jsonrpc, jsonrpc_value(jsonrpc)));
    }
    if let Some(graphql) = &body.graphql {
        cordon.push((&f.graphql, graphql_value(graphql)));
    }
    if let Some(git) = &body.git {
        cordon.push((&f.git, git_value(git)));
    }
    if !cordon.is_empty() {
        root.insert(f.cordon.clone(), object(cordon));
    }
}

fn parsed_body(parsed: &ParsedBody) -> Value {
    match parsed {
        ParsedBody::Json(document) => document.clone(),
        ParsedBody::Form(fields) => Value::from(
            fields
                .iter()
                .map(|(name, values)| {
                    let values: Vec<Value> =
                        values.iter().map(|v| Value::from(v.as_str())).collect();
                    (Value::from(name.as_str()), Value::from(values))
                })
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

fn jsonrpc_value(jsonrpc: &JsonRpc) -> Value {
    match jsonrpc {
        JsonRpc::Single(message) => jsonrpc_message(message),
        JsonRpc::Batch(messages) => {
            Value::from(messages.iter().map(jsonrpc_message).collect::<Vec<_>>())
        }
    }
}

fn jsonrpc_message(message: &JsonRpcMessage) -> Value {
    let f = &*FIXED;
    let mut fields = vec![(&f.kind, text(message.kind.as_str()))];
    if let Some(method) = &message.method {
        fields.push((&f.method, Value::from(method.as_str())));
    }
    if let Some(id) = &message.id {
        fields.push((&f.id, id.clone()));
    }
    if let Some(params) = &message.params {
        fields.push((&f.params, params.clone()));
    }
    object(fields)
}

fn graphql_value(graphql: &GraphQl) -> Value {
    match graphql {
        GraphQl::Single(request) => graphql_request(request),
        GraphQl::Batch(requests) => {
            Value::from(requests.iter().map(graphql_request).collect::<Vec<_>>())
        }
    }
}

fn graphql_request(request: &GraphQlRequest) -> Value {
    let f = &*FIXED;
    let mut fields = vec![(
        &f.operations,
        Value::from(
            request
                .operations
                .iter()
                .map(graphql_operation)
                .collect::<Vec<_>>(),
        ),
    )];
    if let Some(operation) = &request.operation {
        fields.push((&f.operation, graphql_operation(operation)));
    }
    object(fields)
}

fn graphql_operation(operation: &GraphQlOperation) -> Value {
    let f = &*FIXED;
    let mut fields = vec![
        (&f.type_, text(operation.operation_type.as_str())),
        (
            &f.fields,
            Value::from(
                operation
                    .fields
                    .iter()
                    .map(|name| Value::from(name.as_str()))
                    .collect::<Vec<_>>(),
            ),
        ),
    ];
    if let Some(name) = &operation.name {
        fields.push((&f.name, Value::from(name.as_str())));
    }
    object(fields)
}

fn git_value(git: &GitPush) -> Value {
    let f = &*FIXED;
    let commands = git
        .commands
        .iter()
        .map(|command| {
            object([
                (&f.old, Value::from(command.old.as_str())),
                (&f.new, Value::from(command.new.as_str())),
                (&f.ref_, Value::from(command.reference.as_str())),
                (&f.action, text(command.action().as_str())),
            ])
        })
        .collect::<Vec<_>>();
    object([(&f.commands, Value::from(commands))])
}
