//! The SVG plots of `moe report` and `moe train` (plotters' SVG backend
//! only: text is written as SVG `<text>` and laid out with plotters' built-in
//! metrics, no font library). Every file is written atomically.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::Run;
use crate::io::atomic::write_atomic;
use crate::Error;

/// Size of the report's plots.
const SIZE: (u32, u32) = (760, 460);
/// Size of `moe train`'s loss plot.
const LOSS_SIZE: (u32, u32) = (900, 520);

// ---------------------------------------------------------------------------------------
// What every chart shares
// ---------------------------------------------------------------------------------------

/// The frame of every chart: title, margin, label areas (`y_label_area` px wide).
fn frame<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &'b str,
    y_label_area: u32,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(42)
        .y_label_area_size(y_label_area);
    builder
}

/// The legend box, at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), Error> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// A legend entry for a line drawn with `style`: a 20 px stroke.
fn line_key(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)
}

/// Draws into a fresh SVG document of `size` and returns its text.
fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), Error>,
) -> Result<String, Error> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(text)
}

/// Writes a plot atomically; an error names the file.
fn save(path: &Path, text: &str) -> Result<(), Error> {
    Ok(write_atomic(path, |w| w.write_all(text.as_bytes()))?)
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    C[i % C.len()]
}

// ---------------------------------------------------------------------------------------
// moe report
// ---------------------------------------------------------------------------------------

/// A metric of one scenario of one run.
type Metric<'a> = &'a dyn Fn(&Run, &str) -> Option<f64>;

/// Named point series, one per run (or run × workload).
type Series = Vec<(String, Vec<(f64, f64)>)>;

/// One line plot over scenario ids placed at x values.
struct LinePlot<'a> {
    file: &'static str,
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    ids: &'a [(f64, String)],
    metric: Metric<'a>,
}

/// Writes every plot the data allows; returns the file names written.
pub(super) fn write_all(runs: &[Run], dir: &Path) -> Result<Vec<&'static str>, Error> {
    let mut written = scaling_plots(runs, dir)?;
    written.extend(thread_plots(runs, dir)?);
    written.extend(one_model_plot(runs, dir)?);
    written.extend(kernel_plot(runs, dir)?);
    written.extend(roofline_plot(runs, dir)?);
    Ok(written)
}

/// Time and allocation vs batch and vs sequence length (memory axis).
fn scaling_plots(runs: &[Run], dir: &Path) -> Result<Vec<&'static str>, Error> {
    let mut written = Vec::new();
    let series = |ids: &[(f64, String)], f: Metric<'_>| -> Series {
        runs.iter()
            .map(|r| {
                (
                    r.name.clone(),
                    ids.iter()
                        .filter_map(|(x, id)| Some((*x, f(r, id)?)))
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, pts)| !pts.is_empty())
            .collect()
    };
    let batch: Vec<(f64, String)> = [1, 2, 4, 8]
        .iter()
        .map(|&b| (f64::from(b), format!("mem_scale_batch_{b}")))
        .collect();
    let seq: Vec<(f64, String)> = [8, 16, 32, 64]
        .iter()
        .map(|&t| (f64::from(t), format!("mem_scale_seq_{t}")))
        .collect();
    let ms = |r: &Run, id: &str| r.median(id).map(|m| m / 1e6);
    let kib = |r: &Run, id: &str| r.alloc_bytes(id).map(|b| b / 1024.0);
    let plots = [
        LinePlot {
            file: "scaling_batch_time.svg",
            title: "Forward time vs batch (seq 32)",
            x_label: "batch",
            y_label: "median (ms)",
            ids: &batch,
            metric: &ms,
        },
        LinePlot {
            file: "scaling_seq_time.svg",
            title: "Forward time vs sequence length (batch 2)",
            x_label: "seq_len",
            y_label: "median (ms)",
            ids: &seq,
            metric: &ms,
        },
        LinePlot {
            file: "scaling_batch_alloc.svg",
            title: "Heap allocation per forward vs batch",
            x_label: "batch",
            y_label: "alloc per trial (KiB)",
            ids: &batch,
            metric: &kib,
        },
        LinePlot {
            file: "scaling_seq_alloc.svg",
            title: "Heap allocation per forward vs sequence length",
            x_label: "seq_len",
            y_label: "alloc per trial (KiB)",
            ids: &seq,
            metric: &kib,
        },
    ];
    for p in plots {
        let s = series(p.ids, p.metric);
        if !s.is_empty() {
            line_plot(&dir.join(p.file), p.title, p.x_label, p.y_label, &s, None)?;
            written.push(p.file);
        }
    }
    Ok(written)
}

/// Throughput and speedup vs threads (parallel axis).
fn thread_plots(runs: &[Run], dir: &Path) -> Result<Vec<&'static str>, Error> {
    let mut written = Vec::new();
    let mut thr = Vec::new();
    let mut spd = Vec::new();
    for r in runs {
        for (label, prefix) in [("forward", "parallel_T"), ("train", "parallel_train_T")] {
            let pts: Vec<(f64, f64)> = [1, 2, 4]
                .iter()
                .filter_map(|&t| Some((f64::from(t), r.tokens_per_sec(&format!("{prefix}{t}"))?)))
                .collect();
            if pts.is_empty() {
                continue;
            }
            if let Some(base) = r.tokens_per_sec(&format!("{prefix}1")) {
                spd.push((
                    format!("{} {label}", r.name),
                    pts.iter().map(|&(t, x)| (t, x / base)).collect(),
                ));
            }
            thr.push((format!("{} {label}", r.name), pts));
        }
    }
    if !thr.is_empty() {
        line_plot(
            &dir.join("thread_throughput.svg"),
            "Throughput vs threads",
            "threads T",
            "tokens/s (all threads)",
            &thr,
            None,
        )?;
        written.push("thread_throughput.svg");
    }
    if !spd.is_empty() {
        let ideal = vec![(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)];
        line_plot(
            &dir.join("thread_speedup.svg"),
            "Speedup vs threads",
            "threads T",
            "throughput(T) / throughput(1)",
            &spd,
            Some(ideal),
        )?;
        written.push("thread_speedup.svg");
    }
    Ok(written)
}

/// The `threads_*` scenarios (issue 14): speedup of one model on T threads
/// over the same model on one (`threads_{train,forward,decode}_T1`), beside
/// the independent-instances speedup of [`thread_plots`].
fn one_model_plot(runs: &[Run], dir: &Path) -> Result<Option<&'static str>, Error> {
    let mut spd = Vec::new();
    for r in runs {
        for label in ["train", "forward", "decode"] {
            let id = |t: u32| format!("threads_{label}_T{t}");
            let Some(base) = r.tokens_per_sec(&id(1)) else {
                continue;
            };
            let pts: Vec<(f64, f64)> = [1, 2, 4]
                .iter()
                .filter_map(|&t| Some((f64::from(t), r.tokens_per_sec(&id(t))? / base)))
                .collect();
            spd.push((format!("{} {label}", r.name), pts));
        }
    }
    if spd.is_empty() {
        return Ok(None);
    }
    let file = "one_model_speedup.svg";
    let ideal = vec![(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)];
    line_plot(
        &dir.join(file),
        "One model, many threads: speedup vs threads",
        "threads T",
        "tokens/s(T) / tokens/s(1)",
        &spd,
        Some(ideal),
    )?;
    Ok(Some(file))
}

/// Kernel GFLOP/s (compiler axis).
fn kernel_plot(runs: &[Run], dir: &Path) -> Result<Option<&'static str>, Error> {
    let kernels: Vec<&str> = [
        "kernel_matmul",
        "kernel_matmul_portable",
        "kernel_matmul_matrixmultiply",
        "kernel_softmax",
        "kernel_rmsnorm",
        "machine_peak",
    ]
    .into_iter()
    .filter(|id| runs.iter().any(|r| r.gflops(id).is_some()))
    .collect();
    if kernels.is_empty() {
        return Ok(None);
    }
    bar_plot(
        &dir.join("kernel_gflops.svg"),
        "Kernel GFLOP/s (log scale)",
        &kernels,
        runs,
    )?;
    Ok(Some("kernel_gflops.svg"))
}

fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    ideal: Option<Vec<(f64, f64)>>,
) -> Result<(), Error> {
    let all = series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .chain(ideal.iter().flatten());
    let (mut xmax, mut ymax) = (1.0f64, 0.0f64);
    for &(x, y) in all {
        xmax = xmax.max(x);
        ymax = ymax.max(y);
    }
    let ymax = if ymax > 0.0 { ymax * 1.15 } else { 1.0 };
    let text = svg(SIZE, |root| {
        let mut chart = frame(root, title, 72).build_cartesian_2d(0.0..xmax * 1.08, 0.0..ymax)?;
        // Whole numbers only on x (batch, seq_len, threads).
        let fmt_x = |x: &f64| {
            if (x - x.round()).abs() < 1e-9 {
                format!("{}", x.round())
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_labels(10)
            .x_label_formatter(&fmt_x)
            .y_labels(8)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        if let Some(ideal) = ideal {
            let style = ShapeStyle::from(&BLACK.mix(0.4)).stroke_width(1);
            chart
                .draw_series(LineSeries::new(ideal, style))?
                .label("ideal (linear)")
                .legend(line_key(style));
        }
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                .label(name.as_str())
                .legend(line_key(c.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })?;
    save(path, &text)
}

fn bar_plot(path: &Path, title: &str, ids: &[&str], runs: &[Run]) -> Result<(), Error> {
    let values: Vec<Vec<Option<f64>>> = runs
        .iter()
        .map(|r| ids.iter().map(|id| r.gflops(id)).collect())
        .collect();
    let flat = values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .filter(|v| *v > 0.0);
    let (lo, hi) = flat.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if hi > 0.0 {
        (10f64.powf((lo * 0.5).log10().floor()), hi * 3.0)
    } else {
        (0.01, 1.0)
    };
    let n = ids.len() as f64;
    // Short axis labels (the full ids overlap at this width).
    let labels: Vec<String> = ids
        .iter()
        .map(|id| match *id {
            "kernel_matmul_portable" => "matmul portable".to_owned(),
            "kernel_matmul_matrixmultiply" => "matmul mm-crate".to_owned(),
            "machine_peak" => "peak 1024³".to_owned(),
            other => other.strip_prefix("kernel_").unwrap_or(other).to_owned(),
        })
        .collect();
    let fmt_x = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    let text = svg(SIZE, |root| {
        let mut chart =
            frame(root, title, 72).build_cartesian_2d(-0.5..n - 0.5, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(ids.len())
            .x_label_formatter(&fmt_x)
            .y_desc("GFLOP/s")
            .draw()?;
        let width = 0.8 / runs.len() as f64;
        for (ri, r) in runs.iter().enumerate() {
            let c = color(ri);
            let bars: Vec<Rectangle<(f64, f64)>> = values[ri]
                .iter()
                .enumerate()
                .filter_map(|(k, v)| {
                    let v = (*v)?;
                    let x0 = k as f64 - 0.4 + ri as f64 * width;
                    Some(Rectangle::new(
                        [(x0, lo), (x0 + width * 0.9, v)],
                        c.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(r.name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            let texts: Vec<Text<(f64, f64), String>> = values[ri]
                .iter()
                .enumerate()
                .filter_map(|(k, v)| {
                    let v = (*v)?;
                    let x0 = k as f64 - 0.4 + ri as f64 * width;
                    Some(Text::new(
                        format!("{v:.2}"),
                        (x0, v * 1.15),
                        ("sans-serif", 12),
                    ))
                })
                .collect();
            chart.draw_series(texts)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })?;
    save(path, &text)
}

/// The roofline plot file (see [`super::roofline`]).
pub(super) const ROOFLINE_SVG: &str = "roofline.svg";

/// Achieved GFLOP/s of the model scenarios against arithmetic intensity
/// (FLOP/byte, log–log), under each run's roof `min(peak, bandwidth · I)`
/// measured in that run; `None` if no run has both machine limits.
fn roofline_plot(runs: &[Run], dir: &Path) -> Result<Option<&'static str>, Error> {
    use super::roofline::{limits, rows};
    let data: Vec<(&Run, (f64, f64), Vec<super::roofline::Roof>)> = runs
        .iter()
        .filter_map(|r| limits(r).map(|l| (r, l, rows(r))))
        .filter(|(_, _, rows)| !rows.is_empty())
        .collect();
    if data.is_empty() {
        return Ok(None);
    }
    let (x_lo, x_hi) = (0.1f64, 1e4f64);
    let y_hi = data.iter().map(|(_, (p, _), _)| *p).fold(1.0, f64::max) * 2.0;
    let y_lo = data
        .iter()
        .flat_map(|(_, _, rows)| rows.iter().map(|x| x.gflops()))
        .fold(y_hi, f64::min)
        .min(1.0)
        * 0.5;
    let text = svg(SIZE, |root| {
        let mut chart = frame(root, "Roofline: model scenarios (same-run limits)", 72)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("arithmetic intensity, FLOP/byte")
            .y_desc("GFLOP/s")
            .draw()?;
        for (ri, (r, (peak, bw), rows)) in data.iter().enumerate() {
            let c = color(ri);
            let (peak, bw) = (*peak, *bw);
            let roof: Vec<(f64, f64)> = (0..=60)
                .map(|i| {
                    let x = x_lo * (x_hi / x_lo).powf(i as f64 / 60.0);
                    (x, peak.min(bw * x))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(roof, c.stroke_width(2)))?
                .label(format!("{} roof ({peak:.0} GFLOP/s, {bw:.0} GB/s)", r.name))
                .legend(line_key(c.stroke_width(2)));
            let points: Vec<(f64, f64)> =
                rows.iter().map(|x| (x.intensity(), x.gflops())).collect();
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, c.filled())))?;
            chart.draw_series(rows.iter().map(|x| {
                Text::new(
                    format!("{} {:.0}%", x.id, 100.0 * x.fraction()),
                    (x.intensity() * 1.1, x.gflops() * 0.8),
                    ("sans-serif", 11),
                )
            }))?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    })?;
    save(&dir.join(ROOFLINE_SVG), &text)?;
    Ok(Some(ROOFLINE_SVG))
}

// ---------------------------------------------------------------------------------------
// moe train
// ---------------------------------------------------------------------------------------

/// The SVG text of `moe train`'s loss curves: `train` CE per step (light),
/// its moving average, `held`-out CE at the evaluation steps, and the
/// `unigram` baseline, over steps `0..=xmax`.
pub fn loss_svg(
    train: &[(f64, f64)],
    held: &[(f64, f64)],
    xmax: f64,
    unigram: f64,
) -> Result<String, Error> {
    let window = (train.len() / 50).clamp(1, 100);
    let smooth: Vec<(f64, f64)> = train
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let lo = i.saturating_sub(window - 1);
            let s = &train[lo..=i];
            (x, s.iter().map(|p| p.1).sum::<f64>() / s.len() as f64)
        })
        .collect();
    // Show everything up to twice the baseline; the first steps (CE ≈ 7) are cut off.
    let observed = train
        .iter()
        .chain(held)
        .map(|p| p.1)
        .fold(unigram, f64::max);
    let ymax = observed.min(2.0 * unigram).max(1.0) * 1.05;
    let clamp = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
        pts.iter().map(|&(x, y)| (x, y.min(ymax))).collect()
    };

    svg(LOSS_SIZE, |root| {
        let title = "moe train: byte-level cross-entropy";
        let mut chart = frame(root, title, 64).build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("cross-entropy (nats/byte)")
            .x_labels(10)
            .x_label_formatter(&|x| format!("{}", x.round()))
            .y_labels(10)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        let light = RGBColor(0x9e, 0xc5, 0xe8);
        let blue = RGBColor(0x1f, 0x77, 0xb4);
        let red = RGBColor(0xd6, 0x27, 0x28);
        let gray = RGBColor(0x55, 0x55, 0x55);
        if !train.is_empty() {
            chart
                .draw_series(LineSeries::new(clamp(train), light.stroke_width(1)))?
                .label("train CE (per step)")
                .legend(line_key(light.stroke_width(1)));
            chart
                .draw_series(LineSeries::new(clamp(&smooth), blue.stroke_width(2)))?
                .label(format!("train CE (moving average of {window})"))
                .legend(line_key(blue.stroke_width(2)));
        }
        if !held.is_empty() {
            let held = clamp(held);
            chart
                .draw_series(LineSeries::new(held.iter().copied(), red.stroke_width(2)))?
                .label("held-out CE")
                .legend(line_key(red.stroke_width(2)));
            chart.draw_series(held.iter().map(|&p| Circle::new(p, 3, red.filled())))?;
        }
        let style = ShapeStyle::from(&gray).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, unigram), (xmax, unigram)],
                6,
                4,
                style,
            ))?
            .label(format!("unigram baseline ({unigram:.3})"))
            .legend(line_key(style));
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}
