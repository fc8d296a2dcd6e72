//! Arbitrary bytes as `optimizer.safetensors` next to a fixed valid training
//! checkpoint's `config.json` and `model.safetensors` (`moe_fuzz::CKPT_CONFIG`,
//! saved at step 1 with run id `RUN_ID`) → `checkpoint::load_training_run`,
//! then one training step. The seeds (`fuzz/seeds.py`) are a valid optimizer
//! file and mutations of its metadata (`step`, `run_id`, `format`) and moments.
//!
//! Input: the file's bytes. Oracle: never a panic (nor an abort from a huge
//! allocation); an `Ok` trainer has the model file's step (≤ 2^53) and run
//! id, finite moments with `v ≥ 0` of the layout's length, and its next
//! `train_step` returns `Ok` with finite losses or a typed error.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use moe_bench::checkpoint::{load_training_run, save_training_with, MAX_STEP, OPTIMIZER_FILE};
use moe_core::{MoETransformer, TrainConfig, Trainer};
use moe_fuzz::CKPT_CONFIG;

/// The run id of the fixed model file (and of the valid seed).
const RUN_ID: &str = "fuzz-run";

fn dir() -> &'static Path {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(|| {
        let mut b = tempfile::Builder::new();
        b.prefix("moe-fuzz-resume");
        let shm = Path::new("/dev/shm");
        let d = if shm.is_dir() {
            b.tempdir_in(shm)
        } else {
            b.tempdir()
        }
        .unwrap();
        let model = MoETransformer::new(&CKPT_CONFIG, 7).unwrap();
        let mut tr = Trainer::new(model, TrainConfig::default(), 1, 4).unwrap();
        tr.train_step(&[1, 2, 3, 4], &[2, 3, 4, 5], 1, 4).unwrap();
        save_training_with(d.path(), &tr, &Default::default(), Some(RUN_ID)).unwrap();
        d
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let d = dir();
    std::fs::write(d.join(OPTIMIZER_FILE), data).unwrap();
    let Ok(c) = load_training_run(d, TrainConfig::default(), 1, 4) else {
        return;
    };
    let mut tr = c.trainer;
    assert_eq!(c.run_id.as_deref(), Some(RUN_ID));
    let opt = tr.optimizer();
    assert_eq!(opt.step(), 1);
    assert!(opt.step() <= MAX_STEP);
    let n = CKPT_CONFIG.param_counts().total as usize;
    assert_eq!(opt.m().len(), n);
    assert_eq!(opt.v().len(), n);
    assert!(opt.m().iter().all(|x| x.is_finite()));
    assert!(opt.v().iter().all(|x| x.is_finite() && *x >= 0.0));
    match tr.train_step(&[1, 2, 3, 4], &[2, 3, 4, 5], 1, 4) {
        Ok(s) => assert!(s.loss.is_finite() && s.ce_loss.is_finite()),
        Err(_) => {} // typed: huge moments may push a weight to non-finite
    }
});
