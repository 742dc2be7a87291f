//! Builds the eBPF object (monitor-ebpf) with the nightly toolchain and bpf-linker, so that a
//! plain `cargo build` produces an agent with its kernel side embedded.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
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
