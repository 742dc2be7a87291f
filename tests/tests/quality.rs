//! Detection quality: `apimon analyze` on seeded, labelled synthetic HAR corpora reaches the
//! precision and recall targets, and finds nothing in PII-free traffic. No root needed.

use std::{path::Path, process::Command};

use tests::{agent_bin, fixture, output};

/// Writes a corpus of `entries` HAR entries (and its labels) with `seed` into `dir`.
fn corpus(dir: &Path, name: &str, seed: u32, entries: u32, clean: bool) {
    let mut cmd = Command::new("python3");
    cmd.arg(fixture("corpus.py"))
        .args([
            "--seed",
            &seed.to_string(),
            "--entries",
            &entries.to_string(),
        ])
        .arg("--har")
        .arg(dir.join(format!("{name}.har")))
        .arg("--labels")
        .arg(dir.join(format!("{name}.labels")));
    if clean {
        cmd.arg("--clean");
    }
    output(&mut cmd);
}

fn analyze(dir: &Path, name: &str) {
    let findings = output(
        Command::new(agent_bin())
            .arg("analyze")
            .arg(dir.join(format!("{name}.har"))),
    );
    std::fs::write(dir.join(format!("{name}.findings")), findings).expect("write findings");
}

#[test]
fn labelled_corpora_reach_the_precision_and_recall_targets() {
    let dir = std::env::temp_dir().join(format!("apimon-quality-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // A seed the detector was never tuned on, and a PII-free corpus for the false-positive rate.
    corpus(&dir, "labelled", 20_261_123, 3000, false);
    corpus(&dir, "clean", 4242, 3000, true);
    analyze(&dir, "labelled");
    analyze(&dir, "clean");
    let clean_bytes = std::fs::metadata(dir.join("clean.har"))
        .expect("clean corpus")
        .len();
    let table = output(
        Command::new("python3")
            .arg(fixture("evaluate.py"))
            .arg(dir.join("labelled.labels"))
            .arg(dir.join("labelled.findings"))
            .arg("--clean-findings")
            .arg(dir.join("clean.findings"))
            .args(["--clean-bytes", &clean_bytes.to_string()]),
    );
    let table = String::from_utf8_lossy(&table);
    println!("{table}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!table.contains("targets missed"), "{table}");
}
