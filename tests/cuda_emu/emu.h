// Just enough of CUDA for running Tessera's generated kernels on the CPU, one thread after
// another (tests/cuda.rs): the kernels it checks never synchronise threads or share memory.
#include <math.h>
#include <string.h>
#include <algorithm>
#define __global__
#define __device__
#define __restrict__ __restrict
struct tsr_dim3 { long long x, y, z; };
static tsr_dim3 blockIdx, threadIdx, blockDim, gridDim;
inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
using std::max;
using std::min;
inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, sizeof u); return u; }
inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, sizeof f); return f; }
