//! Times `kernel_rmsnorm` ([64, 64] rows) and `kernel_softmax` (n = 1000) as the
//! benchmark does, best of many thread-CPU-timed repeats of 1000 calls:
//!
//! ```sh
//! cargo run --release -p moe-bench --example row_kernels
//! ```
use moe_core::kernels::softmax;
use moe_core::rmsnorm;
use std::hint::black_box;

/// This thread's CPU time in seconds.
fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Best of 200 repeats of 1000 calls, seconds per call.
fn time(mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..200 {
        let t = cpu_now();
        for _ in 0..1000 {
            f();
        }
        best = best.min((cpu_now() - t) / 1000.0);
    }
    best
}

fn main() {
    let (rows, c) = (64, 64);
    let x: Vec<f32> = (0..rows * c)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let w: Vec<f32> = (0..c).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect();
    let mut y = vec![0.0f32; rows * c];
    let mut rstd = vec![0.0f32; rows];
    let t = time(|| {
        rmsnorm::forward(
            black_box(&mut y),
            black_box(&mut rstd),
            black_box(&x),
            black_box(&w),
            1e-5,
        );
        black_box((&y, &rstd));
    });
    println!("rmsnorm [64, 64] forward   {:8.3} µs", t * 1e6);
    let s: Vec<f32> = (0..1000)
        .map(|i| ((i * 37 % 101) as f32 / 12.5) - 4.0)
        .collect();
    let mut buf = s.clone();
    let t = time(|| {
        buf.copy_from_slice(&s);
        softmax::forward_inplace(black_box(&mut buf));
        black_box(&buf);
    });
    println!("softmax n = 1000 (+ copy)  {:8.3} µs", t * 1e6);
}
