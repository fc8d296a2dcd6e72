//! E4 — token embedding: `x[r] = E[token[r]]`, `E: [v, c]`.
//!
//! Backward is a scatter-add by token id: `dE[token[r]] += dx[r]`.

/// E4 forward: `x[r] = E[token[r]]`. `x: [n, c]`, `tokens: [n]` (already
/// validated `< v`), `table: [v, c]`.
pub fn forward(x: &mut [f32], tokens: &[u32], table: &[f32], c: usize) {
    for (xr, &tok) in x.chunks_exact_mut(c).zip(tokens) {
        let at = tok as usize * c;
        xr.copy_from_slice(&table[at..at + c]);
    }
}

/// E24 (backward of E4): `dE[token[r]] += dx[r]`; accumulates into
/// `dtable: [v, c]` from `dx: [n, c]`.
pub fn backward(dtable: &mut [f32], dx: &[f32], tokens: &[u32], c: usize) {
    for (dr, &tok) in dx.chunks_exact(c).zip(tokens) {
        let at = tok as usize * c;
        for (d, &g) in dtable[at..at + c].iter_mut().zip(dr) {
            *d += g;
        }
    }
}
