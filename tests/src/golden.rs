//! Golden fixtures written by `tests/golden/make_golden.py` (Hugging Face
//! Mixtral, float32) and the closed-form weight formula both sides share.
//! Format: `tests/golden/README.md`.

use std::collections::HashMap;
use std::path::PathBuf;

use moe_core::{Config, Layout};
use safetensors::{Dtype, SafeTensors};

/// SplitMix64 finaliser (wrapping u64 arithmetic).
pub fn splitmix64(x: u64) -> u64 {
    let x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `u ∈ [-1, 1)` for element `i` of tensor `t` (exact in f32).
pub fn formula_u(seed: u64, t: u64, i: u64) -> f32 {
    let key = seed
        .wrapping_mul(0xD1B5_4A32_D192_ED03)
        .wrapping_add(t.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(i);
    let m = (splitmix64(key) >> 40) as i64;
    ((m - (1 << 23)) as f64 / (1u64 << 23) as f64) as f32
}

/// The flat parameter buffer of `cfg` from the golden formula with `seed`.
pub fn formula_params(cfg: &Config, seed: u64) -> Vec<f32> {
    let layout = Layout::new(cfg).expect("valid config");
    let mut params = vec![0.0f32; layout.total];
    for (t, info) in layout.tensors().iter().enumerate() {
        let out = &mut params[info.range()];
        let kind = if info.shape.len() == 1 {
            0
        } else if info.offset == layout.embed.start {
            1
        } else {
            2
        };
        let scale = if kind == 2 {
            (3.0f64 / info.shape[1] as f64).sqrt() as f32
        } else {
            1.0
        };
        for (i, w) in out.iter_mut().enumerate() {
            let u = formula_u(seed, t as u64, i as u64);
            *w = match kind {
                0 => 1.0f32 + 0.25f32 * u,
                1 => u,
                _ => scale * u,
            };
        }
    }
    params
}

/// Sampling stride of the fixtures: `max(1, numel / 97)`.
pub fn sample_stride(numel: usize) -> usize {
    (numel / 97).max(1)
}

/// One fixture file, decoded.
#[derive(Debug)]
pub struct Fixture {
    /// Raw tensors by name: (dtype, shape, little-endian bytes).
    tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    /// `__metadata__`.
    pub metadata: HashMap<String, String>,
}

/// Directory of the committed fixtures.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/fixtures")
}

impl Fixture {
    /// Loads `tests/golden/fixtures/NAME.safetensors`.
    pub fn load(name: &str) -> Fixture {
        let path = fixture_dir().join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("fixture header");
        let metadata = meta.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).expect("fixture");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
            .collect();
        Fixture { tensors, metadata }
    }

    /// Shape of a tensor.
    pub fn shape(&self, name: &str) -> &[usize] {
        &self.get(name).1
    }

    fn get(&self, name: &str) -> &(Dtype, Vec<usize>, Vec<u8>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor `{name}`"))
    }

    /// An F32 tensor.
    pub fn f32(&self, name: &str) -> Vec<f32> {
        let (dt, _, data) = self.get(name);
        assert_eq!(*dt, Dtype::F32, "{name}");
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// An F64 tensor.
    pub fn f64(&self, name: &str) -> Vec<f64> {
        let (dt, _, data) = self.get(name);
        assert_eq!(*dt, Dtype::F64, "{name}");
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// An I64 tensor of token ids, as u32.
    pub fn tokens(&self, name: &str) -> Vec<u32> {
        let (dt, _, data) = self.get(name);
        assert_eq!(*dt, Dtype::I64, "{name}");
        data.chunks_exact(8)
            .map(|b| u32::try_from(i64::from_le_bytes(b.try_into().unwrap())).unwrap())
            .collect()
    }

    /// A scalar metadata value parsed as f32.
    pub fn meta_f32(&self, key: &str) -> f32 {
        self.metadata[key].parse().unwrap()
    }
}

/// `|a − b| ≤ atol + rtol·|b|` elementwise; returns the max abs error and
/// the first violating index.
pub fn compare(actual: &[f32], expected: &[f32], atol: f32, rtol: f32) -> (f32, Option<usize>) {
    assert_eq!(actual.len(), expected.len());
    let mut max = 0.0f32;
    let mut bad = None;
    for (i, (&a, &b)) in actual.iter().zip(expected).enumerate() {
        let err = (a - b).abs();
        max = max.max(err);
        let ok = err <= atol + rtol * b.abs(); // false for NaN
        if !ok && bad.is_none() {
            bad = Some(i);
        }
    }
    (max, bad)
}
