//! Order statistics of the trial timings.
//!
//! Quantiles use linear interpolation between closest ranks — Hyndman & Fan
//! type 7, the default of NumPy, R and Julia's `quantile` and what the other
//! languages' harnesses use: for sorted `x[0..n]` and `p ∈ [0, 1]`,
//! `h = (n−1)·p`, `Q(p) = x[⌊h⌋] + (h − ⌊h⌋)·(x[⌊h⌋+1] − x[⌊h⌋])`.
//! The median is `Q(0.5)` (the mean of the two middle values for even `n`),
//! `p95 = Q(0.95)`, `IQR = Q(0.75) − Q(0.25)`. Values are written to the JSON
//! rounded to whole nanoseconds.

/// Type-7 quantile of already sorted values; `None` if empty.
pub fn quantile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let h = (n - 1) as f64 * p.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// Type-7 quantile of integer samples, rounded to the nearest integer (0 if empty).
pub fn quantile_u64(values: &[u64], p: f64) -> u64 {
    let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
    v.sort_by(f64::total_cmp);
    quantile_sorted(&v, p).map_or(0, |q| q.round() as u64)
}

/// Median (type 7) of integer samples, rounded.
pub fn median_u64(values: &[u64]) -> u64 {
    quantile_u64(values, 0.5)
}

/// The summary written for `timings_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// `Q(0.5)`.
    pub median: u64,
    /// `Q(0.95)`.
    pub p95: u64,
    /// Smallest sample.
    pub min: u64,
    /// Largest sample.
    pub max: u64,
    /// `Q(0.75) − Q(0.25)`.
    pub iqr: u64,
}

/// Summarises integer samples (all zero if empty).
pub fn summarize(values: &[u64]) -> Summary {
    let q = |p| quantile_u64(values, p);
    Summary {
        median: q(0.5),
        p95: q(0.95),
        min: values.iter().copied().min().unwrap_or(0),
        max: values.iter().copied().max().unwrap_or(0),
        iqr: q(0.75).saturating_sub(q(0.25)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type7_matches_numpy() {
        // numpy.quantile([1..10], [.25, .5, .75, .95]) = 3.25, 5.5, 7.75, 9.55
        let x: Vec<f64> = (1..=10).map(f64::from).collect();
        let q = |p| quantile_sorted(&x, p).unwrap();
        assert!((q(0.25) - 3.25).abs() < 1e-12);
        assert!((q(0.5) - 5.5).abs() < 1e-12);
        assert!((q(0.75) - 7.75).abs() < 1e-12);
        assert!((q(0.95) - 9.55).abs() < 1e-12);
        assert_eq!(quantile_sorted(&[], 0.5), None);
        assert_eq!(quantile_sorted(&[4.0], 0.95), Some(4.0));
    }

    #[test]
    fn summary_of_unsorted_integers() {
        let s = summarize(&[50, 10, 40, 20, 30]);
        assert_eq!(
            s,
            Summary {
                median: 30,
                p95: 48,
                min: 10,
                max: 50,
                iqr: 20
            }
        );
        assert_eq!(median_u64(&[0, 0, 7, 0]), 0);
        assert_eq!(median_u64(&[1, 2]), 2); // 1.5 rounds half away from zero
    }
}
