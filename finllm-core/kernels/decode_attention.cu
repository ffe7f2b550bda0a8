// Decode attention for a batch of sequences in one launch per layer (finllm's own CUDA kernels,
// compiled to PTX by finllm-core/build.rs when the `cuda` feature is on).
//
// Every sequence brings one new token. Its key and value rows are written into that sequence's
// own cache buffer ([n_kv, capacity, head_dim], f16 or f32), then its query attends over every
// cached position (a sliding window may cut the start). Sequences have different lengths and
// separate buffers: a table holds, per sequence, the buffers' addresses, the capacity and the
// position of the new row.
//
// Table layout (unsigned long long, 4 per sequence): k buffer, v buffer, capacity, position.

#include <cuda_fp16.h>
#include <math_constants.h>

template <typename T> __device__ __forceinline__ float load_f(const T* p);
template <> __device__ __forceinline__ float load_f<float>(const float* p) { return *p; }
template <> __device__ __forceinline__ float load_f<__half>(const __half* p) { return __half2float(*p); }
template <typename T> __device__ __forceinline__ T store_f(float v);
template <> __device__ __forceinline__ float store_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half store_f<__half>(float v) { return __float2half_rn(v); }

// grid (batch, n_kv), block head_dim threads.
// k_new, v_new: [n_kv, batch, head_dim] f32.
template <typename T>
__device__ void kv_append(const unsigned long long* table, const float* k_new, const float* v_new, int batch,
                          int head_dim) {
    const int s = blockIdx.x, g = blockIdx.y, i = threadIdx.x;
    if (i >= head_dim) return;
    T* k = reinterpret_cast<T*>(table[4 * s]);
    T* v = reinterpret_cast<T*>(table[4 * s + 1]);
    const unsigned long long cap = table[4 * s + 2], pos = table[4 * s + 3];
    const size_t dst = (g * cap + pos) * head_dim + i;
    const size_t src = ((size_t)g * batch + s) * head_dim + i;
    k[dst] = store_f<T>(k_new[src]);
    v[dst] = store_f<T>(v_new[src]);
}

#define MAX_PER_LANE 8  // head_dim up to 256
#define WARPS 4

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// grid (batch, n_heads), block WARPS * 32 threads. Each warp walks every WARPS-th key with an
// online softmax (running maximum, sum and weighted values, in f32); the warps' partial results
// are then merged. q: [n_heads, batch, head_dim] f32; out: [batch, n_heads * head_dim] f32.
template <typename T>
__device__ void attend(const unsigned long long* table, const float* q, float* out, int batch, int n_heads,
                       int n_kv, int head_dim, float scale, int window) {
    const int s = blockIdx.x, h = blockIdx.y;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int g = h / (n_heads / n_kv);
    const T* k = reinterpret_cast<const T*>(table[4 * s]);
    const T* v = reinterpret_cast<const T*>(table[4 * s + 1]);
    const long long cap = (long long)table[4 * s + 2], pos = (long long)table[4 * s + 3];
    k += (size_t)g * cap * head_dim;
    v += (size_t)g * cap * head_dim;
    const float* qv = q + ((size_t)h * batch + s) * head_dim;

    float qr[MAX_PER_LANE], acc[MAX_PER_LANE];
#pragma unroll
    for (int e = 0; e < MAX_PER_LANE; ++e) {
        const int i = lane + 32 * e;
        qr[e] = i < head_dim ? qv[i] : 0.f;
        acc[e] = 0.f;
    }
    float m = -CUDART_INF_F, l = 0.f;
    const long long lo = window > 0 && pos + 1 > window ? pos + 1 - window : 0;
    for (long long j = lo + w; j <= pos; j += WARPS) {
        const T* kr = k + j * head_dim;
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < MAX_PER_LANE; ++e) {
            const int i = lane + 32 * e;
            if (i < head_dim) dot += qr[e] * load_f<T>(kr + i);
        }
        const float score = warp_sum(dot) * scale;
        const float m_new = fmaxf(m, score);
        const float c = expf(m - m_new), p = expf(score - m_new);
        l = l * c + p;
        const T* vr = v + j * head_dim;
#pragma unroll
        for (int e = 0; e < MAX_PER_LANE; ++e) {
            const int i = lane + 32 * e;
            if (i < head_dim) acc[e] = acc[e] * c + p * load_f<T>(vr + i);
        }
        m = m_new;
    }

    __shared__ float sm_m[WARPS], sm_l[WARPS];
    __shared__ float sm_acc[WARPS][32 * MAX_PER_LANE];
    if (lane == 0) {
        sm_m[w] = m;
        sm_l[w] = l;
    }
#pragma unroll
    for (int e = 0; e < MAX_PER_LANE; ++e) sm_acc[w][lane + 32 * e] = acc[e];
    __syncthreads();
    if (w != 0) return;
    float big = -CUDART_INF_F;
    for (int x = 0; x < WARPS; ++x) big = fmaxf(big, sm_m[x]);
    float total = 0.f;
    float weight[WARPS];
    for (int x = 0; x < WARPS; ++x) {
        // A warp that saw no key has m = -inf and l = 0: its weight is 0.
        weight[x] = sm_l[x] > 0.f ? expf(sm_m[x] - big) : 0.f;
        total += sm_l[x] * weight[x];
    }
    float* o = out + (size_t)s * n_heads * head_dim + (size_t)h * head_dim;
#pragma unroll
    for (int e = 0; e < MAX_PER_LANE; ++e) {
        const int i = lane + 32 * e;
        if (i < head_dim) {
            float a = 0.f;
            for (int x = 0; x < WARPS; ++x) a += sm_acc[x][i] * weight[x];
            o[i] = a / total;
        }
    }
}

extern "C" __global__ void finllm_kv_append_f16(const unsigned long long* table, const float* k_new,
                                                 const float* v_new, int batch, int head_dim) {
    kv_append<__half>(table, k_new, v_new, batch, head_dim);
}
extern "C" __global__ void finllm_kv_append_f32(const unsigned long long* table, const float* k_new,
                                                 const float* v_new, int batch, int head_dim) {
    kv_append<float>(table, k_new, v_new, batch, head_dim);
}
extern "C" __global__ void finllm_decode_attention_f16(const unsigned long long* table, const float* q, float* out,
                                                        int batch, int n_heads, int n_kv, int head_dim, float scale,
                                                        int window) {
    attend<__half>(table, q, out, batch, n_heads, n_kv, head_dim, scale, window);
}
extern "C" __global__ void finllm_decode_attention_f32(const unsigned long long* table, const float* q, float* out,
                                                        int batch, int n_heads, int n_kv, int head_dim, float scale,
                                                        int window) {
    attend<float>(table, q, out, batch, n_heads, n_kv, head_dim, scale, window);
}
