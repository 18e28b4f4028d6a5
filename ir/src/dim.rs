//! Symbolic dimension sizes: polynomials over named sizes with integer coefficients.
//!
//! A [`Dim`] is kept in a canonical form (monomials sorted, no zero coefficients), so structural
//! equality is semantic equality for the expressions the language can build (`seq`, `2*seq`,
//! `batch*seq`, `seq - 1`, `768`).
//!
//! A factor is a named size or the exact quotient of one by a constant, `seq/4` (a symbolic axis
//! cut into blocks of 4: `reshape(x, (b, -1, 4, d))`). Such a size exists only when the named
//! one is a multiple of the divisor; [`Dim::quotients`] lists what a run must check, and
//! `4*seq/4` is kept as `seq`.

use std::collections::HashMap;
use std::fmt;

/// A dimension size: a constant, a named size (`seq`), or a polynomial of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Dim {
    /// `(sorted symbol names of the monomial, coefficient)`, sorted by monomial, no zero
    /// coefficients. The constant term has an empty monomial.
    terms: Vec<(Vec<String>, i64)>,
}

impl Dim {
    /// A constant size.
    pub fn known(n: i64) -> Dim {
        let mut d = Dim { terms: vec![(Vec::new(), n)] };
        d.normalize();
        d
    }

    /// A named symbolic size such as `seq`.
    pub fn sym(name: &str) -> Dim {
        Dim { terms: vec![(vec![name.to_string()], 1)] }
    }

    /// The exact quotient of the named size `name` by `k` (`seq/4`), for `k` of 2 or more;
    /// `name` itself for any smaller `k` (callers divide by a positive constant).
    pub fn quot(name: &str, k: i64) -> Dim {
        if k < 2 {
            return Dim::sym(name);
        }
        Dim { terms: vec![(vec![format!("{name}/{k}")], 1)] }
    }

    fn normalize(&mut self) {
        let mut merged: Vec<(Vec<String>, i64)> = Vec::new();
        let mut terms = std::mem::take(&mut self.terms);
        for (m, c) in &mut terms {
            // A coefficient that the divisor of a quotient factor divides cancels it: 4*seq/4 = seq.
            for f in m.iter_mut() {
                if let Some((name, k)) = split_quot(f) {
                    if *c % k == 0 {
                        *c /= k;
                        *f = name.to_string();
                    }
                }
            }
            m.sort();
        }
        terms.sort();
        for (m, c) in terms {
            match merged.last_mut() {
                Some((lm, lc)) if *lm == m => *lc = lc.saturating_add(c),
                _ => merged.push((m, c)),
            }
        }
        merged.retain(|(_, c)| *c != 0);
        self.terms = merged;
    }

    /// The size with the named size `name` replaced by `by` (`batch*seq` with `seq` := `past +
    /// seq` is `batch*past + batch*seq`). `None` when `name` appears in a quotient factor
    /// (`seq/4`), which a sum cannot replace exactly.
    pub fn subst(&self, name: &str, by: &Dim) -> Option<Dim> {
        let mut out = Dim::known(0);
        for (m, c) in &self.terms {
            let mut term = Dim::known(*c);
            for f in m {
                let factor = match split_quot(f) {
                    Some((n, _)) if n == name => return None,
                    _ if f == name => by.clone(),
                    _ => Dim { terms: vec![(vec![f.clone()], 1)] },
                };
                term = term.mul(&factor);
            }
            out = out.add(&term);
        }
        Some(out)
    }

    /// Whether the size mentions the named size `name` (as `seq`, `2*seq` or `seq/4`).
    pub fn mentions(&self, name: &str) -> bool {
        self.symbols().any(|s| s == name)
    }

    /// The value when the size is a constant.
    pub fn as_known(&self) -> Option<i64> {
        match self.terms.as_slice() {
            [] => Some(0),
            [(m, c)] if m.is_empty() => Some(*c),
            _ => None,
        }
    }

    /// The symbol when the size is exactly one named size.
    pub fn as_sym(&self) -> Option<&str> {
        match self.terms.as_slice() {
            [(m, 1)] if m.len() == 1 && split_quot(&m[0]).is_none() => Some(&m[0]),
            _ => None,
        }
    }

    /// `(name, k)` when the size is exactly one quotient factor `name/k`.
    pub fn as_quot(&self) -> Option<(&str, i64)> {
        match self.terms.as_slice() {
            [(m, 1)] if m.len() == 1 => split_quot(&m[0]),
            _ => None,
        }
    }

    /// Every symbol the size mentions (`seq` for a factor `seq/4`).
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().flat_map(|(m, _)| m.iter().map(|f| split_quot(f).map_or(f.as_str(), |(name, _)| name)))
    }

    /// The quotient factors (`seq/4` as `("seq", 4)`): each named size must be a multiple of
    /// its divisor for the size to exist.
    pub fn quotients(&self) -> impl Iterator<Item = (&str, i64)> {
        self.terms.iter().flat_map(|(m, _)| m.iter().filter_map(|f| split_quot(f)))
    }

    /// Sum of two sizes. Coefficients saturate at the ends of `i64` (never wrap): a size that
    /// large is refused when a run binds it; [`Dim::checked_add`] says when it happened.
    pub fn add(&self, o: &Dim) -> Dim {
        let mut d = Dim { terms: self.terms.iter().chain(&o.terms).cloned().collect() };
        d.normalize();
        d
    }

    /// Difference of two sizes (saturating, as [`Dim::add`]).
    pub fn sub(&self, o: &Dim) -> Dim {
        self.add(&o.scale(-1))
    }

    /// The size times a constant (saturating, as [`Dim::add`]).
    pub fn scale(&self, k: i64) -> Dim {
        let mut d = Dim { terms: self.terms.iter().map(|(m, c)| (m.clone(), c.saturating_mul(k))).collect() };
        d.normalize();
        d
    }

    /// Product of two sizes (saturating, as [`Dim::add`]).
    pub fn mul(&self, o: &Dim) -> Dim {
        let mut terms = Vec::new();
        for (m1, c1) in &self.terms {
            for (m2, c2) in &o.terms {
                let mut m = m1.clone();
                m.extend(m2.iter().cloned());
                terms.push((m, c1.saturating_mul(*c2)));
            }
        }
        let mut d = Dim { terms };
        d.normalize();
        d
    }

    /// Whether summing `terms` per monomial stays within `i64` (exact, in `i128`).
    fn fits(terms: impl Iterator<Item = (Vec<String>, i128)>) -> bool {
        let mut sums: std::collections::BTreeMap<Vec<String>, i128> = std::collections::BTreeMap::new();
        for (mut m, c) in terms {
            m.sort();
            *sums.entry(m).or_default() += c;
        }
        sums.values().all(|&c| i64::try_from(c).is_ok())
    }

    /// Sum of two sizes, `None` if a coefficient overflows `i64`.
    pub fn checked_add(&self, o: &Dim) -> Option<Dim> {
        let wide = self.terms.iter().chain(&o.terms).map(|(m, c)| (m.clone(), i128::from(*c)));
        Dim::fits(wide).then(|| self.add(o))
    }

    /// Difference of two sizes, `None` if a coefficient overflows `i64`.
    pub fn checked_sub(&self, o: &Dim) -> Option<Dim> {
        let wide =
            self.terms.iter().map(|(m, c)| (m.clone(), i128::from(*c))).chain(o.terms.iter().map(|(m, c)| (m.clone(), -i128::from(*c))));
        Dim::fits(wide).then(|| self.sub(o))
    }

    /// Product of two sizes, `None` if a coefficient overflows `i64`.
    pub fn checked_mul(&self, o: &Dim) -> Option<Dim> {
        let wide = self.terms.iter().flat_map(|(m1, c1)| {
            o.terms.iter().map(move |(m2, c2)| (m1.iter().chain(m2).cloned().collect(), i128::from(*c1) * i128::from(*c2)))
        });
        Dim::fits(wide).then(|| self.mul(o))
    }

    /// Exact division by another size: by a constant dividing every coefficient, or by a
    /// monomial dividing every term. `None` when the quotient is not a polynomial.
    pub fn div_exact(&self, o: &Dim) -> Option<Dim> {
        if let Some(k) = o.as_known() {
            if k == 0 || self.terms.iter().any(|(_, c)| c % k != 0) {
                return None;
            }
            let mut d = Dim { terms: self.terms.iter().map(|(m, c)| (m.clone(), c / k)).collect() };
            d.normalize();
            return Some(d);
        }
        let [(om, oc)] = o.terms.as_slice() else { return None };
        let mut terms = Vec::new();
        for (m, c) in &self.terms {
            if c % oc != 0 {
                return None;
            }
            let mut rest = m.clone();
            for s in om {
                let pos = rest.iter().position(|r| r == s)?;
                rest.remove(pos);
            }
            terms.push((rest, c / oc));
        }
        let mut d = Dim { terms };
        d.normalize();
        Some(d)
    }

    /// Division that may cut a named size into blocks: [`Dim::div_exact`] where that works,
    /// else, for one term `c*m*s` over `k*m`, the quotient `(c/g)*s/(k/g)` (`g` their common
    /// divisor), which exists when `s` is a multiple of `k/g`. `None` otherwise.
    pub fn div_blocks(&self, o: &Dim) -> Option<Dim> {
        if let Some(q) = self.div_exact(o) {
            return Some(q);
        }
        let ([(m, c)], [(om, oc)]) = (self.terms.as_slice(), o.terms.as_slice()) else { return None };
        let mut rest = m.clone();
        for s in om {
            let pos = rest.iter().position(|r| r == s)?;
            rest.remove(pos);
        }
        let [s] = rest.as_slice() else { return None };
        let g = gcd(*c, *oc);
        let k = i64::try_from((oc / g).unsigned_abs()).ok()?;
        let c = (c / g).checked_mul(oc.signum())?;
        if split_quot(s).is_some() || k < 2 {
            return None;
        }
        Some(Dim::quot(s, k).scale(c))
    }

    /// Evaluates the size given values for its symbols; `None` if a symbol is unbound or a
    /// quotient factor's size is not a multiple of its divisor.
    pub fn eval(&self, env: &HashMap<String, i64>) -> Option<i64> {
        let mut total = 0i64;
        for (m, c) in &self.terms {
            let mut v = *c;
            for f in m {
                let x = match split_quot(f) {
                    Some((name, k)) => {
                        let n = *env.get(name)?;
                        if n % k != 0 {
                            return None;
                        }
                        n / k
                    }
                    None => *env.get(f)?,
                };
                v = v.checked_mul(x)?;
            }
            total = total.checked_add(v)?;
        }
        Some(total)
    }
}

/// A quotient factor `name/k` as `(name, k)`.
fn split_quot(f: &str) -> Option<(&str, i64)> {
    let (name, k) = f.split_once('/')?;
    Some((name, k.parse().ok()?))
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    i64::try_from(a.max(1)).unwrap_or(1) // gcd(MIN, MIN) = 2^63 does not fit: no common divisor used
}

impl From<i64> for Dim {
    fn from(n: i64) -> Dim {
        Dim::known(n)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return write!(f, "0");
        }
        // Symbolic terms first (highest degree first), the constant last: `2*seq + 1`.
        let mut order: Vec<&(Vec<String>, i64)> = self.terms.iter().collect();
        order.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        for (i, (m, c)) in order.into_iter().enumerate() {
            let (neg, mag) = (*c < 0, c.unsigned_abs());
            match (i, neg) {
                (0, true) => write!(f, "-")?,
                (0, false) => {}
                (_, true) => write!(f, " - ")?,
                (_, false) => write!(f, " + ")?,
            }
            if m.is_empty() {
                write!(f, "{mag}")?;
            } else {
                if mag != 1 {
                    write!(f, "{mag}*")?;
                }
                write!(f, "{}", m.join("*"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_compare_equal() {
        let s = Dim::sym("seq");
        let b = Dim::sym("batch");
        assert_eq!(s.add(&s), s.scale(2));
        assert_eq!(s.mul(&b), b.mul(&s));
        assert_eq!(s.sub(&s), Dim::known(0));
        assert_eq!(s.mul(&b).div_exact(&b), Some(s.clone()));
        assert_eq!(Dim::known(768).div_exact(&Dim::known(12)), Some(Dim::known(64)));
        assert_eq!(Dim::known(7).div_exact(&Dim::known(2)), None);
        assert_eq!(s.scale(2).add(&Dim::known(1)).to_string(), "2*seq + 1");
        assert_eq!(s.sub(&Dim::known(1)).to_string(), "seq - 1");
        assert_eq!(b.mul(&s).to_string(), "batch*seq");
        let env = HashMap::from([("seq".to_string(), 5), ("batch".to_string(), 3)]);
        assert_eq!(b.mul(&s).add(&Dim::known(2)).eval(&env), Some(17));
    }

    #[test]
    fn arithmetic_saturates_and_checked_arithmetic_says_so() {
        let max = Dim::known(i64::MAX);
        assert_eq!(max.add(&Dim::known(1)), max, "no wrap to a negative size");
        assert_eq!(max.checked_add(&Dim::known(1)), None);
        assert_eq!(Dim::known(i64::MAX - 1).checked_add(&Dim::known(1)), Some(max.clone()));
        assert_eq!(Dim::known(1 << 62).checked_mul(&Dim::known(4)), None);
        assert_eq!(Dim::known(1 << 62).mul(&Dim::known(4)).as_known(), Some(i64::MAX));
        assert_eq!(Dim::known(i64::MIN).checked_sub(&Dim::known(1)), None);
        let s = Dim::sym("seq");
        assert_eq!(s.scale(1 << 62).checked_add(&s.scale(1 << 62)), None);
        assert_eq!(s.checked_mul(&s).map(|d| d.to_string()), Some("seq*seq".into()));
    }

    #[test]
    fn a_named_size_cut_into_blocks() {
        let (s, b) = (Dim::sym("seq"), Dim::sym("batch"));
        // [batch, seq, 24] as [batch, -1, 4, 24]: -1 is seq/4.
        let total = b.mul(&s).scale(24);
        let Some(q) = total.div_blocks(&b.scale(96)) else { panic!("a quotient") };
        assert_eq!(q.to_string(), "seq/4");
        assert_eq!(q.quotients().collect::<Vec<_>>(), [("seq", 4)]);
        assert_eq!(q.symbols().collect::<Vec<_>>(), ["seq"]);
        assert_eq!(q.scale(4), s, "4*seq/4 is seq");
        assert_eq!(q.mul(&Dim::known(4)).mul(&b).scale(24), total);
        assert_eq!(s.scale(6).div_blocks(&Dim::known(4)).map(|d| d.to_string()), Some("3*seq/2".into()));
        let env = HashMap::from([("seq".to_string(), 12)]);
        assert_eq!(q.eval(&env), Some(3));
        assert_eq!(q.eval(&HashMap::from([("seq".to_string(), 13)])), None, "13 is no multiple of 4");
        assert_eq!(s.add(&b).div_blocks(&Dim::known(4)), None, "only one term is cut");
        assert_eq!(q.div_blocks(&Dim::known(2)), None, "a quotient is not cut again");
    }
}
