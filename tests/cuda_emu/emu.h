// Just enough of CUDA for running Tessera's generated kernels on the CPU (tests/cuda.rs).
// Blocks run one after another. The threads of a block run one after another too, unless the
// kernel synchronises them: then each is an OS thread, `__syncthreads` a barrier (a thread
// that returns drops out of it, as on a GPU), and `__shared__` memory a static variable,
// shared by the block's threads (one block at a time uses it).
#include <math.h>
#include <string.h>
#include <algorithm>
#include <barrier>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __restrict__ __restrict
#define __shared__ static
struct tsr_dim3 { long long x, y, z; };
static tsr_dim3 blockIdx, blockDim, gridDim;
static thread_local tsr_dim3 threadIdx;
static std::barrier<>* tsr_block_barrier = nullptr;
inline void __syncthreads() { tsr_block_barrier->arrive_and_wait(); }
// Runs `kernel(t)` for the threads of one block: one after another, or as synchronising
// OS threads.
template <typename F> void tsr_run_block(long long threads, bool sync, F kernel) {
  if (!sync) {
    for (long long t = 0; t < threads; ++t) { threadIdx.x = t; kernel(); }
    return;
  }
  std::barrier<> bar((std::ptrdiff_t)threads);
  tsr_block_barrier = &bar;
  std::vector<std::thread> pool;
  for (long long t = 0; t < threads; ++t)
    pool.emplace_back([&, t] { threadIdx.x = t; kernel(); bar.arrive_and_drop(); });
  for (auto& th : pool) th.join();
  tsr_block_barrier = nullptr;
}
inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
using std::max;
using std::min;
inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, sizeof u); return u; }
inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, sizeof f); return f; }
