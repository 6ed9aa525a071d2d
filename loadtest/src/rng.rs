//! A small seeded pseudo-random generator (xorshift64*) for the token mix, the mock's jitter and its
//! error injection, and run ids.
//!
//! Nothing here is secret or cryptographic: it only has to be fast on the request path, reproducible
//! from a seed in tests, and uniform enough that shares come out right over many draws.

use std::hash::{BuildHasher, Hasher};

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed` (any value, zero included).
    pub fn seeded(seed: u64) -> Self {
        // splitmix64 spreads nearby seeds apart and never leaves xorshift in its all-zero fixed point.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    /// A generator seeded from the process's random hash keys, different on every call.
    pub fn from_entropy() -> Self {
        // RandomState draws its keys from the OS once per thread and bumps them per instance, which is
        // all the randomness a load tool needs without another dependency.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        );
        Rng::seeded(h.finish())
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_deterministic_and_zero_seed_works() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::seeded(0);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::seeded(0);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&x| x != 0));
        assert_ne!(Rng::seeded(1).next_u64(), Rng::seeded(2).next_u64());
    }

    #[test]
    fn f64_is_in_unit_interval_and_roughly_uniform() {
        let mut r = Rng::seeded(7);
        let n = 100_000;
        let mut below_half = 0;
        for _ in 0..n {
            let x = r.f64();
            assert!((0.0..1.0).contains(&x));
            if x < 0.5 {
                below_half += 1;
            }
        }
        let share = below_half as f64 / n as f64;
        assert!((share - 0.5).abs() < 0.01, "{share}");
    }
}
