//! `supervision model list` and `supervision model summary MODEL [--json]`: the
//! registered models, and the layers, output shapes and parameter counts of one. The
//! descriptions are sv-model's plain data, so this runs without libtorch.

use anyhow::Result;
use clap::Subcommand;
use sv_model::{MODEL_NAMES, ModelSpec};

/// Model subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Print the layers, output shapes and parameter counts of MODEL.
    Summary {
        /// The model.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(MODEL_NAMES))]
        model: String,
        /// Output classes.
        #[arg(long, default_value_t = 1000)]
        classes: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the registered model names.
    List,
}

pub fn run(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::List => {
            for m in MODEL_NAMES {
                sv_cli::outln!("{m}");
            }
        }
        Cmd::Summary {
            model,
            classes,
            json,
        } => {
            let spec = ModelSpec::by_name(&model, classes)?;
            let summary = spec.summary()?;
            if json {
                sv_cli::outln!("{}", serde_json::to_string_pretty(&summary)?);
                return Ok(0);
            }
            sv_cli::outln!(
                "{} (input {:?}, init {:?})",
                summary.model,
                summary.input,
                spec.init
            );
            sv_cli::outln!("{:<44} {:>16} {:>12}", "layer", "output", "params");
            for r in &summary.rows {
                let shape = r
                    .output
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x");
                sv_cli::outln!("{:<44} {:>16} {:>12}", r.layer, shape, group(r.params));
            }
            sv_cli::outln!("total parameters: {}", group(summary.total_params));
        }
    }
    Ok(0)
}

/// 60965224 -> "60,965,224".
fn group(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
