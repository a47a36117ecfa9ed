//! Polynomial evaluation on ciphertexts, in the monomial or the Chebyshev basis.
//!
//! Baby-step/giant-step (Paterson–Stockmeyer style) evaluation: the polynomial is split
//! recursively as `p = q·T_n + r` at the giant steps `n = 2^k` (Chebyshev division:
//! `T_n·T_j = (T_{n+j} + T_{n−j})/2`; in the monomial basis `x^n·x^j = x^{n+j}`). A piece is
//! combined directly from the basis elements (scalar products, one level) when its degree is below
//! the baby-step bound `2^l ≈ √(d+1)` and it has a level to spare for that; otherwise it is split
//! further, down to degree 1 on the critical path. Every basis element is built by a product tree
//! of depth ⌈log2 i⌉ (`T_{a+b} = 2·T_a·T_b − T_{a−b}`). The result takes the least depth of such
//! splits — `k` levels for degree `2^k − 1`, never more than the `⌈log2 d⌉ + 1` of combining every
//! basis element — and far fewer ciphertext products than the `d − 1` of building every basis
//! element (degree 63: 18, degree 127: 27, degree 255: 36). [`Polynomial::depth`] and
//! [`Polynomial::products`] give the exact counts for the coefficients at hand (+1 level when a
//! Chebyshev interval other than [-1, 1] needs an affine map).
//! Scales are managed exactly: each level has one canonical scale, operands from higher levels
//! are brought down by a multiplication by 1 encoded at the right scale (no extra depth), and the
//! coefficients are applied with [`Evaluator::mul_const_rescale_to`] so the result lands on the
//! requested scale.

use std::collections::BTreeMap;

use crate::ciphertext::Ciphertext;
use crate::error::{Error, Result};
use crate::evaluator::Evaluator;

/// Basis of a [`Polynomial`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Basis {
    /// `Σ c_i x^i`.
    Monomial,
    /// `Σ c_i T_i(y)` with `y = (2x − a − b) / (b − a)` mapping `[a, b]` to `[-1, 1]`.
    Chebyshev {
        /// Lower end of the interval.
        a: f64,
        /// Upper end of the interval.
        b: f64,
    },
}

/// A real polynomial with its basis.
#[derive(Clone, Debug, PartialEq)]
pub struct Polynomial {
    basis: Basis,
    coeffs: Vec<f64>,
}

fn ceil_log2(d: usize) -> usize {
    if d <= 1 {
        0
    } else {
        (usize::BITS - (d - 1).leading_zeros()) as usize
    }
}

impl Polynomial {
    /// `Σ c_i x^i`.
    pub fn monomial(coeffs: Vec<f64>) -> Result<Self> {
        Self::checked(Basis::Monomial, coeffs)
    }

    /// `Σ c_i T_i(y)` on the interval `[a, b]`.
    pub fn chebyshev(coeffs: Vec<f64>, a: f64, b: f64) -> Result<Self> {
        if !(a.is_finite() && b.is_finite() && a < b) {
            return Err(Error::Encoding(format!("invalid interval [{a}, {b}]")));
        }
        Self::checked(Basis::Chebyshev { a, b }, coeffs)
    }

    fn checked(basis: Basis, mut coeffs: Vec<f64>) -> Result<Self> {
        if coeffs.iter().any(|c| !c.is_finite()) {
            return Err(Error::Encoding("non-finite polynomial coefficient".into()));
        }
        while coeffs.len() > 1 && coeffs.last() == Some(&0.0) {
            coeffs.pop();
        }
        if coeffs.is_empty() {
            coeffs.push(0.0);
        }
        Ok(Self { basis, coeffs })
    }

    /// Chebyshev interpolant of `f` of the given degree on `[a, b]` (at Chebyshev nodes).
    pub fn chebyshev_interpolate(
        f: impl Fn(f64) -> f64,
        degree: usize,
        a: f64,
        b: f64,
    ) -> Result<Self> {
        let m = degree + 1;
        let nodes: Vec<f64> = (0..m)
            .map(|j| (std::f64::consts::PI * (j as f64 + 0.5) / m as f64).cos())
            .collect();
        let values: Vec<f64> = nodes
            .iter()
            .map(|&t| f(0.5 * (b - a) * t + 0.5 * (a + b)))
            .collect();
        let coeffs = (0..m)
            .map(|k| {
                let s: f64 = nodes
                    .iter()
                    .zip(&values)
                    .map(|(&t, &v)| v * (k as f64 * t.acos()).cos())
                    .sum();
                let c = 2.0 * s / m as f64;
                if k == 0 { c / 2.0 } else { c }
            })
            .collect();
        Self::chebyshev(coeffs, a, b)
    }

    /// The basis.
    pub fn basis(&self) -> Basis {
        self.basis
    }
    /// Coefficients, lowest degree first.
    pub fn coeffs(&self) -> &[f64] {
        &self.coeffs
    }
    /// Degree.
    pub fn degree(&self) -> usize {
        self.coeffs.len() - 1
    }

    fn needs_affine(&self) -> bool {
        matches!(self.basis, Basis::Chebyshev { a, b } if a != -1.0 || b != 1.0)
    }

    /// Levels an evaluation consumes: the depth of the baby-step/giant-step split of these
    /// coefficients, at most `⌈log2 d⌉ + 1` for degree `d`, plus one for an affine map.
    pub fn depth(&self) -> usize {
        if self.degree() == 0 {
            return 0;
        }
        usize::from(self.needs_affine()) + split_depth(&self.coeffs, 2, self.is_chebyshev())
    }

    /// Ciphertext products an evaluation takes: the basis elements it builds, plus one per
    /// split with a non-constant quotient.
    pub fn products(&self) -> usize {
        if self.degree() == 0 {
            return 0;
        }
        let chebyshev = self.is_chebyshev();
        let baby = baby_bound(self.degree());
        let budget = split_depth(&self.coeffs, 2, chebyshev);
        let mut needed = std::collections::BTreeSet::new();
        let splits = split_uses(&self.coeffs, baby, budget, chebyshev, &mut needed);
        // Close the set under the product tree: T_i from T_a, T_b (and T_{a−b}).
        let mut built = std::collections::BTreeSet::new();
        let mut stack: Vec<usize> = needed.into_iter().collect();
        while let Some(i) = stack.pop() {
            if i <= 1 || !built.insert(i) {
                continue;
            }
            let a = 1usize << (ceil_log2(i) - 1);
            stack.extend([a, i - a]);
            if chebyshev && a != i - a {
                stack.push(a - (i - a));
            }
        }
        built.len() + splits
    }

    fn is_chebyshev(&self) -> bool {
        matches!(self.basis, Basis::Chebyshev { .. })
    }

    /// Plaintext evaluation (the reference the encrypted result is compared with).
    pub fn evaluate(&self, x: f64) -> f64 {
        match self.basis {
            Basis::Monomial => self.coeffs.iter().rev().fold(0.0, |acc, &c| acc * x + c),
            Basis::Chebyshev { a, b } => {
                let y = (2.0 * x - a - b) / (b - a);
                let (mut t0, mut t1) = (1.0, y);
                let mut acc = self.coeffs[0];
                for (i, &c) in self.coeffs.iter().enumerate().skip(1) {
                    if i > 1 {
                        let t2 = 2.0 * y * t1 - t0;
                        t0 = t1;
                        t1 = t2;
                    }
                    acc += c * t1;
                }
                acc
            }
        }
    }
}

/// Baby-step bound `2^l`, `l = max(1, ⌈log2(d + 1)⌉ / 2)`: pieces below it are scalar
/// combinations of the basis elements.
fn baby_bound(degree: usize) -> usize {
    1 << (ceil_log2(degree + 1) / 2).max(1)
}

/// Whether a piece of degree `d` is combined directly (rather than split) with `budget` levels:
/// when it is below the baby-step bound and its scalar combination fits the budget.
fn combine_now(d: usize, baby: usize, budget: usize) -> bool {
    d == 0 || (d < baby && ceil_log2(d) < budget)
}

/// Largest index of a non-zero coefficient (0 for a constant).
fn top(coeffs: &[f64]) -> usize {
    coeffs.iter().rposition(|&c| c != 0.0).unwrap_or(0)
}

/// Splits `p = q·B_n + r` (`B` the basis, `n` a power of two at most the degree of `p`).
fn split(coeffs: &[f64], n: usize, chebyshev: bool) -> (Vec<f64>, Vec<f64>) {
    let d = top(coeffs);
    let mut q = vec![0.0; d - n + 1];
    let mut r = coeffs[..n.min(coeffs.len())].to_vec();
    q[0] = coeffs[n];
    for j in 1..=d - n {
        if chebyshev {
            // T_n·T_j = (T_{n+j} + T_{n−j}) / 2: 2·c_{n+j} of q makes c_{n+j} of T_{n+j} and
            // c_{n+j} of T_{n−j}, which r takes back.
            q[j] = 2.0 * coeffs[n + j];
            r[n - j] -= coeffs[n + j];
        } else {
            q[j] = coeffs[n + j];
        }
    }
    (q, r)
}

/// Records the basis elements the split evaluation of `coeffs` reads; returns its products.
fn split_uses(
    coeffs: &[f64],
    baby: usize,
    budget: usize,
    chebyshev: bool,
    needed: &mut std::collections::BTreeSet<usize>,
) -> usize {
    let d = top(coeffs);
    if combine_now(d, baby, budget) {
        needed.extend((1..=d).filter(|&i| coeffs[i] != 0.0));
        if d == 0 {
            needed.insert(1);
        }
        return 0;
    }
    let n = 1usize << (usize::BITS - 1 - d.leading_zeros());
    let (q, r) = split(coeffs, n, chebyshev);
    needed.insert(n);
    let mut products = 0;
    if top(&q) != 0 {
        products += 1 + split_uses(&q, baby, budget - 1, chebyshev, needed);
    }
    if r.iter().any(|&c| c != 0.0) {
        products += split_uses(&r, baby, budget, chebyshev, needed);
    }
    products
}

/// Levels the split evaluation of `coeffs` consumes with baby steps below `baby` (with
/// `baby = 2`, pieces of degree 1 only: the least depth, which the evaluation achieves while
/// combining larger pieces wherever a piece has levels to spare).
fn split_depth(coeffs: &[f64], baby: usize, chebyshev: bool) -> usize {
    let d = top(coeffs);
    if d == 0 {
        return 0;
    }
    if d < baby {
        return ceil_log2(d) + 1;
    }
    let n = 1usize << (usize::BITS - 1 - d.leading_zeros());
    let k = ceil_log2(n);
    let (q, r) = split(coeffs, n, chebyshev);
    let product = if top(&q) == 0 {
        k + 1
    } else {
        split_depth(&q, baby, chebyshev).max(k) + 1
    };
    product.max(split_depth(&r, baby, chebyshev))
}

struct PowerBasis<'a> {
    ev: &'a Evaluator,
    /// Level of `T_1`.
    top_level: usize,
    chebyshev: bool,
    /// Canonical scale per level (levels at or below the level of T_1).
    scales: BTreeMap<usize, f64>,
    terms: BTreeMap<usize, Ciphertext>,
}

impl PowerBasis<'_> {
    fn canonical(&self, level: usize) -> Result<f64> {
        self.scales.get(&level).copied().ok_or(Error::OutOfLevels)
    }

    /// Brings a canonical ciphertext down to `level` with that level's canonical scale.
    fn bring(&self, ct: &Ciphertext, level: usize) -> Result<Ciphertext> {
        if ct.level() == level {
            return Ok(ct.clone());
        }
        let dropped = self.ev.drop_to_level(ct, level + 1)?;
        self.ev
            .mul_const_rescale_to(&dropped, 1.0, self.canonical(level)?)
    }

    fn get(&mut self, i: usize) -> Result<Ciphertext> {
        if let Some(t) = self.terms.get(&i) {
            return Ok(t.clone());
        }
        // i = a + b with a the largest power of two below i.
        let a = 1usize << (ceil_log2(i) - 1);
        let b = i - a;
        let ta = self.get(a)?;
        let tb = self.get(b)?;
        let level = ta.level().min(tb.level());
        if level == 0 {
            return Err(Error::OutOfLevels);
        }
        let ta = self.bring(&ta, level)?;
        let tb = self.bring(&tb, level)?;
        let mut prod = self.ev.mul_rescale(&ta, &tb)?;
        if self.chebyshev {
            prod = self.ev.add(&prod, &prod)?;
            if a == b {
                prod = self.ev.add_const(&prod, -1.0)?;
            } else {
                let tab = self.get(a - b)?;
                let tab = self.bring(&tab, prod.level())?;
                self.ev.sub_assign(&mut prod, &tab)?;
            }
        }
        self.terms.insert(i, prod.clone());
        Ok(prod)
    }
}

impl Evaluator {
    /// Evaluates `poly` on every slot of `ct`. The result has scale `target_scale` (the input's
    /// scale when `None`) and is [`Polynomial::depth`] levels below the input.
    pub fn evaluate_polynomial(
        &self,
        ct: &Ciphertext,
        poly: &Polynomial,
        target_scale: Option<f64>,
    ) -> Result<Ciphertext> {
        let target = target_scale.unwrap_or(ct.scale());
        let depth = poly.depth();
        if ct.level() < depth {
            return Err(Error::InvalidLevel {
                level: ct.level(),
                min: depth,
                max: self.parameters().max_level(),
            });
        }
        let coeffs = poly.coeffs();
        if poly.degree() == 0 {
            let zero = self.mul_integer(ct, 0)?;
            return self.add_const(&zero, coeffs[0]);
        }
        // T_1.
        let t1 = match poly.basis() {
            Basis::Chebyshev { a, b } if poly.needs_affine() => {
                let alpha = 2.0 / (b - a);
                let beta = -(a + b) / (b - a);
                let y = self.mul_const_rescale_to(ct, alpha, ct.scale())?;
                self.add_const(&y, beta)?
            }
            _ => ct.clone(),
        };
        let mut scales = BTreeMap::new();
        let mut s = t1.scale();
        scales.insert(t1.level(), s);
        for l in (1..=t1.level()).rev() {
            let q = self.parameters().q_primes()[l] as f64;
            s = s * s / q;
            scales.insert(l - 1, s);
        }
        let mut basis = PowerBasis {
            ev: self,
            top_level: t1.level(),
            chebyshev: matches!(poly.basis(), Basis::Chebyshev { .. }),
            scales,
            terms: BTreeMap::from([(1, t1)]),
        };
        let chebyshev = basis.chebyshev;
        let baby = baby_bound(poly.degree());
        let out_level = ct.level() - depth;
        basis.evaluate(coeffs, baby, chebyshev, out_level, target)
    }
}

impl PowerBasis<'_> {
    /// Evaluates `coeffs` (split at the giant steps until below `baby`) so that the result lands
    /// at `level` with scale `scale`.
    fn evaluate(
        &mut self,
        coeffs: &[f64],
        baby: usize,
        chebyshev: bool,
        level: usize,
        scale: f64,
    ) -> Result<Ciphertext> {
        let d = top(coeffs);
        let budget = self.top_level.saturating_sub(level);
        if combine_now(d, baby, budget) {
            return self.combine(coeffs, level, scale);
        }
        let n = 1usize << (usize::BITS - 1 - d.leading_zeros());
        let (q, r) = split(coeffs, n, chebyshev);
        let tn = self.get(n)?;
        let mut out = if top(&q) == 0 {
            let t = self.ev.drop_to_level(&tn, level + 1)?;
            self.ev.mul_const_rescale_to(&t, q[0], scale)?
        } else {
            // q (at level + 1) times T_n (brought to level + 1) rescales to `scale` at `level`.
            let tn = self.bring(&tn, level + 1)?;
            let ql = self.ev.parameters().q_primes()[level + 1] as f64;
            let qv = self.evaluate(&q, baby, chebyshev, level + 1, scale * ql / tn.scale())?;
            self.ev.mul_rescale(&qv, &tn)?
        };
        out.set_scale(scale);
        if r.iter().any(|&c| c != 0.0) {
            let rv = self.evaluate(&r, baby, chebyshev, level, scale)?;
            self.ev.add_assign(&mut out, &rv)?;
        }
        Ok(out)
    }

    /// `Σ c_i B_i` for a piece below the baby-step bound: scalar products at `level + 1`,
    /// rescaled onto `scale` at `level`.
    fn combine(&mut self, coeffs: &[f64], level: usize, scale: f64) -> Result<Ciphertext> {
        let mut acc: Option<Ciphertext> = None;
        for (i, &c) in coeffs.iter().enumerate().skip(1) {
            if c == 0.0 {
                continue;
            }
            let t = self.get(i)?;
            let t = self.ev.drop_to_level(&t, level + 1)?;
            let term = self.ev.mul_const_rescale_to(&t, c, scale)?;
            match acc.as_mut() {
                None => acc = Some(term),
                Some(a) => self.ev.add_assign(a, &term)?,
            }
        }
        let acc = match acc {
            Some(a) => a,
            None => {
                // A constant piece: a zero ciphertext at the right level and scale.
                let t = self.get(1)?;
                let t = self.ev.drop_to_level(&t, level + 1)?;
                self.ev.mul_const_rescale_to(&t, 0.0, scale)?
            }
        };
        let c0 = coeffs.first().copied().unwrap_or(0.0);
        if c0 == 0.0 {
            Ok(acc)
        } else {
            self.ev.add_const(&acc, c0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluates the split in f64 exactly as the encrypted evaluation composes it.
    fn eval_split(
        coeffs: &[f64],
        baby: usize,
        chebyshev: bool,
        basis: &dyn Fn(usize) -> f64,
    ) -> f64 {
        let d = top(coeffs);
        if d < baby {
            return coeffs.iter().enumerate().map(|(i, c)| c * basis(i)).sum();
        }
        let n = 1usize << (usize::BITS - 1 - d.leading_zeros());
        let (q, r) = split(coeffs, n, chebyshev);
        eval_split(&q, baby, chebyshev, basis) * basis(n) + eval_split(&r, baby, chebyshev, basis)
    }

    fn coeffs(degree: usize, seed: u64) -> Vec<f64> {
        (0..=degree)
            .map(|i| {
                let h = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
                ((h >> 11) as f64 / (1u64 << 53) as f64 - 0.5) / (1.0 + i as f64)
            })
            .collect()
    }

    #[test]
    fn the_split_is_the_polynomial() {
        for degree in [1, 2, 3, 5, 8, 15, 16, 31, 63, 100, 127, 255] {
            for chebyshev in [false, true] {
                let c = coeffs(degree, degree as u64);
                let p = if chebyshev {
                    Polynomial::chebyshev(c.clone(), -1.0, 1.0)
                } else {
                    Polynomial::monomial(c.clone())
                }
                .expect("p");
                let baby = baby_bound(degree);
                for k in 0..=20 {
                    let y = -1.0 + k as f64 / 10.0;
                    let basis = |i: usize| {
                        if chebyshev {
                            (i as f64 * y.acos()).cos()
                        } else {
                            y.powi(i as i32)
                        }
                    };
                    let got = eval_split(&c, baby, chebyshev, &basis);
                    assert!((got - p.evaluate(y)).abs() < 1e-9, "degree {degree} at {y}");
                }
            }
        }
    }

    #[test]
    fn depth_is_never_above_the_product_tree_bound() {
        for degree in 1..=300usize {
            for chebyshev in [false, true] {
                let c = coeffs(degree, 7);
                let p = if chebyshev {
                    Polynomial::chebyshev(c, -1.0, 1.0)
                } else {
                    Polynomial::monomial(c)
                }
                .expect("p");
                let bound = ceil_log2(degree) + 1;
                assert!(
                    p.depth() <= bound,
                    "degree {degree}: {} > {bound}",
                    p.depth()
                );
                // Far fewer products than the d − 1 of building every T_i.
                assert!(p.products() <= degree.max(1), "degree {degree}");
                if degree >= 127 {
                    assert!(p.products() < 40, "degree {degree}: {}", p.products());
                }
                // At least the information-theoretic ⌈log2(d + 1)⌉, and that for 2^k − 1.
                assert!(p.depth() >= ceil_log2(degree + 1), "degree {degree}");
                if (degree + 1).is_power_of_two() && degree > 1 {
                    assert_eq!(p.depth(), ceil_log2(degree + 1), "degree {degree}");
                }
            }
        }
    }
}
