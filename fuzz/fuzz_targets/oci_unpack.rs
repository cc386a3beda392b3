//! The OCI layer unpacker: image layers are whoever built the image's, and the controller
//! unpacks them as root. Nothing may land outside the root being unpacked into: a sibling
//! directory stays empty, and `scripts/fuzz.sh` runs this target in a mount namespace whose
//! other filesystems are read-only, so a write anywhere else fails with EROFS, which the
//! harness treats as an escape.
#![no_main]

use cordon_controller::image::unpack::{LayerWriter, UnpackError};
use libfuzzer_sys::fuzz_target;

/// EROFS: a write outside the temporary directory (read-only in the fuzzing namespace).
const READ_ONLY_FILESYSTEM: i32 = 30;

fn check(result: Result<(), UnpackError>) {
    if let Err(UnpackError::Io { source, what, .. }) = &result {
        assert_ne!(
            source.raw_os_error(),
            Some(READ_ONLY_FILESYSTEM),
            "the unpacker wrote outside its root ({what})"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte splits the rest into two layers (at a 512-byte tar block boundary), so
    // whiteouts and opaque directories meet a lower layer.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (usize::from(split) * 512).min(rest.len());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().join("root");
    let sibling = dir.path().join("sibling");
    std::fs::create_dir(&root).expect("root");
    std::fs::create_dir(&sibling).expect("sibling");
    let mut writer = LayerWriter::new(&root, "lower");
    check(writer.apply(&rest[..at]));
    writer.next_layer("upper");
    check(writer.apply(&rest[at..]));
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("listing")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["root", "sibling"],
        "an entry landed beside the root"
    );
    assert!(
        std::fs::read_dir(&sibling)
            .expect("listing")
            .next()
            .is_none(),
        "an entry landed in a sibling of the root"
    );
});
