//! Value parsers shared by the commands' flags, so that every refusal reads the same
//! way ("--workers 0: must be at least 1", "--workers 100000: must be at most 1024")
//! rather than clap's range text with `18446744073709551615` in it.
//!
//! Every count that sizes memory or threads has an upper bound here: a typo or a
//! hostile script (`--workers 1e8`, `--batch-size 4611686018427387904`) then gets an
//! error naming the flag and the limit, never 4,500 threads, a "capacity overflow"
//! panic or a machine swapping. The limits are far above real use (the paper trains
//! with batch 128 on 2 GPUs; ImageNet-21k has 21,841 classes).

use std::fmt::Display;
use std::str::FromStr;

/// Most worker threads any command starts (`--workers`, `--threads`): 1,024 is
/// several times the core count of the largest machines a job is given, and each
/// thread costs a stack and, in the loader, a batch buffer.
pub const MAX_WORKERS: usize = sv_pipeline::MAX_WORKERS;

/// The worker count a command uses when `--workers` is not given: one per core, held
/// within [`MAX_WORKERS`] so that a machine with more cores never trips the limit the
/// flag itself enforces.
pub fn default_workers() -> usize {
    num_cpus::get().clamp(1, MAX_WORKERS)
}

/// Most batches the loader may queue beyond one per worker (`--prefetch`), or let the
/// consumer hold: each is one batch buffer.
pub const MAX_PREFETCH: usize = sv_pipeline::MAX_PREFETCH;

/// Largest batch one process makes (`--batch-size` of train, eval and bench): 65,536
/// samples. Large-batch ImageNet training reaches 32K samples in all, spread over
/// hundreds of devices; one batch of 65,536 227x227 crops is already 10 GB of uint8.
pub const MAX_BATCH_SIZE: usize = sv_pipeline::MAX_BATCH_SIZE;

/// Most classes a model may be built for (`--synthetic-classes`): about five times
/// ImageNet-21k's 21,841. The last layer grows with it (4096 x 100,000 weights is
/// 1.6 GB, three times over with gradients and momentum; `--synthetic-classes
/// 10000000` took 24 GB before this bound). `synth --classes` has its own, smaller
/// bound ([`sv_synth::MAX_CLASSES`]).
pub const MAX_CLASSES: usize = 100_000;

/// A count that must be at least 1 (`--workers`, `--batch-size`, `--per-class`, ...):
/// `value_parser = sv_cli::args::at_least_one::<usize>`. Prefer [`count_up_to`] for a
/// count that sizes memory or threads.
pub fn at_least_one<T>(text: &str) -> Result<T, String>
where
    T: FromStr + PartialEq + From<u8>,
{
    let n: T = whole_number(text)?;
    if n == T::from(0) {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// A count from 1 to `max` inclusive:
/// `value_parser = sv_cli::args::count_up_to(sv_cli::args::MAX_WORKERS)`. Clap names
/// the flag: "invalid value '100000' for '--workers <N>': must be at most 1024".
pub fn count_up_to<T>(max: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + From<u8> + Display + Copy + Send + Sync + 'static,
{
    move |text| {
        let n = at_least_one::<T>(text)?;
        at_most(n, max)
    }
}

/// A count from 0 to `max` inclusive (`--prefetch`, `--warmup`, `--threads` where 0
/// means "every core"): `value_parser = sv_cli::args::zero_up_to(MAX_PREFETCH)`.
pub fn zero_up_to<T>(max: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
{
    move |text| {
        let n = whole_number::<T>(text)?;
        at_most(n, max)
    }
}

/// The check itself, for a value that did not come through a parser (an environment
/// variable, a count computed from two flags): `Err("must be at most {max}")`.
pub fn at_most<T: PartialOrd + Display>(n: T, max: T) -> Result<T, String> {
    if n > max {
        return Err(format!("must be at most {max}"));
    }
    Ok(n)
}

fn whole_number<T: FromStr>(text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_start_at_one_and_say_why() {
        assert_eq!(at_least_one::<usize>("3"), Ok(3));
        assert_eq!(
            at_least_one::<usize>("0").unwrap_err(),
            "must be at least 1"
        );
        assert!(
            at_least_one::<usize>("-1")
                .unwrap_err()
                .contains("not a whole number")
        );
        assert!(at_least_one::<usize>("99999999999999999999999").is_err());
        assert_eq!(at_least_one::<u64>("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(at_least_one::<u64>("0").unwrap_err(), "must be at least 1");
    }

    #[test]
    fn bounded_counts_name_the_limit() {
        let workers = count_up_to(MAX_WORKERS);
        assert_eq!(workers("1"), Ok(1));
        assert_eq!(workers("1024"), Ok(1024));
        assert_eq!(workers("1025").unwrap_err(), "must be at most 1024");
        assert_eq!(
            workers("18446744073709551615").unwrap_err(),
            "must be at most 1024"
        );
        assert_eq!(workers("0").unwrap_err(), "must be at least 1");
        assert!(workers("1e8").unwrap_err().contains("not a whole number"));
        assert!(workers("-3").unwrap_err().contains("not a whole number"));
        // Wider than usize: still a clean error, not a wrap.
        assert!(workers("340282366920938463463374607431768211456").is_err());

        let batch = count_up_to(MAX_BATCH_SIZE as u64);
        assert_eq!(batch("65536"), Ok(65536));
        assert_eq!(
            batch("4611686018427387904").unwrap_err(),
            "must be at most 65536"
        );
    }

    #[test]
    fn zero_is_allowed_where_it_means_something() {
        let prefetch = zero_up_to(MAX_PREFETCH);
        assert_eq!(prefetch("0"), Ok(0));
        assert_eq!(prefetch("256"), Ok(256));
        assert_eq!(prefetch("257").unwrap_err(), "must be at most 256");
        assert!(prefetch("x").unwrap_err().contains("not a whole number"));
        assert_eq!(at_most(3u32, 2), Err("must be at most 2".into()));
    }

    #[test]
    fn clap_names_the_flag_and_the_limit() {
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[arg(long, value_parser = count_up_to(MAX_WORKERS))]
            workers: usize,
        }
        let err = <Cli as clap::Parser>::try_parse_from(["x", "--workers", "100000"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--workers"), "{err}");
        assert!(err.contains("must be at most 1024"), "{err}");
        let ok = <Cli as clap::Parser>::try_parse_from(["x", "--workers", "8"]).unwrap();
        assert_eq!(ok.workers, 8);
    }
}
