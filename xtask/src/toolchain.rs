//! Installs what building the eBPF object needs: nightly `rust-src` and a bpf-linker built
//! against the nightly's own LLVM. Every step checks first, so running it twice does nothing.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output_of, run};

/// The nightly toolchain aya-build invokes (`rustup run nightly cargo build ...`).
pub(crate) const NIGHTLY: &str = "nightly";
/// bpf-linker release known to build against LLVM 21-23 with `LLVM_PREFIX`.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// `$CARGO_HOME`, or `~/.cargo` like cargo itself.
pub(crate) fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// PATH with `$CARGO_HOME/bin` first, so nested cargo builds find bpf-linker.
pub(crate) fn path_with_cargo_bin() -> Result<OsString> {
    let mut dirs = vec![cargo_home()?.join("bin")];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).context("PATH contains a directory that cannot be joined")
}

/// Makes sure the nightly toolchain has `rust-src` and bpf-linker matches its LLVM.
pub(crate) fn ensure() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()
}

fn ensure_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output();
    let has_nightly = matches!(&installed, Ok(o) if o.status.success());
    if !has_nightly {
        eprintln!("xtask: installing the {NIGHTLY} toolchain with rust-src");
        return run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let listed = String::from_utf8_lossy(&installed?.stdout).into_owned();
    if listed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the {NIGHTLY} toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// The nightly's shared LLVM library (`libLLVM.so.22.1-rust-1.97.0-nightly`) and LLVM major.
struct NightlyLlvm {
    lib: PathBuf,
    major: u32,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let sysroot =
        output_of(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let lib = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: is the nightly toolchain complete?",
                libdir.display()
            )
        })?;
    let version = output_of(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    Ok(NightlyLlvm { lib, major })
}

fn ensure_bpf_linker() -> Result<()> {
    let llvm = nightly_llvm()?;
    let lib_name = llvm
        .lib
        .file_name()
        .context("LLVM library has no file name")?;
    // The linker's rpath points here, so this folder must outlive the binary: keep it next to
    // the cargo home the linker is installed into, one folder per LLVM build.
    let prefix = cargo_home()?.join("apimon-llvm").join(lib_name);
    let stamp = prefix.join("bpf-linker.stamp");
    let linker = cargo_home()?.join("bin").join("bpf-linker");
    let want_stamp = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{}\n", llvm.major);
    let linker_runs = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if linker_runs && fs::read_to_string(&stamp).is_ok_and(|s| s == want_stamp) {
        return Ok(());
    }

    let libdir = prefix.join("lib");
    fs::create_dir_all(&libdir).with_context(|| format!("creating {}", libdir.display()))?;
    for name in [lib_name.to_owned(), OsString::from("libLLVM.so")] {
        let link = libdir.join(&name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm.lib, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm.lib.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        llvm.lib.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{}", llvm.major),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!(
            "cargo install bpf-linker failed; it needs crates.io and the nightly's LLVM at {}",
            llvm.lib.display()
        );
    }
    fs::write(&stamp, want_stamp).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}
