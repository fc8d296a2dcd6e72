//! Training converges: the tiny model learns a fixed token stream.

use moe_core::{Config, LrSchedule, MoETransformer, TrainConfig, Trainer};

#[test]
fn tiny_model_learns_a_fixed_stream_deterministically() {
    // A periodic stream over 40 ids: next-token prediction is learnable.
    let stream: Vec<u32> = (0..200).map(|i| ((i * 7) % 40 + 100) as u32).collect();
    let (b, t) = (2, 16);
    let run = || {
        let cfg = TrainConfig {
            schedule: LrSchedule {
                lr: 3e-3,
                min_lr: 3e-4,
                warmup: 20,
                total: 300,
            },
            ..TrainConfig::default()
        };
        let mut tr =
            Trainer::new(MoETransformer::new(&Config::tiny(), 42).unwrap(), cfg, b, t).unwrap();
        let mut losses = Vec::new();
        for step in 0..300 {
            let mut x = Vec::with_capacity(b * t);
            let mut y = Vec::with_capacity(b * t);
            for r in 0..b {
                let s = (step * 5 + r * 37) % (stream.len() - t - 1);
                x.extend_from_slice(&stream[s..s + t]);
                y.extend_from_slice(&stream[s + 1..s + t + 1]);
            }
            losses.push(tr.train_step(&x, &y, b, t).unwrap().ce_loss);
        }
        losses
    };
    let losses = run();
    let first: f32 = losses[..10].iter().sum::<f32>() / 10.0;
    let last: f32 = losses[losses.len() - 10..].iter().sum::<f32>() / 10.0;
    println!("mean CE first 10 steps {first:.4}, last 10 steps {last:.4}");
    assert!(
        first > 6.0,
        "initial CE should be near ln(1000) = 6.9, got {first}"
    );
    assert!(last < 0.5, "CE should fall far below its start, got {last}");
    let again = run();
    assert_eq!(
        losses.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        again.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}
