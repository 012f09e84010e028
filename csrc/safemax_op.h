// Torch-side half of safemax_loss shared by every backend: argument checks, memory layout,
// output allocation. A backend's op is three plain statements, no callback:
//
//     ForwardCall call = prepare_forward(..., TimestepCheck::kOnHost);  // every check, may throw
//     if (call.has_work()) forward_cpu(call.problem(), call.out());      // the kernel, never throws
//     return call.result();
//
// Rule: every check that can raise, the data-dependent timestep range included, runs in
// prepare_*, before the kernel; a kernel or launcher only reports failure by its return value.
// (The checks used to run inside a std::function launcher; on torch 2.11 + g++ 13.3 the
// ValueError thrown from there crashed the process instead of reaching Python.)
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "safemax_problem.h"

namespace safemax {

enum class TimestepCheck {
  kOnHost,    // prepare_* raises ValueError for a timestep outside [0, T) (reads them: CPU)
  kInKernel,  // no host check (it would synchronise the device): such a row's outputs are NaN
};

// The checked inputs, laid out as dense rows; `pb` points into the tensors held here.
struct PreparedInputs {
  at::Tensor eps_pred, eps, x_t, timesteps, abar, forget;
  bool copied = false;  // eps_pred/eps/x_t were made contiguous
  LossProblem pb;
};

struct ForwardCall {
  PreparedInputs in;
  at::Tensor loss, nats;  // allocated (loss already 0 for an empty batch)

  const LossProblem& problem() const { return in.pb; }
  bool has_work() const { return in.pb.batch > 0; }
  ForwardOut out() { return {loss.data_ptr(), nats.data_ptr()}; }
  std::tuple<at::Tensor, at::Tensor> result() const { return {loss, nats}; }
};

// A gradient laid out like its input would be by empty_like (what the fake kernel promises).
// The kernel writes dense rows: straight into `result` when the layout allows, else into a
// contiguous `buffer` copied over by BackwardCall::result().
struct GradSlot {
  at::Tensor result, buffer;
};

struct BackwardCall {
  PreparedInputs in;
  at::Tensor grad_loss, grad_nats;  // accumulation dtype, contiguous
  std::array<bool, 3> wanted{};     // eps_pred, eps, x_t
  std::array<GradSlot, 3> grads;

  const LossProblem& problem() const { return in.pb; }
  bool has_work() const { return in.pb.batch > 0; }
  BackwardIn in_grads() const { return {grad_loss.data_ptr(), grad_nats.data_ptr()}; }
  BackwardOut out();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result();  // after the kernel has run
};

ForwardCall prepare_forward(const at::Tensor& eps_pred, const at::Tensor& eps,
                            const at::Tensor& x_t, const at::Tensor& timesteps,
                            const at::Tensor& alphas_cumprod, const at::Tensor& forget,
                            int64_t t_min, double forget_weight, c10::string_view weighting,
                            c10::string_view parametrization, c10::string_view forget_target,
                            TimestepCheck timestep_check);

BackwardCall prepare_backward(const at::Tensor& grad_loss, const at::Tensor& grad_nats,
                              const at::Tensor& eps_pred, const at::Tensor& eps,
                              const at::Tensor& x_t, const at::Tensor& timesteps,
                              const at::Tensor& alphas_cumprod, const at::Tensor& forget,
                              int64_t t_min, double forget_weight, c10::string_view weighting,
                              std::array<bool, 3> output_mask, c10::string_view parametrization,
                              c10::string_view forget_target,
                              TimestepCheck timestep_check);

}  // namespace safemax
