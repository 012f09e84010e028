// Torch-side half of safemax_loss shared by every backend: argument checks, memory layout,
// output allocation. A backend supplies only the launcher that runs its kernel.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <functional>
#include <tuple>

#include "safemax_problem.h"

namespace safemax {

using ForwardLauncher = std::function<void(const LossProblem&, ForwardOut)>;
using BackwardLauncher = std::function<void(const LossProblem&, BackwardIn, BackwardOut)>;

std::tuple<at::Tensor, at::Tensor> run_forward(
    const at::Tensor& eps_pred, const at::Tensor& eps, const at::Tensor& x_t,
    const at::Tensor& timesteps, const at::Tensor& alphas_cumprod, const at::Tensor& forget,
    int64_t t_min, double forget_weight, c10::string_view weighting,
    const ForwardLauncher& launch);

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_backward(
    const at::Tensor& grad_loss, const at::Tensor& grad_nats, const at::Tensor& eps_pred,
    const at::Tensor& eps, const at::Tensor& x_t, const at::Tensor& timesteps,
    const at::Tensor& alphas_cumprod, const at::Tensor& forget, int64_t t_min,
    double forget_weight, c10::string_view weighting, std::array<bool, 3> output_mask,
    const BackwardLauncher& launch);

}  // namespace safemax
