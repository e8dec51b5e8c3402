//! Keyset paging over an ordered index, newest first, as the real API pages (facts sheet §2).
//!
//! A page costs O(log n + limit) when the filter maps to index bounds; a predicate that the
//! index cannot answer (e.g. "this conversation's rows of one workflow") is only ever used on
//! small per-conversation indexes.

use std::collections::BTreeSet;
use std::ops::Bound::{self, Excluded, Included, Unbounded};

use super::codec::Key;

/// What a client asked for, with query filters already turned into index bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageRequest {
    /// Lower bound from filters such as `created_after` (inclusive).
    pub lo: Bound<Key>,
    /// Upper bound from filters such as `created_before` (inclusive).
    pub hi: Bound<Key>,
    /// `after` cursor: rows strictly older than this position.
    pub after: Option<Key>,
    /// `before` cursor: rows strictly newer than this position.
    pub before: Option<Key>,
    /// Page size, already validated to 1..=100.
    pub limit: usize,
}

/// One page, newest first, and whether more matching rows exist on either side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Page {
    pub rows: Vec<Key>,
    /// Rows older than the last one exist (so `paging.next` is set).
    pub has_older: bool,
    /// Rows newer than the first one exist (so `paging.previous` is set).
    pub has_newer: bool,
}

fn bound_value(b: &Bound<Key>) -> Option<Key> {
    match b {
        Included(k) | Excluded(k) => Some(*k),
        Unbounded => None,
    }
}

/// The stricter of two lower bounds.
fn max_lo(a: Bound<Key>, b: Bound<Key>) -> Bound<Key> {
    match (bound_value(&a), bound_value(&b)) {
        (None, _) => b,
        (_, None) => a,
        (Some(x), Some(y)) if x != y => {
            if x > y {
                a
            } else {
                b
            }
        }
        _ => {
            if matches!(a, Excluded(_)) {
                a
            } else {
                b
            }
        }
    }
}

/// The stricter of two upper bounds.
fn min_hi(a: Bound<Key>, b: Bound<Key>) -> Bound<Key> {
    match (bound_value(&a), bound_value(&b)) {
        (None, _) => b,
        (_, None) => a,
        (Some(x), Some(y)) if x != y => {
            if x < y {
                a
            } else {
                b
            }
        }
        _ => {
            if matches!(a, Excluded(_)) {
                a
            } else {
                b
            }
        }
    }
}

/// `set.range((lo, hi))`, but empty instead of panicking on inverted or empty bounds.
fn range(
    set: &BTreeSet<Key>,
    lo: Bound<Key>,
    hi: Bound<Key>,
) -> impl DoubleEndedIterator<Item = &Key> {
    let valid = match (bound_value(&lo), bound_value(&hi)) {
        (Some(a), Some(b)) => a < b || (a == b && matches!((lo, hi), (Included(_), Included(_)))),
        _ => true,
    };
    valid.then(|| set.range((lo, hi))).into_iter().flatten()
}

/// Returns the page `req` selects from `set`, keeping only rows for which `keep` holds.
pub(crate) fn page(set: &BTreeSet<Key>, req: &PageRequest, keep: impl Fn(&Key) -> bool) -> Page {
    let lo = max_lo(req.lo, req.before.map_or(Unbounded, Excluded));
    let hi = min_hi(req.hi, req.after.map_or(Unbounded, Excluded));
    let rows: Vec<Key> = if req.before.is_some() && req.after.is_none() {
        // Going back: the `limit` rows just newer than the cursor, then newest first.
        let mut rows: Vec<Key> = range(set, lo, hi)
            .filter(|k| keep(k))
            .take(req.limit)
            .copied()
            .collect();
        rows.reverse();
        rows
    } else {
        range(set, lo, hi)
            .rev()
            .filter(|k| keep(k))
            .take(req.limit)
            .copied()
            .collect()
    };
    let has_older = rows
        .last()
        .is_some_and(|last| range(set, req.lo, Excluded(*last)).rev().any(&keep));
    let has_newer = rows
        .first()
        .is_some_and(|first| range(set, Excluded(*first), req.hi).any(&keep));
    Page {
        rows,
        has_older,
        has_newer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: i64) -> BTreeSet<Key> {
        (1..=n).map(|i| (i, i as u128)).collect()
    }

    fn req(limit: usize) -> PageRequest {
        PageRequest {
            lo: Unbounded,
            hi: Unbounded,
            after: None,
            before: None,
            limit,
        }
    }

    #[test]
    fn pages_forward_and_back() {
        let s = set(25);
        let first = page(&s, &req(10), |_| true);
        assert_eq!(first.rows.first(), Some(&(25, 25)));
        assert_eq!(first.rows.len(), 10);
        assert!(first.has_older && !first.has_newer);
        let second = page(
            &s,
            &PageRequest {
                after: first.rows.last().copied(),
                ..req(10)
            },
            |_| true,
        );
        assert_eq!(second.rows.first(), Some(&(15, 15)));
        assert!(second.has_older && second.has_newer);
        let third = page(
            &s,
            &PageRequest {
                after: second.rows.last().copied(),
                ..req(10)
            },
            |_| true,
        );
        assert_eq!(third.rows.len(), 5);
        assert!(!third.has_older && third.has_newer);
        let back = page(
            &s,
            &PageRequest {
                before: third.rows.first().copied(),
                ..req(10)
            },
            |_| true,
        );
        assert_eq!(back.rows, second.rows);
    }

    #[test]
    fn exact_multiple_has_no_next() {
        let s = set(20);
        let first = page(&s, &req(10), |_| true);
        let second = page(
            &s,
            &PageRequest {
                after: first.rows.last().copied(),
                ..req(10)
            },
            |_| true,
        );
        assert_eq!(second.rows.len(), 10);
        assert!(!second.has_older);
    }

    #[test]
    fn inverted_or_empty_bounds_do_not_panic() {
        let s = set(5);
        let r = PageRequest {
            lo: Included((4, 0)),
            hi: Included((2, u128::MAX)),
            ..req(10)
        };
        assert_eq!(page(&s, &r, |_| true), Page::default());
        let r = PageRequest {
            after: Some((3, 3)),
            before: Some((3, 3)),
            ..req(10)
        };
        assert_eq!(page(&s, &r, |_| true).rows, Vec::<Key>::new());
    }

    #[test]
    fn filter_bounds_are_inclusive() {
        let s = set(10);
        let r = PageRequest {
            lo: Included((3, 0)),
            hi: Included((5, u128::MAX)),
            ..req(10)
        };
        let p = page(&s, &r, |_| true);
        assert_eq!(p.rows, vec![(5, 5), (4, 4), (3, 3)]);
        assert!(!p.has_older && !p.has_newer);
    }
}
