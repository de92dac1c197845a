//! `supervision predict --checkpoint F IMAGE...`: the five most probable classes of
//! each image, with their names. Images are prepared as the shards were (shorter side
//! to 256, centre square, sv-image's Preprocessor), then scored on the centre crop or,
//! with `--ten-crop`, on the paper's ten views.

use anyhow::{Context, Result, bail};
use sv_cli::cli_args::PredictArgs;
use sv_image::{PrepConfig, Preprocessor};
use sv_train::eval::{EvalMode, load_for_inference, predict_host};

pub fn run(args: PredictArgs) -> Result<i32> {
    let device = sv_train::parse_device(&args.device)?;
    let (ck, model, norm) = load_for_inference(&args.checkpoint, device)?;
    let trained = ck.meta.trained_side();
    let size = args.size.or(trained).unwrap_or(256);
    if let Some(m) = ck.meta.normalization.mean_image.as_ref().map(|m| m.side)
        && m != size
    {
        bail!("--size {size} differs from the checkpoint's {m}x{m} mean image");
    }
    if let Some(t) = trained
        && t != size
    {
        bail!(
            "--size {size}: {} was trained on {t}x{t} images; its crops of {size}x{size}              images would show it another scale (leave --size out to use {t})",
            args.checkpoint.display()
        );
    }
    let mut prep = Preprocessor::new(PrepConfig::with_side(size));
    let side = size as usize;
    let mut pixels = vec![0u8; side * side * 3];
    let mode = if args.ten_crop {
        EvalMode::TenCrop
    } else {
        EvalMode::Centre
    };
    let mut results = Vec::new();
    for path in &args.images {
        // only a regular file, of at most the size `shard build` reads: a FIFO or a
        // device named here is an error at once, never a wait or an endless read
        let bytes = sv_core::fs::read_regular(path, sv_build::MAX_INPUT_BYTES)?;
        prep.process(&bytes, &mut pixels)
            .with_context(|| format!("decode {}", path.display()))?;
        let probs = predict_host(&model, &norm, &pixels, side, mode)?;
        let p = probs.into_iter().next().context("no output")?;
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let top: Vec<(usize, f32)> = order
            .into_iter()
            .take(args.top)
            .map(|i| (i, p[i]))
            .collect();
        results.push((path.clone(), top));
    }
    let name = |i: usize| {
        ck.meta.classes.get(i).map_or_else(
            || (format!("class {i}"), String::new()),
            |c| (c.name.clone(), c.wnid.clone()),
        )
    };
    if args.json {
        let v: Vec<_> = results
            .iter()
            .map(|(path, top)| {
                let t: Vec<_> = top
                    .iter()
                    .map(|&(i, p)| {
                        let (n, w) = name(i);
                        serde_json::json!({"label": i, "wnid": w, "name": n, "probability": p})
                    })
                    .collect();
                serde_json::json!({"image": path, "top": t})
            })
            .collect();
        sv_cli::outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (path, top) in &results {
            sv_cli::outln!("{}", path.display());
            for (rank, &(i, p)) in top.iter().enumerate() {
                let (n, w) = name(i);
                sv_cli::outln!("  {}. {:6.2}%  {w}  {n}", rank + 1, 100.0 * p);
            }
        }
    }
    Ok(0)
}
