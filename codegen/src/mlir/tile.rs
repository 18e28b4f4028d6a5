//! The attention kernel's tile products ([`crate::cpu::codegen::TileProductFn`]) as `vector`
//! ops: `C = α·A·B` or `C += A·B` for one tile, both operands read in place. Blocks of `MR`
//! rows × `NV` vectors of `W` lanes of C are carried through an `scf.for` over `k` as
//! `iter_args` (in registers): per `k`, `NV` `vector.load`s of B's row, `MR` broadcasts of A,
//! `vector.fma`s. Columns that do not fill a block use `vector.maskedload` and
//! `vector.maskedstore`; rows that do not fill one, a block of fewer rows. The same loop nest
//! as the LLVM backend's (`llvm/tile.rs`), written in MLIR's dialects.

use super::emit::Body;

/// Rows of C per block.
const MR: usize = 6;

/// Lanes and vectors per block on this CPU: AVX-512 keeps 24 accumulators of 16 lanes in its
/// 32 registers, AVX2 12 of 8 in its 16, others 8 of 4.
pub fn shape() -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return (16, 4);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return (8, 2);
        }
    }
    (4, 2)
}

/// The strided matrix type of the operands (rows at a dynamic stride, columns contiguous).
const MAT: &str = "memref<?x?xf32, strided<[?, 1]>>";

/// The kernel named `name` for vectors of `w` lanes, `nv` per block of columns.
pub fn tile_product(name: &str, w: usize, nv: usize) -> String {
    let vt = format!("vector<{w}xf32>");
    let mut b = Body::new();
    let one = b.i64(1);
    let a = b.memref("%a", &["%m", "%k"], &["%lda", &one], MAT);
    let bm = b.memref("%b", &["%k", "%n"], &["%ldb", &one], MAT);
    let c = b.memref("%c", &["%m", "%n"], &["%ldc", &one], MAT);
    let idx = |b: &mut Body, x: i64| b.let_(format!("arith.constant {x} : index"));
    let (c0, c1, cmr, cnb) = (idx(&mut b, 0), idx(&mut b, 1), idx(&mut b, MR as i64), idx(&mut b, (w * nv) as i64));
    let cast = |b: &mut Body, x: &str| b.let_(format!("arith.index_cast {x} : i64 to index"));
    let (mi, ni, ki) = (cast(&mut b, "%m"), cast(&mut b, "%n"), cast(&mut b, "%k"));
    let z32 = b.i32(0);
    let accf = b.let_(format!("arith.cmpi ne, %accumulate, {z32} : i32"));
    let al = b.let_(format!("vector.broadcast %alpha : f32 to {vt}"));
    let zero = b.let_(format!("arith.constant dense<0.0> : {vt}"));
    // Rows in full blocks.
    let mq = b.let_(format!("arith.divui {mi}, {cmr} : index"));
    let mfull = b.let_(format!("arith.muli {mq}, {cmr} : index"));
    let rest = b.let_(format!("arith.subi {mi}, {mfull} : index"));
    let k = Ctx { w, nv, vt: &vt, a: &a, b: &bm, c: &c, k: &ki, c0: &c0, c1: &c1, accf: &accf, alpha: &al, zero: &zero };
    let jb = format!("%v{}", b.next);
    b.next += 1;
    b.open(format!("scf.for {jb} = {c0} to {ni} step {cnb} {{"));
    let left = b.let_(format!("arith.subi {ni}, {jb} : index"));
    let nc = b.let_(format!("arith.minui {left}, {cnb} : index"));
    let full = b.let_(format!("arith.cmpi eq, {nc}, {cnb} : index"));
    // The mask of each vector: lanes below the columns left for it (create_mask clamps).
    let (mut masks, mut cols) = (Vec::new(), Vec::new());
    for q in 0..nv {
        let off = idx(&mut b, (q * w) as i64);
        let rem = b.let_(format!("arith.subi {nc}, {off} : index"));
        masks.push(b.let_(format!("vector.create_mask {rem} : vector<{w}xi1>")));
        // A vector past the last column (all its lanes off) starts at the end instead.
        let col = b.let_(format!("arith.addi {jb}, {off} : index"));
        cols.push(b.let_(format!("arith.minui {col}, {ni} : index")));
    }
    let either = |b: &mut Body, rows: usize, i: &str| {
        b.open(format!("scf.if {full} {{"));
        k.block(b, rows, i, &cols, None);
        b.close();
        b.open("else {");
        k.block(b, rows, i, &cols, Some(&masks));
        b.close();
    };
    let i = format!("%v{}", b.next);
    b.next += 1;
    b.open(format!("scf.for {i} = {c0} to {mfull} step {cmr} {{"));
    either(&mut b, MR, &i);
    b.close();
    for r in 1..MR {
        let rc = idx(&mut b, r as i64);
        let is = b.let_(format!("arith.cmpi eq, {rest}, {rc} : index"));
        b.open(format!("scf.if {is} {{"));
        either(&mut b, r, &mfull);
        b.close();
    }
    b.close();
    b.line("return");
    format!(
        "  func.func @{name}(%m: i64, %n: i64, %k: i64, %alpha: f32, %accumulate: i32, %a: !llvm.ptr {{llvm.noalias}}, %lda: i64, %b: !llvm.ptr {{llvm.noalias}}, %ldb: i64, %c: !llvm.ptr {{llvm.noalias}}, %ldc: i64) {{\n{}  }}\n",
        b.text
    )
}

/// What every block reads: the vector shape, the operands and the constants.
struct Ctx<'a> {
    w: usize,
    nv: usize,
    vt: &'a str,
    a: &'a str,
    b: &'a str,
    c: &'a str,
    k: &'a str,
    c0: &'a str,
    c1: &'a str,
    accf: &'a str,
    alpha: &'a str,
    zero: &'a str,
}

impl Ctx<'_> {
    /// One block of `rows` rows from row `i`, over the columns `cols` (one per vector): its
    /// accumulators carried over `k`; with `masks`, B and C are read and written under them.
    fn block(&self, b: &mut Body, rows: usize, i: &str, cols: &[String], masks: Option<&[String]>) {
        let (w, vt) = (self.w, self.vt);
        let load = |b: &mut Body, m: &str, r: &str, q: usize| match masks {
            Some(ms) => {
                b.let_(format!("vector.maskedload {m}[{r}, {}], {}, {} : {MAT}, vector<{w}xi1>, {vt} into {vt}", cols[q], ms[q], self.zero))
            }
            None => b.let_(format!("vector.load {m}[{r}, {}] : {MAT}, {vt}", cols[q])),
        };
        let row: Vec<String> = (0..rows)
            .map(|r| {
                let off = b.let_(format!("arith.constant {r} : index"));
                b.let_(format!("arith.addi {i}, {off} : index"))
            })
            .collect();
        let n = rows * self.nv;
        let res = format!("%v{}", b.next);
        let p = format!("%v{}", b.next + 1);
        let accs: Vec<String> = (0..n).map(|x| format!("%v{}", b.next + 2 + x)).collect();
        b.next += 2 + n;
        let inits: Vec<String> = accs.iter().map(|a| format!("{a} = {}", self.zero)).collect();
        let tys = vec![vt; n].join(", ");
        b.open(format!(
            "{res}:{n} = scf.for {p} = {} to {} step {} iter_args({}) -> ({tys}) {{",
            self.c0,
            self.k,
            self.c1,
            inits.join(", ")
        ));
        let bv: Vec<String> = (0..self.nv).map(|q| load(b, self.b, &p, q)).collect();
        let mut next = Vec::with_capacity(n);
        for r in &row {
            let x = b.let_(format!("memref.load {}[{r}, {p}] : {MAT}", self.a));
            let xs = b.let_(format!("vector.broadcast {x} : f32 to {vt}"));
            for bq in &bv {
                let acc = &accs[next.len()];
                next.push(b.let_(format!("vector.fma {xs}, {bq}, {acc} : {vt}")));
            }
        }
        b.line(format!("scf.yield {} : {tys}", next.join(", ")));
        b.close();
        let store = |b: &mut Body, v: &str, r: &str, q: usize| match masks {
            Some(ms) => b.line(format!("vector.maskedstore {}[{r}, {}], {}, {v} : {MAT}, vector<{w}xi1>, {vt}", self.c, cols[q], ms[q])),
            None => b.line(format!("vector.store {v}, {}[{r}, {}] : {MAT}, {vt}", self.c, cols[q])),
        };
        b.open(format!("scf.if {} {{", self.accf));
        for (x, r) in row.iter().enumerate() {
            for q in 0..self.nv {
                let old = load(b, self.c, r, q);
                let s = b.let_(format!("arith.addf {old}, {res}#{} : {vt}", x * self.nv + q));
                store(b, &s, r, q);
            }
        }
        b.close();
        b.open("else {");
        for (x, r) in row.iter().enumerate() {
            for q in 0..self.nv {
                let s = b.let_(format!("arith.mulf {}, {res}#{} : {vt}", self.alpha, x * self.nv + q));
                store(b, &s, r, q);
            }
        }
        b.close();
    }
}

#[cfg(test)]
mod tests {
    use crate::cpu::codegen::{Codegen, TileProductFn};
    use crate::cpu::tile_gemm::{check_product, CHECKED_SIZES};

    #[test]
    fn compiled_tile_products_match_f64_sums() -> Result<(), crate::error::CodegenError> {
        let mut g = super::super::Mlir::new(false)?;
        let s = g.tile_product()?.ok_or_else(|| crate::error::CodegenError::Internal("no tile product".into()))?;
        g.finish()?;
        // SAFETY: the kernel was compiled with `TileProductFn`'s signature.
        let f = unsafe { std::mem::transmute::<*const u8, TileProductFn>(g.address(s)?) };
        for size in CHECKED_SIZES {
            check_product(Some(f), size, false);
            check_product(Some(f), size, true);
        }
        Ok(())
    }
}
