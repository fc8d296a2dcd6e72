//! Regression tests of issue 12 (bench side): one test per defect, each
//! failing on the code before its fix (said per test).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Stdio;

use moe_bench::checkpoint::{
    self, load, load_training, parse_config, save, save_training, CheckpointErrorKind, CONFIG_FILE,
    MODEL_FILE, OPTIMIZER_FILE,
};
use moe_core::{Config, MoETransformer, TrainConfig, Trainer};
use serde_json::Value;
use tempfile::TempDir;

use crate::common::{corpus, edit_metadata, moe, text, train_cmd};

fn run_train(data: &Path, out: &Path, steps: u64, extra: &[&str]) -> std::process::Output {
    train_cmd(data, out, steps, extra).output().unwrap()
}

fn ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "moe failed:\n{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// Defect 2: a training checkpoint is a generation directory behind one
/// symlink, never three files renamed one by one in `OUT/checkpoint`. Before
/// the fix `OUT/checkpoint` was a plain directory.
#[test]
fn train_checkpoint_is_one_generation_behind_one_pointer() {
    let tmp = TempDir::new().unwrap();
    let data = corpus(tmp.path());
    let out = tmp.path().join("out");
    ok(&run_train(&data, &out, 3, &[]));
    let ptr = out.join("checkpoint");
    assert!(fs::symlink_metadata(&ptr).unwrap().file_type().is_symlink());
    let target = fs::read_link(&ptr).unwrap();
    let name = target.to_str().unwrap();
    assert!(name.starts_with("checkpoint.gen-"), "{name}");
    let gens: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint.gen-"))
        .collect();
    assert_eq!(gens, vec![name.to_owned()], "older generations are pruned");
    // Every reader of `OUT/checkpoint` and `OUT` keeps working.
    load(&ptr).unwrap();
    let o = moe(&[
        "generate",
        "--checkpoint",
        out.to_str().unwrap(),
        "--prompt",
        "the",
        "--max-len",
        "8",
    ]);
    ok(&o);
}

/// Defect 2, the layout users already have: an `OUT/checkpoint` *directory*
/// (written before generations) resumes, and is moved into a generation.
/// Before the fix there was nothing to move (the test asserts the new layout
/// after the resume).
#[test]
fn resume_from_the_layout_before_generations() {
    let tmp = TempDir::new().unwrap();
    let data = corpus(tmp.path());
    let out = tmp.path().join("out");
    ok(&run_train(&data, &out, 2, &[]));
    // Make it the old layout: a real `checkpoint/` directory.
    let ptr = out.join("checkpoint");
    let gen = out.join(fs::read_link(&ptr).unwrap());
    fs::remove_file(&ptr).unwrap();
    fs::rename(&gen, &ptr).unwrap();
    let o = run_train(&data, &out, 4, &["--resume", out.to_str().unwrap()]);
    ok(&o);
    assert!(text(&o.stdout).contains("resumed at step 2"));
    assert!(fs::symlink_metadata(&ptr).unwrap().file_type().is_symlink());
    let tc = TrainConfig::default();
    let tr = load_training(&ptr, tc, 2, 16).unwrap();
    assert_eq!(tr.optimizer().step(), 4);
}

/// Defect 3: model and optimizer files of two different runs (same step) are
/// refused by `--resume`. Before the fix they were accepted (no run id).
#[test]
fn resume_refuses_model_and_optimizer_of_different_runs() {
    let tmp = TempDir::new().unwrap();
    let data = corpus(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&run_train(&data, &a, 2, &["--seed", "1"]));
    ok(&run_train(&data, &b, 2, &["--seed", "2"]));
    fs::copy(
        b.join("checkpoint").join(OPTIMIZER_FILE),
        a.join("checkpoint").join(OPTIMIZER_FILE),
    )
    .unwrap();
    let o = run_train(
        &data,
        &a,
        3,
        &["--seed", "1", "--resume", a.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("--resume") && err.contains("two different training runs"),
        "{err}"
    );
    // Through the library: the typed error.
    let e = load_training(a.join("checkpoint"), TrainConfig::default(), 2, 16).unwrap_err();
    assert!(
        matches!(e.kind, CheckpointErrorKind::RunMismatch { .. }),
        "{e:?}"
    );
}

/// Defect 3: a second trainer on one `--out` fails at once with the lock
/// error naming the directory. Before the fix both ran (and corrupted each
/// other's files).
#[test]
fn second_trainer_on_one_out_is_locked_out() {
    let tmp = TempDir::new().unwrap();
    let data = corpus(tmp.path());
    let out = tmp.path().join("out");
    let mut first = train_cmd(&data, &out, 400, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first to hold the lock (it writes its pid into the file).
    let lock = out.join(".moe-train.lock");
    let t0 = std::time::Instant::now();
    while fs::read_to_string(&lock).map_or(true, |s| s.trim().is_empty()) {
        assert!(t0.elapsed().as_secs() < 20, "first trainer never locked");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let o = run_train(&data, &out, 5, &[]);
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("--out") && err.contains("in use by another `moe train`"),
        "{err}"
    );
    assert!(err.contains(out.to_str().unwrap()), "{err}");
}

/// Defect 5: a FIFO as `config.json` is refused at once (before the fix,
/// opening it blocked forever: the child is killed after 2 s and the test
/// fails).
#[test]
fn fifo_config_is_refused_at_once() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("ck");
    save(&dir, &MoETransformer::new(&Config::tiny(), 1).unwrap()).unwrap();
    fs::remove_file(dir.join(CONFIG_FILE)).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(dir.join(CONFIG_FILE))
        .status()
        .unwrap()
        .success());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(["generate", "--checkpoint"])
        .arg(&dir)
        .args(["--prompt", "a"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed().as_secs_f64() > 2.0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("moe generate still blocked on a FIFO config.json after 2 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("is a FIFO, not a regular file"), "{err}");
}

/// Defect 6: `--eval-windows` beyond the held-out part is a typed error
/// naming the flag (before the fix: SIGABRT, "memory allocation of
/// 800000000000 bytes failed"); so is a `--batch` larger than memory (before
/// the fix: moe-core's `AllocationFailed`, naming no flag).
#[test]
fn size_flags_are_bounded_by_data_and_memory() {
    let tmp = TempDir::new().unwrap();
    let data = corpus(tmp.path());
    let out = tmp.path().join("out");
    let train = |flag: &str, value: &str| {
        let mut args = vec!["train", "--data", data.to_str().unwrap()];
        args.extend([
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "2",
            "--seq",
            "16",
        ]);
        args.extend([flag, value]);
        moe(&args)
    };
    let o = train("--eval-windows", "100000000000");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("--eval-windows: must be <= "),
        "{}",
        text(&o.stderr)
    );
    let o = train("--batch", "1000000000");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("--batch: allocation of") && err.contains("failed"),
        "{err}"
    );
    let o = moe(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "9007199254740993",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("--steps: must be <= 9007199254740992"),
        "{}",
        text(&o.stderr)
    );
    let o = moe(&["plan", "--batch", "1000000000000"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("--batch/--seq"),
        "{}",
        text(&o.stderr)
    );
}

/// Defect 7 (bench side): an absurd AdamW step in the metadata is refused at
/// load, naming the file and the field. Before the fix `2^53 + 1` (and up
/// to `u64::MAX`) loaded.
#[test]
fn absurd_adamw_step_is_refused_at_load() {
    let tmp = TempDir::new().unwrap();
    let tc = TrainConfig::default();
    let tr = Trainer::new(MoETransformer::new(&Config::tiny(), 3).unwrap(), tc, 1, 4).unwrap();
    save_training(tmp.path(), &tr, &BTreeMap::new()).unwrap();
    for step in [(1u64 << 53) + 1, u64::MAX] {
        for f in [MODEL_FILE, OPTIMIZER_FILE] {
            edit_metadata(&tmp.path().join(f), |m| {
                m.insert("step".into(), Value::String(step.to_string()));
            });
        }
        let e = load_training(tmp.path(), tc, 1, 4).unwrap_err();
        assert!(
            matches!(&e.kind, CheckpointErrorKind::Metadata { key, .. } if key == "step"),
            "{e:?}"
        );
        assert!(e.to_string().contains(MODEL_FILE), "{e}");
        assert!(e.to_string().contains("2^53"), "{e}");
    }
    // 2^53 itself is accepted.
    for f in [MODEL_FILE, OPTIMIZER_FILE] {
        edit_metadata(&tmp.path().join(f), |m| {
            m.insert("step".into(), Value::String((1u64 << 53).to_string()));
        });
    }
    assert_eq!(
        load_training(tmp.path(), tc, 1, 4)
            .unwrap()
            .optimizer()
            .step(),
        1 << 53
    );
}

/// Defect 11: contradictions and unimplemented features in `config.json`
/// are errors; what save refuses, load refuses. Before the fix each of these
/// loaded.
#[test]
fn config_contradictions_are_refused() {
    let base: Value = serde_json::from_str(&checkpoint::config_json(
        &Config::tiny(),
        &Default::default(),
    ))
    .unwrap();
    let cases: [(&str, Value, &str); 6] = [
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "default", "rope_theta": 500000.0}),
            "field `rope_parameters.rope_theta` must be equal to the top-level rope_theta",
        ),
        (
            "router_aux_loss_coef",
            serde_json::json!(-1),
            "router_aux_loss_coef",
        ),
        (
            "router_aux_loss_coef",
            serde_json::json!(-0.5),
            "finite and >= 0",
        ),
        (
            "router_jitter_noise",
            serde_json::json!(0.1),
            "training-time router jitter noise is not implemented",
        ),
        (
            "attention_dropout",
            serde_json::json!(0.1),
            "attention dropout is not implemented",
        ),
        (
            "attention_dropout",
            serde_json::json!("x"),
            "field `attention_dropout` must be a finite number",
        ),
    ];
    for (field, value, want) in cases {
        let mut v = base.clone();
        v[field] = value.clone();
        let e = parse_config(&v.to_string(), Path::new("config.json")).unwrap_err();
        assert!(
            e.to_string().contains(want),
            "{field} = {value}: {e} (wanted {want:?})"
        );
    }
    // Agreeing values and explicit zeros load.
    let mut v = base.clone();
    v["rope_parameters"] =
        serde_json::json!({"rope_type": "default", "rope_theta": v["rope_theta"]});
    v["router_jitter_noise"] = serde_json::json!(0.0);
    v["attention_dropout"] = serde_json::json!(0);
    parse_config(&v.to_string(), Path::new("config.json")).unwrap();
}

/// Defect 12: count flags of 0 are refused by the parser (before the fix
/// `dispatch-compare --cold-runs 0 --warm-rounds 0` exited 0 with a table of
/// NaN).
#[test]
fn zero_counts_are_refused() {
    let tmp = TempDir::new().unwrap();
    let stress_out = tmp.path().join("stability.md");
    let cases: [&[&str]; 5] = [
        &["dispatch-compare", "--cold-runs", "0", "--warm-rounds", "1"],
        &["dispatch-compare", "--cold-runs", "1", "--warm-rounds", "0"],
        &["plan", "--batch", "0"],
        &["plan", "--seq", "0"],
        &[
            "stress",
            "--steps",
            "0",
            "--out",
            stress_out.to_str().unwrap(),
        ],
    ];
    for args in cases {
        let o = moe(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            text(&o.stderr).contains("must be >= 1, got 0"),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
    assert!(!stress_out.exists());
}

/// Defect 13: stale temporaries (dead pid) and incomplete generations are
/// removed when `moe train` opens its output directory; a live process's
/// temporary stays. Before the fix they stayed forever.
#[test]
fn stale_temporaries_are_removed_when_the_output_is_opened() {
    let tmp = TempDir::new().unwrap();
    let data = corpus(tmp.path());
    let out = tmp.path().join("out");
    ok(&run_train(&data, &out, 2, &[]));
    // A pid that is certainly dead: a reaped child's.
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    let live = std::process::id();
    let gen = fs::canonicalize(out.join("checkpoint")).unwrap();
    let stale = [
        out.join(format!(".loss.csv.tmp.{dead}.3")),
        out.join(format!(".checkpoint.tmp.{dead}.0")),
        gen.join(format!(".model.safetensors.tmp.{dead}.7")),
    ];
    for p in &stale {
        fs::write(p, vec![0u8; 1000]).unwrap();
    }
    let alive = out.join(format!(".loss.csv.tmp.{live}.1"));
    fs::write(&alive, b"x").unwrap();
    let incomplete = out.join("checkpoint.gen-999999");
    fs::create_dir(&incomplete).unwrap();
    fs::write(incomplete.join(OPTIMIZER_FILE), b"partial").unwrap();

    ok(&run_train(
        &data,
        &out,
        3,
        &["--resume", out.to_str().unwrap()],
    ));
    for p in &stale {
        assert!(!p.exists(), "{} was not removed", p.display());
    }
    assert!(
        !incomplete.exists(),
        "incomplete generation was not removed"
    );
    assert!(alive.exists(), "a live process's temporary was removed");
}

/// `--out` is checked (created, writable) before any work: with both a bad
/// `--out` and a missing `--data`, the `--out` error comes first. Before the
/// fix `--data` was read first.
#[test]
fn out_is_checked_before_any_work() {
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let out = file.join("out");
    let o = run_train(&tmp.path().join("missing.txt"), &out, 2, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("--out") && err.contains(out.to_str().unwrap()),
        "{err}"
    );
}

/// A special file as an output (`tokenizer train --out FIFO`): refused with
/// an error naming it, and the FIFO is still a FIFO. Before, the atomic
/// rename replaced it (as root, `--out /dev/full` turned the device into a
/// regular file) and the command reported success.
#[test]
fn special_file_as_output_is_refused_and_left_alone() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = TempDir::new().unwrap();
    let data = tmp.path().join("d.txt");
    fs::write(&data, "hello world, hello moe. ".repeat(40)).unwrap();
    let fifo = tmp.path().join("out.json");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(["tokenizer", "train", "--vocab-size", "300", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&fifo)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "wrote over a FIFO: {err}");
    assert!(err.contains("out.json") && err.contains("FIFO"), "{err}");
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}
