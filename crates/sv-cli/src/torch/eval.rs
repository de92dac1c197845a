//! `supervision eval --checkpoint F --val DIR [--ten-crop]`: top-1 and top-5 error of a
//! checkpoint on a validation shard set.

use anyhow::{Context, Result, bail};
use sv_cli::cli_args::EvalArgs;
use sv_shard::Dataset;
use sv_train::eval::{EvalMode, evaluate, load_for_inference};

pub fn run(args: EvalArgs) -> Result<i32> {
    let device = sv_train::parse_device(&args.device)?;
    let (ck, model, norm) = load_for_inference(&args.checkpoint, device)?;
    let data = Dataset::open(&args.val).with_context(|| format!("open {}", args.val.display()))?;
    sv_core::compare_classes(
        &format!("the checkpoint ({})", args.checkpoint.display()),
        &ck.meta.classes,
        &format!("val ({})", args.val.display()),
        data.classes(),
    )
    .context("refusing to score against other labels")?;
    let side = data.geometry().side;
    if let Some(trained) = ck.meta.trained_side()
        && trained != side
    {
        bail!(
            "{} was trained on {trained}x{trained} images, {} holds {side}x{side} images: its              crops would show the model another scale; build the val set with --size {trained}",
            args.checkpoint.display(),
            args.val.display()
        );
    }
    let mode = if args.ten_crop {
        EvalMode::TenCrop
    } else {
        EvalMode::Centre
    };
    let total = args.limit.map_or(data.len(), |l| l.min(data.len()));
    let pb = sv_cli::progress::bar("eval", total as u64, "images");
    let r = evaluate(
        &model,
        &norm,
        &data,
        mode,
        args.batch_size,
        args.limit,
        &mut |done| pb.set_position(done),
    )?;
    pb.finish_and_clear();
    if args.json {
        let v = serde_json::json!({
            "checkpoint": args.checkpoint, "val": args.val, "model": ck.meta.model.name,
            "step": ck.meta.step, "mode": mode.as_str(), "images": r.images,
            "top1_err": r.top1_err, "top5_err": r.top5_err,
        });
        sv_cli::outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        sv_cli::outln!(
            "{} ({}, step {}) on {} images, {}: top-1 error {:.2}%, top-5 error {:.2}%",
            args.checkpoint.display(),
            ck.meta.model.name,
            ck.meta.step,
            r.images,
            mode.as_str(),
            100.0 * r.top1_err,
            100.0 * r.top5_err
        );
    }
    Ok(0)
}
