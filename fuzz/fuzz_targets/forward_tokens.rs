//! Bytes → `(b, t, token ids)` → `MoETransformer::forward` (inference) or
//! `loss_and_grad` (training) on a fixed small model (`moe_fuzz::MODEL_CONFIG`,
//! workspaces planned for `PLAN_BATCH × PLAN_SEQ`).
//!
//! Input: `mode` (bit 0: training), `b` (`% 6`), `t` (`% 32`), in training
//! mode `alpha` ([`Reader::param`]), then 3-byte token ids ([`Reader::token`],
//! ~1 in 8 out of range) to the end. Inference uses every id as `tokens`;
//! training uses the first `min(len, b·t)` as `tokens` and the rest as `targets`.
//!
//! Oracle: the result is exactly the error `moe_fuzz::expected_forward_error`
//! predicts (shape, plan, length, id checks in the documented order), or `Ok`
//! with `b·t·v` finite logits (finite loss and gradients in training).
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use moe_core::{Error, MoETransformer, Mode, Workspace};
use moe_fuzz::{expected_forward_error, token_error, Reader, MODEL_CONFIG, PLAN_BATCH, PLAN_SEQ};

struct State {
    model: MoETransformer,
    infer: Workspace,
    train: Workspace,
    grads: Vec<f32>,
}

fn state() -> &'static Mutex<State> {
    static S: OnceLock<Mutex<State>> = OnceLock::new();
    S.get_or_init(|| {
        let model = MoETransformer::new(&MODEL_CONFIG, 42).unwrap();
        let infer = model
            .workspace(PLAN_BATCH, PLAN_SEQ, Mode::Inference)
            .unwrap();
        let train = model
            .workspace(PLAN_BATCH, PLAN_SEQ, Mode::Training)
            .unwrap();
        let grads = vec![0.0; model.layout().total];
        Mutex::new(State {
            model,
            infer,
            train,
            grads,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let training = r.u8() & 1 == 1;
    let b = (r.u8() % 6) as usize;
    let t = (r.u8() % 32) as usize;
    let alpha = if training { r.param() } else { 0.0 };
    let v = MODEL_CONFIG.vocab_size;
    let mut ids = Vec::new();
    while !r.is_empty() && ids.len() < 4 * PLAN_BATCH * PLAN_SEQ {
        ids.push(r.token(v));
    }
    let mut guard = state().lock().unwrap_or_else(|e| e.into_inner());
    let State {
        model,
        infer,
        train,
        grads,
    } = &mut *guard;

    if !training {
        let want =
            expected_forward_error(&MODEL_CONFIG, PLAN_BATCH, PLAN_SEQ, b, t, "tokens", &ids);
        match (want, model.forward(infer, &ids, b, t)) {
            (None, Ok(logits)) => {
                assert_eq!(logits.len(), b * t * v);
                assert!(logits.iter().all(|x| x.is_finite()));
            }
            (Some(w), Err(e)) => assert_eq!(w, e),
            (w, g) => panic!(
                "forward(b={b}, t={t}, {ids:?}): want {w:?}, got {:?}",
                g.map(|l| l.len())
            ),
        }
        return;
    }

    let split = ids.len().min(b * t);
    let (tokens, targets) = ids.split_at(split);
    let want = expected_forward_error(&MODEL_CONFIG, PLAN_BATCH, PLAN_SEQ, b, t, "tokens", tokens)
        .or_else(|| token_error(&MODEL_CONFIG, "targets", targets, b * t))
        .or_else(|| {
            (!(alpha.is_finite() && alpha >= 0.0)).then_some(Error::InvalidParameter {
                param: "aux_alpha",
                expected: "finite and >= 0",
                actual: alpha as f64,
            })
        });
    grads.iter_mut().for_each(|g| *g = 0.0);
    let got = model.loss_and_grad(train, grads, tokens, targets, b, t, alpha, None);
    match (want, got) {
        (None, Ok(l)) => {
            assert!(
                l.loss.is_finite() && l.ce.is_finite() && l.aux.is_finite(),
                "{l:?}"
            );
            if alpha <= 1e6 {
                assert!(
                    grads.iter().all(|g| g.is_finite()),
                    "non-finite gradient, alpha {alpha}"
                );
            }
        }
        // CE ≤ ~log v + small and aux ≤ e·k: only an enormous alpha overflows the loss.
        (None, Err(Error::NonFinite { what: "loss", .. })) if alpha > 1e36 => {}
        (
            Some(Error::InvalidParameter { param, .. }),
            Err(Error::InvalidParameter { param: p, .. }),
        ) => {
            assert_eq!(param, p)
        }
        (Some(w), Err(e)) => assert_eq!(w, e),
        (w, g) => panic!("loss_and_grad(b={b}, t={t}, alpha={alpha}): want {w:?}, got {g:?}"),
    }
});
