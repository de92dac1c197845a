//! Input names as WebDataset and the hub write them: a brace pattern
//! (`imagenet1k-train-{0000..1023}.tar`, `part-{a,b}.tar`) expanded as WebDataset's
//! `braceexpand` does, and a shell glob (`*`, `?`) in the file name for parquet sets
//! (`train-*.parquet`). Expansion is textual and ordered (numeric ranges ascend,
//! keeping their zero padding; comma lists keep their order; glob matches sort by
//! name), so the same pattern always gives the same file order, which is the build's
//! record order.

/// The most names one pattern may expand to (ImageNet's train set is 1,024 tars).
pub const MAX_EXPANSION: usize = 1 << 20;

/// Whether `text` holds a brace group WebDataset would expand.
pub fn has_braces(text: &str) -> bool {
    find_group(text).is_some()
}

/// Expand every brace group in `text`, left to right. `Err` in words for a group that
/// is malformed or expands to too many names.
pub fn expand(text: &str) -> Result<Vec<String>, String> {
    let Some((open, close)) = find_group(text) else {
        return Ok(vec![text.to_string()]);
    };
    let (head, body, tail) = (&text[..open], &text[open + 1..close], &text[close + 1..]);
    let choices = alternatives(body)?;
    let rest = expand(tail)?;
    let total = choices.len().saturating_mul(rest.len());
    if total > MAX_EXPANSION {
        return Err(format!(
            "`{text}` expands to {total} names, more than {MAX_EXPANSION}"
        ));
    }
    let mut out = Vec::with_capacity(total);
    for c in &choices {
        for r in &rest {
            out.push(format!("{head}{c}{r}"));
        }
    }
    Ok(out)
}

/// The first `{...}` holding `..` or `,` (a lone `{x}` is left as text, as the shell
/// and braceexpand do).
fn find_group(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(o) = text[from..].find('{').map(|i| i + from) {
        let c = text[o..].find('}').map(|i| i + o)?;
        let body = &text[o + 1..c];
        if !body.contains('{') && (body.contains("..") || body.contains(',')) {
            return Some((o, c));
        }
        from = o + 1;
        if from >= bytes.len() {
            return None;
        }
    }
    None
}

fn alternatives(body: &str) -> Result<Vec<String>, String> {
    if body.contains(',') {
        return Ok(body.split(',').map(str::to_string).collect());
    }
    let (a, b) = body
        .split_once("..")
        .ok_or_else(|| format!("`{{{body}}}`"))?;
    let bad = || {
        format!(
            "`{{{body}}}` is not a range of whole numbers (as in {{0000..1023}}) nor a list \
             (as in {{a,b}})"
        )
    };
    let lo: u64 = a.parse().map_err(|_| bad())?;
    let hi: u64 = b.parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(format!(
            "`{{{body}}}` counts down: write the smaller number first"
        ));
    }
    if hi - lo >= MAX_EXPANSION as u64 {
        return Err(format!(
            "`{{{body}}}` names {} files, more than {MAX_EXPANSION}",
            hi - lo + 1
        ));
    }
    // Zero padding as written: `{0000..1023}` gives 0000, 0001, ...
    let width = if a.len() > 1 && a.starts_with('0') {
        a.len()
    } else {
        0
    };
    Ok((lo..=hi).map(|n| format!("{n:0width$}")).collect())
}

/// Whether a file name holds glob characters.
pub fn has_glob(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// Shell-style match of a whole file name: `*` any run of characters, `?` one.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, never
    // exponential.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_keep_padding_and_lists_keep_order() {
        assert_eq!(
            expand("a-{0000..0002}.tar").unwrap(),
            ["a-0000.tar", "a-0001.tar", "a-0002.tar"]
        );
        assert_eq!(expand("x{8..10}").unwrap(), ["x8", "x9", "x10"]);
        assert_eq!(
            expand("{b,a}-{0..1}").unwrap(),
            ["b-0", "b-1", "a-0", "a-1"]
        );
        assert_eq!(expand("plain{x}.tar").unwrap(), ["plain{x}.tar"]);
        assert!(expand("a{3..1}").unwrap_err().contains("counts down"));
        assert!(expand("a{x..y}").unwrap_err().contains("not a range"));
        assert!(expand("{0..999999999}").unwrap_err().contains("more than"));
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match(
            "train-*.parquet",
            "train-00000-of-00004.parquet"
        ));
        assert!(!glob_match("train-*.parquet", "val-0.parquet"));
        assert!(glob_match("a?c*", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("*.tar", "x.tar.gz"));
    }
}
