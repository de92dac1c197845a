//! Value parsers shared by the commands' flags, so that every refusal reads the same
//! way ("--workers 0: must be at least 1") rather than clap's range text with
//! `18446744073709551615` in it.

/// A count that must be at least 1 (`--workers`, `--batch-size`, `--per-class`, ...).
pub fn at_least_one(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// As [`at_least_one`], as a `u64` (record counts, sample sizes).
pub fn at_least_one_u64(text: &str) -> Result<u64, String> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_start_at_one_and_say_why() {
        assert_eq!(at_least_one("3"), Ok(3));
        assert_eq!(at_least_one("0").unwrap_err(), "must be at least 1");
        assert!(
            at_least_one("-1")
                .unwrap_err()
                .contains("not a whole number")
        );
        assert!(at_least_one("99999999999999999999999").is_err());
        assert_eq!(at_least_one_u64("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(at_least_one_u64("0").unwrap_err(), "must be at least 1");
    }
}
