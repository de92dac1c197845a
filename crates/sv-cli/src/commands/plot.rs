//! `supervision plot METRICS.jsonl --output curves.png|curves.svg`: the training curves
//! of a `supervision train` run as a figure a person can read on its own: a title, four
//! panels with axis labels (units), tick values and legends, the step on every x axis.
//! Drawn with plotters; text in DejaVu Sans, embedded in the binary from the `dejavu`
//! crate (no system fonts are looked up). PNG or SVG, by the output's extension.
//!
//! A metrics file is input from outside: a run that diverged writes a loss of 1e308,
//! a hostile file writes anything. Every value is plotted in bounded time and memory:
//! axis ranges are computed from values held within [`LIMIT`] (learning rates within
//! [`LR_RANGE`], log scale), and points beyond a panel's range are drawn at
//! its edge, so neither plotters' tick search (which loops forever on an infinite or
//! zero-based log range) nor its line rasteriser (which walks every pixel of a line
//! that ends 2^31 pixels away) sees an extreme value. A last line cut short (what a
//! crash leaves) is skipped with a warning, as `train --resume` does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// `supervision plot --help`: what the figure shows.
pub const LONG_ABOUT: &str = "Draws the curves of a training run from its metrics.jsonl.

Four panels, the training step on every x axis:
  1. loss: training cross-entropy per --log-every window (thin) and per epoch (thick);
  2. error (%): validation top-1 (red, solid) and top-5 (orange, dashed) per epoch,
     training top-1 per window (grey; dropout and augmentation on), and the final
     evaluation (ten-crop or centre) as a red triangle;
  3. learning rate, on a log scale;
  4. throughput: training images/s (left axis) and the share of step time spent
     waiting for data (right axis, %).
A figure title names the run. The output's extension picks the format: .png (raster)
or .svg (vector, text kept as text). Text uses DejaVu Sans, embedded in the binary.";

/// Flags of `supervision plot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// metrics.jsonl written by `supervision train`.
    pub metrics: PathBuf,
    /// Figure to write: .png or .svg.
    #[arg(long)]
    pub output: PathBuf,
    /// Figure width in pixels.
    #[arg(long, default_value_t = 1400)]
    pub width: u32,
    /// Figure height in pixels.
    #[arg(long, default_value_t = 900)]
    pub height: u32,
    /// Figure title (default: "Training curves: " and the metrics file's folder).
    #[arg(long)]
    pub title: Option<String>,
}

type Points = Vec<(f64, f64)>;

/// Largest magnitude an axis reaches: axis padding (x1.6) and plotters' tick
/// arithmetic (x10) must stay finite.
const LIMIT: f64 = 1e300;

/// The learning rates the log axis spans at most: a range from a subnormal (5e-324)
/// has no finite lower decade, and one whose ends differ by more than f64's range
/// (1e-300 to 1e300) makes plotters count decades forever. Two hundred decades hold
/// every rate a run uses.
const LR_RANGE: (f64, f64) = (1e-100, 1e100);

#[derive(Default)]
struct Series {
    loss: Points,
    epoch_loss: Points,
    train_err: Points,
    val_top1: Points,
    val_top5: Points,
    lr: Points,
    images_per_s: Points,
    data_wait: Points,
    /// The final evaluations: (step, top-1, mode).
    evals: Vec<(f64, f64, String)>,
}

fn read(path: &Path) -> Result<Series> {
    // only a regular file: a FIFO in its place would be waited on forever
    let bytes = sv_core::fs::read_regular(path, 1 << 30)?;
    let mut s = Series::default();
    let mut lines = bytes
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
        .peekable();
    while let Some((i, line)) = lines.next() {
        let complete = line.ends_with(b"\n");
        let parsed = std::str::from_utf8(line)
            .map_err(|_| anyhow!("not UTF-8 text"))
            .and_then(|text| {
                let text = text.trim();
                if text.is_empty() {
                    return Ok(None);
                }
                serde_json::from_str::<serde_json::Value>(text)
                    .map(Some)
                    .map_err(anyhow::Error::from)
            });
        let v = match parsed {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            // The last line, cut short by a crash or a full disk: `train --resume`
            // drops it too.
            Err(e) if !complete && lines.peek().is_none() => {
                tracing::warn!(
                    "{}:{}: skipping the last line, cut short ({e}); a run that crashed \
                     leaves one",
                    path.display(),
                    i + 1
                );
                continue;
            }
            Err(e) => {
                return Err(e.context(format!(
                    "{}:{}: not a metrics record (JSON)",
                    path.display(),
                    i + 1
                )));
            }
        };
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let Some(step) = num("step") else { continue };
        if !step.is_finite() {
            continue;
        }
        let push = |series: &mut Points, key: &str, scale: f64| {
            // scaled first: 1e308 x 100 is no longer finite
            if let Some(y) = num(key).map(|y| scale * y).filter(|y| y.is_finite()) {
                series.push((step, y));
            }
        };
        match v.get("kind").and_then(serde_json::Value::as_str) {
            Some("train") => {
                push(&mut s.loss, "loss", 1.0);
                push(&mut s.train_err, "top1_err", 100.0);
                push(&mut s.images_per_s, "images_per_s", 1.0);
                push(&mut s.data_wait, "data_wait_share", 100.0);
                if let Some(lr) = num("lr").filter(|lr| *lr > 0.0 && lr.is_finite()) {
                    s.lr.push((step, lr));
                }
            }
            Some("epoch") => {
                push(&mut s.epoch_loss, "train_loss", 1.0);
                push(&mut s.val_top1, "val_top1_err", 100.0);
                push(&mut s.val_top5, "val_top5_err", 100.0);
            }
            Some("eval") => {
                if let Some(e) = num("top1_err").map(|e| 100.0 * e).filter(|e| e.is_finite()) {
                    let mode = v.get("mode").and_then(serde_json::Value::as_str);
                    s.evals.push((step, e, mode.unwrap_or("final").to_string()));
                }
            }
            _ => {}
        }
    }
    // A resumed run appends; keep the last value written for each step.
    for series in [
        &mut s.loss,
        &mut s.epoch_loss,
        &mut s.train_err,
        &mut s.val_top1,
        &mut s.val_top5,
        &mut s.lr,
        &mut s.images_per_s,
        &mut s.data_wait,
    ] {
        series.reverse();
        series.sort_by(|a, b| a.0.total_cmp(&b.0)); // stable: the last written first
        series.dedup_by(|later, earlier| later.0 == earlier.0);
    }
    Ok(s)
}

/// (min, max) of the finite values, or None.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Upper end of a linear axis from 0: the largest value (held within [`LIMIT`]) with
/// `pad` headroom, at least `min`.
fn top(hi: f64, pad: f64, min: f64) -> f64 {
    (hi.min(LIMIT) * pad).max(min)
}

/// `points` held inside the chart's ranges, so that what is drawn never lies far
/// outside the panel (plotters walks every pixel of a line, on the panel or not).
fn inside<X, Y>(points: &Points, coord: &Cartesian2d<X, Y>) -> Points
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let (xr, yr) = (coord.get_x_range(), coord.get_y_range());
    let hold = |v: f64, r: &std::ops::Range<f64>| v.clamp(r.start.min(r.end), r.end.max(r.start));
    points
        .iter()
        .map(|&(x, y)| (hold(x, &xr), hold(y, &yr)))
        .collect()
}

/// A tick or summary number: whole or with `decimals` when it reads well, in
/// scientific notation when its digits would not fit a label.
fn number(v: f64, decimals: usize) -> String {
    if v != 0.0 && !(1e-3..1e6).contains(&v.abs()) {
        format!("{v:.1e}")
    } else {
        format!("{v:.decimals$}")
    }
}

fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

const FONT: &str = "sans-serif";
const TRAIN: RGBColor = RGBColor(31, 90, 200);
const VAL: RGBColor = RGBColor(215, 38, 38);
const VAL5: RGBColor = RGBColor(240, 140, 20);
const GREY: RGBColor = RGBColor(150, 150, 150);
const LR: RGBColor = RGBColor(20, 150, 60);

/// The embedded DejaVu Sans as plotters' "sans-serif" (once per process).
fn register_fonts() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        for (style, bytes) in [
            (FontStyle::Normal, dejavu::sans::regular()),
            (FontStyle::Bold, dejavu::sans::bold()),
        ] {
            plotters::style::register_font(FONT, style, bytes)
                .map_err(|_| "the embedded DejaVu Sans font did not load".to_string())?;
        }
        Ok(())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn legend_line(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style.stroke_width(2))
}

/// The legend of a panel, in its upper right corner.
fn legend_box<'a, DB, CT>(c: &mut ChartContext<'a, DB, CT>) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: plotters::coord::CoordTranslate,
{
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(draw_err)
}

type Chart<'a, DB, YT> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, YT>>;

/// A captioned panel on `area`, step from 0 to `x_max` across, `y` up.
fn panel<'a, DB, Y>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
    x_max: f64,
    y: Y,
    right_axis: bool,
) -> Result<Chart<'a, DB, Y::CoordDescType>>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: AsRangedCoord<Value = f64>,
{
    ChartBuilder::on(area)
        .caption(caption, (FONT, 20, FontStyle::Bold))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .right_y_label_area_size(if right_axis { 64 } else { 0 })
        .build_cartesian_2d(0.0..x_max, y)
        .map_err(draw_err)
}

/// The panel's axes: "step (batches)" across with whole-number ticks, `y_desc` up with
/// ticks written by `y_fmt`, a light grid.
fn axes<'a, DB, YT>(
    c: &mut Chart<'a, DB, YT>,
    y_desc: &str,
    y_labels: usize,
    y_fmt: &dyn Fn(&f64) -> String,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    YT: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    c.configure_mesh()
        .x_desc("step (batches)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc(y_desc)
        .y_labels(y_labels)
        .y_label_formatter(y_fmt)
        .axis_desc_style((FONT, 15))
        .label_style((FONT, 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(draw_err)
}

/// How a curve is drawn.
#[derive(Clone, Copy)]
enum Stroke {
    /// A plain line of this width.
    Line(u32),
    /// A line of this width with a dot at every point.
    Dots(u32),
    /// A dashed line of this width.
    Dashed(u32),
}

/// One labelled curve; nothing (and no legend entry) when `points` is empty.
fn curve<'a, DB, YT>(
    c: &mut Chart<'a, DB, YT>,
    points: &Points,
    color: RGBAColor,
    stroke: Stroke,
    label: &str,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    YT: Ranged<ValueType = f64>,
{
    if points.is_empty() {
        return Ok(());
    }
    let pts = inside(points, c.as_coord_spec()).into_iter();
    let drawn = match stroke {
        Stroke::Line(w) => c.draw_series(LineSeries::new(pts, color.stroke_width(w))),
        Stroke::Dots(w) => c.draw_series(LineSeries::new(pts, color.stroke_width(w)).point_size(4)),
        Stroke::Dashed(w) => c.draw_series(DashedLineSeries::new(pts, 8, 5, color.stroke_width(w))),
    }
    .map_err(draw_err)?;
    drawn.label(label).legend(legend_line(color.into()));
    Ok(())
}

/// Draws the figure on `root`.
fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, s: &Series, title: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(draw_err)?;
    let root = root
        .margin(14, 6, 6, 6)
        .titled(title, (FONT, 28, FontStyle::Bold))
        .map_err(draw_err)?;
    let panels = root.split_evenly((2, 2));
    let steps = [&s.loss, &s.epoch_loss, &s.val_top1, &s.lr, &s.images_per_s];
    let x_max = range(steps.iter().flat_map(|v| v.iter().map(|p| p.0)))
        .map_or(1.0, |(_, hi)| top(hi, 1.0, 1.0));
    let whole = |v: &f64| number(*v, 0);

    // 1. loss
    let (_, l_hi) = range(s.loss.iter().chain(&s.epoch_loss).map(|p| p.1)).unwrap_or((0.0, 1.0));
    let y = 0.0..top(l_hi, 1.08, 1e-3);
    let mut c = panel(&panels[0], "Training loss", x_max, y, false)?;
    axes(&mut c, "cross-entropy loss (nats)", 10, &|v| number(*v, 1))?;
    let faint = TRAIN.mix(0.45);
    curve(
        &mut c,
        &s.loss,
        faint,
        Stroke::Line(1),
        "train, per log window",
    )?;
    curve(
        &mut c,
        &s.epoch_loss,
        TRAIN.into(),
        Stroke::Dots(3),
        "train, epoch mean",
    )?;
    legend_box(&mut c)?;

    // 2. errors
    let mut c = panel(&panels[1], "Classification error", x_max, 0.0..100.0, false)?;
    axes(&mut c, "error (%)", 10, &whole)?;
    curve(
        &mut c,
        &s.train_err,
        GREY.into(),
        Stroke::Line(1),
        "train top-1, per window",
    )?;
    curve(
        &mut c,
        &s.val_top5,
        VAL5.into(),
        Stroke::Dashed(2),
        "val top-5, per epoch",
    )?;
    curve(
        &mut c,
        &s.val_top1,
        VAL.into(),
        Stroke::Dots(3),
        "val top-1, per epoch",
    )?;
    if let Some((step, top1, mode)) = s.evals.last() {
        let at = inside(&vec![(*step, *top1)], c.as_coord_spec())[0];
        c.draw_series(std::iter::once(TriangleMarker::new(at, 8, VAL.filled())))
            .map_err(draw_err)?
            .label(format!("final {mode} top-1: {}%", number(*top1, 1)))
            .legend(|(x, y)| TriangleMarker::new((x + 12, y), 6, VAL.filled()));
    }
    legend_box(&mut c)?;

    // 3. learning rate, log scale: whole decades, padded so that the end ticks and a
    // flat line stay inside.
    let (lr_lo, lr_hi) =
        range(s.lr.iter().map(|p| p.1.clamp(LR_RANGE.0, LR_RANGE.1))).unwrap_or((1e-3, 1e-1));
    let lo = 10f64.powf(lr_lo.log10().floor()) * 0.6;
    let hi = (10f64.powf(lr_hi.log10().ceil()) * 1.6).max(lo * 20.0);
    let mut c = panel(
        &panels[2],
        "Learning rate",
        x_max,
        (lo..hi).log_scale(),
        false,
    )?;
    axes(&mut c, "learning rate (log scale)", 6, &|v| {
        format!("{v:.0e}")
    })?;
    curve(&mut c, &s.lr, LR.into(), Stroke::Line(2), "learning rate")?;
    legend_box(&mut c)?;

    // 4. throughput (left axis) and data wait (right axis)
    let (_, ips_hi) = range(s.images_per_s.iter().map(|p| p.1)).unwrap_or((0.0, 1.0));
    let y = 0.0..top(ips_hi, 1.1, 1.0);
    let mut c = panel(&panels[3], "Throughput", x_max, y, true)?
        .set_secondary_coord(0.0..x_max, 0.0..100.0);
    axes(&mut c, "training images / s", 10, &whole)?;
    let ips = &s.images_per_s;
    curve(
        &mut c,
        ips,
        TRAIN.into(),
        Stroke::Line(2),
        "images / s (left)",
    )?;
    c.configure_secondary_axes()
        .y_desc("waiting for data (% of step time)")
        .y_label_formatter(&whole)
        .axis_desc_style((FONT, 15))
        .label_style((FONT, 13))
        .draw()
        .map_err(draw_err)?;
    if !s.data_wait.is_empty() {
        let pts = inside(&s.data_wait, c.borrow_secondary().as_coord_spec()).into_iter();
        c.draw_secondary_series(DashedLineSeries::new(pts, 6, 4, GREY.stroke_width(2)))
            .map_err(draw_err)?
            .label("data wait % (right)")
            .legend(legend_line(GREY.into()));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

enum Format {
    Png,
    Svg,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        _ => bail!(
            "{}: the output must end in .png or .svg (the extension picks the format)",
            path.display()
        ),
    }
}

pub fn run(args: Args) -> Result<i32> {
    let format = format_of(&args.output)?;
    let s = read(&args.metrics)?;
    if s.loss.is_empty() && s.epoch_loss.is_empty() && s.val_top1.is_empty() {
        bail!(
            "{}: no train or epoch records to plot",
            args.metrics.display()
        );
    }
    if !(320..=10_000).contains(&args.width) || !(240..=10_000).contains(&args.height) {
        bail!(
            "--width must be 320 to 10000 and --height 240 to 10000 pixels, got {}x{}",
            args.width,
            args.height
        );
    }
    register_fonts()?;
    let title = args.title.clone().unwrap_or_else(|| {
        let run = args
            .metrics
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        format!("Training curves: {}", run.display())
    });
    let size = (args.width, args.height);
    // drawn in memory, then written atomically (sv_core::fs): a failed write keeps
    // the old figure
    let bytes = match format {
        Format::Svg => {
            let mut svg = String::new();
            draw(
                SVGBackend::with_string(&mut svg, size).into_drawing_area(),
                &s,
                &title,
            )?;
            svg.into_bytes()
        }
        Format::Png => {
            let mut buf = vec![0u8; args.width as usize * args.height as usize * 3];
            draw(
                BitMapBackend::with_buffer(&mut buf, size).into_drawing_area(),
                &s,
                &title,
            )?;
            let mut png = std::io::Cursor::new(Vec::new());
            image::RgbImage::from_raw(args.width, args.height, buf)
                .context("plot buffer has the wrong size")?
                .write_to(&mut png, image::ImageFormat::Png)
                .context("encode the figure as PNG")?;
            png.into_inner()
        }
    };
    sv_core::fs::write_atomic(&args.output, &bytes)?;
    let last_step =
        range(s.loss.iter().chain(&s.lr).chain(&s.val_top1).map(|p| p.0)).map_or(0.0, |(_, hi)| hi);
    sv_cli::outln!(
        "wrote {} ({}x{} px): loss, error, learning rate, throughput over {} steps",
        args.output.display(),
        args.width,
        args.height,
        number(last_step, 0)
    );
    if let Some((_, t1)) = s.val_top1.last() {
        sv_cli::outln!("  last validation top-1 error {}%", number(*t1, 2));
    }
    if let Some((_, t1, mode)) = s.evals.last() {
        sv_cli::outln!("  final {mode} top-1 error {}%", number(*t1, 2));
    }
    Ok(0)
}
