//! `GET /secrets`: the secret store's names and bindings, and which policy files name each
//! secret, so an operator sees what a policy can ask for and where it may go. Values, and
//! where values are read from (environment variables, value files), are never part of it:
//! the answer is built from the fields below, never from a [`Secret`] as a whole.

use cordon_policy::BundleFile;
use serde::Serialize;

use crate::credentials::{Presentation, Secret};
use crate::state::GatewayState;

#[derive(Debug, Serialize)]
struct SecretListing<'a> {
    name: &'a str,
    placeholder_prefix: &'a str,
    /// Where the secret may be sent. The store gives each secret one binding today; a list,
    /// so a secret bound several ways needs no new shape.
    bindings: Vec<BindingListing<'a>>,
    /// Files of the serving policy bundle whose text names the secret.
    policy_files: Vec<&'a str>,
}

#[derive(Debug, Serialize)]
struct BindingListing<'a> {
    /// Exact host names, or `*.suffix` for its subdomains.
    hosts: &'a [String],
    /// Empty: any method but TRACE and TRACK.
    methods: &'a [String],
    /// Empty: any path.
    path_prefixes: &'a [String],
    allow_plaintext: bool,
    allow_upgrade: bool,
    /// The headers a placeholder of the secret is swapped in (the header a policy injects it
    /// in is named by the decision).
    headers: &'a [String],
    /// `bearer`, `token`, `basic` or `raw`.
    format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    basic_user: Option<&'a str>,
}

pub(super) fn secrets(state: &GatewayState) -> serde_json::Value {
    let set = state.secrets.current();
    let generation = state.policy.generation();
    let files = &generation.info().files;
    let mut listed: Vec<SecretListing<'_>> = set.iter().map(|s| listing(s, files)).collect();
    listed.sort_by(|a, b| a.name.cmp(b.name));
    serde_json::json!({ "secrets": listed })
}

fn listing<'a>(secret: &'a Secret, files: &'a [BundleFile]) -> SecretListing<'a> {
    let binding = &secret.binding;
    let (format, basic_user) = match &secret.presentation {
        Presentation::Bearer => ("bearer", None),
        Presentation::Token => ("token", None),
        Presentation::Basic { user } => ("basic", Some(user.as_str())),
        Presentation::Raw => ("raw", None),
    };
    SecretListing {
        name: &secret.name,
        placeholder_prefix: &secret.placeholder_prefix,
        bindings: vec![BindingListing {
            hosts: &binding.hosts,
            methods: &binding.methods,
            path_prefixes: &binding.path_prefixes,
            allow_plaintext: binding.allow_plaintext,
            allow_upgrade: binding.allow_upgrade,
            headers: &secret.swap_headers,
            format,
            basic_user,
        }],
        policy_files: files
            .iter()
            .filter(|f| names(&String::from_utf8_lossy(f.contents()), &secret.name))
            .map(|f| f.path.as_str())
            .collect(),
    }
}

/// Whether `text` has `name` as a whole word: not inside a longer name (`github` in
/// `github-git`) or a dotted host (`api.github.com`), so a short secret name does not match
/// every file that mentions its service.
fn names(text: &str, name: &str) -> bool {
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    !name.is_empty()
        && text.match_indices(name).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + name.len()..].chars().next();
            !before.is_some_and(part_of_name) && !after.is_some_and(part_of_name)
        })
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn finds_a_secret_name_only_as_a_whole_word() {
        assert!(names(r#""inject": [{"secret": "github"}]"#, "github"));
        assert!(names("secret: github\n", "github"));
        assert!(names("# injects the `github` secret", "github"));
        assert!(!names(r#""secret": "github-git""#, "github"));
        assert!(!names("api.github.com", "github"));
        assert!(!names("allowlist.github.secret", "github"));
        assert!(names(r#""github-git""#, "github-git"));
        assert!(!names("anything", ""));
    }
}
