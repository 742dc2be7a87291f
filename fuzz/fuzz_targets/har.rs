//! Any bytes as a HAR file: calls, or a clear error, never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static PATH: LazyLock<std::path::PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("apimon-fuzz-{}.har", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    if std::fs::write(&*PATH, data).is_err() {
        return;
    }
    // The parse only: what each entry becomes is fuzzed through the `detect` target.
    let _ = apimon::har::read(&PATH, |_, call| {
        std::hint::black_box(call);
    });
});
