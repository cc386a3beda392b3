use super::*;

fn parse(text: &str) -> Result<ProxyConfig, ConfigError> {
    ProxyConfig::parse(text, Path::new("/etc/cordon/cordon.toml"))
}

#[test]
fn a_minimal_config_gets_the_documented_defaults() {
    let config =
        parse("[proxy]\nexplicit_listen = \"127.0.0.1:3128\"\n[policy]\nbundle = \"policy\"\n")
            .unwrap();
    assert_eq!(
        config.listen.explicit,
        Some("127.0.0.1:3128".parse().unwrap())
    );
    assert_eq!(config.listen.admin, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(config.state_dir, Path::new("/etc/cordon/state"));
    assert_eq!(config.policy.bundle, Path::new("/etc/cordon/policy"));
    assert_eq!(config.policy.query, cordon_policy::DEFAULT_QUERY);
    assert_eq!(config.tls.ca_cert, Path::new("/etc/cordon/state/ca.pem"));
    assert_eq!(config.tls.no_sni, NoSniAction::Deny);
    assert_eq!(config.connect_stage, ConnectStage::Evaluate);
    assert_eq!(
        config.audit_path,
        AuditTarget::File("/etc/cordon/state/audit.log".into())
    );
}

#[test]
fn reads_connect_to_overrides_and_private_allowances() {
    let config = parse(
        "[proxy]\nexplicit_listen = \"127.0.0.1:3128\"\n[policy]\nbundle = \"/p\"\n\
         [upstream]\nallow_private = [\"10.0.0.0/8\", \"192.0.2.1\"]\n\
         [upstream.connect_to]\n\"pypi.org:443\" = \"127.0.0.1:8443\"\n\
         [audit]\npath = \"-\"\n",
    )
    .unwrap();
    assert_eq!(
        config.upstream.connect_to[&("pypi.org".to_string(), 443)],
        "127.0.0.1:8443".parse().unwrap()
    );
    assert_eq!(config.upstream.allow_private.len(), 2);
    assert_eq!(config.audit_path, AuditTarget::Stdout);
}

#[test]
fn lists_every_error_at_once() {
    let err = parse(
        "[proxy]\nexplicit_listen = \"nowhere\"\nadmin_listen = \"0.0.0.0:9901\"\n\
         [policy]\nbundle = \"/p\"\nconnect_stage = \"maybe\"\n\
         [tls]\nno_sni = \"guess\"\ncert_cache_size = 0\nupstream_extra_roots = [\"/nonexistent.pem\"]\n\
         [upstream]\nallow_private = [\"ten\"]\n[upstream.connect_to]\n\"pypi.org\" = \"x\"\n",
    )
    .unwrap_err();
    let message = err.to_string();
    for needle in [
        "proxy.explicit_listen",
        "not a loopback address",
        "policy.connect_stage",
        "tls.no_sni",
        "tls.cert_cache_size",
        "/nonexistent.pem",
        "upstream.allow_private",
        "upstream.connect_to key \"pypi.org\"",
    ] {
        assert!(message.contains(needle), "missing {needle}: {message}");
    }
}

#[test]
fn rejects_unknown_keys_naming_them() {
    let err = parse("[proxy]\nexplict_listen = \"127.0.0.1:1\"\n").unwrap_err();
    let message = err.to_string();
    assert!(message.contains("explict_listen"), "{message}");
}

#[test]
fn requires_a_bundle_and_a_listener() {
    let message = parse("").unwrap_err().to_string();
    assert!(message.contains("policy.bundle is not set"), "{message}");
    assert!(
        message.contains("neither proxy.transparent_listen"),
        "{message}"
    );
}

#[test]
fn the_example_config_loads_with_its_commented_sections_enabled_too() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cordon.toml");
    let config = ProxyConfig::load(&path).unwrap();
    assert!(config.listen.explicit.is_some());
    assert!(config.dns.listen.is_none());
    // The commented [dns] and [sandbox] blocks are valid as written.
    let text = std::fs::read_to_string(&path).unwrap();
    let enabled = text
        .replace("# [dns]", "[dns]")
        .replace("# listen = \"0.0.0.0:5300\"", "listen = \"0.0.0.0:5300\"")
        .replace("# [sandbox]", "[sandbox]")
        .replace("# address_pool", "address_pool");
    let config = ProxyConfig::parse(&enabled, &path).unwrap();
    assert_eq!(config.dns.listen.map(|a| a.port()), Some(5300));
    // [sandbox] is the controller's: its shape is checked when the file is read.
    let file = cordon_config::parse(&enabled, &path).unwrap();
    assert_eq!(file.sections.sandbox.address_pool, "10.200.0.0/16");
    let typo = enabled.replace("address_pool", "adress_pool");
    assert!(
        ProxyConfig::parse(&typo, &path)
            .unwrap_err()
            .to_string()
            .contains("unknown field `adress_pool`")
    );
}
