//! A small deterministic random number generator (SplitMix64 seeding xoshiro256**), so that every
//! check, initialisation and synthetic volume is reproducible from a seed without a dependency.

#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The generator's whole state, to save and restore (resuming training exactly).
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    pub fn from_state(s: [u64; 4]) -> Self {
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in lo..=hi, for every lo <= hi including the whole of usize.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi, "Rng::range({lo}, {hi}): empty range");
        let span = (hi - lo) as u64;
        let Some(n) = span.checked_add(1) else {
            return lo.wrapping_add(self.next_u64() as usize);
        };
        // Draws at or above the largest multiple of n would favour the low residues: redraw.
        // For the small n of every caller this almost never happens, so the sequence a seed gives
        // is the same as with a plain modulo.
        let limit = u64::MAX - (u64::MAX - n + 1) % n;
        loop {
            let x = self.next_u64();
            if x <= limit {
                return lo + (x % n) as usize;
            }
        }
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_covers_every_bound_without_bias() {
        let mut r = Rng::new(3);
        for (lo, hi) in [(0, 0), (7, 7), (usize::MAX, usize::MAX)] {
            assert_eq!(r.range(lo, hi), lo);
        }
        let mut seen = [false; 2];
        for _ in 0..64 {
            seen[usize::MAX - r.range(usize::MAX - 1, usize::MAX)] = true;
        }
        assert_eq!(seen, [true, true]);
        let _ = r.range(0, usize::MAX);
        let _ = r.range(1, usize::MAX);
        // Brute force: counts of 3..=7 over 50 000 draws against the uniform 10 000 each; the
        // chi-square bound is the 99.9th percentile for 4 degrees of freedom.
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[r.range(3, 7) - 3] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - 10_000.0).powi(2) / 10_000.0)
            .sum();
        assert!(chi2 < 18.47, "{counts:?} chi2 {chi2}");
    }

    #[test]
    fn rejection_bound_is_the_last_multiple_of_n() {
        // limit + 1 must be a multiple of n, or 2^64 itself when n is a power of two.
        for n in [1u64, 2, 3, 5, 6, 1 << 40, (1 << 63) + 1, u64::MAX] {
            let limit = u64::MAX - (u64::MAX - n + 1) % n;
            assert_eq!(limit.wrapping_add(1) % n, 0, "n = {n}");
            assert!(u64::MAX - limit < n);
        }
    }
}
