// CUDA kernels of safemax_loss. Plain CUDA C++, no torch headers: `nvcc -Icsrc -c` builds it.
//
// Forward: one kernel. Each block reduces a fixed chunk of one row (vectorised 16-byte loads,
// warp-shuffle reduction) into a partial; the last block to finish (integer ticket, no float
// atomics) sums the partials row by row in a fixed order, so results are deterministic.
// Backward: one kernel, every gradient that is wanted written in the same pass.
#include "safemax_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "../safemax_math.h"

namespace safemax {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void from_acc(float v, float& out) { out = v; }
__device__ __forceinline__ void from_acc(double v, double& out) { out = v; }
__device__ __forceinline__ void from_acc(float v, __half& out) { out = __float2half_rn(v); }
__device__ __forceinline__ void from_acc(float v, __nv_bfloat16& out) { out = __float2bfloat16_rn(v); }

// VEC elements in one 16-byte load or store.
template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kVec = 16 / sizeof(scalar_t);
  scalar_t v[kVec];
};

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block in a fixed tree order; the total is valid in thread 0.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_totals[kWarps];
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_totals[warp] = v;
  __syncthreads();
  v = threadIdx.x < kWarps ? warp_totals[threadIdx.x] : acc_t(0);
  if (warp == 0) v = warp_sum(v);
  __syncthreads();  // warp_totals may be reused by a following call
  return v;
}

struct RowChunk {
  int64_t row, begin, end;  // element range [begin, end) of the flattened [B, P] tensors
};

__device__ __forceinline__ RowChunk chunk_of_block(const LossProblem& pb, int64_t chunks_per_row) {
  const int64_t blk = blockIdx.x;
  RowChunk c;
  c.row = blk / chunks_per_row;
  const int64_t start = (blk % chunks_per_row) * kCudaChunk;
  c.begin = c.row * pb.per_sample + start;
  c.end = c.row * pb.per_sample + min(pb.per_sample, start + kCudaChunk);
  return c;
}

template <typename scalar_t>
__device__ __forceinline__ const scalar_t* target_base(const LossProblem& pb, int64_t row) {
  return static_cast<const scalar_t*>(pb.forget[row] ? pb.x_t : pb.eps);
}

// Visits each element index i in [begin, end) once, with this thread's share of the chunk;
// kVec says every chunk starts 16-byte aligned and holds whole packs.
template <typename scalar_t, bool kVec, typename F>
__device__ __forceinline__ void for_chunk(const RowChunk& c, F&& f) {
  if (kVec) {
    constexpr int V = Pack<scalar_t>::kVec;
    for (int64_t i = c.begin + int64_t(threadIdx.x) * V; i < c.end; i += int64_t(kThreads) * V) {
      f(i, std::integral_constant<int, V>());
    }
  } else {
    for (int64_t i = c.begin + threadIdx.x; i < c.end; i += kThreads) {
      f(i, std::integral_constant<int, 1>());
    }
  }
}

template <typename scalar_t, int N>
__device__ __forceinline__ void load(const scalar_t* p, int64_t i, scalar_t (&out)[N]) {
  if constexpr (N == 1) {
    out[0] = p[i];
  } else {
    const Pack<scalar_t> pk = *reinterpret_cast<const Pack<scalar_t>*>(p + i);
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = pk.v[k];
  }
}

template <typename scalar_t, int N>
__device__ __forceinline__ void store(scalar_t* p, int64_t i, const scalar_t (&in)[N]) {
  if constexpr (N == 1) {
    p[i] = in[0];
  } else {
    Pack<scalar_t> pk;
#pragma unroll
    for (int k = 0; k < N; ++k) pk.v[k] = in[k];
    *reinterpret_cast<Pack<scalar_t>*>(p + i) = pk;
  }
}

template <typename scalar_t, typename acc_t, bool kVec>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(LossProblem pb, int64_t chunks_per_row, acc_t* partials,
                   unsigned int* ticket, acc_t* loss_out, acc_t* nats_out) {
  const RowChunk c = chunk_of_block(pb, chunks_per_row);
  const RowPlan plan = plan_row(pb.alphas_cumprod, pb.num_timesteps, pb.timesteps[c.row],
                                pb.forget[c.row], pb.t_min, pb.forget_weight, pb.flow,
                                pb.given_target);
  acc_t sum = 0;
  if (plan.active) {  // masked rows are never read
    const auto* pred = static_cast<const scalar_t*>(pb.eps_pred);
    const scalar_t* target = target_base<scalar_t>(pb, c.row);
    const acc_t scale = static_cast<acc_t>(plan.scale);
    for_chunk<scalar_t, kVec>(c, [&](int64_t i, auto n) {
      constexpr int N = decltype(n)::value;
      scalar_t p[N], t[N];
      load(pred, i, p);
      load(target, i, t);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const acc_t r = residual<acc_t>(to_acc(p[k]), to_acc(t[k]), scale);
        sum += r * r;
      }
    });
  }
  sum = block_sum(sum);

  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = sum;
    __threadfence();  // publish the partial before taking a ticket
    is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;

  // Last block: every partial is visible. Rows are strided over threads, each row summed in
  // chunk order in double; the loss terms are summed by the fixed-order block reduction.
  __threadfence();
  double loss_part = 0.0;
  for (int64_t b = threadIdx.x; b < pb.batch; b += kThreads) {
    double row_sum = 0.0;
    const volatile acc_t* row_partials = partials + b * chunks_per_row;
    for (int64_t k = 0; k < chunks_per_row; ++k) row_sum += static_cast<double>(row_partials[k]);
    const RowPlan p = plan_row(pb.alphas_cumprod, pb.num_timesteps, pb.timesteps[b],
                               pb.forget[b], pb.t_min, pb.forget_weight, pb.flow, pb.given_target);
    const double mse = row_sum / static_cast<double>(pb.per_sample);
    nats_out[b] = static_cast<acc_t>(row_nats(p, mse));
    loss_part += row_loss_term(p, mse, pb.vlb);
  }
  loss_part = block_sum(loss_part);
  if (threadIdx.x == 0) *loss_out = static_cast<acc_t>(loss_part / static_cast<double>(pb.batch));
}

template <typename scalar_t, typename acc_t, bool kVec>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(LossProblem pb, int64_t chunks_per_row, const acc_t* grad_loss,
                    const acc_t* grad_nats, scalar_t* g_pred, scalar_t* g_eps, scalar_t* g_x) {
  const RowChunk c = chunk_of_block(pb, chunks_per_row);
  const bool forget = pb.forget[c.row];
  const RowPlan plan = plan_row(pb.alphas_cumprod, pb.num_timesteps, pb.timesteps[c.row],
                                forget, pb.t_min, pb.forget_weight, pb.flow, pb.given_target);
  const acc_t coef = static_cast<acc_t>(
      row_grad_coef(plan, static_cast<double>(*grad_loss), static_cast<double>(grad_nats[c.row]),
                    pb.batch, pb.per_sample, pb.vlb));
  const acc_t scale = static_cast<acc_t>(plan.scale);
  const auto* pred = static_cast<const scalar_t*>(pb.eps_pred);
  const scalar_t* target = target_base<scalar_t>(pb, c.row);
  scalar_t* g_target = forget ? g_x : g_eps;
  scalar_t* g_other = forget ? g_eps : g_x;  // the tensor this row does not read: zero
  const bool active = plan.active;

  for_chunk<scalar_t, kVec>(c, [&](int64_t i, auto n) {
    constexpr int N = decltype(n)::value;
    scalar_t gp[N], gt[N], zero[N];
    if (active) {
      scalar_t p[N], t[N];
      load(pred, i, p);
      load(target, i, t);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const acc_t g = coef * residual<acc_t>(to_acc(p[k]), to_acc(t[k]), scale);
        from_acc(g, gp[k]);
        from_acc(target_grad<acc_t>(g, scale), gt[k]);
      }
    } else {
#pragma unroll
      for (int k = 0; k < N; ++k) from_acc(acc_t(0), gp[k]), from_acc(acc_t(0), gt[k]);
    }
#pragma unroll
    for (int k = 0; k < N; ++k) from_acc(acc_t(0), zero[k]);
    if (g_pred) store(g_pred, i, gp);
    if (g_target) store(g_target, i, gt);
    if (g_other) store(g_other, i, zero);
  });
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Vector loads need every row and chunk to start on a 16-byte boundary.
template <typename scalar_t>
bool can_vectorise(const LossProblem& pb, std::initializer_list<const void*> ptrs) {
  constexpr int V = Pack<scalar_t>::kVec;
  if (pb.per_sample % V != 0) return false;
  for (const void* p : ptrs) {
    if (p != nullptr && !aligned16(p)) return false;
  }
  return true;
}

int64_t chunks_per_row(const LossProblem& pb) {
  return (pb.per_sample + kCudaChunk - 1) / kCudaChunk;
}

cudaError_t check_grid(int64_t blocks) {
  return blocks > 0x7fffffff ? cudaErrorInvalidConfiguration : cudaSuccess;
}

template <typename scalar_t, typename acc_t>
cudaError_t launch_forward(const LossProblem& pb, ForwardOut out, void* workspace,
                           cudaStream_t stream) {
  const int64_t cpr = chunks_per_row(pb);
  const int64_t blocks = pb.batch * cpr;
  if (cudaError_t e = check_grid(blocks); e != cudaSuccess) return e;
  auto* partials = static_cast<acc_t*>(workspace);
  auto* ticket = reinterpret_cast<unsigned int*>(partials + blocks);
  if (cudaError_t e = cudaMemsetAsync(ticket, 0, sizeof(unsigned int), stream); e != cudaSuccess)
    return e;
  auto* loss = static_cast<acc_t*>(out.loss);
  auto* nats = static_cast<acc_t*>(out.nats);
  if (can_vectorise<scalar_t>(pb, {pb.eps_pred, pb.eps, pb.x_t})) {
    forward_kernel<scalar_t, acc_t, true>
        <<<blocks, kThreads, 0, stream>>>(pb, cpr, partials, ticket, loss, nats);
  } else {
    forward_kernel<scalar_t, acc_t, false>
        <<<blocks, kThreads, 0, stream>>>(pb, cpr, partials, ticket, loss, nats);
  }
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t launch_backward(const LossProblem& pb, BackwardIn in, BackwardOut out,
                            cudaStream_t stream) {
  const int64_t cpr = chunks_per_row(pb);
  const int64_t blocks = pb.batch * cpr;
  if (cudaError_t e = check_grid(blocks); e != cudaSuccess) return e;
  auto* gl = static_cast<const acc_t*>(in.grad_loss);
  auto* gn = static_cast<const acc_t*>(in.grad_nats);
  auto* gp = static_cast<scalar_t*>(out.grad_eps_pred);
  auto* ge = static_cast<scalar_t*>(out.grad_eps);
  auto* gx = static_cast<scalar_t*>(out.grad_x_t);
  if (can_vectorise<scalar_t>(pb, {pb.eps_pred, pb.eps, pb.x_t, gp, ge, gx})) {
    backward_kernel<scalar_t, acc_t, true><<<blocks, kThreads, 0, stream>>>(pb, cpr, gl, gn, gp, ge, gx);
  } else {
    backward_kernel<scalar_t, acc_t, false><<<blocks, kThreads, 0, stream>>>(pb, cpr, gl, gn, gp, ge, gx);
  }
  return cudaGetLastError();
}

}  // namespace

size_t forward_cuda_workspace_bytes(const LossProblem& pb) {
  const size_t acc = acc_is_double(pb.kind) ? sizeof(double) : sizeof(float);
  return static_cast<size_t>(pb.batch * chunks_per_row(pb)) * acc + sizeof(unsigned int);
}

int forward_cuda(const LossProblem& pb, ForwardOut out, void* workspace, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (pb.kind) {
    case ScalarKind::Float32: return launch_forward<float, float>(pb, out, workspace, s);
    case ScalarKind::Float64: return launch_forward<double, double>(pb, out, workspace, s);
    case ScalarKind::Float16: return launch_forward<__half, float>(pb, out, workspace, s);
    case ScalarKind::BFloat16: return launch_forward<__nv_bfloat16, float>(pb, out, workspace, s);
  }
  return cudaErrorInvalidValue;
}

int backward_cuda(const LossProblem& pb, BackwardIn in, BackwardOut out, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (pb.kind) {
    case ScalarKind::Float32: return launch_backward<float, float>(pb, in, out, s);
    case ScalarKind::Float64: return launch_backward<double, double>(pb, in, out, s);
    case ScalarKind::Float16: return launch_backward<__half, float>(pb, in, out, s);
    case ScalarKind::BFloat16: return launch_backward<__nv_bfloat16, float>(pb, in, out, s);
  }
  return cudaErrorInvalidValue;
}

const char* cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

}  // namespace safemax
