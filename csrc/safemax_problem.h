// The torch-free description of one safemax_loss call, handed by the binding to a kernel.
// Tensors arrive as raw pointers to dense [B, P] rows (the binding has checked and laid them out).
#pragma once

#include <cstddef>
#include <cstdint>

namespace safemax {

enum class ScalarKind : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

struct LossProblem {
  int64_t batch = 0;          // B
  int64_t per_sample = 0;     // P: elements per row
  int64_t num_timesteps = 0;  // T
  ScalarKind kind = ScalarKind::Float32;
  const void* eps_pred = nullptr;   // [B, P], kind
  const void* eps = nullptr;        // [B, P], kind
  const void* x_t = nullptr;        // [B, P], kind
  const int64_t* timesteps = nullptr;      // [B]
  const double* alphas_cumprod = nullptr;  // [T], float64: ᾱ_t (epsilon) or σ_t (flow)
  const bool* forget = nullptr;            // [B]
  int64_t t_min = 0;
  double forget_weight = 1.0;
  bool vlb = false;   // weighting: false = "simple", true = "vlb" (epsilon only)
  bool flow = false;  // parametrization: false = "epsilon", true = "flow" (rectified flow)
  bool given_target = false;  // forget_target: false = "max-entropy", true = "given" (x_t is it)
};

// Accumulation ("acc") type: double for Float64 inputs, float otherwise. Loss, nats and the
// incoming gradients of loss and nats are acc-typed; outgoing gradients have the input kind.
inline bool acc_is_double(ScalarKind k) { return k == ScalarKind::Float64; }

struct ForwardOut {
  void* loss = nullptr;  // 0-dim, acc type
  void* nats = nullptr;  // [B], acc type
};

struct BackwardIn {
  const void* grad_loss = nullptr;  // 0-dim, acc type
  const void* grad_nats = nullptr;  // [B], acc type
};

struct BackwardOut {  // nullptr where that gradient is not wanted
  void* grad_eps_pred = nullptr;
  void* grad_eps = nullptr;
  void* grad_x_t = nullptr;
};

// Elements a kernel reduces as one unit. Fixed (never derived from the thread or SM count)
// so that the order of every floating-point sum, hence the result, is reproducible.
constexpr int64_t kCpuBlock = 4096;
constexpr int64_t kCudaChunk = 4096;

}  // namespace safemax
