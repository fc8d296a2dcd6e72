//! Fault injection, "non-finite weights everywhere" (issue 12), and the
//! generator of `docs/nonfinite-weights.md`.
//!
//! For every parameter tensor kind of CONTRACT §2 (layer 0; for the expert
//! matrices, every expert of layer 0) and each of NaN, +∞ and `f32::MAX`
//! written through `params_mut()` into one element, the four entry points
//! `forward`, `generate` (greedy, and temperature sampling) and
//! `loss_and_grad` are run on `Config::tiny()`. Asserted for every cell:
//! * an error is always `Error::NonFinite`;
//! * `Ok` never carries a non-finite value (logits, losses, every gradient;
//!   generated ids are `< vocab`);
//! * for NaN and ±∞ an `Ok` is also **bit-identical** to the clean model's
//!   result (for `generate`: the same tokens) — such a value either propagates
//!   (and is refused) or cannot reach the output (e.g. an embedding row of a
//!   token that does not occur), never half-way. `f32::MAX` is a finite
//!   weight, so a changed but finite result is correct.
//!
//! Pre-fix (issue 12, defect 1) this test fails: a NaN in `q_proj`/`k_proj`
//! made whole attention score rows NaN, the softmax took its "fully masked"
//! branch and `forward`/`generate` returned finite, changed logits, and
//! `loss_and_grad` returned `Ok` with NaN gradients.
//!
//! `docs/nonfinite-weights.md` is checked against what this test observes;
//! regenerate with `MOE_WRITE_NONFINITE_MD=1 cargo test --release -p moe-tests --test all -- nonfinite_weights`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use moe_core::{
    generate, ChaCha8Rng, Config, Error, MoETransformer, Mode, SamplingStrategy, SeedableRng,
};

const DOC: &str = "../docs/nonfinite-weights.md";
const WRITE_ENV: &str = "MOE_WRITE_NONFINITE_MD";
const SEED: u64 = 42;
const B: usize = 2;
const T: usize = 4;
const PROMPT: usize = 3;
const MAX_LEN: usize = 6;

/// What one entry point returned.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// `Err(Error::NonFinite { what, .. })`.
    Refused(&'static str),
    /// `Ok`, bit-identical to the clean model.
    Same,
    /// `Ok`, finite, different from the clean model.
    Changed,
}

impl Outcome {
    fn cell(&self) -> String {
        match self {
            Outcome::Refused(what) => format!("`NonFinite` ({what})"),
            Outcome::Same => "ok, unchanged".to_owned(),
            Outcome::Changed => "ok, finite (changed)".to_owned(),
        }
    }
}

/// Everything the four entry points returned for one model.
#[derive(Debug, Clone, PartialEq)]
struct Results {
    forward: Result<Vec<u32>, Error>,
    greedy: Result<Vec<u32>, Error>,
    sample: Result<Vec<u32>, Error>,
    /// loss bits, then every gradient's bits.
    grads: Result<Vec<u32>, Error>,
}

fn tokens(n: usize, v: usize) -> Vec<u32> {
    (0..n).map(|i| ((37 * i + 11) % v) as u32).collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn finite(x: &[f32]) -> bool {
    x.iter().all(|v| v.is_finite())
}

/// Runs the four entry points; panics on `Ok` with a non-finite value.
fn run(model: &MoETransformer) -> Results {
    let cfg = *model.config();
    let v = cfg.vocab_size;
    let toks = tokens(B * T + 1, v);
    let (input, targets) = (&toks[..B * T], &toks[1..]);
    let mut ws = model.workspace(B, T, Mode::Inference).unwrap();
    let forward = model.forward(&mut ws, input, B, T).map(|l| {
        assert!(finite(l), "forward returned Ok with non-finite logits");
        bits(l)
    });
    let prompt = &toks[..PROMPT];
    let gen = |s: SamplingStrategy| {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        generate(model, prompt, MAX_LEN, s, &mut rng).inspect(|out| {
            assert_eq!(out.len(), MAX_LEN);
            assert!(
                out.iter().all(|&t| (t as usize) < v),
                "generated id >= vocab"
            );
        })
    };
    let greedy = gen(SamplingStrategy::Greedy);
    let sample = gen(SamplingStrategy::Temperature(0.8));
    let mut tws = model.workspace(B, T, Mode::Training).unwrap();
    let mut g = vec![0.0f32; model.layout().total];
    let mut logits = vec![0.0f32; B * T * v];
    let grads = model
        .loss_and_grad(
            &mut tws,
            &mut g,
            input,
            targets,
            B,
            T,
            0.01,
            Some(&mut logits),
        )
        .map(|l| {
            assert!(
                l.loss.is_finite() && l.ce.is_finite() && l.aux.is_finite(),
                "loss_and_grad returned Ok with a non-finite loss {l:?}"
            );
            assert!(
                finite(&g),
                "loss_and_grad returned Ok with non-finite gradients"
            );
            assert!(
                finite(&logits),
                "loss_and_grad returned Ok with non-finite logits"
            );
            let mut out = bits(&[l.loss, l.ce, l.aux]);
            out.extend(bits(&g));
            out
        });
    Results {
        forward,
        greedy,
        sample,
        grads,
    }
}

/// One injection site: a label and the flat index written.
fn sites(model: &MoETransformer) -> Vec<(String, usize)> {
    let cfg = model.config();
    let lay = model.layout();
    let (c, h, kv, d, f) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    );
    let l0 = &lay.layers[0];
    let first_token = tokens(1, cfg.vocab_size)[0] as usize;
    let mut s = vec![
        (
            format!("embedding, row of token {first_token} (in every input)"),
            lay.embed.start + first_token * c,
        ),
        (
            format!(
                "embedding, row of token {} (in no input)",
                cfg.vocab_size - 1
            ),
            lay.embed.start + (cfg.vocab_size - 1) * c,
        ),
        ("q_proj".to_owned(), l0.wqkv.start),
        ("k_proj".to_owned(), l0.wqkv.start + h * d * c),
        ("v_proj".to_owned(), l0.wqkv.start + (h + kv) * d * c),
        ("o_proj".to_owned(), l0.wo.start),
        ("input_layernorm".to_owned(), l0.attn_norm.start),
        ("post_attention_layernorm".to_owned(), l0.mlp_norm.start),
        ("router (gate)".to_owned(), l0.router.start),
    ];
    for j in 0..cfg.num_local_experts {
        let r = lay.expert(0, j);
        s.push((format!("expert {j} w1"), r.w13.start));
        s.push((format!("expert {j} w3"), r.w13.start + f * c));
        s.push((format!("expert {j} w2"), r.w2.start));
    }
    s.push(("final norm".to_owned(), lay.final_norm.start));
    s.push(("lm_head".to_owned(), lay.lm_head.start));
    s
}

/// Classifies `got` against the clean `want`; panics on an error that is not
/// `NonFinite`, and (for NaN/Inf) on a changed `Ok`.
fn classify(
    case: &str,
    entry: &str,
    got: &Result<Vec<u32>, Error>,
    want: &Result<Vec<u32>, Error>,
    must_match: bool,
) -> Outcome {
    let want = want.as_ref().expect("clean model fails");
    match got {
        Err(Error::NonFinite { what, .. }) => Outcome::Refused(what),
        Err(e) => panic!("{case}: {entry} returned {e:?}, not NonFinite"),
        Ok(x) if x == want => Outcome::Same,
        Ok(_) => {
            assert!(
                !must_match,
                "{case}: {entry} returned Ok with a changed result from a non-finite weight"
            );
            Outcome::Changed
        }
    }
}

/// Runs the whole table; returns its rows `(site, value, [4 outcomes])`.
fn table() -> Vec<(String, &'static str, [Outcome; 4])> {
    let clean = MoETransformer::new(&Config::tiny(), SEED).unwrap();
    let base = run(&clean);
    let mut rows = Vec::new();
    for (site, at) in sites(&clean) {
        for (name, value) in [
            ("NaN", f32::NAN),
            ("+Inf", f32::INFINITY),
            ("f32::MAX", f32::MAX),
        ] {
            let mut m = clean.clone();
            m.params_mut().unwrap()[at] = value;
            let got = run(&m);
            let case = format!("{site} = {name}");
            let strict = !value.is_finite();
            let o = [
                classify(&case, "forward", &got.forward, &base.forward, strict),
                classify(&case, "generate greedy", &got.greedy, &base.greedy, strict),
                classify(&case, "generate T=0.8", &got.sample, &base.sample, strict),
                classify(&case, "loss_and_grad", &got.grads, &base.grads, strict),
            ];
            rows.push((site.clone(), name, o));
        }
    }
    rows
}

fn render(rows: &[(String, &'static str, [Outcome; 4])]) -> String {
    let mut s = String::new();
    s.push_str("# Non-finite weights: what each entry point returns\n\n");
    s.push_str(
        "Generated by `MOE_WRITE_NONFINITE_MD=1 cargo test --release -p moe-tests --test all -- \
         nonfinite_weights` (`tests/tests/all/nonfinite_weights.rs`) — do not edit by hand. The \
         same test, run without the variable, executes every case below, asserts it, and fails \
         if this file is out of date. Linked from `docs/stability.md`.\n\n",
    );
    s.push_str(
        "Model: `Config::tiny()`, seed 42. One element is set through `params_mut()`: \
         element `[0, 0]` of the tensor (layer 0; for the expert matrices, of every expert \
         of layer 0; for the embedding, column 0 of the named row). Entry points: `forward` over `[2, 4]` tokens `(37·i + 11) mod v`; \
         `generate` from a 3-token prompt to 6 tokens, greedy and `Temperature(0.8)` (seeded); \
         `loss_and_grad` over the same `[2, 4]` with next-token targets, aux alpha 0.01.\n\n",
    );
    s.push_str(
        "Asserted for every cell: an error is `Error::NonFinite` (its `what` is shown); `Ok` \
         never holds a NaN/Inf (logits, losses, every gradient); for NaN and +Inf an `Ok` is \
         bit-identical to the clean model (*ok, unchanged*; for `generate`, the same tokens): \
         the value cannot reach the output, as for the embedding row of an absent token. \
         With these inputs every expert of layer 0 receives a token in `forward` and \
         `loss_and_grad`, so no NaN/Inf expert weight is in that class there. `f32::MAX` is a \
         finite weight: *ok, finite (changed)* is then the correct result of that weight \
         (for `generate`: other tokens).\n\n",
    );
    let total = rows.len() * 4;
    let refused = rows
        .iter()
        .flat_map(|r| r.2.iter())
        .filter(|o| matches!(o, Outcome::Refused(_)))
        .count();
    let same = rows
        .iter()
        .flat_map(|r| r.2.iter())
        .filter(|o| **o == Outcome::Same)
        .count();
    let _ = writeln!(
        s,
        "{} injections × 4 entry points = {total} cells: {refused} refused with `NonFinite`, \
         {same} ok and unchanged, {} ok, finite and changed (all `f32::MAX`); 0 returned a \
         non-finite value.\n",
        rows.len(),
        total - refused - same
    );
    s.push_str("| tensor (layer 0) | value | `forward` | `generate` greedy | `generate` T = 0.8 | `loss_and_grad` |\n");
    s.push_str("|---|---|---|---|---|---|\n");
    for (site, value, o) in rows {
        let _ = writeln!(
            s,
            "| {site} | {value} | {} | {} | {} | {} |",
            o[0].cell(),
            o[1].cell(),
            o[2].cell(),
            o[3].cell()
        );
    }
    s
}

/// The fault-injection table: every cell asserted (see the module doc), and
/// `docs/nonfinite-weights.md` kept equal to what it observes.
#[test]
fn nonfinite_weights_everywhere() {
    let text = render(&table());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    if std::env::var_os(WRITE_ENV).is_some() {
        fs::write(&path, &text).unwrap();
        return;
    }
    let on_disk = fs::read_to_string(&path).unwrap_or_default();
    if on_disk != text {
        let first = on_disk
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "docs/nonfinite-weights.md is out of date (first difference at line {}: {:?}); \
             regenerate with `{WRITE_ENV}=1 cargo test --release -p moe-tests --test all -- nonfinite_weights`",
            first + 1,
            text.lines().nth(first)
        );
    }
}
