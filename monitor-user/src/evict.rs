//! What a bounded table drops when full: its least recently used entries, a share at once.

/// The keys of the `n` entries of `by_age` with the smallest ages (all of them if fewer), in
/// no particular order. One pass (`select_nth_unstable`), which a table pays per batch it
/// frees, not per entry it adds.
#[must_use]
pub fn least_recent<A: Ord, K: Ord>(mut by_age: Vec<(A, K)>, n: usize) -> Vec<K> {
    if n < by_age.len() {
        by_age.select_nth_unstable(n);
        by_age.truncate(n);
    }
    by_age.into_iter().map(|(_, k)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_oldest_whatever_the_ties() {
        let mut got = least_recent(vec![(5, 'a'), (1, 'b'), (3, 'c'), (1, 'd')], 2);
        got.sort_unstable();
        assert_eq!(got, vec!['b', 'd']);
        assert_eq!(
            least_recent(vec![(7, 'x'); 4].into_iter().collect(), 1).len(),
            1
        );
        assert_eq!(least_recent(vec![(1, 'a')], 3), vec!['a']);
        assert!(least_recent(Vec::<(u8, u8)>::new(), 1).is_empty());
    }
}
