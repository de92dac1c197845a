//! Value parsers shared by the commands' flags, so that every refusal reads the same
//! way ("--workers 0: must be at least 1") rather than clap's range text with
//! `18446744073709551615` in it.

/// A count that must be at least 1 (`--workers`, `--batch-size`, `--per-class`, ...):
/// `value_parser = sv_cli::args::at_least_one::<usize>`.
pub fn at_least_one<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialEq + From<u8>,
{
    let n: T = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if n == T::from(0) {
        return Err("must be at least 1".into());
    }
    Ok(n)
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
}
