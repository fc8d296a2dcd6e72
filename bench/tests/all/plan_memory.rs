//! `moe plan --recompute/--attention`: the training plan beside the default
//! one, with the byte totals of docs/runtime.md.

use crate::common::{moe, text};

#[test]
fn plan_prints_the_memory_modes_side_by_side() {
    let o = moe(&[
        "plan",
        "--profile",
        "tiny",
        "--batch",
        "8",
        "--seq",
        "512",
        "--mode",
        "training",
        "--recompute",
        "layers",
        "--attention",
        "lse",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("Training plan b8 s512: default vs recompute layers, LSE attention"),
        "{out}"
    );
    // Default and Memory::LOW totals (Workspace::bytes()).
    assert!(
        out.contains("164,332,360") && out.contains("60,953,012"),
        "{out}"
    );
    // Without an option there is no second table.
    let o = moe(&["plan", "--mode", "training"]);
    assert!(o.status.success());
    assert!(!text(&o.stdout).contains("Training plan"));
    // A bad value names the flag.
    let o = moe(&["plan", "--recompute", "some"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--recompute"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn plan_prints_the_prepacked_weights() {
    // Independent of the model code: Σ din·⌈dout/16⌉·16 floats per forward
    // weight (tiny: 2 layers × (qkv 64·96 + o 64·64 + 4 experts × (64·512 +
    // 256·64)) + lm 64·1008 = 478,208 floats).
    for (profile, bytes) in [("tiny", "1,912,832"), ("scale_256", "27,508,736")] {
        let o = moe(&["plan", "--profile", profile, "--mode", "inference"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let out = text(&o.stdout);
        let line = out
            .lines()
            .find(|l| l.contains("prepacked"))
            .unwrap_or_else(|| panic!("{profile}: no prepacked row in\n{out}"));
        assert!(line.contains(bytes), "{profile}: {line}");
    }
}
