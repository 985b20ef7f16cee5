//! Replays the saved fuzzing corpus (`fuzz/corpus/<driver>/`) through the drivers, so that
//! every input the fuzzer found interesting, and every crash it ever found, stays a test.

use std::path::Path;

fn replay(driver: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(driver);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails", path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "the {driver} corpus is empty");
}

#[test]
fn the_frames_corpus_passes() {
    replay("frames", chat_fuzz::frames::run);
}

#[test]
fn the_room_core_corpus_passes() {
    replay("room_core", chat_fuzz::room_core::run);
}
