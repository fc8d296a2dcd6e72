//! Mixed-precision training (issue 17 item 4) and the fused optimizer pass:
//! the AdamW + zeroing + bf16-copy sweep against its unfused parts and an
//! independent bf16 rounding (`half`).

use moe_core::kernels::adamw::{adamw_pass, adamw_pass_zeroing_bf16, AdamWStep};
use moe_core::kernels::cpu::with_portable_elementwise;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

fn rand_vec(g: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (g.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0)
        .map(|u| u * scale)
        .collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn adamw_bf16_pass_equals_update_then_zeroing_then_rounding() {
    let mut g = ChaCha8Rng::seed_from_u64(171);
    for &n in &[1usize, 7, 63, 64, 65, 1000, 1027] {
        let w0 = rand_vec(&mut g, n, 1.0);
        let gr = rand_vec(&mut g, n, 2.0);
        let m0 = rand_vec(&mut g, n, 0.1);
        let v0: Vec<f32> = rand_vec(&mut g, n, 0.1).iter().map(|x| x * x).collect();
        for grad_scale in [1.0f32, 0.37] {
            let step = AdamWStep {
                decay: 1.0 - 1e-2 * 0.01,
                grad_scale,
                w1: 0.1,
                beta2: 0.999,
                w2: 1e-3,
                bc2_sqrt: (1.0f32 - 0.999 * 0.999).sqrt(),
                eps: 1e-8,
                step_size: 1e-2 / (1.0 - 0.81),
            };
            let (mut w, mut m, mut v) = (w0.clone(), m0.clone(), v0.clone());
            adamw_pass(&mut w, &gr, &mut m, &mut v, step);
            let want = [w.clone(), m, v].concat();
            // The copy by an independent implementation of round-to-nearest-even.
            let want_copy: Vec<u16> = w
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect();
            for portable in [false, true] {
                let run = || {
                    let (mut w, mut m, mut v, mut gz) =
                        (w0.clone(), m0.clone(), v0.clone(), gr.clone());
                    let mut copy = vec![0xFFFFu16; n];
                    adamw_pass_zeroing_bf16(&mut w, &mut gz, &mut m, &mut v, &mut copy, step);
                    assert!(
                        gz.iter().all(|&x| x.to_bits() == 0),
                        "n = {n}: grads not zeroed"
                    );
                    ([w, m, v].concat(), copy)
                };
                let (got, copy) = if portable {
                    with_portable_elementwise(run)
                } else {
                    run()
                };
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "n = {n}, scale {grad_scale}, portable {portable}"
                );
                assert_eq!(copy, want_copy, "n = {n}: bf16 copy");
            }
            assert_ne!(
                bits(&want[..n]),
                bits(&w0),
                "n = {n}: the update moved nothing"
            );
        }
    }
}

/// Per-tensor cosine similarity of two flat gradients over `layout`'s
/// tensors; returns the worst (cosine, name). Tensors whose reference is
/// all zero (an expert that got no token) must be zero in `got` too.
pub(crate) fn worst_cosine(layout: &moe_core::Layout, got: &[f32], want: &[f32]) -> (f64, String) {
    let mut worst = (f64::INFINITY, String::new());
    for info in layout.tensors() {
        let (a, w) = (&got[info.range()], &want[info.range()]);
        let dot: f64 = a.iter().zip(w).map(|(&p, &q)| p as f64 * q as f64).sum();
        let na = a.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
        let nw = w.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
        let cos = if nw == 0.0 && na == 0.0 {
            1.0
        } else {
            dot / (na * nw)
        };
        // NaN (one side zero) counts as the worst.
        if cos.is_nan() || cos < worst.0 {
            worst = (cos, info.name.clone());
        }
    }
    worst
}

/// `AttnMemory::SavedBf16`: the forward (and so the losses) is the f32
/// forward bit for bit; the gradients use the rounded probabilities —
/// close (cosine ≥ 0.9999 per tensor) but not identical; with and without
/// recompute; the same bits on every run.
#[test]
fn bf16_saved_probabilities_keep_the_loss_and_nearly_the_gradients() {
    use moe_core::{AttnMemory, Config, Memory, MoETransformer, Mode, Recompute};
    for (cfg, b, t) in [
        (Config::tiny(), 4usize, 32usize),
        (Config::scale_256(), 2, 16),
    ] {
        let model = MoETransformer::new(&cfg, 17).unwrap();
        let mut g = ChaCha8Rng::seed_from_u64(5);
        let x: Vec<u32> = (0..b * t)
            .map(|_| g.next_u32() % cfg.vocab_size as u32)
            .collect();
        let y: Vec<u32> = (0..b * t)
            .map(|_| g.next_u32() % cfg.vocab_size as u32)
            .collect();
        let run = |mem: Memory| {
            let mut ws = model.workspace_with(b, t, Mode::Training, mem).unwrap();
            let mut gr = vec![0.0f32; model.layout().total];
            let l = model
                .loss_and_grad(&mut ws, &mut gr, &x, &y, b, t, 0.01, None)
                .unwrap();
            (l, gr)
        };
        let (l0, g0) = run(Memory::DEFAULT);
        for recompute in [Recompute::None, Recompute::Layers] {
            let mem = Memory {
                recompute,
                attention: AttnMemory::SavedBf16,
            };
            let (l1, g1) = run(mem);
            assert_eq!(l1, l0, "{recompute:?}: the forward must be the f32 one");
            assert!(
                bits(&g1) != bits(&g0),
                "{recompute:?}: the rounding was not exercised"
            );
            let (cos, name) = worst_cosine(model.layout(), &g1, &g0);
            println!(
                "{} b{b} s{t} {recompute:?}: worst cosine {cos:.7} ({name})",
                cfg.hidden_size
            );
            assert!(cos >= 0.9999, "{recompute:?}: {name} cosine {cos}");
            assert!(
                bits(&run(mem).1) == bits(&g1),
                "{recompute:?}: not deterministic"
            );
        }
    }
}
