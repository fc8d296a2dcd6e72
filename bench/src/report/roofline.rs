//! The roofline section of `moe report`: each model scenario against the
//! machine limits measured in the *same* run (`machine_fma_peak` for FLOP/s,
//! `machine_bandwidth` for bytes/s).
//!
//! Per scenario: analytic FLOPs (the harness's `flops.rs`, via the file's
//! `gflops × median`), a byte count, and the limit
//! * forward: `max(FLOPs / peak, bytes / bandwidth)` with bytes = the
//!   parameters read once (`4·P`), the least a forward pass must move;
//! * train step: `FLOPs / peak + bytes / bandwidth` with bytes = the optimizer
//!   pass (read w, g, m, v; write w, m, v, g ← 0: `32·P`), which is a separate,
//!   memory-bound phase after the compute-bound backward (the limit).
//!
//! `fraction = limit / achieved` (1 = at the limit). The tiny model's state
//! (8.7 MB) fits in L3, so its DRAM-bandwidth term overstates its memory time
//! (its limit is generous, its fraction optimistic on the memory side).
//!
//! Below each run's table, `kernel_rmsnorm` against its FLOP limit alone
//! (`achieved ÷ (FLOPs / peak)`; its operands sit in L1).

use std::fmt::Write as _;

use super::Run;
use crate::harness::scenarios::{self, adamw_bytes, AdamPass, Kind, Workload};

/// The model scenarios the section covers, in order.
pub const MODEL_IDS: [&str; 4] = [
    "dispatch_warm",
    "scale_forward_256",
    "mem_train_step",
    "scale_train_256",
];

/// One row of the roofline table.
#[derive(Debug, Clone, PartialEq)]
pub struct Roof {
    /// Scenario id.
    pub id: &'static str,
    /// Analytic FLOPs per iteration.
    pub flops: f64,
    /// Bytes of the bandwidth term per iteration.
    pub bytes: f64,
    /// Median wall time, ns.
    pub achieved_ns: f64,
    /// `flops / peak`, ns.
    pub flop_ns: f64,
    /// `bytes / bandwidth`, ns.
    pub mem_ns: f64,
    /// The limit (see the module doc), ns.
    pub limit_ns: f64,
}

impl Roof {
    /// Achieved GFLOP/s.
    pub fn gflops(&self) -> f64 {
        self.flops / self.achieved_ns
    }
    /// `limit / achieved` (1 = at the limit).
    pub fn fraction(&self) -> f64 {
        self.limit_ns / self.achieved_ns
    }
    /// Arithmetic intensity, FLOP/byte.
    pub fn intensity(&self) -> f64 {
        self.flops / self.bytes
    }
}

/// `(FMA peak GFLOP/s, bandwidth GB/s)` measured in `run`, if it has both.
pub fn limits(run: &Run) -> Option<(f64, f64)> {
    let peak = run.gflops("machine_fma_peak")?;
    let bw_bytes = run.get("machine_bandwidth", &["params", "bytes_per_iter"])?;
    let bw = bw_bytes / run.median("machine_bandwidth")?;
    (peak > 0.0 && bw > 0.0 && peak.is_finite() && bw.is_finite()).then_some((peak, bw))
}

/// The limit of a phase-by-phase step: a forward overlaps compute and weight
/// reads (`max`); a train step's optimizer pass follows its backward (`+`).
pub fn limit(flop_ns: f64, mem_ns: f64, train: bool) -> f64 {
    if train {
        flop_ns + mem_ns
    } else {
        flop_ns.max(mem_ns)
    }
}

/// The roofline rows of `run` (empty without both machine limits).
pub fn rows(run: &Run) -> Vec<Roof> {
    let Some((peak, bw)) = limits(run) else {
        return Vec::new();
    };
    MODEL_IDS
        .iter()
        .filter_map(|&id| {
            let Kind::Model {
                profile, workload, ..
            } = scenarios::find(id)?.kind
            else {
                return None;
            };
            let achieved_ns = run.median(id)?;
            let flops = run.gflops(id)? * achieved_ns;
            let p = profile.config().param_counts().total;
            let (bytes, train) = match workload {
                Workload::Forward => (4.0 * p as f64, false),
                Workload::TrainStep => (adamw_bytes(p as usize, AdamPass::Zeroing) as f64, true),
            };
            let (flop_ns, mem_ns) = (flops / peak, bytes / bw);
            let limit_ns = limit(flop_ns, mem_ns, train);
            (achieved_ns > 0.0).then_some(Roof {
                id,
                flops,
                bytes,
                achieved_ns,
                flop_ns,
                mem_ns,
                limit_ns,
            })
        })
        .collect()
}

/// The row kernels the section holds against the FLOP limit alone (the
/// issue's `kernel_rmsnorm` target: within 3× of `FLOPs / peak`). Not
/// `kernel_softmax`: its conventional 5 FLOPs per element do not count the
/// ~50 instructions of a vector `exp`, so its ratio would say nothing.
pub const KERNEL_IDS: [&str; 1] = ["kernel_rmsnorm"];

/// `(id, FLOPs, achieved ns, FLOP-limit ns)` of each [`KERNEL_IDS`] entry of
/// `run` (empty without both machine limits). Their operands sit in L1, so
/// no bandwidth term applies.
pub fn kernel_rows(run: &Run) -> Vec<(&'static str, f64, f64, f64)> {
    let Some((peak, _)) = limits(run) else {
        return Vec::new();
    };
    KERNEL_IDS
        .iter()
        .filter_map(|&id| {
            let achieved_ns = run.median(id).filter(|&t| t > 0.0)?;
            let flops = run.gflops(id)? * achieved_ns;
            Some((id, flops, achieved_ns, flops / peak))
        })
        .collect()
}

/// The Markdown section (nothing when no run has both machine limits).
pub fn section(o: &mut String, runs: &[Run], plot_link: Option<String>) {
    let with: Vec<(&Run, (f64, f64))> = runs
        .iter()
        .filter_map(|r| limits(r).map(|l| (r, l)))
        .collect();
    if with.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "## Roofline: model scenarios against this run's machine limits\n"
    );
    let _ = writeln!(
        o,
        "FLOP limit = analytic FLOPs ÷ `machine_fma_peak`; bandwidth limit = bytes ÷ `machine_bandwidth` \
         (STREAM triad), both measured in the same run as the scenario. Forward: bytes = the parameters read \
         once (4·P), limit = max of the two. Train step: bytes = the AdamW pass with gradient zeroing \
         (32·P: read w, g, m, v; write w, m, v, g), limit = FLOP time + memory time (the optimizer runs after \
         the backward). Fraction = limit ÷ achieved (1 = at the limit). The tiny model's 8.7 MB state fits in \
         L3, so its bandwidth term uses DRAM bandwidth it does not need.\n"
    );
    for (r, (peak, bw)) in with {
        // A 16-lane peak loop also timed the 8-lane one (`extra.ymm_gflops`).
        let ymm = match r.get("machine_fma_peak", &["extra", "ymm_gflops"]) {
            Some(y) if y.is_finite() && y > 0.0 => format!(
                " (16-lane `zmm` FMA chains, the widest the GEMM uses; 8-lane `ymm` chains \
                 {y:.1} GFLOP/s in the same run)"
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "**{}**: FMA peak {peak:.1} GFLOP/s{ymm}, bandwidth {bw:.1} GB/s.\n",
            r.name
        );
        let _ = writeln!(
            o,
            "| scenario | MFLOP | MB | achieved | GFLOP/s | FLOP limit | bandwidth limit | limit | fraction of limit |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for x in rows(r) {
            let _ = writeln!(
                o,
                "| `{}` | {:.1} | {:.1} | {} | {:.1} | {} | {} | {} | {:.0} % |",
                x.id,
                x.flops * 1e-6,
                x.bytes * 1e-6,
                crate::fmt::fmt_ns(x.achieved_ns),
                x.gflops(),
                crate::fmt::fmt_ns(x.flop_ns),
                crate::fmt::fmt_ns(x.mem_ns),
                crate::fmt::fmt_ns(x.limit_ns),
                100.0 * x.fraction()
            );
        }
        let _ = writeln!(o);
        let kernels = kernel_rows(r);
        if !kernels.is_empty() {
            let _ = writeln!(
                o,
                "| row kernel | FLOP | achieved | FLOP limit | achieved ÷ limit |\n|---|---:|---:|---:|---:|"
            );
            for (id, flops, achieved_ns, flop_ns) in kernels {
                let _ = writeln!(
                    o,
                    "| `{id}` | {flops:.0} | {} | {} | {:.2}× |",
                    crate::fmt::fmt_ns(achieved_ns),
                    crate::fmt::fmt_ns(flop_ns),
                    achieved_ns / flop_ns
                );
            }
            let _ = writeln!(o);
        }
    }
    if let Some(link) = plot_link {
        let _ = writeln!(
            o,
            "![Roofline: achieved GFLOP/s vs arithmetic intensity]({link})\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_max_for_forward_and_sum_for_training() {
        let r = Roof {
            id: "x",
            flops: 100.0,
            bytes: 10.0,
            achieved_ns: 50.0,
            flop_ns: 10.0,
            mem_ns: 5.0,
            limit_ns: 15.0,
        };
        assert_eq!(r.fraction(), 0.3);
        assert_eq!(r.gflops(), 2.0);
        assert_eq!(r.intensity(), 10.0);
        assert_eq!(limit(10.0, 5.0, false), 10.0);
        assert_eq!(limit(3.0, 5.0, false), 5.0);
        assert_eq!(limit(10.0, 5.0, true), 15.0);
    }
}
