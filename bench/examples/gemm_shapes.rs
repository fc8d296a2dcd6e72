//! Times the GEMM shapes the model runs, on each available path, best of
//! several repeats (robust to a shared machine's noise better than a mean):
//!
//! ```sh
//! cargo run --release -p moe-bench --example gemm_shapes [-- FILTER]
//! ```
//!
//! Per shape: `route` = what `gemm` (the model's dispatcher) picks,
//! `blis` = the BLIS driver with B packed per call, `prepacked` = the BLIS
//! driver on a B packed once by `portable::pack_b` (issue 13 item 2), in
//! GFLOP/s; `route cold` = `route` with W cycling through copies spanning
//! 64 MiB (each call's weight comes from memory, as in a model forward).
//! `fwd` = `y = x·Wᵀ`, `bwd_in` = `dx = dy·W`, `bwd_w` = `dW += dyᵀ·x`.
//! Built with the `openblas` feature, a last column times CBLAS `sgemm` on
//! the same operands (run with `OPENBLAS_NUM_THREADS=1`; the example needs
//! `RUSTFLAGS="-l openblas"`, cargo links the library only into the bins).
use moe_core::kernels::gemm::{gemm_with, portable, Backend, Mat};
use std::hint::black_box;
use std::time::Instant;

#[derive(Clone, Copy)]
enum Kind {
    Fwd,
    BwdIn,
    BwdW,
}

/// This thread's CPU time in seconds (excludes time preempted by other
/// processes on the shared machine).
fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Best-of-80 thread-CPU seconds per call of each of `fs`, the repeats of the
/// paths interleaved (so that every path sees the same background load),
/// each repeat ≥ ~0.4 ms (short repeats: some fall between preemptions).
fn time<const N: usize>(fs: &mut [&mut dyn FnMut(); N]) -> [f64; N] {
    let mut calls = [1u64; N];
    for (f, n) in fs.iter_mut().zip(&mut calls) {
        f();
        let t0 = Instant::now();
        let mut c = 0u64;
        while t0.elapsed().as_secs_f64() < 4e-4 {
            f();
            c += 1;
        }
        *n = c.max(1);
    }
    let mut best = [f64::INFINITY; N];
    for _ in 0..80 {
        for ((f, &n), b) in fs.iter_mut().zip(&calls).zip(&mut best) {
            let t = cpu_now();
            for _ in 0..n {
                f();
            }
            *b = b.min((cpu_now() - t) / n as f64);
        }
    }
    best
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    // (name, kind, tokens, din, dout): y[tokens, dout] = x[tokens, din]·W[dout, din]ᵀ.
    let shapes: &[(&str, Kind, usize, usize, usize)] = &[
        ("tiny qkv fwd", Kind::Fwd, 64, 64, 96),
        ("tiny o fwd", Kind::Fwd, 64, 64, 64),
        ("tiny w13 fwd m32", Kind::Fwd, 32, 64, 512),
        ("tiny w2 fwd m32", Kind::Fwd, 32, 256, 64),
        ("tiny lm fwd", Kind::Fwd, 64, 64, 1000),
        ("tiny w13 bwd_in m8", Kind::BwdIn, 8, 64, 512),
        ("tiny w13 bwd_w m8", Kind::BwdW, 8, 64, 512),
        ("tiny w2 bwd_w m8", Kind::BwdW, 8, 256, 64),
        ("tiny lm bwd_w", Kind::BwdW, 16, 64, 1000),
        ("tiny lm bwd_in", Kind::BwdIn, 16, 64, 1000),
        ("s256 qkv fwd", Kind::Fwd, 64, 256, 384),
        ("s256 o fwd", Kind::Fwd, 64, 256, 256),
        ("s256 w13 fwd m32", Kind::Fwd, 32, 256, 2048),
        ("s256 w13 fwd m24", Kind::Fwd, 24, 256, 2048),
        ("s256 w13 fwd m25", Kind::Fwd, 25, 256, 2048),
        ("s256 w13 fwd m36", Kind::Fwd, 36, 256, 2048),
        ("s256 w13 fwd m45", Kind::Fwd, 45, 256, 2048),
        ("s256 w2 fwd m32", Kind::Fwd, 32, 1024, 256),
        ("s256 w2 fwd m25", Kind::Fwd, 25, 1024, 256),
        ("s256 w2 fwd m36", Kind::Fwd, 36, 1024, 256),
        ("tiny w13 fwd m28", Kind::Fwd, 28, 64, 512),
        ("tiny w13 fwd m37", Kind::Fwd, 37, 64, 512),
        ("tiny w2 fwd m37", Kind::Fwd, 37, 256, 64),
        ("s256 lm fwd", Kind::Fwd, 64, 256, 1000),
        ("s256 w13 fwd m8", Kind::Fwd, 8, 256, 2048),
        ("s256 w2 fwd m8", Kind::Fwd, 8, 1024, 256),
        ("s256 w13 bwd_in m8", Kind::BwdIn, 8, 256, 2048),
        ("s256 w2 bwd_in m8", Kind::BwdIn, 8, 1024, 256),
        ("s256 w2 bwd_in m13", Kind::BwdIn, 13, 1024, 256),
        ("s256 w2 bwd_in m4", Kind::BwdIn, 4, 1024, 256),
        ("tiny w2 bwd_in m8", Kind::BwdIn, 8, 256, 64),
        ("s256 w13 bwd_w m8", Kind::BwdW, 8, 256, 2048),
        ("s256 w2 bwd_w m8", Kind::BwdW, 8, 1024, 256),
        ("s256 qkv bwd_w", Kind::BwdW, 16, 256, 384),
        ("s256 lm bwd_w", Kind::BwdW, 16, 256, 1000),
        ("s256 lm bwd_in", Kind::BwdIn, 16, 256, 1000),
        ("64^3", Kind::Fwd, 64, 64, 64),
        // The tiny train step's expert products (4–13 tokens per expert).
        ("tiny w13 fwd m4", Kind::Fwd, 4, 64, 512),
        ("tiny w13 fwd m8", Kind::Fwd, 8, 64, 512),
        ("tiny w13 fwd m13", Kind::Fwd, 13, 64, 512),
        ("tiny w2 fwd m4", Kind::Fwd, 4, 256, 64),
        ("tiny w2 fwd m8", Kind::Fwd, 8, 256, 64),
        ("tiny w2 fwd m13", Kind::Fwd, 13, 256, 64),
        ("tiny w2 bwd_in m4", Kind::BwdIn, 4, 256, 64),
        ("tiny w2 bwd_in m13", Kind::BwdIn, 13, 256, 64),
        ("tiny w13 bwd_in m4", Kind::BwdIn, 4, 64, 512),
        ("tiny w13 bwd_in m13", Kind::BwdIn, 13, 64, 512),
        ("tiny w13 bwd_w m4", Kind::BwdW, 4, 64, 512),
        ("tiny w13 bwd_w m13", Kind::BwdW, 13, 64, 512),
        ("tiny w2 bwd_w m4", Kind::BwdW, 4, 256, 64),
        ("tiny w2 bwd_w m13", Kind::BwdW, 13, 256, 64),
        ("tiny qkv fwd m16", Kind::Fwd, 16, 64, 96),
        ("tiny o fwd m16", Kind::Fwd, 16, 64, 64),
        ("tiny qkv bwd_w m16", Kind::BwdW, 16, 64, 96),
        ("tiny qkv bwd_in m16", Kind::BwdIn, 16, 64, 96),
        ("tiny lm fwd m16", Kind::Fwd, 16, 64, 1000),
    ];
    println!(
        "{:<22} {:>5} {:>5} {:>5} {:>9} {:>9} {:>9} {:>11} {:>11} {:>9}",
        "shape (GFLOP/s)",
        "m",
        "n",
        "k",
        "route",
        "blis",
        "prepacked",
        "route cold",
        "packed cold",
        "openblas"
    );
    for &(name, kind, t, din, dout) in shapes {
        if !name.contains(&filter) {
            continue;
        }
        let x: Vec<f32> = (0..t * din.max(dout))
            .map(|i| (i % 7) as f32 * 0.1)
            .collect();
        let w: Vec<f32> = (0..din * dout).map(|i| (i % 5) as f32 * 0.1).collect();
        let (m, n, k) = match kind {
            Kind::Fwd => (t, dout, din),
            Kind::BwdIn => (t, din, dout),
            Kind::BwdW => (dout, din, t),
        };
        let mut c = vec![0.0f32; m * n];
        let (a, b, beta) = match kind {
            Kind::Fwd => (Mat::n(&x, din), Mat::t(&w, din), 0.0),
            Kind::BwdIn => (Mat::n(&x, dout), Mat::n(&w, din), 0.0),
            Kind::BwdW => (Mat::t(&x, dout), Mat::n(&x, din), 1.0),
        };
        let flops = 2.0 * (m * n * k) as f64;
        let mut packed = vec![0.0f32; portable::packed_len(k, n)];
        portable::pack_b(k, n, b.data, b.rs, b.cs, &mut packed);
        let (mut c1, mut c2, mut c3) = (c.clone(), c.clone(), c.clone());
        let [route, blis, pre] = time(&mut [
            &mut || {
                gemm_with(Backend::Portable, m, n, k, 1.0, a, b, beta, &mut c1, n);
                black_box(&c1);
            },
            &mut || {
                portable::gemm(
                    m, n, k, 1.0, a.data, a.rs, a.cs, b.data, b.rs, b.cs, beta, &mut c2, n, 1,
                );
                black_box(&c2);
            },
            &mut || {
                portable::gemm_prepacked_b(
                    m, n, k, 1.0, a.data, a.rs, a.cs, &packed, beta, &mut c3, n, 1,
                );
                black_box(&c3);
            },
        ]);
        // The same product with W cycling through copies spanning 64 MiB (more
        // than the 32 MiB L3), as in a model forward that touches each weight
        // once: the weight then streams from memory.
        let copies = (16 << 20) / w.len().max(1);
        let (cold, pcold) = if copies >= 2 && !matches!(kind, Kind::BwdW) {
            let ws: Vec<Vec<f32>> = (0..copies).map(|_| w.clone()).collect();
            let mut i = 0;
            let [t] = time(&mut [&mut || {
                i = (i + 1) % copies;
                let bw = match kind {
                    Kind::Fwd => Mat::t(&ws[i], din),
                    _ => Mat::n(&ws[i], din),
                };
                gemm_with(Backend::Portable, m, n, k, 1.0, a, bw, beta, &mut c1, n);
                black_box(&c1);
            }]);
            let pk: Vec<Vec<f32>> = ws
                .iter()
                .map(|wi| {
                    let bw = match kind {
                        Kind::Fwd => Mat::t(wi, din),
                        _ => Mat::n(wi, din),
                    };
                    let mut p = vec![0.0f32; portable::packed_len(k, n)];
                    portable::pack_b(k, n, bw.data, bw.rs, bw.cs, &mut p);
                    p
                })
                .collect();
            let mut j = 0;
            let [tp] = time(&mut [&mut || {
                j = (j + 1) % copies;
                portable::gemm_prepacked_b(
                    m, n, k, 1.0, a.data, a.rs, a.cs, &pk[j], beta, &mut c3, n, 1,
                );
                black_box(&c3);
            }]);
            (t, tp)
        } else {
            (f64::NAN, f64::NAN)
        };
        #[cfg(feature = "openblas")]
        let blas = {
            let mut c4 = c.clone();
            let [t] = time(&mut [&mut || {
                gemm_with(Backend::Blas, m, n, k, 1.0, a, b, beta, &mut c4, n);
                black_box(&c4);
            }]);
            t
        };
        #[cfg(not(feature = "openblas"))]
        let blas = f64::NAN;
        c.clear();
        let g = |s: f64| flops / s * 1e-9;
        println!(
            "{name:<22} {m:>5} {n:>5} {k:>5} {:>9.1} {:>9.1} {:>9.1} {:>11.1} {:>11.1} {:>9.1}",
            g(route),
            g(blis),
            g(pre),
            g(cold),
            g(pcold),
            g(blas)
        );
    }
}
