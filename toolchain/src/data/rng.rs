//! A small seeded generator (xoshiro256++ seeded by SplitMix64), so data
//! order and augmentation are reproducible without a dependency whose output
//! could change between versions.

/// Stream tags keep the generators of different purposes independent even
/// when they share `(seed, epoch, …)`.
pub(crate) const STREAM_SHUFFLE: u64 = 0x5348_5546;
pub(crate) const STREAM_AUGMENT: u64 = 0x4155_474d;
pub(crate) const STREAM_SPLIT: u64 = 0x5350_4c54;
/// Fixed augmented copies of a transfer set (`batch::augmented_views`).
pub(crate) const STREAM_VIEWS: u64 = 0x5649_4557;
/// Initial weights (`train/init.rs`).
pub(crate) const STREAM_INIT: u64 = 0x494e_4954;
/// Sampling calibration images for quantization.
pub(crate) const STREAM_CALIBRATION: u64 = 0x4341_4c49;

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256++.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator keyed by a seed and a path of words, e.g.
    /// `[STREAM_AUGMENT, epoch, batch]`; each word is hashed in, so nearby
    /// keys give unrelated streams.
    pub(crate) fn derive(seed: u64, key: &[u64]) -> Self {
        let mut h = seed;
        let mut acc = splitmix64(&mut h);
        for &w in key {
            let mut k = acc ^ w.wrapping_mul(0xd6e8_feb8_6659_fd93);
            acc = splitmix64(&mut k);
        }
        let mut sm = acc;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Rng { s }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in `0..n` without modulo bias (Lemire's method); `n > 0`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform in `-k..=k`.
    pub(crate) fn offset(&mut self, k: u32) -> i64 {
        self.below(2 * u64::from(k) + 1) as i64 - i64::from(k)
    }

    /// Uniform in `[0, 1)` with 24 bits, exact in f32.
    pub(crate) fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Two independent standard normals (Box–Muller).
    pub(crate) fn normal_pair(&mut self) -> (f32, f32) {
        // (0, 1], so ln never sees 0.
        let u = ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let v = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let r = (-2.0 * u.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * v).sin_cos();
        ((r * c) as f32, (r * s) as f32)
    }

    /// Fisher–Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_is_deterministic_and_key_sensitive() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::derive(7, &[1, 2]);
                move |_| r.next_u64()
            })
            .collect();
        let mut b = Rng::derive(7, &[1, 2]);
        assert!(a.iter().all(|&x| x == b.next_u64()));
        assert_ne!(Rng::derive(7, &[1, 3]).next_u64(), a[0]);
        assert_ne!(Rng::derive(7, &[2, 1]).next_u64(), a[0]);
        assert_ne!(Rng::derive(8, &[1, 2]).next_u64(), a[0]);
    }

    #[test]
    fn below_and_offset_stay_in_range_and_cover_it() {
        let mut r = Rng::derive(1, &[]);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let o = r.offset(3);
            assert!((-3..=3).contains(&o));
            seen[(o + 3) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(r.offset(0), 0);
    }

    #[test]
    fn normal_pair_has_unit_moments() {
        let mut r = Rng::derive(2, &[]);
        let (mut sum, mut sq, n) = (0.0f64, 0.0f64, 20_000);
        for _ in 0..n / 2 {
            let (a, b) = r.normal_pair();
            sum += f64::from(a) + f64::from(b);
            sq += f64::from(a * a) + f64::from(b * b);
        }
        let mean = sum / n as f64;
        let var = sq / n as f64 - mean * mean;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }
}
