//! Polynomial evaluation on ciphertexts, in the monomial or the Chebyshev basis.
//!
//! Every basis element `T_i` (or `x^i`) is built by a product tree of depth ⌈log2 i⌉
//! (`T_{a+b} = 2·T_a·T_b − T_{a−b}`), so a degree-d polynomial consumes
//! `⌈log2 d⌉ + 1` levels (+1 when a Chebyshev interval other than [-1, 1] needs an affine map).
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

    /// Levels an evaluation consumes.
    pub fn depth(&self) -> usize {
        if self.degree() == 0 {
            return 0;
        }
        usize::from(self.needs_affine()) + ceil_log2(self.degree()) + 1
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

struct PowerBasis<'a> {
    ev: &'a Evaluator,
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
            chebyshev: matches!(poly.basis(), Basis::Chebyshev { .. }),
            scales,
            terms: BTreeMap::from([(1, t1)]),
        };
        let mut terms = Vec::new();
        for (i, &c) in coeffs.iter().enumerate().skip(1) {
            if c != 0.0 {
                terms.push((i, c, basis.get(i)?));
            }
        }
        let out_level = terms.iter().map(|(_, _, t)| t.level()).min().unwrap_or(1) - 1;
        let mut acc: Option<Ciphertext> = None;
        for (_, c, t) in terms {
            let t = self.drop_to_level(&t, out_level + 1)?;
            let term = self.mul_const_rescale_to(&t, c, target)?;
            match acc.as_mut() {
                None => acc = Some(term),
                Some(a) => self.add_assign(a, &term)?,
            }
        }
        let acc = acc.ok_or_else(|| Error::Encoding("internal: empty polynomial".into()))?;
        self.add_const(&acc, coeffs[0])
    }
}
