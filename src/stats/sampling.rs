//! Seeded sampling: subsets, shuffles and the generator behind them.
//!
//! SplitMix64 is small enough to restate anywhere (the Python benchmark does), so a
//! run's subsets and cross-validation folds can be reproduced outside harness.

/// One step of SplitMix64: advances `state` and returns the next 64-bit value.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fisher-Yates shuffle drawing from `state`: for i from the end down to 1, swap
/// item i with item `splitmix() % (i + 1)`.
pub fn shuffle<T>(items: &mut [T], state: &mut u64) {
    for i in (1..items.len()).rev() {
        let j = (splitmix(state) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// A seeded choice of `limit` of `0..n`, in ascending order: the first `limit` of a
/// shuffle of `0..n`. All of them when there is no limit or it is not below `n`.
pub fn subset(n: usize, limit: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let Some(limit) = limit.filter(|&l| l < n) else {
        return idx;
    };
    let mut state = seed;
    shuffle(&mut idx, &mut state);
    idx.truncate(limit);
    idx.sort_unstable();
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // The first outputs of SplitMix64 seeded with 0 (Vigna's reference code).
        let mut s = 0u64;
        assert_eq!(splitmix(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn subsets_are_seeded_and_sorted() {
        let a = subset(100, Some(10), 7);
        assert_eq!(a, subset(100, Some(10), 7));
        assert_ne!(a, subset(100, Some(10), 8));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(subset(5, Some(10), 1), vec![0, 1, 2, 3, 4]);
        assert_eq!(subset(5, None, 1).len(), 5);
    }
}
