//! Comparing class lists: wherever two datasets meet (train and val) or a checkpoint
//! meets a dataset, label `i` must mean the same class on both sides, or every label
//! is silently shifted. Classes are the same when their wnids are equal in the same
//! order; names are descriptions and may differ (a dataset built without
//! `LOC_synset_mapping.txt` names each class by its wnid).

use crate::ClassInfo;

/// Where two class lists first part ways.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirstDifference {
    /// Both lists have a class at `label`, with different wnids.
    Differs {
        /// The label (index in both lists).
        label: usize,
        /// The first list's class.
        a: ClassInfo,
        /// The second list's class.
        b: ClassInfo,
        /// Where the second list's class sits in the first list, if anywhere (a
        /// shifted or swapped list).
        b_in_a: Option<usize>,
    },
    /// The second list ends before `label`, which the first list has.
    Missing {
        /// The first label the second list lacks.
        label: usize,
        /// The first list's class there.
        a: ClassInfo,
    },
    /// The second list has a class at `label`, past the end of the first list.
    Extra {
        /// The first label the first list lacks.
        label: usize,
        /// The second list's class there.
        b: ClassInfo,
    },
}

/// Two class lists that differ: the first difference, and what each list is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ClassListMismatch {
    /// What the first list belongs to (`the checkpoint`, `train (shards/train)`).
    pub a_name: String,
    /// What the second list belongs to.
    pub b_name: String,
    /// Classes in the first list.
    pub a_len: usize,
    /// Classes in the second list.
    pub b_len: usize,
    /// The first difference (boxed: errors stay small to pass around).
    pub first: Box<FirstDifference>,
}

fn show(c: &ClassInfo) -> String {
    if c.name.is_empty() || c.name == c.wnid {
        c.wnid.clone()
    } else {
        format!("{} ({})", c.wnid, c.name)
    }
}

impl ClassListMismatch {
    fn describe(&self) -> String {
        let (a, b) = (&self.a_name, &self.b_name);
        let counts = if self.a_len == self.b_len {
            format!("both have {} classes", self.a_len)
        } else {
            format!("{a} has {} classes, {b} has {}", self.a_len, self.b_len)
        };
        let first = match self.first.as_ref() {
            FirstDifference::Differs {
                label,
                a: ca,
                b: cb,
                b_in_a,
            } => {
                let moved = match b_in_a {
                    Some(i) => format!(", which is label {i} in {a}"),
                    None => format!(", which {a} does not have"),
                };
                format!(
                    "label {label} is {} in {a} but {} in {b}{moved}",
                    show(ca),
                    show(cb)
                )
            }
            FirstDifference::Missing { label, a: ca } => {
                format!("label {label} is {} in {a} and missing from {b}", show(ca))
            }
            FirstDifference::Extra { label, b: cb } => {
                format!("label {label} is {} in {b} and missing from {a}", show(cb))
            }
        };
        format!("the class lists of {a} and {b} differ: {first} ({counts})")
    }
}

/// Check that two class lists hold the same wnids in the same order; the error
/// names the first label where they differ. `a_name` and `b_name` say what each
/// list belongs to, for the message.
pub fn compare_classes(
    a_name: &str,
    a: &[ClassInfo],
    b_name: &str,
    b: &[ClassInfo],
) -> Result<(), ClassListMismatch> {
    let first = (0..a.len().max(b.len())).find_map(|i| match (a.get(i), b.get(i)) {
        (Some(x), Some(y)) if x.wnid == y.wnid => None,
        (Some(x), Some(y)) => Some(FirstDifference::Differs {
            label: i,
            a: x.clone(),
            b: y.clone(),
            b_in_a: a.iter().position(|c| c.wnid == y.wnid),
        }),
        (Some(x), None) => Some(FirstDifference::Missing {
            label: i,
            a: x.clone(),
        }),
        (None, Some(y)) => Some(FirstDifference::Extra {
            label: i,
            b: y.clone(),
        }),
        (None, None) => None,
    });
    match first {
        None => Ok(()),
        Some(first) => Err(ClassListMismatch {
            a_name: a_name.to_string(),
            b_name: b_name.to_string(),
            a_len: a.len(),
            b_len: b.len(),
            first: Box::new(first),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(wnids: &[&str]) -> Vec<ClassInfo> {
        wnids
            .iter()
            .map(|w| ClassInfo {
                wnid: (*w).into(),
                name: format!("{w} name"),
            })
            .collect()
    }

    fn err(a: &[&str], b: &[&str]) -> ClassListMismatch {
        compare_classes("train", &list(a), "val", &list(b)).unwrap_err()
    }

    #[test]
    fn equal_lists_pass_whatever_the_names() {
        let a = list(&["n1", "n2", "n3"]);
        let mut b = a.clone();
        b[1].name = "n2".into();
        compare_classes("train", &a, "val", &b).unwrap();
        compare_classes("x", &[], "y", &[]).unwrap();
    }

    #[test]
    fn swapped_classes_name_the_first_label_and_where_it_went() {
        let e = err(&["n1", "n2", "n3"], &["n1", "n3", "n2"]);
        assert!(matches!(
            *e.first,
            FirstDifference::Differs {
                label: 1,
                b_in_a: Some(2),
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "the class lists of train and val differ: label 1 is n2 (n2 name) in train but \
             n3 (n3 name) in val, which is label 2 in train (both have 3 classes)"
        );
    }

    #[test]
    fn a_class_missing_in_the_middle_shows_as_a_shift() {
        let e = err(&["n1", "n2", "n3", "n4"], &["n1", "n3", "n4"]);
        let msg = e.to_string();
        assert!(
            msg.contains("label 1 is n2 (n2 name) in train but n3 (n3 name) in val")
                && msg.contains("label 2 in train")
                && msg.contains("train has 4 classes, val has 3"),
            "{msg}"
        );
    }

    #[test]
    fn missing_extra_and_foreign_classes() {
        let e = err(&["n1", "n2"], &["n1"]);
        assert!(matches!(
            *e.first,
            FirstDifference::Missing { label: 1, .. }
        ));
        assert!(
            e.to_string()
                .contains("label 1 is n2 (n2 name) in train and missing from val")
        );
        let e = err(&["n1"], &["n1", "n9"]);
        assert!(matches!(*e.first, FirstDifference::Extra { label: 1, .. }));
        assert!(
            e.to_string()
                .contains("label 1 is n9 (n9 name) in val and missing from train")
        );
        let e = err(&["n1", "n2"], &["n1", "n9"]);
        assert!(e.to_string().contains("which train does not have"), "{e}");
        let e = err(&[], &["n1"]);
        assert!(
            e.to_string().contains("train has 0 classes, val has 1"),
            "{e}"
        );
    }
}
