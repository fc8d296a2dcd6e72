//! E4 — token embedding: `x[r] = E[token[r]]`, `E: [v, c]`.
//!
//! Backward is a scatter-add by token id: `dE[token[r]] += dx[r]`.

use crate::error::{Error, Result};

/// `Err` unless `x: [n, c]` with `n = tokens.len()`, `c > 0`, and `table`
/// holds whole rows of `c`; returns the vocabulary size `v = table.len() / c`.
fn check(x_arg: &'static str, x: usize, tokens: &[u32], table: usize, c: usize) -> Result<usize> {
    if c == 0 {
        return Err(Error::EmptyInput { arg: "c" });
    }
    if x != tokens.len() * c {
        return Err(Error::ShapeMismatch {
            arg: x_arg,
            expected: tokens.len() * c,
            actual: x,
        });
    }
    if !table.is_multiple_of(c) {
        return Err(Error::ShapeMismatch {
            arg: "table (whole rows of c)",
            expected: (table / c + 1) * c,
            actual: table,
        });
    }
    let v = table / c;
    if let Some(index) = tokens.iter().position(|&t| t as usize >= v) {
        return Err(Error::TokenOutOfRange {
            arg: "tokens",
            index,
            token: tokens[index],
            vocab: v,
        });
    }
    Ok(v)
}

/// E4 forward: `x[r] = E[token[r]]`. `x: [n, c]`, `tokens: [n]`, `table: [v, c]`.
///
/// # Errors
/// [`Error::EmptyInput`] for `c = 0`, [`Error::ShapeMismatch`] unless
/// `x.len() = n·c` and `table` is whole rows, [`Error::TokenOutOfRange`] for
/// a token `>= v` (checked before anything is written).
pub fn forward(x: &mut [f32], tokens: &[u32], table: &[f32], c: usize) -> Result<()> {
    check("x", x.len(), tokens, table.len(), c)?;
    for (xr, &tok) in x.chunks_exact_mut(c).zip(tokens) {
        let at = tok as usize * c;
        xr.copy_from_slice(&table[at..at + c]);
    }
    Ok(())
}

/// E4 on a weight view: [`forward`] for `f32`; bf16 rows are widened
/// (exactly) on lookup.
///
/// # Errors
/// As [`forward`].
pub fn forward_w(
    x: &mut [f32],
    tokens: &[u32],
    table: crate::linear::Weight,
    c: usize,
) -> Result<()> {
    check("x", x.len(), tokens, table.len(), c)?;
    for (xr, &tok) in x.chunks_exact_mut(c).zip(tokens) {
        let at = tok as usize * c;
        table.copy_to_f32(at..at + c, xr);
    }
    Ok(())
}

/// E24 (backward of E4): `dE[token[r]] += dx[r]`; accumulates into
/// `dtable: [v, c]` from `dx: [n, c]`.
///
/// # Errors
/// As [`forward`] (with `dx` for `x`, `dtable` for `table`).
pub fn backward(dtable: &mut [f32], dx: &[f32], tokens: &[u32], c: usize) -> Result<()> {
    check("dx", dx.len(), tokens, dtable.len(), c)?;
    for (dr, &tok) in dx.chunks_exact(c).zip(tokens) {
        let at = tok as usize * c;
        for (d, &g) in dtable[at..at + c].iter_mut().zip(dr) {
            *d += g;
        }
    }
    Ok(())
}
