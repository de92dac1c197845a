//! Learning-rate schedules: the paper's "divide by 10 when the validation error stops
//! improving" (plateau), a fixed step schedule, and a constant rate.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Which schedule and its constants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleConfig {
    /// Multiply by `factor` when the validation error has not improved by more than
    /// `threshold` (absolute, in error fraction) for `patience` evaluations in a row.
    Plateau {
        /// Evaluations without improvement tolerated before a drop.
        patience: u32,
        /// Minimum decrease of the error that counts as an improvement.
        threshold: f64,
        /// Multiplier at each drop (0.1 in the paper).
        factor: f64,
        /// The rate never goes below this.
        min_lr: f64,
    },
    /// Multiply by `factor` every `every` epochs.
    Step {
        /// Epochs between drops.
        every: u32,
        /// Multiplier at each drop.
        factor: f64,
    },
    /// Keep the initial rate.
    Constant,
}

impl ScheduleConfig {
    /// The paper's plateau rule with patience 1 and a 0.1% threshold: one epoch without
    /// improvement divides the rate by 10.
    pub fn paper() -> ScheduleConfig {
        ScheduleConfig::Plateau {
            patience: 1,
            threshold: 1e-3,
            factor: 0.1,
            min_lr: 1e-6,
        }
    }

    fn check(&self) -> Result<()> {
        let ok = match self {
            ScheduleConfig::Plateau {
                factor,
                threshold,
                min_lr,
                ..
            } => *factor > 0.0 && *factor < 1.0 && *threshold >= 0.0 && *min_lr >= 0.0,
            ScheduleConfig::Step { every, factor } => *every > 0 && *factor > 0.0 && *factor < 1.0,
            ScheduleConfig::Constant => true,
        };
        if ok {
            Ok(())
        } else {
            Err(TrainError::Config(format!("bad schedule {self:?}")))
        }
    }
}

/// The schedule's state; serialised into checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The rule.
    pub config: ScheduleConfig,
    /// The current learning rate.
    pub lr: f64,
    /// Best validation error seen (plateau).
    pub best: Option<f64>,
    /// Evaluations since the last improvement (plateau).
    pub bad_evals: u32,
    /// Number of drops so far.
    pub drops: u32,
}

impl Schedule {
    /// Starts at `lr`.
    pub fn new(config: ScheduleConfig, lr: f64) -> Result<Schedule> {
        config.check()?;
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(TrainError::Config(format!(
                "learning rate must be positive, got {lr}"
            )));
        }
        Ok(Schedule {
            config,
            lr,
            best: None,
            bad_evals: 0,
            drops: 0,
        })
    }

    /// Records the end of epoch `epoch` (0-based) and its validation error (if one was
    /// measured); returns true when the rate dropped.
    pub fn end_epoch(&mut self, epoch: u64, val_error: Option<f64>) -> bool {
        match self.config {
            ScheduleConfig::Plateau {
                patience,
                threshold,
                factor,
                min_lr,
            } => {
                let Some(err) = val_error else { return false };
                let improved = self.best.is_none_or(|best| err < best - threshold);
                if improved {
                    self.best = Some(err);
                    self.bad_evals = 0;
                    return false;
                }
                self.bad_evals += 1;
                if self.bad_evals >= patience.max(1) && self.lr * factor >= min_lr {
                    self.lr *= factor;
                    self.drops += 1;
                    self.bad_evals = 0;
                    return true;
                }
                false
            }
            ScheduleConfig::Step { every, factor } => {
                if (epoch + 1).is_multiple_of(u64::from(every)) {
                    self.lr *= factor;
                    self.drops += 1;
                    true
                } else {
                    false
                }
            }
            ScheduleConfig::Constant => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_drops_after_patience_and_resets() {
        let cfg = ScheduleConfig::Plateau {
            patience: 2,
            threshold: 0.01,
            factor: 0.1,
            min_lr: 1e-5,
        };
        let mut s = Schedule::new(cfg, 0.01).unwrap();
        assert!(!s.end_epoch(0, Some(0.50)));
        assert!(!s.end_epoch(1, Some(0.40)), "improved");
        assert!(
            !s.end_epoch(2, Some(0.395)),
            "within threshold: first bad epoch"
        );
        assert!(s.end_epoch(3, Some(0.41)), "second bad epoch drops");
        assert!((s.lr - 0.001).abs() < 1e-15);
        assert_eq!(s.bad_evals, 0);
        assert!(!s.end_epoch(4, None), "no evaluation, no change");
        assert!(!s.end_epoch(5, Some(0.30)));
        assert_eq!(s.best, Some(0.30));
        assert!(!s.end_epoch(6, Some(0.31)));
        assert!(s.end_epoch(7, Some(0.31)));
        assert!((s.lr - 1e-4).abs() < 1e-15);
        // Floor: 1e-4 -> 1e-5 allowed, 1e-5 -> 1e-6 not.
        s.end_epoch(8, Some(0.5));
        assert!(s.end_epoch(9, Some(0.5)));
        s.end_epoch(10, Some(0.5));
        assert!(!s.end_epoch(11, Some(0.5)));
        assert!((s.lr - 1e-5).abs() < 1e-18);
        assert_eq!(s.drops, 3);
    }

    #[test]
    fn step_schedule_drops_every_n_epochs() {
        let mut s = Schedule::new(
            ScheduleConfig::Step {
                every: 3,
                factor: 0.1,
            },
            1.0,
        )
        .unwrap();
        let drops: Vec<bool> = (0..7).map(|e| s.end_epoch(e, Some(0.1))).collect();
        assert_eq!(drops, [false, false, true, false, false, true, false]);
        assert!((s.lr - 0.01).abs() < 1e-12);
        let mut c = Schedule::new(ScheduleConfig::Constant, 0.5).unwrap();
        assert!(!c.end_epoch(0, Some(1.0)) && !c.end_epoch(1, Some(1.0)));
        assert_eq!(c.lr, 0.5);
    }

    #[test]
    fn bad_configs_are_rejected() {
        assert!(
            Schedule::new(
                ScheduleConfig::Step {
                    every: 0,
                    factor: 0.1
                },
                0.1
            )
            .is_err()
        );
        assert!(Schedule::new(ScheduleConfig::paper(), 0.0).is_err());
        assert!(
            Schedule::new(
                ScheduleConfig::Plateau {
                    patience: 1,
                    threshold: 0.0,
                    factor: 2.0,
                    min_lr: 0.0
                },
                0.1
            )
            .is_err()
        );
    }
}
