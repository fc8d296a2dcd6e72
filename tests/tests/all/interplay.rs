//! Where the session's features meet: a sliding window under the
//! low-memory training modes, and ignored targets under data-parallel
//! micro-batches (one micro-batch may have no counted target at all).

use moe_core::{
    Config, Error, Memory, MoETransformer, Mode, Pool, TrainConfig, Trainer, IGNORE_INDEX,
};

fn tokens(n: usize, v: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ salt) % v as u32)
        .collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn sliding_window_gives_the_same_gradients_in_every_memory_mode() {
    let cfg = Config {
        sliding_window: Some(5),
        ..Config::tiny()
    };
    let (b, t) = (2, 16);
    let m = MoETransformer::new(&cfg, 11).unwrap();
    let v = cfg.vocab_size;
    let (x, y) = (tokens(b * t, v, 1), tokens(b * t, v, 2));
    let run = |mem: Memory| {
        let mut ws = m.workspace_with(b, t, Mode::Training, mem).unwrap();
        let mut g = vec![0.0; m.layout().total];
        let l = m
            .loss_and_grad(&mut ws, &mut g, &x, &y, b, t, 0.02, None)
            .unwrap();
        (l, g)
    };
    let (l0, g0) = run(Memory::DEFAULT);
    let (l1, g1) = run(Memory::LOW);
    assert_eq!(l1.loss.to_bits(), l0.loss.to_bits());
    assert!(bits(&g1) == bits(&g0), "window: LOW gradients differ");
    // The window is live at this length: without it the loss changes.
    let full = MoETransformer::from_params(&Config::tiny(), m.params().unwrap().to_vec()).unwrap();
    let mut ws = full.workspace(b, t, Mode::Training).unwrap();
    let mut g = vec![0.0; m.layout().total];
    let l = full
        .loss_and_grad(&mut ws, &mut g, &x, &y, b, t, 0.02, None)
        .unwrap();
    assert_ne!(l.loss.to_bits(), l0.loss.to_bits(), "window had no effect");
}

#[test]
fn ignored_targets_under_micro_batches_match_the_single_pass() {
    let cfg = Config::tiny();
    let model = MoETransformer::new(&cfg, 5).unwrap();
    let (b, t) = (4, 8);
    let v = cfg.vocab_size;
    let x = tokens(b * t, v, 3);
    let mut y = tokens(b * t, v, 4);
    // Sequence 1 (a whole micro-batch of the 4) ignored; 3 more scattered.
    y[t..2 * t].iter_mut().for_each(|y| *y = IGNORE_INDEX);
    for i in [0, 17, 30] {
        y[i] = IGNORE_INDEX;
    }
    let tc = TrainConfig::default();
    let mut ws = model.workspace(b, t, Mode::Training).unwrap();
    let mut g1 = vec![0.0; model.layout().total];
    let l1 = model
        .loss_and_grad(&mut ws, &mut g1, &x, &y, b, t, tc.aux_alpha, None)
        .unwrap();
    // The CE averages the 21 counted rows (not the 32 positions).
    let mut tr = Trainer::with_threads(model.clone(), tc, b, t, 2).unwrap();
    assert_eq!(tr.micro_batches(), 4);
    let l4 = tr.compute_gradients(&x, &y, b, t, None).unwrap();
    assert_eq!(
        l4.ce.to_bits(),
        l1.ce.to_bits(),
        "CE {} vs {}",
        l4.ce,
        l1.ce
    );
    let worst = tr
        .grads()
        .iter()
        .zip(&g1)
        .map(|(&a, &w)| (a - w).abs() / (1e-5 + 1e-4 * w.abs()))
        .fold(0.0f32, f32::max);
    assert!(worst <= 1.0, "gradient error {worst} × tolerance");
    // One thread, same micro-batches: the same bits as two.
    let mut one = Trainer::with_pool(model.clone(), tc, b, t, Pool::new(1).unwrap(), 4).unwrap();
    one.compute_gradients(&x, &y, b, t, None).unwrap();
    assert!(bits(one.grads()) == bits(tr.grads()));
    // An all-ignored batch is a typed error, on both paths.
    let all = vec![IGNORE_INDEX; b * t];
    let e = tr.train_step(&x, &all, b, t).unwrap_err();
    assert!(
        matches!(
            e,
            Error::EmptyInput {
                arg: "non-ignored targets"
            }
        ),
        "{e:?}"
    );
    let e = model
        .loss_and_grad(&mut ws, &mut g1, &x, &all, b, t, tc.aux_alpha, None)
        .unwrap_err();
    assert!(matches!(e, Error::EmptyInput { .. }), "{e:?}");
    // IGNORE_INDEX is never an input token.
    let mut bad = x.clone();
    bad[3] = IGNORE_INDEX;
    assert!(matches!(
        tr.train_step(&bad, &y, b, t).unwrap_err(),
        Error::TokenOutOfRange { arg: "tokens", .. }
    ));
}
