//! Replays the fuzz targets' seed corpora (`engine/fuzz/corpus/TARGET/*`) through the same
//! checks the fuzz targets run (`shardgate_engine::fuzz_checks`, the engine's `fuzzing`
//! feature), so a plain `cargo test --workspace` exercises every target's invariants on every
//! seed, crash reproducers included, without cargo-fuzz or a nightly toolchain.

use std::path::{Path, PathBuf};

use shardgate_engine::config::Config;
use shardgate_engine::control::message;
use shardgate_engine::fuzz_checks::{self, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/fuzz")
}

/// The files of a target's corpus, sorted.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_check_a_binary_and_a_seed_corpus() {
    let manifest =
        std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("engine/fuzz/Cargo.toml");
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = ")))
        .map(|n| n.trim_matches('"'))
        .collect();
    bins.sort_unstable();
    let mut checks: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    checks.sort_unstable();
    assert_eq!(bins, checks, "fuzz binaries and fuzz_checks::TARGETS");

    let mut dirs: Vec<String> = std::fs::read_dir(fuzz_dir().join("corpus"))
        .expect("engine/fuzz/corpus")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dirs.sort_unstable();
    assert_eq!(dirs, checks, "corpus directories and fuzz_checks::TARGETS");

    for (name, _) in TARGETS {
        let files = corpus(name);
        assert!(!files.is_empty(), "{name}: no seeds");
        let bytes: u64 = files
            .iter()
            .map(|f| f.metadata().expect("metadata").len())
            .sum();
        assert!(bytes < 64 * 1024, "{name}: seed corpus of {bytes} bytes");
    }
}

#[test]
fn seed_corpora_pass_their_checks() {
    for (name, check) in TARGETS {
        for file in corpus(name) {
            let data = std::fs::read(&file).expect("a seed file");
            let result = std::panic::catch_unwind(|| check(&data));
            assert!(result.is_ok(), "{name}: {} fails its check", file.display());
        }
    }
}

#[test]
fn empty_input_passes_every_check() {
    for (_, check) in TARGETS {
        check(b"");
    }
}

/// The seeds of `ring_frames` (rings `publish` wrote) and `config_message` (what
/// `message::encode` makes of each `config_toml` seed that validates) are generated; rewrite them
/// with `cargo test -p shardgate-tests --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "writes seed files"]
fn write_generated_seeds() {
    let ring_dir = fuzz_dir().join("corpus/ring_frames");
    std::fs::create_dir_all(&ring_dir).expect("mkdir");
    let config = b"SGC2\0\0\0\0\x05\0\0\0a=1\n\n\0\0\0\0";
    let seeds: [(&str, Vec<u8>); 3] = [
        (
            "one-message",
            fuzz_checks::ring_frames_input(&[b"hello, ring"], 0),
        ),
        (
            "config-message-behind",
            fuzz_checks::ring_frames_input(&[&config[..], &[7u8; 100][..]], 0),
        ),
        (
            "lapped-reader",
            fuzz_checks::ring_frames_input(&[&[1u8; 140][..], b"second", b"third", b"fourth"], 0),
        ),
    ];
    for (name, bytes) in seeds {
        std::fs::write(ring_dir.join(name), bytes).expect("write a seed");
    }

    let message_dir = fuzz_dir().join("corpus/config_message");
    std::fs::create_dir_all(&message_dir).expect("mkdir");
    for file in corpus("config_toml") {
        let text = std::fs::read_to_string(&file).expect("a config seed");
        let Ok(config) = Config::from_toml_without_secrets(&text) else {
            continue;
        };
        let body = message::encode(&text, &config).expect("encodes");
        let name = file.file_name().expect("a file name");
        std::fs::write(message_dir.join(name), body).expect("write a seed");
    }
}
