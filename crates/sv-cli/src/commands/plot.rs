//! `supervision plot METRICS.jsonl --output curves.png`: training curves from the
//! metrics log of `supervision train`, drawn with the `image` crate (no font
//! dependency, so the picture has no text). Three panels, top to bottom:
//! 1. training loss per window (black) and per epoch (blue),
//! 2. validation top-1 (red) and top-5 (orange) error, training top-1 error (grey),
//!    on a 0-1 scale with grid lines every 0.1,
//! 3. learning rate on a log scale (green), grid lines at each power of ten.
//!
//! The x axis is the step in every panel. The value ranges are printed to stdout.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use image::{Rgb, RgbImage};

/// Flags of `supervision plot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// metrics.jsonl written by `supervision train`.
    pub metrics: PathBuf,
    /// PNG to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Picture width in pixels.
    #[arg(long, default_value_t = 900)]
    pub width: u32,
    /// Height of each of the three panels.
    #[arg(long, default_value_t = 240)]
    pub panel_height: u32,
}

#[derive(Default)]
struct Series {
    loss: Vec<(f64, f64)>,
    epoch_loss: Vec<(f64, f64)>,
    train_err: Vec<(f64, f64)>,
    val_top1: Vec<(f64, f64)>,
    val_top5: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
}

fn read(path: &PathBuf) -> Result<Series> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut s = Series::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let Some(step) = num("step") else { continue };
        match v.get("kind").and_then(serde_json::Value::as_str) {
            Some("train") => {
                if let Some(l) = num("loss") {
                    s.loss.push((step, l));
                }
                if let Some(e) = num("top1_err") {
                    s.train_err.push((step, e));
                }
                if let Some(lr) = num("lr").filter(|lr| *lr > 0.0) {
                    s.lr.push((step, lr));
                }
            }
            Some("epoch") => {
                if let Some(l) = num("train_loss") {
                    s.epoch_loss.push((step, l));
                }
                if let Some(e) = num("val_top1_err") {
                    s.val_top1.push((step, e));
                }
                if let Some(e) = num("val_top5_err") {
                    s.val_top5.push((step, e));
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
    ] {
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                *earlier = *later;
                true
            } else {
                false
            }
        });
    }
    Ok(s)
}

struct Panel {
    top: u32,
    height: u32,
    width: u32,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

const MARGIN: u32 = 12;

impl Panel {
    fn px(&self, x: f64, y: f64) -> (f64, f64) {
        let w = f64::from(self.width - 2 * MARGIN);
        let h = f64::from(self.height - 2 * MARGIN);
        let fx = if self.x1 > self.x0 {
            (x - self.x0) / (self.x1 - self.x0)
        } else {
            0.5
        };
        let fy = if self.y1 > self.y0 {
            (y - self.y0) / (self.y1 - self.y0)
        } else {
            0.5
        };
        (
            f64::from(MARGIN) + fx * w,
            f64::from(self.top + MARGIN) + (1.0 - fy) * h,
        )
    }

    fn frame(&self, img: &mut RgbImage) {
        let grey = Rgb([200, 200, 200]);
        let (l, r) = (MARGIN, self.width - MARGIN);
        let (t, b) = (self.top + MARGIN, self.top + self.height - MARGIN);
        for x in l..=r {
            img.put_pixel(x, t, grey);
            img.put_pixel(x, b, grey);
        }
        for y in t..=b {
            img.put_pixel(l, y, grey);
            img.put_pixel(r, y, grey);
        }
    }

    fn hline(&self, img: &mut RgbImage, y: f64, colour: Rgb<u8>) {
        let (_, py) = self.px(self.x0, y);
        let py = py.round() as u32;
        if py > self.top + MARGIN && py < self.top + self.height - MARGIN {
            for x in (MARGIN..self.width - MARGIN).step_by(3) {
                img.put_pixel(x, py, colour);
            }
        }
    }

    fn line(
        &self,
        img: &mut RgbImage,
        pts: &[(f64, f64)],
        colour: Rgb<u8>,
        map: impl Fn(f64) -> f64,
    ) {
        let mapped: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| self.px(x, map(y))).collect();
        for w in mapped.windows(2) {
            segment(img, w[0], w[1], colour);
        }
        for &(x, y) in &mapped {
            dot(img, x, y, colour);
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn segment(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>) {
    let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let x = a.0 + t * (b.0 - a.0);
        let y = a.1 + t * (b.1 - a.1);
        put(img, x.round() as i64, y.round() as i64, c);
        put(img, x.round() as i64, y.round() as i64 + 1, c);
    }
}

fn dot(img: &mut RgbImage, x: f64, y: f64, c: Rgb<u8>) {
    for dy in -1..=1 {
        for dx in -1..=1 {
            put(img, x.round() as i64 + dx, y.round() as i64 + dy, c);
        }
    }
}

fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

pub fn run(args: Args) -> Result<i32> {
    let s = read(&args.metrics)?;
    if s.loss.is_empty() && s.val_top1.is_empty() {
        bail!(
            "{}: no train or epoch records to plot",
            args.metrics.display()
        );
    }
    if args.width < 4 * MARGIN || args.panel_height < 4 * MARGIN {
        bail!("picture too small");
    }
    let all_steps = [&s.loss, &s.epoch_loss, &s.val_top1, &s.lr];
    let (x0, x1) =
        range(all_steps.iter().flat_map(|v| v.iter().map(|p| p.0))).unwrap_or((0.0, 1.0));
    let x0 = x0.min(0.0);
    let (w, h) = (args.width, args.panel_height);
    let mut img = RgbImage::from_pixel(w, 3 * h, Rgb([255, 255, 255]));

    let (l0, l1) = range(s.loss.iter().chain(&s.epoch_loss).map(|p| p.1)).unwrap_or((0.0, 1.0));
    let loss = Panel {
        top: 0,
        height: h,
        width: w,
        x0,
        x1,
        y0: 0.0_f64.min(l0),
        y1: l1 * 1.05,
    };
    loss.frame(&mut img);
    loss.line(&mut img, &s.loss, Rgb([0, 0, 0]), |v| v);
    loss.line(&mut img, &s.epoch_loss, Rgb([30, 80, 220]), |v| v);

    let err = Panel {
        top: h,
        height: h,
        width: w,
        x0,
        x1,
        y0: 0.0,
        y1: 1.0,
    };
    err.frame(&mut img);
    for k in 1..10 {
        err.hline(&mut img, f64::from(k) / 10.0, Rgb([225, 225, 225]));
    }
    err.line(&mut img, &s.train_err, Rgb([150, 150, 150]), |v| v);
    err.line(&mut img, &s.val_top5, Rgb([240, 150, 20]), |v| v);
    err.line(&mut img, &s.val_top1, Rgb([220, 30, 30]), |v| v);

    let (r0, r1) = range(s.lr.iter().map(|p| p.1.log10())).unwrap_or((-3.0, -1.0));
    let lr = Panel {
        top: 2 * h,
        height: h,
        width: w,
        x0,
        x1,
        y0: r0.floor() - 0.1,
        y1: r1.ceil() + 0.1,
    };
    lr.frame(&mut img);
    let mut k = r0.floor();
    while k <= r1.ceil() {
        lr.hline(&mut img, k, Rgb([225, 225, 225]));
        k += 1.0;
    }
    lr.line(&mut img, &s.lr, Rgb([20, 160, 60]), f64::log10);

    img.save(&args.output)
        .with_context(|| format!("write {}", args.output.display()))?;
    sv_cli::outln!("wrote {} ({}x{} px)", args.output.display(), w, 3 * h);
    sv_cli::outln!("  x: steps {x0} to {x1}");
    sv_cli::outln!("  panel 1: training loss {l0:.4} to {l1:.4} (black: windows, blue: epochs)");
    if let Some((a, b)) = range(s.val_top1.iter().map(|p| p.1)) {
        sv_cli::outln!(
            "  panel 2: val top-1 error {a:.4} to {b:.4} (red), top-5 orange, train top-1 grey; scale 0-1"
        );
    }
    sv_cli::outln!(
        "  panel 3: learning rate 1e{r0:.1} to 1e{r1:.1} (log scale, grid at powers of ten)"
    );
    Ok(0)
}
