// CUDA registration of safemax_loss: device guard, current stream and scratch memory from
// torch's caching allocator, then the plain launchers of safemax_kernels.cu.
// <c10/cuda/CUDAStream.h>, not <ATen/cuda/CUDAContext.h>, whose cuSPARSE/cuBLAS headers a
// bare CUDA toolkit may lack.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../safemax_op.h"
#include "safemax_cuda.h"

namespace safemax {
namespace {

// Called after a launcher has returned its status: the launchers themselves never throw.
void check_launch(int code, const char* what) {
  TORCH_CHECK(code == 0, "safemax_loss: CUDA ", what, " kernel launch failed: ",
              cuda_error_string(code));
}

std::tuple<at::Tensor, at::Tensor> forward_cuda_op(
    const at::Tensor& eps_pred, const at::Tensor& eps, const at::Tensor& x_t,
    const at::Tensor& timesteps, const at::Tensor& alphas_cumprod, const at::Tensor& forget,
    int64_t t_min, double forget_weight, c10::string_view weighting,
    c10::string_view parametrization, c10::string_view forget_target) {
  const c10::cuda::CUDAGuard guard(eps_pred.device());
  // Timestep range is not checked on the host (that would synchronise): an out-of-range
  // timestep gives NaN in that row's nats and in the loss (see plan_row).
  ForwardCall call = prepare_forward(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min,
                                     forget_weight, weighting, parametrization, forget_target,
                                     TimestepCheck::kInKernel);
  if (call.has_work()) {
    const at::Tensor workspace =
        at::empty({static_cast<int64_t>(forward_cuda_workspace_bytes(call.problem()))},
                  eps_pred.options().dtype(at::kByte));
    const int code = forward_cuda(call.problem(), call.out(), workspace.data_ptr(),
                                  c10::cuda::getCurrentCUDAStream().stream());
    check_launch(code, "forward");
  }
  return call.result();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda_op(
    const at::Tensor& grad_loss, const at::Tensor& grad_nats, const at::Tensor& eps_pred,
    const at::Tensor& eps, const at::Tensor& x_t, const at::Tensor& timesteps,
    const at::Tensor& alphas_cumprod, const at::Tensor& forget, int64_t t_min,
    double forget_weight, c10::string_view weighting, std::array<bool, 3> output_mask,
    c10::string_view parametrization, c10::string_view forget_target) {
  const c10::cuda::CUDAGuard guard(eps_pred.device());
  BackwardCall call = prepare_backward(grad_loss, grad_nats, eps_pred, eps, x_t, timesteps,
                                       alphas_cumprod, forget, t_min, forget_weight, weighting,
                                       output_mask, parametrization, forget_target,
                                       TimestepCheck::kInKernel);
  if (call.has_work()) {
    const int code = backward_cuda(call.problem(), call.in_grads(), call.out(),
                                   c10::cuda::getCurrentCUDAStream().stream());
    check_launch(code, "backward");
  }
  return call.result();
}

}  // namespace
}  // namespace safemax

TORCH_LIBRARY_IMPL(safemax, CUDA, m) {
  m.impl("safemax_loss", &safemax::forward_cuda_op);
  m.impl("safemax_loss_backward", &safemax::backward_cuda_op);
}
