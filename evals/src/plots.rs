//! SVG figures of a report (plotters, SVG backend only: no fonts or native libraries needed).

use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::metrics::{upper_hull, Calibration, Point};
use crate::report::{DatasetReport, PairSummary};

fn plot_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

type Chart<'a, X> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, RangedCoordf64>>;

/// A white canvas with a captioned, labelled chart on it.
fn chart<'a, X>(
    root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    caption: String,
    x: impl AsRangedCoord<CoordDescType = X, Value = f64>,
    y: std::ops::Range<f64>,
    labels: (&str, &str),
    path: &Path,
) -> Result<Chart<'a, X>>
where
    X: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let err = plot_err(path);
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(x, y)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc(labels.0).y_desc(labels.1).draw().map_err(|e| err(&e))?;
    Ok(chart)
}

/// A labelled line.
fn line<X: Ranged<ValueType = f64>>(chart: &mut Chart<'_, X>, points: Vec<(f64, f64)>, color: RGBColor, width: u32, label: String, path: &Path) -> Result<()> {
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(width)))
        .map_err(|e| plot_err(path)(&e))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    Ok(())
}

/// The legend, then the file.
fn finish<X: Ranged<ValueType = f64>>(mut chart: Chart<'_, X>, position: SeriesLabelPosition, path: &Path) -> Result<()> {
    let err = plot_err(path);
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    chart.plotting_area().present().map_err(|e| err(&e))?;
    Ok(())
}

/// USD per request → USD per 1,000 requests (the unit the gateway's trade-off uses).
fn per_1k(p: &Point) -> (f64, f64) {
    (p.cost * 1_000.0, p.quality)
}

const ROUTER: RGBColor = RGBColor(31, 119, 180);
const ORACLE: RGBColor = RGBColor(44, 160, 44);
const LENGTH: RGBColor = RGBColor(255, 127, 14);
const MIX: RGBColor = RGBColor(127, 127, 127);

/// Quality against cost: the router's sweep, the oracle's, every single model, the best
/// random mixes of pairs (their hull) and the prompt-length baseline.
pub fn quality_cost(path: &Path, report: &DatasetReport) -> Result<()> {
    let err = plot_err(path);
    let router: Vec<(f64, f64)> = report.router.iter().map(|s| per_1k(&s.point())).collect();
    let oracle: Vec<(f64, f64)> = report.oracle.iter().map(|s| per_1k(&s.point())).collect();
    let singles: Vec<(String, (f64, f64))> = report.singles.iter().map(|m| (m.model.clone(), per_1k(&m.point()))).collect();
    let mix: Vec<(f64, f64)> = upper_hull(&report.singles.iter().map(|m| m.point()).collect::<Vec<_>>()).iter().map(per_1k).collect();
    let length: Vec<(f64, f64)> = report.pair.as_ref().map(|p| p.length_points.iter().map(per_1k).collect()).unwrap_or_default();
    let all: Vec<(f64, f64)> = router.iter().chain(&oracle).chain(singles.iter().map(|s| &s.1)).chain(&length).copied().collect();
    let (xlo, xhi) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let (ylo, yhi) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (xlo, xhi) = (xlo.max(1e-6) / 1.5, xhi * 1.5);
    let (ylo, yhi) = ((ylo - 0.05).max(0.0), (yhi + 0.05).min(1.0));

    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    let mut chart = chart(
        &root,
        format!("{} {}: quality vs cost", report.dataset, report.split),
        (xlo..xhi).log_scale(),
        ylo..yhi,
        ("mean cost, USD per 1,000 requests (log scale)", "mean quality"),
        path,
    )?;
    line(&mut chart, mix, MIX, 1, "random mix of two models (best pairs)".into(), path)?;
    if !length.is_empty() {
        line(&mut chart, length, LENGTH, 2, "prompt length (longer → strong model)".into(), path)?;
    }
    line(&mut chart, oracle, ORACLE, 2, "oracle (realised labels)".into(), path)?;
    line(&mut chart, router.clone(), ROUTER, 3, "router (selector + gateway policy)".into(), path)?;
    chart
        .draw_series(router.iter().map(|&p| Circle::new(p, 3, ROUTER.filled())))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(singles.iter().map(|(name, p)| {
            EmptyElement::at(*p) + Circle::new((0, 0), 4, BLACK.filled()) + Text::new(name.clone(), (6, -4), ("sans-serif", 11))
        }))
        .map_err(|e| err(&e))?;
    finish(chart, SeriesLabelPosition::LowerRight, path)
}

/// PGR against the share of calls to the strong model.
pub fn pgr(path: &Path, dataset: &str, pair: &PairSummary) -> Result<()> {
    let series = |v: &[f64]| -> Vec<(f64, f64)> { pair.shares.iter().copied().zip(v.iter().copied()).collect() };
    let all = pair.pgr_router.iter().chain(&pair.pgr_length).chain(&pair.pgr_oracle);
    let (ylo, yhi) = all.fold((0.0f64, 1.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let root = SVGBackend::new(path, (800, 560)).into_drawing_area();
    let mut chart = chart(
        &root,
        format!("{dataset}: {} vs {}", pair.report.strong, pair.report.weak),
        0.0..1.0,
        (ylo - 0.05)..(yhi + 0.05),
        ("share of calls to the strong model", "performance gap recovered (PGR)"),
        path,
    )?;
    line(&mut chart, series(&pair.pgr_oracle), ORACLE, 2, format!("oracle (APGR {:.3})", pair.oracle_apgr), path)?;
    line(&mut chart, series(&pair.pgr_random), MIX, 1, "random (expected: PGR = share)".into(), path)?;
    line(&mut chart, series(&pair.pgr_length), LENGTH, 2, format!("prompt length (APGR {:.3})", pair.report.length_baseline.apgr), path)?;
    line(&mut chart, series(&pair.pgr_router), ROUTER, 3, format!("router (APGR {:.3})", pair.report.router.apgr), path)?;
    finish(chart, SeriesLabelPosition::LowerRight, path)
}

/// Reliability diagram: mean observed quality per bin of predicted quality.
pub fn calibration(path: &Path, dataset: &str, cal: &Calibration) -> Result<()> {
    let root = SVGBackend::new(path, (640, 600)).into_drawing_area();
    let mut chart = chart(
        &root,
        format!("{dataset}: calibration (ECE {:.3})", cal.ece),
        0.0..1.0,
        0.0..1.0,
        ("predicted quality (bin mean)", "observed quality"),
        path,
    )?;
    line(&mut chart, vec![(0.0, 0.0), (1.0, 1.0)], MIX, 1, "perfect calibration".into(), path)?;
    let points: Vec<(f64, f64)> = cal.bins.iter().map(|b| (b.mean_predicted, b.mean_observed)).collect();
    line(&mut chart, points, ROUTER, 2, "selector (all candidates, test prompts)".into(), path)?;
    chart
        .draw_series(cal.bins.iter().map(|b| {
            EmptyElement::at((b.mean_predicted, b.mean_observed))
                + Circle::new((0, 0), 4, ROUTER.filled())
                + Text::new(format!("{}", b.count), (6, 4), ("sans-serif", 10))
        }))
        .map_err(|e| plot_err(path)(&e))?;
    finish(chart, SeriesLabelPosition::UpperLeft, path)
}

/// Test-split utility (the route's objective) after each round of the learning loop, with its
/// 95% interval, beside reference levels (e.g. a selector trained offline on the same prompts
/// with full labels).
pub fn learning_curve(path: &Path, title: &str, rounds: &[(f64, crate::learning::Estimate)], references: &[(String, f64)]) -> Result<()> {
    let values = rounds.iter().flat_map(|(_, e)| [e.lo95, e.hi95]).chain(references.iter().map(|r| r.1));
    let (ylo, yhi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let xhi = rounds.iter().map(|r| r.0).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (800, 560)).into_drawing_area();
    let mut chart = chart(
        &root,
        title.to_owned(),
        -0.2..(xhi + 0.2),
        (ylo - 0.02)..(yhi + 0.02),
        ("round of the loop (0 = the weak start)", "realised test utility: quality − cost term (exploration off)"),
        path,
    )?;
    let palette = [ORACLE, LENGTH, MIX];
    for (k, (name, level)) in references.iter().enumerate() {
        line(&mut chart, vec![(-0.2, *level), (xhi + 0.2, *level)], palette[k % palette.len()], 1, format!("{name} ({level:.4})"), path)?;
    }
    let points: Vec<(f64, f64)> = rounds.iter().map(|(x, e)| (*x, e.mean)).collect();
    line(&mut chart, points, ROUTER, 3, "served by the gateway".into(), path)?;
    chart
        .draw_series(rounds.iter().map(|(x, e)| {
            PathElement::new(vec![(*x, e.lo95), (*x, e.hi95)], ROUTER.stroke_width(1))
        }))
        .map_err(|e| plot_err(path)(&e))?;
    chart
        .draw_series(rounds.iter().map(|(x, e)| Circle::new((*x, e.mean), 4, ROUTER.filled())))
        .map_err(|e| plot_err(path)(&e))?;
    finish(chart, SeriesLabelPosition::LowerRight, path)
}
