//! The attention kernel's tile products ([`crate::cpu::codegen::TileProductFn`]): `C = α·A·B`
//! or `C += A·B` for one tile (64 × 64 × 64 at most), both operands read in place. Blocks of
//! `MR` rows × `NV` vectors of `W` lanes of C (6 × 4 × 16 with AVX-512, 6 × 2 × 8 with AVX2)
//! stay in registers over the whole `k` loop: per `k`, `NV` loads of B's row and `MR`
//! broadcasts of A. Columns that do not fill a block use masked loads and stores; rows that
//! do not fill one, a block of fewer rows. (The `std::arch` kernel of
//! `crate::cpu::tile_gemm` is the same loop nest for AVX2 only.)

use crate::cpu::codegen::TextKernels;
use std::fmt::Write;

/// Rows of C per block.
const MR: usize = 6;

/// Lanes and vectors per block for the host's features: AVX-512 keeps 24 accumulators of 16
/// lanes in its 32 registers, AVX2 12 of 8 in its 16, SSE 8 of 4.
pub fn shape(features: &str) -> (usize, usize) {
    let has = |f: &str| features.split(',').any(|x| x == f);
    if has("+avx512f") {
        (16, 4)
    } else if has("+avx2") {
        (8, 2)
    } else {
        (4, 2)
    }
}

/// The kernel named `name` for vectors of `w` lanes, `nv` per block of columns. (LLVM 22
/// declares the intrinsics it calls where it reads them.)
pub fn tile_product(name: &str, w: usize, nv: usize) -> String {
    let mut s = String::new();
    // The k loops are not unrolled: their bodies are already 4 to 24 FMAs, and unrolled
    // copies of twelve blocks would triple the module's compile time.
    let md = |i: usize| format!("!{}{i:04}", TextKernels::MD);
    let mut meta = format!("{} = !{{!\"llvm.loop.unroll.disable\"}}\n", md(0));
    for (bi, (masked, rows)) in [false, true].into_iter().flat_map(|m| (1..=MR).map(move |r| (m, r))).enumerate() {
        let id = md(bi + 1);
        s.push_str(&block(name, w, nv, rows, masked, &id));
        meta.push_str(&format!("{id} = distinct !{{{id}, {}}}\n", md(0)));
    }
    let nb = w * nv;
    let lanes = (0..w).map(|l| format!("i32 {l}")).collect::<Vec<_>>().join(", ");
    let mut d = String::new();
    let _ = writeln!(
        d,
        "define void @{name}(i64 %m, i64 %n, i64 %k, float %alpha, i32 %accumulate, ptr noalias %a, i64 %lda, ptr noalias %b, i64 %ldb, ptr noalias %c, i64 %ldc) #2 {{\nentry:"
    );
    let _ = writeln!(d, "  %acc = icmp ne i32 %accumulate, 0\n  %go = icmp sgt i64 %n, 0\n  br i1 %go, label %cols, label %exit\ncols:");
    // One block of columns: `jb` its first, `nc` how many (`nb` but at the end).
    let _ = writeln!(d, "  %jb = phi i64 [ 0, %entry ], [ %jbn, %cols.next ]");
    let _ = writeln!(d, "  %left = sub i64 %n, %jb\n  %short = icmp slt i64 %left, {nb}\n  %nc = select i1 %short, i64 %left, i64 {nb}");
    let _ = writeln!(d, "  %bj = getelementptr inbounds float, ptr %b, i64 %jb\n  %cj = getelementptr inbounds float, ptr %c, i64 %jb");
    // The mask of each vector: lanes below the columns left for it.
    let _ = writeln!(d, "  %nc32 = trunc i64 %nc to i32");
    for q in 0..nv {
        let _ = writeln!(d, "  %rem{q} = sub i32 %nc32, {}", q * w);
        let _ = writeln!(d, "  %rems{q} = insertelement <{w} x i32> poison, i32 %rem{q}, i32 0");
        let _ = writeln!(d, "  %remv{q} = shufflevector <{w} x i32> %rems{q}, <{w} x i32> poison, <{w} x i32> zeroinitializer");
        let _ = writeln!(d, "  %mask{q} = icmp slt <{w} x i32> <{lanes}>, %remv{q}");
    }
    let masks = (0..nv).map(|q| format!("<{w} x i1> %mask{q}")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(d, "  %rows6 = icmp sge i64 %m, {MR}\n  br i1 %rows6, label %rows, label %tail");
    // Full blocks of rows.
    let _ = writeln!(d, "rows:\n  %i = phi i64 [ 0, %cols ], [ %in, %rows.next ]");
    let _ = writeln!(d, "  %ai = mul i64 %i, %lda\n  %ap = getelementptr inbounds float, ptr %a, i64 %ai");
    let _ = writeln!(d, "  %ci = mul i64 %i, %ldc\n  %cp = getelementptr inbounds float, ptr %cj, i64 %ci");
    let args = |a: &str, c: &str| format!("i64 %k, float %alpha, i1 %acc, ptr {a}, i64 %lda, ptr %bj, i64 %ldb, ptr {c}, i64 %ldc");
    let _ = writeln!(d, "  br i1 %short, label %rows.m, label %rows.f");
    let _ = writeln!(d, "rows.f:\n  call fastcc void @{name}.f{MR}({})\n  br label %rows.next", args("%ap", "%cp"));
    let _ = writeln!(d, "rows.m:\n  call fastcc void @{name}.m{MR}({}, {masks})\n  br label %rows.next", args("%ap", "%cp"));
    let _ = writeln!(d, "rows.next:\n  %in = add nuw nsw i64 %i, {MR}\n  %next = add nuw nsw i64 %in, {MR}");
    let _ = writeln!(d, "  %more = icmp sle i64 %next, %m\n  br i1 %more, label %rows, label %tail");
    // The rows left over: a block of fewer rows.
    let _ = writeln!(d, "tail:\n  %it = phi i64 [ 0, %cols ], [ %in, %rows.next ]\n  %r = sub i64 %m, %it");
    let _ = writeln!(d, "  %ait = mul i64 %it, %lda\n  %apt = getelementptr inbounds float, ptr %a, i64 %ait");
    let _ = writeln!(d, "  %cit = mul i64 %it, %ldc\n  %cpt = getelementptr inbounds float, ptr %cj, i64 %cit");
    let cases = (1..MR).map(|r| format!("i64 {r}, label %t{r}")).collect::<Vec<_>>().join(" ");
    let _ = writeln!(d, "  switch i64 %r, label %cols.next [ {cases} ]");
    for r in 1..MR {
        let _ = writeln!(d, "t{r}:\n  br i1 %short, label %t{r}.m, label %t{r}.f");
        let _ = writeln!(d, "t{r}.f:\n  call fastcc void @{name}.f{r}({})\n  br label %cols.next", args("%apt", "%cpt"));
        let _ = writeln!(d, "t{r}.m:\n  call fastcc void @{name}.m{r}({}, {masks})\n  br label %cols.next", args("%apt", "%cpt"));
    }
    let _ = writeln!(d, "cols.next:\n  %jbn = add nuw nsw i64 %jb, {nb}\n  %cmore = icmp slt i64 %jbn, %n");
    let _ = writeln!(d, "  br i1 %cmore, label %cols, label %exit\nexit:\n  ret void\n}}");
    s.push_str(&d);
    s.push_str(&meta);
    s
}

/// One block of `rows` rows and `nv` vectors, its accumulators in registers over `k`; with
/// `masked`, B and C are read and written under the masks given.
fn block(name: &str, w: usize, nv: usize, rows: usize, masked: bool, loop_md: &str) -> String {
    let v = format!("<{w} x float>");
    let (tag, mask_params) =
        if masked { ("m", (0..nv).map(|q| format!(", <{w} x i1> %mask{q}")).collect::<String>()) } else { ("f", String::new()) };
    let load = |s: &mut String, dst: &str, p: &str, q: usize| {
        if masked {
            let _ =
                writeln!(s, "  {dst} = call {v} @llvm.masked.load.v{w}f32.p0(ptr align 4 {p}, <{w} x i1> %mask{q}, {v} zeroinitializer)");
        } else {
            let _ = writeln!(s, "  {dst} = load {v}, ptr {p}, align 4");
        }
    };
    // A masked vector may start past the operand's end (all its lanes off): its address is
    // not `inbounds`.
    let inb = if masked { "" } else { "inbounds " };
    let mut s = format!(
        "define internal fastcc void @{name}.{tag}{rows}(i64 %k, float %alpha, i1 %acc, ptr noalias %a, i64 %lda, ptr noalias %b, i64 %ldb, ptr noalias %c, i64 %ldc{mask_params}) #2 {{\nentry:\n"
    );
    for i in 0..rows {
        let _ = writeln!(s, "  %ao{i} = mul i64 %lda, {i}\n  %ar{i} = getelementptr inbounds float, ptr %a, i64 %ao{i}");
    }
    let _ = writeln!(s, "  %go = icmp sgt i64 %k, 0\n  br i1 %go, label %loop, label %done\nloop:");
    let _ = writeln!(s, "  %p = phi i64 [ 0, %entry ], [ %pn, %loop ]");
    for i in 0..rows {
        for q in 0..nv {
            let _ = writeln!(s, "  %acc{i}.{q} = phi {v} [ zeroinitializer, %entry ], [ %nacc{i}.{q}, %loop ]");
        }
    }
    let _ = writeln!(s, "  %bo = mul i64 %p, %ldb\n  %br = getelementptr inbounds float, ptr %b, i64 %bo");
    for q in 0..nv {
        let _ = writeln!(s, "  %bp{q} = getelementptr {inb}float, ptr %br, i64 {}", q * w);
        load(&mut s, &format!("%b{q}"), &format!("%bp{q}"), q);
    }
    for i in 0..rows {
        let _ = writeln!(s, "  %aq{i} = getelementptr inbounds float, ptr %ar{i}, i64 %p\n  %a{i} = load float, ptr %aq{i}, align 4");
        let _ = writeln!(s, "  %ai{i} = insertelement {v} poison, float %a{i}, i32 0");
        let _ = writeln!(s, "  %as{i} = shufflevector {v} %ai{i}, {v} poison, <{w} x i32> zeroinitializer");
        for q in 0..nv {
            let _ = writeln!(s, "  %nacc{i}.{q} = call {v} @llvm.fma.v{w}f32({v} %as{i}, {v} %b{q}, {v} %acc{i}.{q})");
        }
    }
    let _ = writeln!(
        s,
        "  %pn = add nuw nsw i64 %p, 1\n  %pm = icmp slt i64 %pn, %k\n  br i1 %pm, label %loop, label %done, !llvm.loop {loop_md}\ndone:"
    );
    for i in 0..rows {
        for q in 0..nv {
            let _ = writeln!(s, "  %r{i}.{q} = phi {v} [ zeroinitializer, %entry ], [ %nacc{i}.{q}, %loop ]");
        }
    }
    let _ = writeln!(s, "  %al0 = insertelement {v} poison, float %alpha, i32 0");
    let _ = writeln!(s, "  %al = shufflevector {v} %al0, {v} poison, <{w} x i32> zeroinitializer");
    for i in 0..rows {
        let _ = writeln!(s, "  %co{i} = mul i64 %ldc, {i}\n  %cr{i} = getelementptr inbounds float, ptr %c, i64 %co{i}");
        for q in 0..nv {
            let _ = writeln!(s, "  %cp{i}.{q} = getelementptr {inb}float, ptr %cr{i}, i64 {}", q * w);
        }
    }
    let _ = writeln!(s, "  br i1 %acc, label %add, label %scale\nadd:");
    for i in 0..rows {
        for q in 0..nv {
            load(&mut s, &format!("%old{i}.{q}"), &format!("%cp{i}.{q}"), q);
            let _ = writeln!(s, "  %sum{i}.{q} = fadd {v} %old{i}.{q}, %r{i}.{q}");
        }
    }
    let _ = writeln!(s, "  br label %store\nscale:");
    for i in 0..rows {
        for q in 0..nv {
            let _ = writeln!(s, "  %sc{i}.{q} = fmul {v} %al, %r{i}.{q}");
        }
    }
    let _ = writeln!(s, "  br label %store\nstore:");
    for i in 0..rows {
        for q in 0..nv {
            let _ = writeln!(s, "  %o{i}.{q} = phi {v} [ %sum{i}.{q}, %add ], [ %sc{i}.{q}, %scale ]");
        }
    }
    for i in 0..rows {
        for q in 0..nv {
            if masked {
                let _ =
                    writeln!(s, "  call void @llvm.masked.store.v{w}f32.p0({v} %o{i}.{q}, ptr align 4 %cp{i}.{q}, <{w} x i1> %mask{q})");
            } else {
                let _ = writeln!(s, "  store {v} %o{i}.{q}, ptr %cp{i}.{q}, align 4");
            }
        }
    }
    s.push_str("  ret void\n}\n\n");
    s
}

#[cfg(test)]
mod tests {
    use crate::cpu::codegen::TileProductFn;
    use crate::cpu::tile_gemm::{check_product, CHECKED_SIZES};

    #[test]
    fn compiled_tile_products_match_f64_sums_for_each_vector_width() -> Result<(), crate::error::CodegenError> {
        let (cpu, features) = super::super::host();
        for (w, nv) in [(16, 4), (8, 2), (4, 2)] {
            let text = format!("{}\n{}", super::super::emit::prelude(&cpu, &features), super::tile_product("tp", w, nv))
                .replace(super::TextKernels::MD, "1");
            let compiled = super::super::compile(&text, &cpu, &features, &["tp".to_string()], None)?;
            // SAFETY: `tp` was compiled with `TileProductFn`'s signature.
            let f = unsafe { std::mem::transmute::<usize, TileProductFn>(compiled.addresses[0]) };
            for size in CHECKED_SIZES {
                check_product(Some(f), size, false);
                check_product(Some(f), size, true);
            }
        }
        Ok(())
    }
}
