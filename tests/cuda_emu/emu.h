// Just enough of CUDA for running Tessera's generated kernels on the CPU (tests/cuda.rs).
// Blocks run one after another. The threads of a block run one after another too, unless the
// kernel synchronises them: then each is an OS thread, `__syncthreads` a barrier (a thread
// that returns drops out of it, as on a GPU), and `__shared__` memory a static variable,
// shared by the block's threads (one block at a time uses it). Warp-wide operations (shuffles,
// the tensor-core MMA) exchange values through per-warp barriers; the MMA follows the fragment
// layout of PTX's `mma.m16n8k16` as the PTX ISA documents it, written here independently of
// the kernel generator.
#define TSR_EMULATED
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <barrier>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
struct tsr_dim3 { long long x, y, z; };
static tsr_dim3 blockIdx, blockDim, gridDim;
static thread_local tsr_dim3 threadIdx;
static std::barrier<>* tsr_block_barrier = nullptr;
inline void __syncthreads() { tsr_block_barrier->arrive_and_wait(); }
// The GPU faults on a misaligned vector access; so does the emulation (buffers are 16-byte
// aligned here, 256 on the device).
inline void tsr_aligned(const void* p, uintptr_t to, const char* what) {
  if ((uintptr_t)p % to != 0) {
    fprintf(stderr, "%s: address %p is not %u-byte aligned\n", what, p, (unsigned)to);
    abort();
  }
}
// One barrier per warp of the running block, and one exchange slot per thread.
static std::vector<std::barrier<>*> tsr_warp_barriers;
static unsigned int tsr_words[1024][6];
inline void tsr_warp_sync() { tsr_warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned int, float v, int mask) {
  memcpy(&tsr_words[threadIdx.x][0], &v, 4);
  tsr_warp_sync();
  float r;
  memcpy(&r, &tsr_words[threadIdx.x ^ mask][0], 4);
  tsr_warp_sync();
  return r;
}
// d += a · b for the warp: A 16 × 16 and B 16 × 8 (bf16 pairs, lower index in the lower
// half), C/D 16 × 8 in f32.
inline void tsr_mma_bf16(float* d, const unsigned int* a, const unsigned int* b) {
  unsigned int* mine = tsr_words[threadIdx.x];
  for (int r = 0; r < 4; ++r) mine[r] = a[r];
  mine[4] = b[0];
  mine[5] = b[1];
  tsr_warp_sync();
  auto bf = [](unsigned int w, int high) { const unsigned int u = (high ? w >> 16 : w & 0xffffu) << 16; float f; memcpy(&f, &u, 4); return f; };
  float A[16][16], B[16][8];
  const long long warp = threadIdx.x / 32 * 32;
  for (int lane = 0; lane < 32; ++lane) {
    const unsigned int* w = tsr_words[warp + lane];
    const int g = lane / 4, t = lane % 4;
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
      A[row][col] = bf(w[r], 0);
      A[row][col + 1] = bf(w[r], 1);
    }
    for (int r = 0; r < 2; ++r) {
      const int k = 2 * t + 8 * r;
      B[k][g] = bf(w[4 + r], 0);
      B[k + 1][g] = bf(w[4 + r], 1);
    }
  }
  tsr_warp_sync();
  const int lane = threadIdx.x % 32;
  for (int r = 0; r < 4; ++r) {
    const int row = lane / 4 + 8 * (r / 2), col = 2 * (lane % 4) + r % 2;
    float acc = 0.0f;
    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
    d[r] += acc;
  }
}
// `ldmatrix` of `count` 8 × 8 matrices of 16-bit elements: lane l gives the address of row
// l % 8 of matrix l / 8, and gets of each matrix row l / 4's elements 2(l % 4) and the next,
// or with `trans` column l / 4's.
static const void* tsr_rows[1024];
inline void tsr_ldsm(unsigned int* r, const void* p, int count, bool trans) {
  tsr_aligned(p, 16, "ldmatrix row");
  tsr_rows[threadIdx.x] = p;
  tsr_warp_sync();
  const long long warp = threadIdx.x / 32 * 32;
  const int lane = threadIdx.x % 32;
  for (int m = 0; m < count; ++m) {
    unsigned short lo, hi;
    if (!trans) {
      const unsigned short* row = (const unsigned short*)tsr_rows[warp + 8 * m + lane / 4];
      lo = row[2 * (lane % 4)];
      hi = row[2 * (lane % 4) + 1];
    } else {
      lo = ((const unsigned short*)tsr_rows[warp + 8 * m + 2 * (lane % 4)])[lane / 4];
      hi = ((const unsigned short*)tsr_rows[warp + 8 * m + 2 * (lane % 4) + 1])[lane / 4];
    }
    r[m] = (unsigned int)lo | ((unsigned int)hi << 16);
  }
  tsr_warp_sync();
}
inline void tsr_ldsm2(unsigned int* r, const void* p) { tsr_ldsm(r, p, 2, false); }
inline void tsr_ldsm2t(unsigned int* r, const void* p) { tsr_ldsm(r, p, 2, true); }
inline void tsr_ldsm4(unsigned int* r, const void* p) { tsr_ldsm(r, p, 4, false); }
inline void tsr_ldsm4t(unsigned int* r, const void* p) { tsr_ldsm(r, p, 4, true); }
inline unsigned int tsr_ld2(const void* p) { tsr_aligned(p, 4, "32-bit load"); unsigned int u; memcpy(&u, p, 4); return u; }
inline void tsr_copy16(void* d, const void* s) { tsr_aligned(d, 16, "16-byte store"); tsr_aligned(s, 16, "16-byte load"); memcpy(d, s, 16); }
inline void tsr_zero16(void* d) { tsr_aligned(d, 16, "16-byte store"); memset(d, 0, 16); }
inline float __expf(float x) { return expf(x); }
// Runs `kernel(t)` for the threads of one block: one after another, or as synchronising
// OS threads.
template <typename F> void tsr_run_block(long long threads, bool sync, F kernel) {
  if (!sync) {
    for (long long t = 0; t < threads; ++t) { threadIdx.x = t; kernel(); }
    return;
  }
  std::barrier<> bar((std::ptrdiff_t)threads);
  tsr_block_barrier = &bar;
  for (long long w = 0; w < threads; w += 32) tsr_warp_barriers.push_back(new std::barrier<>((std::ptrdiff_t)std::min(32LL, threads - w)));
  std::vector<std::thread> pool;
  for (long long t = 0; t < threads; ++t)
    pool.emplace_back([&, t] { threadIdx.x = t; kernel(); bar.arrive_and_drop(); tsr_warp_barriers[t / 32]->arrive_and_drop(); });
  for (auto& th : pool) th.join();
  for (auto* b : tsr_warp_barriers) delete b;
  tsr_warp_barriers.clear();
  tsr_block_barrier = nullptr;
}
inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
using std::max;
using std::min;
inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, sizeof u); return u; }
inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, sizeof f); return f; }
