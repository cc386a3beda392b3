//! Builds the sandboxes' statx compatibility library (compat/statx.c) as a shared object,
//! embedded in the controller and written into each sandbox's bundle. A build script reports
//! failure by panicking, so `expect` is the right tool here.

#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=compat/statx.c");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let compiler = cc::Build::new().get_compiler();
    let status = Command::new(compiler.path())
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(out.join("statx-compat.so"))
        .arg("compat/statx.c")
        .status()
        .expect("a C compiler (build-essential; make deps installs it)");
    assert!(status.success(), "compiling compat/statx.c failed");
}
