//! Keyset paging over an ordered index, newest first, as the real API pages (docs/kapso-api.md §3).
//!
//! A page costs O(log n + limit) when the filter maps to index bounds; a predicate that the
//! index cannot answer (e.g. "this conversation's rows of one workflow") is only ever used on
//! small per-conversation indexes. A list can be the union of a few indexes (a live status and
//! the executions still listed under it by the stale-lists variance), merged in key order.

use std::collections::BTreeSet;
use std::ops::Bound::{self, Excluded, Included, Unbounded};
use std::ops::RangeBounds as _;

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
    /// A row to show first, before `limit - 1` rows the rest of the request selects (the
    /// overlapping-pages variance). Ignored unless `limit` > 1, the row is in the sets,
    /// matches the filters, and the page has other rows (so a client always progresses).
    pub repeat: Option<Key>,
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

/// The keys of every set in `(lo, hi)`, ascending or (with `desc`) descending, each once.
fn union<'a>(
    sets: &[&'a BTreeSet<Key>],
    lo: Bound<Key>,
    hi: Bound<Key>,
    desc: bool,
) -> Box<dyn Iterator<Item = Key> + 'a> {
    let ordered = move |set: &'a BTreeSet<Key>| -> Box<dyn Iterator<Item = Key> + 'a> {
        let keys = range(set, lo, hi).copied();
        if desc {
            Box::new(keys.rev())
        } else {
            Box::new(keys)
        }
    };
    match sets {
        [] => Box::new(std::iter::empty()),
        // The usual case (no stale part): one set, without the merge's overhead.
        [one, rest @ ..] if rest.iter().all(|s| s.is_empty()) => ordered(one),
        many => {
            let mut heads: Vec<_> = many.iter().map(|s| ordered(s).peekable()).collect();
            Box::new(std::iter::from_fn(move || {
                // The few sets make a linear scan for the next key cheaper than a heap.
                let next = heads
                    .iter_mut()
                    .filter_map(|h| h.peek().copied())
                    .reduce(|a, b| if (b > a) == desc { b } else { a })?;
                for h in &mut heads {
                    if h.peek() == Some(&next) {
                        h.next();
                    }
                }
                Some(next)
            }))
        }
    }
}

/// Returns the page `req` selects from the union of `sets`, keeping only rows for which
/// `keep` holds.
pub(crate) fn page(
    sets: &[&BTreeSet<Key>],
    req: &PageRequest,
    keep: impl Fn(&Key) -> bool,
) -> Page {
    let lo = max_lo(req.lo, req.before.map_or(Unbounded, Excluded));
    let hi = min_hi(req.hi, req.after.map_or(Unbounded, Excluded));
    let repeat = req.repeat.filter(|k| {
        req.limit > 1
            && (req.lo, req.hi).contains(k)
            && sets.iter().any(|s| s.contains(k))
            && keep(k)
    });
    let limit = req.limit - usize::from(repeat.is_some());
    let mut rows: Vec<Key> = if req.before.is_some() && req.after.is_none() {
        // Going back: the `limit` rows just newer than the cursor, then newest first.
        let mut rows: Vec<Key> = union(sets, lo, hi, false)
            .filter(|k| keep(k))
            .take(limit)
            .collect();
        rows.reverse();
        rows
    } else {
        union(sets, lo, hi, true)
            .filter(|k| keep(k))
            .take(limit)
            .collect()
    };
    if let Some(k) = repeat.filter(|k| !rows.is_empty() && !rows.contains(k)) {
        rows.insert(0, k);
    }
    let has_older = rows
        .last()
        .is_some_and(|last| union(sets, req.lo, Excluded(*last), true).any(|k| keep(&k)));
    let has_newer = rows
        .first()
        .is_some_and(|first| union(sets, Excluded(*first), req.hi, false).any(|k| keep(&k)));
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
            repeat: None,
        }
    }

    #[test]
    fn pages_forward_and_back() {
        let s = set(25);
        let first = page(&[&s], &req(10), |_| true);
        assert_eq!(first.rows.first(), Some(&(25, 25)));
        assert_eq!(first.rows.len(), 10);
        assert!(first.has_older && !first.has_newer);
        let second = page(
            &[&s],
            &PageRequest {
                after: first.rows.last().copied(),
                ..req(10)
            },
            |_| true,
        );
        assert_eq!(second.rows.first(), Some(&(15, 15)));
        assert!(second.has_older && second.has_newer);
        let third = page(
            &[&s],
            &PageRequest {
                after: second.rows.last().copied(),
                ..req(10)
            },
            |_| true,
        );
        assert_eq!(third.rows.len(), 5);
        assert!(!third.has_older && third.has_newer);
        let back = page(
            &[&s],
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
        let first = page(&[&s], &req(10), |_| true);
        let second = page(
            &[&s],
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
        assert_eq!(page(&[&s], &r, |_| true), Page::default());
        let r = PageRequest {
            after: Some((3, 3)),
            before: Some((3, 3)),
            ..req(10)
        };
        assert_eq!(page(&[&s], &r, |_| true).rows, Vec::<Key>::new());
    }

    #[test]
    fn filter_bounds_are_inclusive() {
        let s = set(10);
        let r = PageRequest {
            lo: Included((3, 0)),
            hi: Included((5, u128::MAX)),
            ..req(10)
        };
        let p = page(&[&s], &r, |_| true);
        assert_eq!(p.rows, vec![(5, 5), (4, 4), (3, 3)]);
        assert!(!p.has_older && !p.has_newer);
    }

    #[test]
    fn a_union_pages_like_one_set() {
        let even: BTreeSet<Key> = (1..=20)
            .filter(|i| i % 2 == 0)
            .map(|i| (i, i as u128))
            .collect();
        let odd: BTreeSet<Key> = (1..=20)
            .filter(|i| i % 2 == 1)
            .map(|i| (i, i as u128))
            .collect();
        let both = set(20);
        let sets = [&even, &odd, &even];
        let mut r = req(6);
        loop {
            let p = page(&sets, &r, |_| true);
            assert_eq!(p, page(&[&both], &r, |_| true));
            match (p.has_older, p.rows.last()) {
                (true, Some(&last)) => r.after = Some(last),
                _ => break,
            }
        }
        let back = PageRequest {
            before: Some((5, 5)),
            ..req(3)
        };
        assert_eq!(
            page(&sets, &back, |_| true).rows,
            vec![(8, 8), (7, 7), (6, 6)]
        );
        assert_eq!(page(&[], &req(3), |_| true), Page::default());
    }

    #[test]
    fn a_repeated_row_leads_the_page_but_never_alone() {
        let s = set(10);
        let r = PageRequest {
            after: Some((6, 6)),
            repeat: Some((6, 6)),
            ..req(3)
        };
        let p = page(&[&s], &r, |_| true);
        assert_eq!(p.rows, vec![(6, 6), (5, 5), (4, 4)]);
        assert!(p.has_newer && p.has_older);
        let last = PageRequest {
            after: Some((1, 1)),
            repeat: Some((1, 1)),
            ..req(3)
        };
        assert_eq!(page(&[&s], &last, |_| true), Page::default());
        let one = PageRequest { limit: 1, ..r };
        assert_eq!(page(&[&s], &one, |_| true).rows, vec![(5, 5)]);
    }
}
