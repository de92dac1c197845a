//! Value parsers and limits for the trainer's numbers.
//!
//! The trainer computes in f32: the learning rate, the decay step (weight decay times
//! the rate), the momentum and the fp16 loss scale all become f32 scalars on the
//! device. A value f32 cannot hold either panics inside libtorch (`--lr 1e39`) or turns
//! silently into 0 or a rounded stand-in (`--lr 1e-50`), so every such flag is refused
//! outside f32's normal range: above [`f32::MAX`], or above 0 but below
//! [`f32::MIN_POSITIVE`] (smaller values keep few digits, and GPUs flush them to 0).
//! Values computed from two flags (the decay step, the lowest scheduled rate) are
//! checked by [`check_f32`] before any file is written.

/// The largest value the trainer's f32 holds, as a message writes it.
fn max_text() -> String {
    format!(
        "must be at most {:e} (the largest f32: the trainer computes in f32)",
        f32::MAX
    )
}

/// What a value above 0 but below f32's normal range is told.
fn tiny_text(zero_ok: bool) -> String {
    format!(
        "must be {}at least {:e} (the smallest normal f32: the trainer computes in f32, \
         which would round it towards 0)",
        if zero_ok { "0 or " } else { "" },
        f32::MIN_POSITIVE
    )
}

fn parse(text: &str) -> Result<f64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// A finite number for which `ok` holds; `what` says the range in words.
fn number(text: &str, ok: fn(f64) -> bool, what: &str) -> Result<f64, String> {
    let v = parse(text)?;
    if v.is_finite() && ok(v) {
        Ok(v)
    } else {
        Err(format!("must be {what}"))
    }
}

/// `v` in f32's normal range, or 0 where `zero_ok`.
fn in_f32(v: f64, zero_ok: bool) -> Result<f64, String> {
    if v > f64::from(f32::MAX) {
        return Err(max_text());
    }
    if v < f64::from(f32::MIN_POSITIVE) && !(zero_ok && v == 0.0) {
        return Err(tiny_text(zero_ok));
    }
    Ok(v)
}

/// Above 0, and an f32 (`--lr`, `--loss-scale`).
pub fn positive_f32(text: &str) -> Result<f64, String> {
    in_f32(number(text, |v| v > 0.0, "above 0")?, false)
}

/// 0 or more, and an f32 (`--weight-decay`).
pub fn non_negative_f32(text: &str) -> Result<f64, String> {
    in_f32(number(text, |v| v >= 0.0, "0 or more")?, true)
}

/// 0 or more and below 1, and an f32 (`--momentum`).
pub fn fraction_f32(text: &str) -> Result<f64, String> {
    in_f32(fraction(text)?, true)
}

/// 0 or more and below 1 (`--threshold`, compared in f64 by the schedule).
pub fn fraction(text: &str) -> Result<f64, String> {
    number(text, |v| (0.0..1.0).contains(&v), "0 or more and below 1")
}

/// Above 1 and at most f32's largest value (`--lr-divisor`: the rate is divided by
/// it, so the lowest rate it leads to is checked by [`check_f32`]).
pub fn above_one_f32(text: &str) -> Result<f64, String> {
    in_f32(number(text, |v| v > 1.0, "above 1")?, false)
}

/// The rate floor of the plateau schedule: it never divides the rate below this.
pub const PLATEAU_MIN_LR: f64 = 1e-7;

/// How a run's rate can fall, for [`check_f32`].
#[derive(Debug, Clone, Copy)]
pub enum Falls {
    /// Divided by `divisor` at most `drops` times, never below [`PLATEAU_MIN_LR`].
    Plateau { divisor: f64, drops: u32 },
    /// Divided by `divisor` every `every` epochs, at most `drops` times, in `epochs`.
    Step {
        divisor: f64,
        drops: u32,
        every: u32,
        epochs: u64,
    },
    /// Never.
    Constant,
}

impl Falls {
    /// A lower bound of the lowest rate the run trains with, from `lr`.
    pub fn lowest(self, lr: f64) -> f64 {
        let divided = |divisor: f64, drops: u64| {
            let drops = i32::try_from(drops).unwrap_or(i32::MAX);
            lr * divisor.powi(drops).recip()
        };
        match self {
            Falls::Constant => lr,
            // a drop happens only while the rate stays at or above the floor
            Falls::Plateau { divisor, drops } => {
                divided(divisor, u64::from(drops)).max(lr.min(PLATEAU_MIN_LR))
            }
            // a drop after the last epoch is never trained with
            Falls::Step {
                divisor,
                drops,
                every,
                epochs,
            } => {
                let used = (epochs.saturating_sub(1) / u64::from(every.max(1))).min(drops.into());
                divided(divisor, used)
            }
        }
    }
}

/// The numbers the trainer makes from two flags, checked as the flags are: the decay
/// step `weight_decay x lr` at the highest rate and (where there is decay) at the
/// lowest, and the lowest rate the schedule reaches. The error names the flags.
pub fn check_f32(lr: f64, weight_decay: f64, falls: Falls) -> Result<(), String> {
    let lowest = falls.lowest(lr);
    if lowest < f64::from(f32::MIN_POSITIVE) {
        let by = match falls {
            Falls::Step { .. } => "--max-drops, --lr-divisor and --step-every",
            _ => "--max-drops and --lr-divisor",
        };
        return Err(format!(
            "--lr {lr} divided as {by} say falls to {lowest:e}, which {}; lower --max-drops \
             or --lr-divisor",
            tiny_text(false)
        ));
    }
    let step = weight_decay * lr;
    if step > f64::from(f32::MAX) {
        return Err(format!(
            "--weight-decay {weight_decay} times --lr {lr} (the decay step, {step:e}) {}",
            max_text()
        ));
    }
    let low = weight_decay * lowest;
    if weight_decay > 0.0 && low < f64::from(f32::MIN_POSITIVE) {
        return Err(format!(
            "--weight-decay {weight_decay} times the lowest rate {lowest:e} (the decay step, \
             {low:e}) {}",
            tiny_text(false)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_flags_refuse_what_f32_cannot_hold() {
        assert_eq!(positive_f32("0.01"), Ok(0.01));
        assert_eq!(positive_f32("0").unwrap_err(), "must be above 0");
        assert_eq!(positive_f32("nan").unwrap_err(), "must be above 0");
        assert_eq!(positive_f32("-inf").unwrap_err(), "must be above 0");
        for big in ["1e39", "3.5e38", "1e300"] {
            assert!(
                positive_f32(big)
                    .unwrap_err()
                    .contains("at most 3.4028235e38")
            );
        }
        assert!(positive_f32("3.4e38").is_ok());
        assert!(positive_f32("1e-39").unwrap_err().contains("1.1754944e-38"));
        assert_eq!(non_negative_f32("0"), Ok(0.0));
        assert!(
            non_negative_f32("1e-300")
                .unwrap_err()
                .contains("0 or at least")
        );
        assert!(non_negative_f32("1e300").unwrap_err().contains("at most"));
        assert_eq!(fraction_f32("0"), Ok(0.0));
        assert!(fraction_f32("1e-45").is_err());
        assert!(fraction_f32("1").unwrap_err().contains("below 1"));
        assert!(above_one_f32("1e300").unwrap_err().contains("at most"));
        assert!(positive_f32("x").unwrap_err().contains("not a number"));
    }

    #[test]
    fn products_and_scheduled_rates_stay_in_f32() {
        assert!(check_f32(0.01, 5e-4, Falls::Constant).is_ok());
        let err = check_f32(1e10, 1e30, Falls::Constant).unwrap_err();
        assert!(
            err.contains("--weight-decay") && err.contains("at most"),
            "{err}"
        );
        let step = |drops, epochs| Falls::Step {
            divisor: 1e10,
            drops,
            every: 1,
            epochs,
        };
        assert!(check_f32(0.01, 0.0, step(3, 90)).is_ok());
        let err = check_f32(0.01, 0.0, step(4, 90)).unwrap_err();
        assert!(
            err.contains("--max-drops") && err.contains("1.1754944e-38"),
            "{err}"
        );
        // a fourth drop after the last epoch is never used
        assert!(check_f32(0.01, 0.0, step(4, 4)).is_ok());
        // the plateau floor keeps the rate at 1e-7 or above
        let plateau = Falls::Plateau {
            divisor: 1e10,
            drops: u32::MAX,
        };
        assert!(check_f32(0.01, 5e-4, plateau).is_ok());
        // decay that f32 would round to nothing at the lowest rate
        assert!(check_f32(0.01, 1e-33, plateau).is_err());
    }
}
