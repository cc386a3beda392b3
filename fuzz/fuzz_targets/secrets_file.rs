//! The proxy's secret store file (`[credentials] store`): TOML an operator writes, but loaded
//! on every change, so no content may crash the gateway.
#![no_main]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use cordon_proxy::credentials::SecretStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("secrets.toml");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("the store file");
    file.write_all(data).expect("written");
    drop(file);
    let _ = SecretStore::load(&path);
});
