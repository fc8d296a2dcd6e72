//! `moe stress` — numerical stability under extreme but valid inputs.
//!
//! Each [`Case`] takes the tiny model (`Config::tiny()`, seed 42 by default),
//! optionally rescales some of its parameters, then
//!
//! 1. runs one inference forward over `[b, t]` tokens, and
//! 2. runs `steps` training steps (`Trainer::train_step`) with the case's
//!    [`TrainConfig`], after each successful step an inference forward at the
//!    new weights (to track `max |logit|`).
//!
//! What is recorded: every value the library *returned* (logits, the
//! [`moe_core::StepStats`], the parameters after a successful step) is
//! scanned for NaN/Inf — there must be none; the largest `|logit|` seen; the
//! loss trajectory and whether it diverged; the first error and whether it is
//! the typed [`Error::NonFinite`]; and, after a failed step, whether the
//! weights were left bit-for-bit untouched. A case's [`Verdict`] is
//! `Finite`, `TypedNonFinite` (the library refused with `NonFinite`, weights
//! untouched) or a failure: `Silent` (a NaN/Inf was returned, or a failed step
//! changed the weights) or `OtherError`.
//!
//! [`run_suite`] runs the cases; [`render_markdown`] writes `docs/stability.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use moe_core::{Config, Error, LrSchedule, MoETransformer, Mode, TrainConfig, Trainer};

/// Arguments of `moe stress`.
#[derive(Debug, Clone, clap::Args)]
pub struct StressArgs {
    /// Markdown report to write.
    #[arg(long, default_value = "docs/stability.md")]
    pub out: PathBuf,
    /// Training steps of each training case.
    #[arg(long, default_value_t = 20, value_parser = super::at_least_one)]
    pub steps: usize,
    /// Seed of the model initialisation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// How a case changes the freshly initialised parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mutation {
    /// Leave them as initialised.
    None,
    /// Multiply every parameter (norm weights included) by the factor.
    ScaleAll(f32),
    /// Multiply the embedding table by the factor.
    ScaleEmbedding(f32),
    /// Multiply `lm_head.weight` by the factor (logits near the f32 limits).
    ScaleLmHead(f32),
}

/// One stress case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Short id, e.g. `scale_all_1e6`.
    pub id: &'static str,
    /// What is extreme about it.
    pub input: String,
    /// Parameter change before anything runs.
    pub mutation: Mutation,
    /// Batch of the forward and of each step.
    pub batch: usize,
    /// Sequence length of the forward and of each step.
    pub seq: usize,
    /// Training steps (0: forward only).
    pub steps: usize,
    /// Training hyper-parameters of the steps.
    pub train: TrainConfig,
}

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything stayed finite.
    Finite,
    /// The library returned `Error::NonFinite` (and left the weights untouched).
    TypedNonFinite,
    /// A NaN/Inf was returned in an `Ok` value, a failed step changed the
    /// weights, or a successful step left non-finite AdamW moments.
    Silent,
    /// Another error (a valid input was rejected).
    OtherError,
}

impl Verdict {
    /// Whether the library behaved as CONTRACT §6 requires.
    pub fn is_ok(self) -> bool {
        matches!(self, Verdict::Finite | Verdict::TypedNonFinite)
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Finite => "finite",
            Verdict::TypedNonFinite => "typed `NonFinite`",
            Verdict::Silent => "**silent non-finite**",
            Verdict::OtherError => "**other error**",
        }
    }
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// The case.
    pub case: Case,
    /// Error of the first inference forward, if any.
    pub forward_error: Option<Error>,
    /// NaN values in everything returned `Ok` (logits, step stats, weights after a step).
    pub returned_nan: usize,
    /// ±Inf values in everything returned `Ok`.
    pub returned_inf: usize,
    /// Largest `|logit|` over every successful forward.
    pub max_abs_logit: f32,
    /// Successful forwards (the first one and those after each step).
    pub forwards_ok: usize,
    /// Largest `|parameter|` at the end.
    pub max_abs_param: f32,
    /// Loss of every successful step.
    pub losses: Vec<f32>,
    /// Gradient norm (before clipping) of every successful step.
    pub grad_norms: Vec<f32>,
    /// First failed step (0-based) and its error.
    pub step_error: Option<(usize, Error)>,
    /// Error of a forward at the weights after a successful step: `(step, error)`.
    pub forward_after_step_error: Option<(usize, Error)>,
    /// After the failed step: were the weights bit-for-bit unchanged?
    pub weights_untouched: Option<bool>,
    /// Non-finite entries of the AdamW moments `m`, `v` at the end (not
    /// returned by a step, but saved by a training checkpoint).
    pub moments_non_finite: usize,
    /// Wall time of the case, seconds.
    pub seconds: f64,
}

impl CaseReport {
    /// Whether the loss diverged: a failed step, or a loss above twice the first one.
    pub fn diverged(&self) -> bool {
        if self.case.steps == 0 {
            return false;
        }
        let Some(&first) = self.losses.first() else {
            return self.step_error.is_some();
        };
        self.step_error.is_some() || self.losses.iter().any(|&l| l > 2.0 * first)
    }

    /// All errors the case saw, in order.
    fn errors(&self) -> impl Iterator<Item = &Error> {
        self.forward_error
            .iter()
            .chain(self.step_error.iter().map(|(_, e)| e))
            .chain(self.forward_after_step_error.iter().map(|(_, e)| e))
    }

    /// The verdict (see [`Verdict`]).
    pub fn verdict(&self) -> Verdict {
        if self.returned_nan + self.returned_inf > 0
            || self.weights_untouched == Some(false)
            || self.moments_non_finite > 0
        {
            return Verdict::Silent;
        }
        let mut any = false;
        for e in self.errors() {
            if !matches!(e, Error::NonFinite { .. }) {
                return Verdict::OtherError;
            }
            any = true;
        }
        if any {
            Verdict::TypedNonFinite
        } else {
            Verdict::Finite
        }
    }
}

fn count_non_finite(x: &[f32]) -> (usize, usize) {
    x.iter().fold((0, 0), |(n, i), v| {
        (n + v.is_nan() as usize, i + v.is_infinite() as usize)
    })
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Deterministic `[b, t]` tokens and next-token targets for `vocab`.
fn batch(b: usize, t: usize, vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let tok = |i: usize| ((i * 37 + 11) % vocab) as u32;
    let tokens = (0..b * t).map(tok).collect();
    let targets = (0..b * t).map(|i| tok(i + 1)).collect();
    (tokens, targets)
}

fn train_config(lr: f32, clip: Option<f32>, alpha: f32) -> TrainConfig {
    TrainConfig {
        schedule: LrSchedule::constant(lr),
        clip_grad_norm: clip,
        aux_alpha: alpha,
        ..TrainConfig::default()
    }
}

/// The one-step cases on mutated parameters (b 2, t 32): id, input, mutation.
const MUTATED: [(&str, &str, Mutation); 11] = [
    ("baseline", "as initialised", Mutation::None),
    (
        "scale_all_1e-20",
        "every parameter × 1e-20",
        Mutation::ScaleAll(1e-20),
    ),
    (
        "scale_all_1e-10",
        "every parameter × 1e-10",
        Mutation::ScaleAll(1e-10),
    ),
    (
        "scale_all_1e3",
        "every parameter × 1e3",
        Mutation::ScaleAll(1e3),
    ),
    (
        "scale_all_1e6",
        "every parameter × 1e6",
        Mutation::ScaleAll(1e6),
    ),
    (
        "embed_1e-20",
        "embedding × 1e-20",
        Mutation::ScaleEmbedding(1e-20),
    ),
    (
        "embed_1e30",
        "embedding × 1e30 (x² overflows in RMSNorm)",
        Mutation::ScaleEmbedding(1e30),
    ),
    (
        "lm_head_1e30",
        "lm_head × 1e30 (logits ~1e30)",
        Mutation::ScaleLmHead(1e30),
    ),
    (
        "lm_head_1e36",
        "lm_head × 1e36 (logits ~1e36–1e37)",
        Mutation::ScaleLmHead(1e36),
    ),
    (
        "lm_head_1e38",
        "lm_head × 1e38 (logits ~2.6e38, just below f32::MAX)",
        Mutation::ScaleLmHead(1e38),
    ),
    (
        "lm_head_3e38",
        "lm_head × 3e38 (logits beyond f32::MAX)",
        Mutation::ScaleLmHead(3e38),
    ),
];

/// The training cases (b 2, t 16): id, input (followed by `, N steps`),
/// learning rate, clipping threshold, aux alpha.
const TRAINED: [(&str, &str, f32, Option<f32>, f32); 8] = [
    ("lr_10", "lr 10, clip 1.0", 10.0, Some(1.0), 0.01),
    ("lr_1e3", "lr 1e3, clip 1.0", 1e3, Some(1.0), 0.01),
    ("lr_1e3_noclip", "lr 1e3, no clipping", 1e3, None, 0.01),
    ("alpha_1e3", "aux alpha 1e3, lr 1e-3", 1e-3, Some(1.0), 1e3),
    (
        "alpha_1e3_noclip",
        "aux alpha 1e3, lr 1e-3, no clipping",
        1e-3,
        None,
        1e3,
    ),
    (
        "alpha_1e36",
        "aux alpha 1e36 (loss ~1e36)",
        1e-3,
        Some(1.0),
        1e36,
    ),
    (
        "alpha_1e36_noclip",
        "aux alpha 1e36, no clipping (g² overflows)",
        1e-3,
        None,
        1e36,
    ),
    (
        "alpha_3e38",
        "aux alpha 3e38 (loss beyond f32::MAX)",
        1e-3,
        Some(1.0),
        3e38,
    ),
];

/// The cases of `moe stress` with `steps` training steps each (where they train):
/// `MUTATED`, the longest sequence, then `TRAINED`.
pub fn cases(steps: usize) -> Vec<Case> {
    let mutated = MUTATED.iter().map(|&(id, input, mutation)| Case {
        id,
        input: input.to_owned(),
        mutation,
        batch: 2,
        seq: 32,
        steps: 1,
        train: TrainConfig::default(),
    });
    let longest = Case {
        id: "seq_512",
        input: "b 1, t 512 = max_seq_len".into(),
        mutation: Mutation::None,
        batch: 1,
        seq: 512,
        steps: 1,
        train: TrainConfig::default(),
    };
    let trained = TRAINED.iter().map(|&(id, input, lr, clip, alpha)| Case {
        id,
        input: format!("{input}, {steps} steps"),
        mutation: Mutation::None,
        batch: 2,
        seq: 16,
        steps,
        train: train_config(lr, clip, alpha),
    });
    mutated.chain([longest]).chain(trained).collect()
}

/// Runs one case on the tiny model initialised from `seed`.
///
/// # Errors
/// Only setup failures (model, workspace or trainer construction); every
/// failure of the stressed computation is recorded in the report instead.
pub fn run_case(case: &Case, seed: u64) -> Result<CaseReport, Error> {
    let start = Instant::now();
    let cfg = Config::tiny();
    let mut model = MoETransformer::new(&cfg, seed)?;
    let v = cfg.vocab_size;
    let lay = model.layout().clone();
    let scale = |x: &mut [f32], s: f32| x.iter_mut().for_each(|w| *w *= s);
    match case.mutation {
        Mutation::None => {}
        Mutation::ScaleAll(s) => scale(model.params_mut()?, s),
        Mutation::ScaleEmbedding(s) => scale(&mut model.params_mut()?[lay.embed.clone()], s),
        Mutation::ScaleLmHead(s) => scale(&mut model.params_mut()?[lay.lm_head.clone()], s),
    }
    let (b, t) = (case.batch, case.seq);
    let (tokens, targets) = batch(b, t, v);
    let mut report = CaseReport {
        case: case.clone(),
        forward_error: None,
        returned_nan: 0,
        returned_inf: 0,
        max_abs_logit: 0.0,
        forwards_ok: 0,
        max_abs_param: 0.0,
        losses: Vec::new(),
        grad_norms: Vec::new(),
        step_error: None,
        forward_after_step_error: None,
        weights_untouched: None,
        moments_non_finite: 0,
        seconds: 0.0,
    };
    let mut ws = model.workspace(b, t, Mode::Inference)?;
    let observe_logits = |report: &mut CaseReport, logits: &[f32]| {
        let (n, i) = count_non_finite(logits);
        report.returned_nan += n;
        report.returned_inf += i;
        report.max_abs_logit = report.max_abs_logit.max(max_abs(logits));
        report.forwards_ok += 1;
    };
    match model.forward(&mut ws, &tokens, b, t) {
        Ok(logits) => observe_logits(&mut report, logits),
        Err(e) => report.forward_error = Some(e),
    }

    if case.steps > 0 {
        let mut tr = Trainer::new(model, case.train, b, t)?;
        for step in 0..case.steps {
            let before = tr.model().params()?.to_vec();
            match tr.train_step(&tokens, &targets, b, t) {
                Ok(s) => {
                    let stats = [s.loss, s.ce_loss, s.aux_loss, s.grad_norm, s.lr];
                    let (n, i) = count_non_finite(&stats);
                    let (pn, pi) = count_non_finite(tr.model().params()?);
                    report.returned_nan += n + pn;
                    report.returned_inf += i + pi;
                    report.losses.push(s.loss);
                    report.grad_norms.push(s.grad_norm);
                    if pn + pi > 0 {
                        break; // silent corruption: recorded, nothing more to learn
                    }
                }
                Err(e) => {
                    report.weights_untouched = Some(
                        tr.model()
                            .params()?
                            .iter()
                            .zip(&before)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                    );
                    report.step_error = Some((step, e));
                    break;
                }
            }
            match tr.model().forward(&mut ws, &tokens, b, t) {
                Ok(logits) => observe_logits(&mut report, logits),
                Err(e) => {
                    report.forward_after_step_error = Some((step, e));
                    break;
                }
            }
        }
        report.max_abs_param = max_abs(tr.model().params()?);
        let opt = tr.optimizer();
        let (mn, mi) = count_non_finite(opt.m());
        let (vn, vi) = count_non_finite(opt.v());
        report.moments_non_finite = mn + mi + vn + vi;
    } else {
        report.max_abs_param = max_abs(model.params()?);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Runs every case of [`cases`]`(steps)`.
///
/// # Errors
/// As [`run_case`].
pub fn run_suite(steps: usize, seed: u64) -> Result<Vec<CaseReport>, Error> {
    cases(steps).iter().map(|c| run_case(c, seed)).collect()
}

fn describe(e: &Error) -> String {
    match e {
        Error::NonFinite { what, index } => format!("`NonFinite {{ {what}, index {index} }}`"),
        other => format!("`{other}`"),
    }
}

/// What the library did, in words.
fn behaviour(r: &CaseReport) -> String {
    let mut parts = Vec::new();
    match &r.forward_error {
        Some(e) => parts.push(format!("forward: {}", describe(e))),
        None => parts.push("forward ok".to_owned()),
    }
    if r.case.steps > 0 {
        let ok = r.losses.len();
        match &r.step_error {
            Some((s, e)) => parts.push(format!(
                "step {}: {}, weights {}",
                s + 1,
                describe(e),
                match r.weights_untouched {
                    Some(true) => "untouched",
                    _ => "**changed**",
                }
            )),
            None => parts.push(format!("{ok}/{} steps ok", r.case.steps)),
        }
        if let Some((s, e)) = &r.forward_after_step_error {
            parts.push(format!("forward after step {}: {}", s + 1, describe(e)));
        }
    }
    parts.join("; ")
}

fn fmt_f(x: f32) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.is_finite() && (1e-3..1e4).contains(&x.abs()) {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

/// Explanations of the noteworthy outcomes, each emitted only when the
/// results show it (so that the report stays true when the library changes).
fn notes(reports: &[CaseReport]) -> Vec<String> {
    let ids = |f: &dyn Fn(&CaseReport) -> bool| -> Vec<String> {
        reports
            .iter()
            .filter(|r| f(r))
            .map(|r| format!("`{}`", r.case.id))
            .collect()
    };
    let mut out = Vec::new();
    let overflow = ids(&|r| {
        matches!(r.case.mutation, Mutation::ScaleAll(x) | Mutation::ScaleEmbedding(x) if x >= 1e6)
            && r.forward_error.is_none()
            && r.max_abs_logit == 0.0
    });
    if !overflow.is_empty() {
        out.push(format!(
            "RMSNorm overflow ({}): once a row has |x| ≳ 1.8e19, Σx² overflows to +Inf, \
             `rstd = 1/√Inf = 0` and the normalised row is exactly 0, so the logits are all 0 \
             and the loss is ln v ≈ 6.93. Hugging Face's float32 `MixtralRMSNorm` \
             (`pow(2).mean()` → Inf, `rsqrt` → 0) computes the same; nothing returned is \
             non-finite, so no error is raised.",
            overflow.join(", ")
        ));
    }
    let underflow = ids(&|r| {
        matches!(r.case.mutation, Mutation::ScaleAll(x) if x <= 1e-10) && r.forward_error.is_none()
    });
    if !underflow.is_empty() {
        out.push(format!(
            "Underflow ({}): the products of tiny weights flush to (sub)normal zero, the logits \
             are ~0 and the loss is ln v; RMSNorm's `eps` keeps `rstd` finite.",
            underflow.join(", ")
        ));
    }
    let decay = ids(&|r| {
        r.case.steps > 0 && r.case.train.schedule.lr * r.case.train.adamw.weight_decay > 2.0
    });
    if !decay.is_empty() {
        out.push(format!(
            "Huge learning rates ({}): decoupled weight decay multiplies every weight by \
             `1 − lr·wd` per step, −9 at lr 1e3 (wd 0.01), exactly as `torch.optim.AdamW`; the \
             weights grow ~9× per step until the logits overflow, which the library reports as \
             `NonFinite` at the next forward or step — never as a NaN in a returned value.",
            decay.join(", ")
        ));
    }
    let moments = ids(&|r| r.moments_non_finite > 0);
    if !moments.is_empty() {
        out.push(format!(
            "**AdamW moment overflow ({}) — a bug**: without clipping, gradients of ~1e36 make \
             `v = β2·v + (1−β2)·g²` overflow to +Inf; `train_step` still returns `Ok` with \
             finite statistics and weights, the affected parameters silently stop moving \
             (`m/√Inf = 0`), and `checkpoint::save_training` then refuses the state \
             (`NonFinite` in `v.*`). torch's float32 AdamW overflows the same way, but \
             CONTRACT §6 asks for a typed error, not silent non-finite state \
             (`known_bug_adamw_second_moment_overflows_silently` in `bench/tests/all/stress.rs`).",
            moments.join(", ")
        ));
    }
    out
}

/// The Markdown report: `command` (the invocation that produced it) at the top.
pub fn render_markdown(reports: &[CaseReport], command: &str, seed: u64) -> String {
    let cfg = Config::tiny();
    let mut s = String::new();
    let _ = writeln!(s, "# Numerical stability under extreme inputs\n");
    let _ = writeln!(
        s,
        "Generated by `{command}` — do not edit by hand; rerun the command instead.\n"
    );
    let _ = writeln!(
        s,
        "Model: `Config::tiny()` (v {}, c {}, {} layers, h {}/kv {}, d {}, e {} top-{}, f {}), \
         seed {seed}, deterministic tokens `(37·i + 11) mod v` with next-token targets. \
         Each case rescales some parameters, runs one inference forward over `[b, t]`, then \
         its training steps (`Trainer::train_step`; default AdamW, β 0.9/0.999, wd 0.01), \
         with an inference forward at the new weights after every successful step. See \
         `bench/src/cli/stress.rs`; `bench/tests/all/stress.rs` asserts the verdicts.\n",
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.num_local_experts,
        cfg.num_experts_per_tok,
        cfg.intermediate_size,
    );
    let _ = writeln!(
        s,
        "Columns: *NaN/Inf returned* counts non-finite values in everything the library \
         returned `Ok` (logits, step statistics, the weights after each successful step) — \
         it must be 0; *max \\|logit\\|* is over every successful forward; *loss* is the \
         first → last successful step (max); *diverged*: a failed step or a loss above \
         twice the first; *verdict*: `finite`, or `typed NonFinite` when the library refused \
         with `Error::NonFinite` and left the weights untouched.\n"
    );
    let _ = writeln!(
        s,
        "| case | input | b×t | NaN/Inf returned | AdamW m/v non-finite | max \\|logit\\| | max \\|param\\| | loss first → last (max) | diverged | what the library did | verdict |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let loss = match (r.losses.first(), r.losses.last()) {
            (Some(&a), Some(&b)) => {
                let m = r.losses.iter().fold(f32::MIN, |m, &x| m.max(x));
                format!("{} → {} ({})", fmt_f(a), fmt_f(b), fmt_f(m))
            }
            _ => "—".into(),
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {}×{} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
            r.case.id,
            r.case.input,
            r.case.batch,
            r.case.seq,
            r.returned_nan,
            r.returned_inf,
            if r.case.steps > 0 {
                r.moments_non_finite.to_string()
            } else {
                "—".into()
            },
            if r.forwards_ok > 0 {
                fmt_f(r.max_abs_logit)
            } else {
                "—".into()
            },
            fmt_f(r.max_abs_param),
            loss,
            if r.diverged() { "yes" } else { "no" },
            behaviour(r),
            r.verdict().label(),
        );
    }
    let bad: Vec<_> = reports.iter().filter(|r| !r.verdict().is_ok()).collect();
    let notes = notes(reports);
    if !notes.is_empty() {
        let _ = writeln!(s, "\n## What the numbers show\n");
        for n in notes {
            let _ = writeln!(s, "* {n}");
        }
    }
    let _ = writeln!(s);
    if bad.is_empty() {
        let _ = writeln!(
            s,
            "Every case either stayed finite or was refused with the typed `NonFinite` \
             error, with the weights of a refused step left untouched; no NaN or Inf was \
             ever returned."
        );
    } else {
        let ids: Vec<_> = bad.iter().map(|r| format!("`{}`", r.case.id)).collect();
        let _ = writeln!(
            s,
            "**Cases that violate CONTRACT §6** (a NaN/Inf returned, a failed step that \
             changed the weights, or an unexpected error): {}.",
            ids.join(", ")
        );
    }
    s.push_str(NONFINITE_WEIGHTS_SECTION);
    s
}

/// The section that points at the non-finite-weights table, which the test
/// suite (not `moe stress`) generates and asserts.
const NONFINITE_WEIGHTS_SECTION: &str = "\n## Non-finite weights\n\n\
One NaN, +Inf or `f32::MAX` written into one element of each parameter tensor kind \
(embedding, q/k/v/o, both norms, router, w1/w2/w3 of every expert, final norm, lm_head): \
what `forward`, `generate` (greedy and sampled) and `loss_and_grad` return is tabulated in \
[`nonfinite-weights.md`](nonfinite-weights.md), generated and asserted by \
`tests/tests/all/nonfinite_weights.rs`. Every cell is either `Error::NonFinite`, or `Ok` \
with finite output — bit-identical to the clean model for NaN/Inf (the value cannot reach \
the output), possibly changed for the finite `f32::MAX`.\n";

/// `moe stress`: runs the suite, prints the table and writes the report.
///
/// # Errors
/// Setup failures of the suite, or the report cannot be written.
pub fn run(args: StressArgs) -> Result<(), crate::Error> {
    let reports = run_suite(args.steps, args.seed)?;
    let mut command = "cargo run --release -p moe-bench --bin moe -- stress".to_owned();
    if args.steps != 20 {
        let _ = write!(command, " --steps {}", args.steps);
    }
    if args.seed != 42 {
        let _ = write!(command, " --seed {}", args.seed);
    }
    if args.out != Path::new("docs/stability.md") {
        let _ = write!(command, " --out {}", args.out.display());
    }
    let md = render_markdown(&reports, &command, args.seed);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::io::checkpoint::write_atomic(&args.out, |w| {
        std::io::Write::write_all(w, md.as_bytes())
    })?;
    for r in &reports {
        println!(
            "{:<18} {:<18} nan/inf {}/{}  m/v non-finite {}  max|logit| {:<10} {}",
            r.case.id,
            r.verdict().label(),
            r.returned_nan,
            r.returned_inf,
            r.moments_non_finite,
            fmt_f(r.max_abs_logit),
            behaviour(r)
        );
    }
    println!("wrote {}", args.out.display());
    let bad = reports.iter().filter(|r| !r.verdict().is_ok()).count();
    if bad > 0 {
        return Err(format!("{bad} stress case(s) violate CONTRACT §6 (see the report)").into());
    }
    Ok(())
}
