//! Arbitrary bytes as `model.safetensors` next to a fixed valid `config.json`
//! (`moe_fuzz::CKPT_CONFIG`) in a temporary directory → `checkpoint::load`.
//!
//! Input: the file's bytes. Oracle: never a panic (nor an abort from a huge
//! allocation); an `Ok` model has the layout's parameter count, only finite
//! parameters, and runs a forward pass.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use moe_bench::checkpoint::{config_json, load, SaveOptions, CONFIG_FILE, MODEL_FILE};
use moe_core::Mode;
use moe_fuzz::CKPT_CONFIG;

fn dir() -> &'static Path {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(|| {
        // tmpfs when there is one: rewriting a file on ext4 (truncate + write)
        // triggers a writeback per execution and caps the rate at ~300/s.
        let mut b = tempfile::Builder::new();
        b.prefix("moe-fuzz-ckpt");
        let shm = Path::new("/dev/shm");
        let d = if shm.is_dir() {
            b.tempdir_in(shm)
        } else {
            b.tempdir()
        }
        .unwrap();
        let text = config_json(&CKPT_CONFIG, &SaveOptions::default());
        std::fs::write(d.path().join(CONFIG_FILE), text).unwrap();
        d
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let d = dir();
    std::fs::write(d.join(MODEL_FILE), data).unwrap();
    let Ok(model) = load(d) else {
        return;
    };
    assert_eq!(*model.config(), CKPT_CONFIG);
    assert_eq!(
        model.params().unwrap().len() as u64,
        CKPT_CONFIG.param_counts().total
    );
    assert!(model.params().unwrap().iter().all(|x| x.is_finite()));
    let mut ws = model.workspace(1, 4, Mode::Inference).unwrap();
    // Finite but huge weights may overflow the logits: that must be the typed error.
    match model.forward(&mut ws, &[0, 1, 2, 3], 1, 4) {
        Ok(logits) => assert!(logits.iter().all(|x| x.is_finite())),
        Err(moe_core::Error::NonFinite { what: "logits", .. }) => {}
        Err(e) => panic!("forward on a loaded model: {e:?}"),
    }
});
