//! Builds the eBPF object (monitor-ebpf) with the nightly toolchain and bpf-linker, so that a
//! plain `cargo build` produces an agent with its kernel side embedded.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // Lint and docs builds: an empty object, which the loader reports as missing.
        let object = out_dir.join("apimon");
        if !object.exists() {
            std::fs::write(&object, []).context("writing the placeholder eBPF object")?;
        }
        return Ok(());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("monitor-user has no parent directory")?
        .join("monitor-ebpf");
    let root = root.to_str().context("workspace path is not UTF-8")?;
    let package = aya_build::Package {
        name: "monitor-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).map_err(|e| {
        anyhow!(
            "building the eBPF object failed: {e:#}\n\
             run `cargo xtask setup` to install nightly rust-src and bpf-linker"
        )
    })
}
