//! Symbolic dimension sizes: polynomials over named sizes with integer coefficients.
//!
//! A [`Dim`] is kept in a canonical form (monomials sorted, no zero coefficients), so structural
//! equality is semantic equality for the expressions the language can build (`seq`, `2*seq`,
//! `batch*seq`, `seq - 1`, `768`).

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

    fn normalize(&mut self) {
        let mut merged: Vec<(Vec<String>, i64)> = Vec::new();
        let mut terms = std::mem::take(&mut self.terms);
        for t in &mut terms {
            t.0.sort();
        }
        terms.sort();
        for (m, c) in terms {
            match merged.last_mut() {
                Some((lm, lc)) if *lm == m => *lc += c,
                _ => merged.push((m, c)),
            }
        }
        merged.retain(|(_, c)| *c != 0);
        self.terms = merged;
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
            [(m, 1)] if m.len() == 1 => Some(&m[0]),
            _ => None,
        }
    }

    /// Every symbol the size mentions.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().flat_map(|(m, _)| m.iter().map(String::as_str))
    }

    /// Sum of two sizes.
    pub fn add(&self, o: &Dim) -> Dim {
        let mut d = Dim { terms: self.terms.iter().chain(&o.terms).cloned().collect() };
        d.normalize();
        d
    }

    /// Difference of two sizes.
    pub fn sub(&self, o: &Dim) -> Dim {
        self.add(&o.scale(-1))
    }

    /// The size times a constant.
    pub fn scale(&self, k: i64) -> Dim {
        let mut d = Dim { terms: self.terms.iter().map(|(m, c)| (m.clone(), c * k)).collect() };
        d.normalize();
        d
    }

    /// Product of two sizes.
    pub fn mul(&self, o: &Dim) -> Dim {
        let mut terms = Vec::new();
        for (m1, c1) in &self.terms {
            for (m2, c2) in &o.terms {
                let mut m = m1.clone();
                m.extend(m2.iter().cloned());
                terms.push((m, c1 * c2));
            }
        }
        let mut d = Dim { terms };
        d.normalize();
        d
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

    /// Evaluates the size given values for its symbols; `None` if a symbol is unbound.
    pub fn eval(&self, env: &HashMap<String, i64>) -> Option<i64> {
        let mut total = 0i64;
        for (m, c) in &self.terms {
            let mut v = *c;
            for s in m {
                v = v.checked_mul(*env.get(s)?)?;
            }
            total = total.checked_add(v)?;
        }
        Some(total)
    }
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
}
