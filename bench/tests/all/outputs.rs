//! Outputs never dirty the repository: the README's bench + report command
//! in a fresh `git clone` leaves `git status` empty; `--out -` is stdout;
//! an unwritable output fails before any work, naming the path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MOE: &str = env!("CARGO_BIN_EXE_moe");
/// The README's program prefix, replaced by the built binary.
const CARGO_RUN: &str = "cargo run --release -p moe-bench --";
/// Fast scenarios for the bench part of the README's command.
const FAST: &str = "kernel_softmax,mem_scale_seq_8";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs")
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The README's first command line (the `sh` block under "The two commands").
fn readme_bench_and_report() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = &readme[readme.find("## The two commands").expect("section")..];
    let block = &section[section.find("```sh\n").expect("a sh block") + 6..];
    block.lines().next().unwrap().to_owned()
}

#[test]
fn readme_commands_in_a_fresh_clone_leave_git_status_clean() {
    let root = repo_root();
    if Command::new("git").arg("--version").output().is_err()
        || !git(&root, &["rev-parse", "--git-dir"]).status.success()
    {
        eprintln!("no git, or not a git checkout: skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let clone = tmp.path().join("clone");
    ok(
        &git(
            tmp.path(),
            &[
                "clone",
                "--quiet",
                "--local",
                root.to_str().unwrap(),
                clone.to_str().unwrap(),
            ],
        ),
        "git clone",
    );
    let line = readme_bench_and_report();
    let parts: Vec<&str> = line.split(" && ").collect();
    assert_eq!(parts.len(), 2, "bench && report: {line}");
    let t0 = Instant::now();
    for (i, part) in parts.iter().enumerate() {
        let rest = part
            .strip_prefix(CARGO_RUN)
            .unwrap_or_else(|| panic!("README command starts with `{CARGO_RUN}`: {part}"));
        let mut args: Vec<&str> = rest.split_whitespace().collect();
        if i == 0 {
            assert_eq!(args[0], "bench", "{line}");
            args.extend(["--trials", "2", "--warmup", "1", "--only", FAST]);
        } else {
            assert_eq!(args[0], "report", "{line}");
        }
        let o = Command::new(MOE)
            .args(&args)
            .current_dir(&clone)
            .output()
            .unwrap();
        ok(&o, part);
    }
    assert!(t0.elapsed() < Duration::from_secs(60));
    let status = git(&clone, &["status", "--porcelain", "--untracked-files=all"]);
    ok(&status, "git status");
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "",
        "the README's commands changed the clone"
    );
    // The run saw a clean tree, and the report exists where the README says.
    let json = clone.join("target/moe-bench/rust.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(v["metadata"]["git_dirty"], false);
    assert!(clone
        .join("target/moe-bench/report/bench-results.md")
        .is_file());
    assert!(clone
        .join("target/moe-bench/report/plots/kernel_gflops.svg")
        .is_file());
}

#[test]
fn bench_without_out_writes_under_target_and_says_where() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(MOE)
        .args([
            "bench",
            "--trials",
            "1",
            "--warmup",
            "0",
            "--only",
            "kernel_softmax",
        ])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    ok(&o, "moe bench");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let wrote = stdout
        .lines()
        .find_map(|l| l.split(", wrote ").nth(1))
        .unwrap_or_else(|| panic!("no `wrote PATH`: {stdout}"));
    assert!(
        wrote.starts_with("target/moe-bench/") && wrote.ends_with("/rust.json"),
        "{wrote}"
    );
    assert!(tmp.path().join(wrote).is_file());
}

#[test]
fn out_dash_is_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(MOE)
        .args([
            "bench",
            "--trials",
            "1",
            "--warmup",
            "0",
            "--only",
            "kernel_softmax",
            "--out",
            "-",
        ])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    ok(&o, "moe bench --out -");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is the JSON");
    assert_eq!(v["scenarios"][0]["id"], "kernel_softmax");
    assert!(!tmp.path().join("-").exists(), "no file named `-`");
    assert!(!tmp.path().join("target").exists());
}

#[test]
fn unwritable_outputs_fail_before_any_work_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    // A regular file where the output directory should be.
    let blocker = tmp.path().join("blocker");
    std::fs::write(&blocker, "x").unwrap();
    let out = blocker.join("rust.json");
    let t0 = Instant::now();
    // The whole benchmark would take minutes.
    let o = Command::new(MOE)
        .args(["bench", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("blocker"), "{err}");
    // An output that is a directory.
    let o = Command::new(MOE)
        .args(["bench", "--out", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(t0.elapsed() < Duration::from_secs(10));
    // moe report: its outputs are checked before its inputs are read.
    let o = Command::new(MOE)
        .args([
            "report",
            "no-such-input.json",
            "--md",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("blocker") && !err.contains("no-such-input"),
        "{err}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["blocker"], "no temporaries left");
}
