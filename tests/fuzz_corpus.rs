#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! Replays every committed fuzz corpus file (`fuzz/corpus/TARGET/`) and
//! every past crash (`fuzz/regressions/TARGET/`) through the same checks the
//! fuzz targets run, on the stable toolchain, so CI guards them without a
//! fuzzer.

mod fuzzcheck;

use std::path::Path;

#[test]
fn every_corpus_file_and_past_crash_passes_its_check() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut total = 0;
    for target in fuzzcheck::TARGETS {
        let mut seen = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
                continue;
            };
            let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let data = std::fs::read(&f).unwrap();
                let outcome = std::panic::catch_unwind(|| fuzzcheck::run(target, &data));
                assert!(outcome.is_ok(), "{target}: {} fails its check", f.display());
                seen += 1;
            }
        }
        assert!(seen > 0, "no corpus for fuzz target {target}");
        total += seen;
    }
    println!("replayed {total} fuzz inputs");
}

/// The native seeds are made by the encoder; `WRITE_FUZZ_SEEDS=1` also
/// writes them into the corpus directories.
#[test]
fn native_seeds_pass_their_checks() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (i, (target, data)) in fuzzcheck::native_seeds().into_iter().enumerate() {
        fuzzcheck::run(target, &data);
        if std::env::var_os("WRITE_FUZZ_SEEDS").is_some() {
            std::fs::create_dir_all(fuzz.join(target)).unwrap();
            std::fs::write(fuzz.join(target).join(format!("seed-native-{i}")), &data).unwrap();
        }
    }
}
