//! The sandboxes' DNS stub: a query packet is a sandbox's. Every answer is a well-formed DNS
//! response to the query's id.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

use cordon_proxy::config::ProxyConfig;
use cordon_proxy::state::GatewayState;
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

/// One gateway state for the process: a deny-all policy, a CA in a temporary directory, the
/// audit log to /dev/null (each query writes a record).
fn state() -> &'static GatewayState {
    static STATE: OnceLock<(tempfile::TempDir, GatewayState)> = OnceLock::new();
    &STATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let bundle = dir.path().join("policy");
            std::fs::create_dir(&bundle).expect("bundle directory");
            std::fs::write(
                bundle.join("egress.rego"),
                "package cordon.egress\nimport rego.v1\ndefault decision := false\n",
            )
            .expect("policy");
            let text = format!(
                "[proxy]\nexplicit_listen = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:1\"\nstate_dir = \"{}\"\n\
                 [policy]\nbundle = \"{}\"\n[audit]\npath = \"/dev/null\"\n\
                 [dns]\nsynthetic_range = \"198.18.0.0/24\"\n",
                dir.path().display(),
                bundle.display()
            );
            let config = ProxyConfig::parse(&text, Path::new("/fuzz/cordon.toml"))
                .expect("the fuzz configuration is valid");
            let state = GatewayState::new(config).expect("the gateway state starts");
            (dir, state)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let source: SocketAddr = "10.200.0.2:5353".parse().expect("an address");
    if let Some(packet) = cordon_proxy::dns::answer(state(), source, data) {
        let response = Message::from_vec(&packet).expect("the stub answers with a valid message");
        let query = Message::from_vec(data).expect("only queries are answered");
        assert_eq!(response.id(), query.id());
        assert_eq!(response.message_type(), MessageType::Response);
    }
});
