//! Every committed fuzz input, replayed through the function its target calls: the seeds
//! (`fuzz/seeds/<target>`, with the inputs of past finds as `found-*`) and the minimized
//! corpus `fuzz/campaign` leaves in `fuzz/corpus/<target>`. A crash a campaign found stays
//! a failing test here until it is fixed.

use std::path::Path;

use weft::testkit::fuzz::TARGETS;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_committed_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    for (name, check) in TARGETS {
        let mut files = inputs(&root.join("seeds").join(name));
        assert!(!files.is_empty(), "fuzz/seeds/{name} has no seeds");
        files.extend(inputs(&root.join("corpus").join(name)));
        for f in files {
            let data = std::fs::read(&f).expect("read a fuzz input");
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failures.push(f.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fuzz inputs that fail their target: {failures:#?}"
    );
}

#[test]
fn every_fuzz_target_is_listed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut on_disk: Vec<String> = inputs(&dir)
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_string))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "weft::testkit::fuzz::TARGETS and fuzz/fuzz_targets differ"
    );
}
