//! CONTRACT §6: every invalid input gets the right typed error (never a
//! panic), and its message names the argument and the values.

use moe_core::{
    AdamWConfig, Config, Error, LrSchedule, MoETransformer, Mode, TrainConfig, Trainer,
};

fn tiny() -> MoETransformer {
    MoETransformer::new(&Config::tiny(), 42).unwrap()
}

fn msg(e: &Error) -> String {
    e.to_string()
}

#[test]
fn invalid_configs_are_rejected_with_the_field_named() {
    let base = Config::tiny();
    let cases: Vec<(&str, Config)> = vec![
        (
            "vocab_size",
            Config {
                vocab_size: 0,
                ..base
            },
        ),
        (
            "hidden_size",
            Config {
                hidden_size: 0,
                ..base
            },
        ),
        (
            "num_hidden_layers",
            Config {
                num_hidden_layers: 0,
                ..base
            },
        ),
        (
            "num_attention_heads",
            Config {
                num_attention_heads: 0,
                ..base
            },
        ),
        (
            "num_key_value_heads",
            Config {
                num_key_value_heads: 0,
                ..base
            },
        ),
        (
            "num_key_value_heads",
            Config {
                num_key_value_heads: 3,
                ..base
            },
        ), // 4 % 3 != 0
        (
            "head_dim",
            Config {
                head_dim: 0,
                ..base
            },
        ),
        (
            "head_dim",
            Config {
                head_dim: 15,
                ..base
            },
        ), // odd
        (
            "intermediate_size",
            Config {
                intermediate_size: 0,
                ..base
            },
        ),
        (
            "num_local_experts",
            Config {
                num_local_experts: 0,
                ..base
            },
        ),
        (
            "num_experts_per_tok",
            Config {
                num_experts_per_tok: 0,
                ..base
            },
        ),
        (
            "num_experts_per_tok",
            Config {
                num_experts_per_tok: 5,
                ..base
            },
        ), // k > e
        (
            "max_position_embeddings",
            Config {
                max_position_embeddings: 0,
                ..base
            },
        ),
        (
            "rms_norm_eps",
            Config {
                rms_norm_eps: f32::NAN,
                ..base
            },
        ),
        (
            "rope_base",
            Config {
                rope_base: -1.0,
                ..base
            },
        ),
    ];
    for (field, cfg) in cases {
        for err in [
            cfg.validate().unwrap_err(),
            MoETransformer::new(&cfg, 1).unwrap_err(),
            moe_core::Workspace::new(&cfg, 1, 1, Mode::Inference).unwrap_err(),
        ] {
            match &err {
                Error::InvalidConfig { field: f, .. } => assert_eq!(*f, field, "{cfg:?}"),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
            assert!(msg(&err).contains(field), "{}", msg(&err));
        }
    }
    assert!(base.validate().is_ok());
}

#[test]
fn empty_inputs_are_rejected() {
    let m = tiny();
    let mut ws = m.workspace(2, 8, Mode::Inference).unwrap();
    assert_eq!(
        m.forward(&mut ws, &[], 0, 8).unwrap_err(),
        Error::EmptyInput { arg: "batch" }
    );
    assert_eq!(
        m.forward(&mut ws, &[], 2, 0).unwrap_err(),
        Error::EmptyInput { arg: "seq" }
    );
    assert_eq!(
        m.workspace(0, 8, Mode::Inference).unwrap_err(),
        Error::EmptyInput { arg: "max_batch" }
    );
    assert_eq!(
        m.workspace(1, 0, Mode::Training).unwrap_err(),
        Error::EmptyInput { arg: "max_seq" }
    );
    let mut tr = Trainer::new(tiny(), TrainConfig::default(), 2, 8).unwrap();
    assert_eq!(
        tr.train_step(&[], &[], 0, 8).unwrap_err(),
        Error::EmptyInput { arg: "batch" }
    );
}

#[test]
fn wrong_lengths_are_shape_mismatches_naming_the_argument() {
    let m = tiny();
    let mut ws = m.workspace(2, 8, Mode::Inference).unwrap();
    let err = m.forward(&mut ws, &[1, 2, 3], 2, 8).unwrap_err();
    assert_eq!(
        err,
        Error::ShapeMismatch {
            arg: "tokens",
            expected: 16,
            actual: 3
        }
    );
    let text = msg(&err);
    assert!(
        text.contains("tokens") && text.contains("16") && text.contains('3'),
        "{text}"
    );
    let mut tr = Trainer::new(tiny(), TrainConfig::default(), 2, 8).unwrap();
    let x = vec![1u32; 16];
    assert_eq!(
        tr.train_step(&x, &x[..15], 2, 8).unwrap_err(),
        Error::ShapeMismatch {
            arg: "targets",
            expected: 16,
            actual: 15
        }
    );
    let mut ws = m.workspace(2, 8, Mode::Training).unwrap();
    let mut short = vec![0.0; 10];
    let err = m
        .loss_and_grad(&mut ws, &mut short, &x, &x, 2, 8, 0.01, None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "grads",
                actual: 10,
                ..
            }
        ),
        "{err:?}"
    );
    let mut grads = vec![0.0; m.layout().total];
    let mut logits = vec![0.0; 5];
    let err = m
        .loss_and_grad(&mut ws, &mut grads, &x, &x, 2, 8, 0.01, Some(&mut logits))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "logits_out",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        MoETransformer::from_params(&Config::tiny(), vec![0.0; 7]).unwrap_err(),
        Error::ShapeMismatch {
            arg: "params",
            actual: 7,
            ..
        }
    ));
}

#[test]
fn out_of_range_token_ids_are_rejected_with_their_position() {
    let m = tiny();
    let mut ws = m.workspace(1, 4, Mode::Inference).unwrap();
    let err = m.forward(&mut ws, &[1, 2, 1000, 3], 1, 4).unwrap_err();
    assert_eq!(
        err,
        Error::TokenOutOfRange {
            arg: "tokens",
            index: 2,
            token: 1000,
            vocab: 1000
        }
    );
    assert!(
        msg(&err).contains("1000") && msg(&err).contains("tokens[2]"),
        "{}",
        msg(&err)
    );
    let mut tr = Trainer::new(tiny(), TrainConfig::default(), 1, 4).unwrap();
    let err = tr
        .train_step(&[1, 2, 3, 4], &[1, 1000, 3, 4], 1, 4)
        .unwrap_err();
    assert_eq!(
        err,
        Error::TokenOutOfRange {
            arg: "targets",
            index: 1,
            token: 1000,
            vocab: 1000
        }
    );
    // u32::MAX is IGNORE_INDEX: allowed in targets, never as an input token.
    assert!(tr
        .train_step(&[1, 2, 3, 4], &[1, u32::MAX, 3, 4], 1, 4)
        .is_ok());
    let err = tr
        .train_step(&[1, u32::MAX, 3, 4], &[1, 2, 3, 4], 1, 4)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                arg: "tokens",
                index: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn sequences_and_batches_beyond_the_plan_are_errors_not_reallocations() {
    let m = tiny();
    assert_eq!(
        m.workspace(1, 513, Mode::Inference).unwrap_err(),
        Error::SeqTooLong { seq: 513, max: 512 }
    );
    let mut ws = m.workspace(2, 8, Mode::Inference).unwrap();
    let x = [1u32; 9 * 3];
    assert_eq!(
        m.forward(&mut ws, &x[..9], 1, 9).unwrap_err(),
        Error::WorkspaceTooSmall {
            dim: "seq",
            requested: 9,
            planned: 8
        }
    );
    assert_eq!(
        m.forward(&mut ws, &x[..24], 3, 8).unwrap_err(),
        Error::WorkspaceTooSmall {
            dim: "batch",
            requested: 3,
            planned: 2
        }
    );
    let long = vec![1u32; 513];
    assert_eq!(
        m.forward(&mut ws, &long, 1, 513).unwrap_err(),
        Error::SeqTooLong { seq: 513, max: 512 }
    );
    // The workspace still works after the errors.
    assert!(m.forward(&mut ws, &x[..16], 2, 8).is_ok());
}

#[test]
fn a_workspace_of_another_model_or_mode_is_rejected() {
    let m = tiny();
    let other = Config {
        num_local_experts: 8,
        ..Config::tiny()
    };
    let mut ws = moe_core::Workspace::new(&other, 1, 4, Mode::Inference).unwrap();
    assert!(matches!(
        m.forward(&mut ws, &[1, 2, 3, 4], 1, 4).unwrap_err(),
        Error::WorkspaceMismatch { .. }
    ));
    let mut infer = m.workspace(1, 4, Mode::Inference).unwrap();
    let mut grads = vec![0.0; m.layout().total];
    let err = m
        .loss_and_grad(
            &mut infer,
            &mut grads,
            &[1, 2, 3, 4],
            &[1, 2, 3, 4],
            1,
            4,
            0.0,
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Error::WorkspaceMismatch { .. }), "{err:?}");
}

#[test]
fn non_finite_parameters_logits_and_losses_are_reported() {
    let cfg = Config::tiny();
    let mut p = MoETransformer::new(&cfg, 1)
        .unwrap()
        .params()
        .unwrap()
        .to_vec();
    p[123] = f32::NAN;
    assert_eq!(
        MoETransformer::from_params(&cfg, p).unwrap_err(),
        Error::NonFinite {
            what: "params",
            index: 123
        }
    );
    // Finite but huge weights overflow the logits to ±Inf.
    let mut m = MoETransformer::new(&cfg, 1).unwrap();
    let lm = m.layout().lm_head.start;
    m.params_mut().unwrap()[lm..]
        .iter_mut()
        .for_each(|w| *w = 3e38);
    let mut ws = m.workspace(1, 4, Mode::Inference).unwrap();
    let err = m.forward(&mut ws, &[1, 2, 3, 4], 1, 4).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { what: "logits", .. }),
        "{err:?}"
    );
    let params_before = m.params().unwrap().to_vec();
    let mut tr = Trainer::new(m, TrainConfig::default(), 1, 4).unwrap();
    let err = tr
        .train_step(&[1, 2, 3, 4], &[2, 3, 4, 5], 1, 4)
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
    // A failed step leaves the weights untouched.
    assert_eq!(tr.model().params().unwrap(), &params_before[..]);
}

#[test]
fn invalid_training_parameters_are_rejected() {
    let bad = [
        (
            "lr",
            TrainConfig {
                schedule: LrSchedule::constant(f32::NAN),
                ..TrainConfig::default()
            },
        ),
        (
            "beta1",
            TrainConfig {
                adamw: AdamWConfig {
                    beta1: 1.0,
                    ..AdamWConfig::default()
                },
                ..TrainConfig::default()
            },
        ),
        (
            "beta2",
            TrainConfig {
                adamw: AdamWConfig {
                    beta2: -0.1,
                    ..AdamWConfig::default()
                },
                ..TrainConfig::default()
            },
        ),
        (
            "eps",
            TrainConfig {
                adamw: AdamWConfig {
                    eps: 0.0,
                    ..AdamWConfig::default()
                },
                ..TrainConfig::default()
            },
        ),
        (
            "weight_decay",
            TrainConfig {
                adamw: AdamWConfig {
                    weight_decay: f32::INFINITY,
                    ..AdamWConfig::default()
                },
                ..TrainConfig::default()
            },
        ),
        (
            "clip_grad_norm",
            TrainConfig {
                clip_grad_norm: Some(0.0),
                ..TrainConfig::default()
            },
        ),
        (
            "aux_alpha",
            TrainConfig {
                aux_alpha: -1.0,
                ..TrainConfig::default()
            },
        ),
        (
            "warmup",
            TrainConfig {
                schedule: LrSchedule {
                    lr: 1e-3,
                    min_lr: 0.0,
                    warmup: 10,
                    total: 5,
                },
                ..TrainConfig::default()
            },
        ),
    ];
    for (param, cfg) in bad {
        match Trainer::new(tiny(), cfg, 1, 4).unwrap_err() {
            Error::InvalidParameter { param: p, .. } => assert_eq!(p, param),
            other => panic!("{param}: got {other:?}"),
        }
    }
    let m = tiny();
    let mut ws = m.workspace(1, 4, Mode::Training).unwrap();
    let mut grads = vec![0.0; m.layout().total];
    let err = m
        .loss_and_grad(
            &mut ws,
            &mut grads,
            &[1, 2, 3, 4],
            &[1, 2, 3, 4],
            1,
            4,
            f32::NAN,
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidParameter {
                param: "aux_alpha",
                ..
            }
        ),
        "{err:?}"
    );
}
