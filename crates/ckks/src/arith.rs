//! Word-sized modular arithmetic for RNS primes below 2^61, and NTT-friendly prime search.

/// Largest prime width the library accepts: products of two residues stay below 2^122, so up to
/// 64 of them can be accumulated in a `u128` before one reduction (lazy inner products).
pub const MAX_PRIME_BITS: u32 = 61;
/// Smallest prime width the library accepts.
pub const MIN_PRIME_BITS: u32 = 17;

/// A prime modulus with precomputed Barrett constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulus {
    p: u64,
    /// floor(2^128 / p), as (low, high) words.
    ratio: (u64, u64),
    /// floor(2^64 / p).
    ratio64: u64,
    bits: u32,
}

impl Modulus {
    /// Prepares a modulus; `p` must be odd and below 2^61 (checked by the parameter builder).
    pub fn new(p: u64) -> Self {
        let r = u128::MAX / p as u128; // floor((2^128 - 1) / p) == floor(2^128 / p) for odd p
        Self {
            p,
            ratio: (r as u64, (r >> 64) as u64),
            ratio64: (u64::MAX / p),
            bits: 64 - p.leading_zeros(),
        }
    }

    /// The modulus value.
    #[inline]
    pub fn value(&self) -> u64 {
        self.p
    }

    /// Bit width of the modulus.
    #[inline]
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// `(a + b) mod p` for reduced inputs. Branch-free: residues are random, so a branch would
    /// mispredict half the time.
    #[inline]
    pub fn add(&self, a: u64, b: u64) -> u64 {
        let s = a + b;
        s.min(s.wrapping_sub(self.p))
    }

    /// `(a - b) mod p` for reduced inputs (branch-free).
    #[inline]
    pub fn sub(&self, a: u64, b: u64) -> u64 {
        let d = a.wrapping_sub(b);
        d.min(d.wrapping_add(self.p))
    }

    /// `-a mod p` for a reduced input (branch-free).
    #[inline]
    pub fn neg(&self, a: u64) -> u64 {
        let d = self.p - a;
        d.min(d.wrapping_sub(self.p))
    }

    /// `a` if `cond`, else 0, without a branch.
    #[inline]
    pub fn select(cond: bool, a: u64) -> u64 {
        a & (cond as u64).wrapping_neg()
    }

    /// Reduces any 128-bit value modulo p (Barrett).
    #[inline]
    pub fn reduce_u128(&self, x: u128) -> u64 {
        let x_lo = x as u64;
        let x_hi = (x >> 64) as u64;
        let (r_lo, r_hi) = self.ratio;
        // q = floor(x * ratio / 2^128), computed from the four partial products.
        let lo_lo = ((x_lo as u128 * r_lo as u128) >> 64) as u64;
        let lo_hi = x_lo as u128 * r_hi as u128;
        let hi_lo = x_hi as u128 * r_lo as u128;
        let mid = lo_lo as u128 + (lo_hi as u64) as u128 + (hi_lo as u64) as u128;
        let q = (x_hi as u128 * r_hi as u128) + (lo_hi >> 64) + (hi_lo >> 64) + (mid >> 64);
        let r = x.wrapping_sub(q.wrapping_mul(self.p as u128)) as u64;
        // The estimate is at most 2 below the true quotient.
        let r = r.min(r.wrapping_sub(self.p));
        r.min(r.wrapping_sub(self.p))
    }

    /// Reduces a 64-bit value modulo p (Barrett, no division).
    #[inline]
    pub fn reduce(&self, x: u64) -> u64 {
        let q = ((x as u128 * self.ratio64 as u128) >> 64) as u64;
        // The estimate is at most 2 below the true quotient.
        let r = x - q * self.p;
        let r = r.min(r.wrapping_sub(self.p));
        r.min(r.wrapping_sub(self.p))
    }

    /// Reduces a signed value modulo p.
    #[inline]
    pub fn reduce_i64(&self, x: i64) -> u64 {
        if x >= 0 {
            self.reduce(x as u64)
        } else {
            self.neg(self.reduce(x.unsigned_abs()))
        }
    }

    /// Reduces a signed 128-bit value modulo p.
    #[inline]
    pub fn reduce_i128(&self, x: i128) -> u64 {
        if x >= 0 {
            self.reduce_u128(x as u128)
        } else {
            self.neg(self.reduce_u128(x.unsigned_abs()))
        }
    }

    /// `a * b mod p`.
    #[inline]
    pub fn mul(&self, a: u64, b: u64) -> u64 {
        self.reduce_u128(a as u128 * b as u128)
    }

    /// Shoup companion of a constant `w < p`: floor(w * 2^64 / p).
    #[inline]
    pub fn shoup(&self, w: u64) -> u64 {
        (((w as u128) << 64) / self.p as u128) as u64
    }

    /// `a * w mod p + [0 or p]` (result below 2p) for a constant `w` with Shoup companion `ws`.
    #[inline]
    pub fn mul_shoup_lazy(&self, a: u64, w: u64, ws: u64) -> u64 {
        let q = ((a as u128 * ws as u128) >> 64) as u64;
        a.wrapping_mul(w).wrapping_sub(q.wrapping_mul(self.p))
    }

    /// `a * w mod p` for a constant `w` with Shoup companion `ws` (any `a < 2^64`).
    #[inline]
    pub fn mul_shoup(&self, a: u64, w: u64, ws: u64) -> u64 {
        let q = ((a as u128 * ws as u128) >> 64) as u64;
        let r = a.wrapping_mul(w).wrapping_sub(q.wrapping_mul(self.p));
        r.min(r.wrapping_sub(self.p))
    }

    /// `a^e mod p`.
    pub fn pow(&self, mut a: u64, mut e: u64) -> u64 {
        let mut r = 1u64;
        a = self.reduce(a);
        while e > 0 {
            if e & 1 == 1 {
                r = self.mul(r, a);
            }
            a = self.mul(a, a);
            e >>= 1;
        }
        r
    }

    /// Multiplicative inverse of `a` (p prime, `a` not a multiple of p).
    pub fn inv(&self, a: u64) -> u64 {
        self.pow(a, self.p - 2)
    }

    /// Centered representative of a reduced value, in (-p/2, p/2].
    #[inline]
    pub fn center(&self, a: u64) -> i64 {
        if a > self.p / 2 {
            a as i64 - self.p as i64
        } else {
            a as i64
        }
    }
}

fn mul_mod_u64(a: u64, b: u64, m: u64) -> u64 {
    ((a as u128 * b as u128) % m as u128) as u64
}

fn pow_mod_u64(mut a: u64, mut e: u64, m: u64) -> u64 {
    let mut r = 1u64 % m;
    a %= m;
    while e > 0 {
        if e & 1 == 1 {
            r = mul_mod_u64(r, a, m);
        }
        a = mul_mod_u64(a, a, m);
        e >>= 1;
    }
    r
}

/// Deterministic Miller–Rabin for all 64-bit integers.
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    const SMALL: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    for p in SMALL {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    'witness: for a in SMALL {
        let mut x = pow_mod_u64(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod_u64(x, x, n);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// Finds `count` distinct primes of exactly `bits` bits with `p ≡ 1 (mod 2n)`, none of them in
/// `exclude`, taking the largest such primes below 2^bits (the rule SEAL uses, so chains given
/// by bit sizes match across libraries).
pub fn ntt_primes(bits: u32, n: usize, count: usize, exclude: &[u64]) -> Option<Vec<u64>> {
    if !(2..=62).contains(&bits) {
        return None;
    }
    let m = 2 * n as u64;
    let top = 1u64 << bits;
    let floor = 1u64 << (bits - 1);
    let mut cand = (top - 1) / m * m + 1;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        if cand <= floor {
            return None;
        }
        if is_prime(cand) && !exclude.contains(&cand) {
            out.push(cand);
        }
        cand = cand.checked_sub(m)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{Rng, SeedableRng};

    #[test]
    fn barrett_matches_u128_remainder() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for bits in [17u32, 30, 40, 49, 50, 55, 60, 61] {
            let p = ntt_primes(bits, 1 << 10, 1, &[]).expect("prime")[0];
            let m = Modulus::new(p);
            for _ in 0..20_000 {
                let x = ((rng.next_u64() as u128) << 64) | rng.next_u64() as u128;
                assert_eq!(m.reduce_u128(x), (x % p as u128) as u64, "p={p} x={x}");
                let a = rng.next_u64() % p;
                let b = rng.next_u64() % p;
                assert_eq!(m.mul(a, b), ((a as u128 * b as u128) % p as u128) as u64);
                let ws = m.shoup(b);
                assert_eq!(m.mul_shoup(a, b, ws), m.mul(a, b));
                let y = rng.next_u64();
                assert_eq!(m.reduce(y), y % p);
                let z = y as i64;
                assert_eq!(m.reduce_i64(z), (z as i128).rem_euclid(p as i128) as u64);
            }
            assert_eq!(m.reduce_u128(u128::MAX), (u128::MAX % p as u128) as u64);
            assert_eq!(m.reduce(u64::MAX), u64::MAX % p);
            assert_eq!(
                m.reduce_i64(i64::MIN),
                (i64::MIN as i128).rem_euclid(p as i128) as u64
            );
        }
    }

    #[test]
    fn primes_are_ntt_friendly_and_exact_width() {
        for (bits, n) in [
            (40u32, 1usize << 14),
            (60, 1 << 14),
            (30, 1 << 13),
            (61, 1 << 15),
        ] {
            let ps = ntt_primes(bits, n, 8, &[]).expect("primes");
            for p in &ps {
                assert!(is_prime(*p));
                assert_eq!(p % (2 * n as u64), 1);
                assert_eq!(64 - p.leading_zeros(), bits);
            }
            let mut d = ps.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), ps.len());
        }
    }

    #[test]
    fn miller_rabin_known_values() {
        assert!(is_prime(2));
        assert!(is_prime(1_152_921_504_606_830_593)); // 2^60 - 2^14 + 1
        assert!(!is_prime(1 << 40));
        assert!(!is_prime(3_215_031_751)); // strong pseudoprime to bases 2,3,5,7
        assert!(is_prime(0xFFFF_FFFF_FFFF_FFC5)); // largest 64-bit prime
    }
}
