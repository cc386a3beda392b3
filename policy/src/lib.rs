//! Cordon's egress policy engine.
//!
//! Every connection and request that leaves a sandbox is decided here, in Rego (evaluated by
//! [regorus]). The crate owns four things:
//!
//! - [`bundle`]: loading an OPA-style policy bundle (a directory, a `.tar.gz`, or one `.rego`
//!   file) with its data documents and manifest, rejecting anything malformed at load time.
//! - [`input`]: typed structs for what the proxy knows about a connection or request, turned into
//!   the input document policies see. Its shape is Envoy's ext_authz as OPA-Envoy presents it, so
//!   policies written for opa-envoy-plugin run unchanged; Cordon adds `input.session`,
//!   `input.connection` and `input.destination`.
//! - [`decision`]: reading the policy's answer (a boolean or an OPA-Envoy decision object with
//!   Cordon's extensions) into a typed [`Decision`], failing closed on anything unexpected.
//! - [`input::body`]: request bodies for bundles that ask for them in their manifest
//!   ([`RequestBodyConfig`]): the raw text, `parsed_body` and convenience fields (JSON-RPC,
//!   GraphQL, git push commands) from bytes the proxy buffered, with decompression bounded.
//! - [`engine`]: compiling a bundle once per generation into a regorus RVM program, evaluating it
//!   without a global lock, and swapping generations atomically on reload (a failed reload keeps
//!   the last good generation).
//!
//! It is sans-IO apart from reading bundle files at load time: no sockets, no async runtime, no
//! threads of its own. It does not resolve credentials: a decision only *names* secrets, and the
//! proxy resolves and binds them. Secret values never enter Rego data or the input document.
//!
//! [`testing`] runs a bundle's `test_*` rules the way `opa test` does.

pub mod bundle;
pub mod decision;
pub mod engine;
pub mod input;
mod rules;
pub mod testing;

pub use bundle::{
    Bundle, BundleFile, BundleFileKind, BundleLoadError, OverLimit, RequestBodyConfig,
};
pub use decision::{CredentialRef, Decision, DecisionFailure, HeaderValue, Outcome, TlsHandling};
pub use engine::{
    DEFAULT_QUERY, EvalLimits, EvalPath, EvaluatorChoice, Generation, GenerationInfo, PolicyConfig,
    PolicyEngine, PolicyLoadError,
};
pub use input::{
    BodyInput, BodyLimits, BodyRequest, ConnectionInput, HttpProtocol, ListenerMode, PolicyInput,
    RequestInput, SessionInput, Stage, Transport,
};
