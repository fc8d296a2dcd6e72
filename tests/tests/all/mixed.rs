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
