//! The controller's tools file (`[controller] tools`): names, JSON Schemas CMA must accept,
//! handlers, mounts. Every content is either a tool set or a list of problems.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cordon_controller::tools::file::{Context, ImageInfo, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut images = BTreeMap::new();
    images.insert(
        "default".to_string(),
        ImageInfo {
            root: PathBuf::from("/nonexistent/cordon-fuzz/image"),
            path: "/usr/local/bin:/usr/bin:/bin".into(),
        },
    );
    let context = Context {
        host_rootfs: false,
        images,
        default_image: "default".into(),
        forbidden: vec![PathBuf::from("/etc/cordon")],
        explicit_proxy: true,
    };
    match parse(text, Path::new("/nonexistent/cordon-fuzz"), &context) {
        Ok(set) => {
            let _ = set.agent_entries();
        }
        Err(problems) => assert!(!problems.is_empty(), "refused without a reason"),
    }
});
