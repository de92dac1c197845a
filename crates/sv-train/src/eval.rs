//! Evaluation on a validation shard set: top-1 and top-5 error from the centre crop, or
//! the paper's ten views (four corners and the centre, each also reflected) with their
//! softmax outputs averaged.

use sv_shard::Dataset;
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TorchContext, TrainError};
use crate::input::DeviceNorm;
use crate::metrics::topk_wrong;
use crate::model::Model;

/// Which views of each image are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalMode {
    /// The central crop only.
    Centre,
    /// Four corners, the centre, and the reflection of each; softmax averaged.
    TenCrop,
}

impl EvalMode {
    /// `centre` or `ten-crop`.
    pub fn as_str(self) -> &'static str {
        match self {
            EvalMode::Centre => "centre",
            EvalMode::TenCrop => "ten-crop",
        }
    }
}

/// Errors over a validation set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    /// Images scored.
    pub images: u64,
    /// Top-1 error (fraction).
    pub top1_err: f64,
    /// Top-5 error (fraction).
    pub top5_err: f64,
}

/// A checkpoint ready to score images: its metadata, the model with its weights on
/// `device`, and its input normalisation (mean image included) there.
pub fn load_for_inference(
    path: &std::path::Path,
    device: Device,
) -> Result<(crate::checkpoint::Checkpoint, Model, DeviceNorm)> {
    let ck = crate::checkpoint::load(path)?;
    let mut model = Model::new(&ck.meta.model, device)?;
    model.load_params(&ck.params, path)?;
    let norm = DeviceNorm::new(&ck.meta.normalization, ck.meta.model.input_scale, device)?;
    Ok((ck, model, norm))
}

/// Crop offsets `(y, x)` for a `crop` square in a `side` square image.
pub fn crop_offsets(side: i64, crop: i64, mode: EvalMode) -> Vec<(i64, i64)> {
    let m = side - crop;
    let c = m / 2;
    match mode {
        EvalMode::Centre => vec![(c, c)],
        EvalMode::TenCrop => vec![(0, 0), (0, m), (m, 0), (m, m), (c, c)],
    }
}

/// Averaged class probabilities `[N, classes]` for uint8 `[N, S, S, 3]` images already
/// on the model's device.
pub fn predict_probs(
    model: &Model,
    norm: &DeviceNorm,
    images: &Tensor,
    mode: EvalMode,
) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let size = images.size();
    let (side_h, side_w) = (size[1], size[2]);
    let crop = model.spec().input_side;
    if side_h < crop || side_w != side_h {
        return Err(TrainError::Config(format!(
            "images are {side_h}x{side_w}, the model {} needs square images of at least {crop}",
            model.spec().name
        )));
    }
    let mut sum: Option<Tensor> = None;
    let offsets = crop_offsets(side_h, crop, mode);
    let views = if mode == EvalMode::TenCrop {
        2 * offsets.len()
    } else {
        1
    };
    if let Some(side) = norm.mean_image_side()
        && side != side_h
    {
        return Err(TrainError::Config(format!(
            "images are {side_h}x{side_h} but the mean image is {side}x{side}"
        )));
    }
    let n = size[0];
    for (y, x) in offsets {
        let view = images
            .f_narrow(1, y, crop)
            .and_then(|t| t.f_narrow(2, x, crop))
            .ctx(|| "crop".into())?;
        let windows = Tensor::f_from_slice(&[x, y, 0])
            .and_then(|t| t.f_view([1, 3]))
            .and_then(|t| t.f_expand([n, 3], false))
            .ctx(|| "crop windows".into())?;
        // the mirrored view below is this one flipped after normalisation, so its
        // mean image is mirrored with it
        let input = norm.apply(&view, None, None, Some(&windows))?;
        let mut inputs = vec![input];
        if mode == EvalMode::TenCrop {
            let flipped = inputs[0].f_flip([3]).ctx(|| "reflect".into())?;
            inputs.push(flipped);
        }
        for input in inputs {
            let p = model
                .infer(&input)?
                .f_softmax(-1, Kind::Float)
                .ctx(|| "softmax".into())?;
            sum = Some(match sum {
                None => p,
                Some(s) => s.f_add(&p).ctx(|| "average".into())?,
            });
        }
    }
    let sum = sum.ok_or_else(|| TrainError::Config("no views".into()))?;
    sum.f_div_scalar(views as f64).ctx(|| "average".into())
}

/// Class probabilities of `n` host images (uint8 HWC, `side x side x 3` each, back to
/// back in `pixels`): one `Vec` of `classes` probabilities per image.
pub fn predict_host(
    model: &Model,
    norm: &DeviceNorm,
    pixels: &[u8],
    side: usize,
    mode: EvalMode,
) -> Result<Vec<Vec<f32>>> {
    let per = side * side * 3;
    if per == 0 || !pixels.len().is_multiple_of(per) {
        return Err(TrainError::Config(format!(
            "{} bytes are not whole {side}x{side} RGB images",
            pixels.len()
        )));
    }
    let n = pixels.len() / per;
    let images = Tensor::f_from_data_size(
        pixels,
        &[n as i64, side as i64, side as i64, 3],
        Kind::Uint8,
    )
    .and_then(|t| t.f_to_device(model.device()))
    .ctx(|| "upload images".into())?;
    let probs = predict_probs(model, norm, &images, mode)?
        .f_to_device(Device::Cpu)
        .ctx(|| "download probabilities".into())?;
    let classes = model.spec().classes as usize;
    let flat: Vec<f32> = Vec::<f32>::try_from(probs.f_flatten(0, -1).ctx(|| "flatten".into())?)
        .ctx(|| "read probabilities".into())?;
    Ok(flat.chunks(classes).map(<[f32]>::to_vec).collect())
}

/// Scores `data` (or its first `limit` images) in batches of `batch_size`;
/// `progress` gets the number of images done so far.
pub fn evaluate(
    model: &Model,
    norm: &DeviceNorm,
    data: &Dataset,
    mode: EvalMode,
    batch_size: usize,
    limit: Option<usize>,
    progress: &mut dyn FnMut(u64),
) -> Result<EvalResult> {
    let total = limit.map_or(data.len(), |l| l.min(data.len()));
    if total == 0 {
        return Err(TrainError::EmptyValidation {
            dataset: data.dir().to_path_buf(),
        });
    }
    let shard_err = |source| TrainError::Shard {
        dataset: data.dir().to_path_buf(),
        source,
    };
    let side = data.geometry().side as usize;
    let image_bytes = side * side * 3;
    let bs = batch_size.max(1);
    let mut pixels = vec![0u8; bs * image_bytes];
    let mut labels = Vec::with_capacity(bs);
    let (mut wrong1, mut wrong5) = (0i64, 0i64);
    let device: Device = model.device();
    let mut start = 0;
    while start < total {
        let n = bs.min(total - start);
        labels.clear();
        for i in 0..n {
            let rec = data.record(start + i).map_err(shard_err)?;
            rec.decode_into(&mut pixels[i * image_bytes..(i + 1) * image_bytes])
                .map_err(shard_err)?;
            labels.push(i64::from(rec.label));
        }
        let dims = [n as i64, side as i64, side as i64, 3];
        let images = Tensor::f_from_data_size(&pixels[..n * image_bytes], &dims, Kind::Uint8)
            .and_then(|t| t.f_to_device(device))
            .ctx(|| "upload validation batch".into())?;
        let probs = predict_probs(model, norm, &images, mode)?;
        let lab = Tensor::f_from_slice(&labels)
            .and_then(|t| t.f_to_device(device))
            .ctx(|| "upload labels".into())?;
        let (w1, w5) = topk_wrong(&probs, &lab, 5)?;
        wrong1 += w1;
        wrong5 += w5;
        start += n;
        progress(start as u64);
    }
    Ok(EvalResult {
        images: total as u64,
        top1_err: wrong1 as f64 / total as f64,
        top5_err: wrong5 as f64 / total as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_crop_offsets_are_corners_and_centre() {
        assert_eq!(crop_offsets(256, 227, EvalMode::Centre), [(14, 14)]);
        assert_eq!(
            crop_offsets(256, 224, EvalMode::TenCrop),
            [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]
        );
    }
}
