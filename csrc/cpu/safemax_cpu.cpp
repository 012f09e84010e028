// CPU kernels of safemax_loss: OpenMP over fixed-size blocks of each row.
// Every block's partial sum has a fixed summation order, and block partials are combined
// serially in row order, so the result is bitwise the same for any thread count.
#include "safemax_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "../safemax_math.h"

namespace safemax {
namespace {

// Below this many elements the whole call runs on one thread: OpenMP start-up would cost more.
constexpr int64_t kParallelThreshold = 1 << 15;
// Independent accumulators per block: lets the compiler vectorise the sum of squares
// without reassociating (which -O3 alone would not do for floats).
constexpr int kLanes = 16;

int threads_for(int64_t elements) {
  return elements >= kParallelThreshold ? std::max(1, at::get_num_threads()) : 1;
}

std::vector<RowPlan> plan_rows(const LossProblem& pb) {
  std::vector<RowPlan> plans(pb.batch);
  for (int64_t b = 0; b < pb.batch; ++b) {
    plans[b] = plan_row(pb.alphas_cumprod, pb.num_timesteps, pb.timesteps[b], pb.forget[b],
                        pb.t_min, pb.forget_weight, pb.flow, pb.given_target);
  }
  return plans;
}

// The row's target tensor: x_t on forget rows, eps on retain rows.
template <typename scalar_t>
const scalar_t* target_row(const LossProblem& pb, int64_t b) {
  const void* base = pb.forget[b] ? pb.x_t : pb.eps;
  return static_cast<const scalar_t*>(base) + b * pb.per_sample;
}

template <typename scalar_t, typename acc_t>
double block_sum_sq(const scalar_t* pred, const scalar_t* target, int64_t n, acc_t scale) {
  acc_t lane[kLanes] = {};
  const int64_t main = n - n % kLanes;
  for (int64_t i = 0; i < main; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const acc_t r = residual<acc_t>(static_cast<acc_t>(pred[i + l]),
                                      static_cast<acc_t>(target[i + l]), scale);
      lane[l] += r * r;
    }
  }
  for (int64_t i = main; i < n; ++i) {
    const acc_t r =
        residual<acc_t>(static_cast<acc_t>(pred[i]), static_cast<acc_t>(target[i]), scale);
    lane[i - main] += r * r;
  }
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += static_cast<double>(lane[l]);
  return total;
}

template <typename scalar_t, typename acc_t>
void forward_impl(const LossProblem& pb, ForwardOut out) {
  const int64_t B = pb.batch, P = pb.per_sample;
  const int64_t blocks_per_row = (P + kCpuBlock - 1) / kCpuBlock;
  const int64_t total = B * blocks_per_row;
  const std::vector<RowPlan> plans = plan_rows(pb);
  std::vector<double> partial(total, 0.0);
  const auto* pred_base = static_cast<const scalar_t*>(pb.eps_pred);

#pragma omp parallel for schedule(static) num_threads(threads_for(B * P))
  for (int64_t i = 0; i < total; ++i) {
    const int64_t b = i / blocks_per_row;
    if (!plans[b].active) continue;  // masked rows are never read
    const int64_t begin = (i % blocks_per_row) * kCpuBlock;
    const int64_t n = std::min(kCpuBlock, P - begin);
    partial[i] = block_sum_sq<scalar_t, acc_t>(pred_base + b * P + begin,
                                               target_row<scalar_t>(pb, b) + begin, n,
                                               static_cast<acc_t>(plans[b].scale));
  }

  auto* nats = static_cast<acc_t*>(out.nats);
  double loss_sum = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    double sum = 0.0;
    for (int64_t k = 0; k < blocks_per_row; ++k) sum += partial[b * blocks_per_row + k];
    const double mse = sum / static_cast<double>(P);
    nats[b] = static_cast<acc_t>(row_nats(plans[b], mse));
    loss_sum += row_loss_term(plans[b], mse, pb.vlb);
  }
  *static_cast<acc_t*>(out.loss) = static_cast<acc_t>(B > 0 ? loss_sum / B : 0.0);
}

template <typename scalar_t>
void fill_zero(scalar_t* p, int64_t n) {
  std::fill(p, p + n, static_cast<scalar_t>(0));
}

template <typename scalar_t, typename acc_t>
void backward_impl(const LossProblem& pb, BackwardIn in, BackwardOut out) {
  const int64_t B = pb.batch, P = pb.per_sample;
  const int64_t blocks_per_row = (P + kCpuBlock - 1) / kCpuBlock;
  const int64_t total = B * blocks_per_row;
  const std::vector<RowPlan> plans = plan_rows(pb);
  const double grad_loss = static_cast<double>(*static_cast<const acc_t*>(in.grad_loss));
  const auto* grad_nats = static_cast<const acc_t*>(in.grad_nats);
  const auto* pred_base = static_cast<const scalar_t*>(pb.eps_pred);
  auto* g_pred = static_cast<scalar_t*>(out.grad_eps_pred);
  auto* g_eps = static_cast<scalar_t*>(out.grad_eps);
  auto* g_x = static_cast<scalar_t*>(out.grad_x_t);

#pragma omp parallel for schedule(static) num_threads(threads_for(B * P))
  for (int64_t i = 0; i < total; ++i) {
    const int64_t b = i / blocks_per_row;
    const int64_t begin = b * P + (i % blocks_per_row) * kCpuBlock;
    const int64_t n = std::min(kCpuBlock, (b + 1) * P - begin);
    const RowPlan& plan = plans[b];
    const bool forget = pb.forget[b];
    scalar_t* g_target = forget ? g_x : g_eps;
    scalar_t* g_other = forget ? g_eps : g_x;  // the tensor this row does not read: zero
    if (g_other) fill_zero(g_other + begin, n);
    if (!plan.active) {
      if (g_pred) fill_zero(g_pred + begin, n);
      if (g_target) fill_zero(g_target + begin, n);
      continue;
    }
    const acc_t coef = static_cast<acc_t>(
        row_grad_coef(plan, grad_loss, static_cast<double>(grad_nats[b]), B, P, pb.vlb));
    const acc_t scale = static_cast<acc_t>(plan.scale);
    const scalar_t* pred = pred_base + begin;
    const scalar_t* target = target_row<scalar_t>(pb, b) + (begin - b * P);
    for (int64_t j = 0; j < n; ++j) {
      const acc_t g = coef * residual<acc_t>(static_cast<acc_t>(pred[j]),
                                             static_cast<acc_t>(target[j]), scale);
      if (g_pred) g_pred[begin + j] = static_cast<scalar_t>(g);
      if (g_target) g_target[begin + j] = static_cast<scalar_t>(target_grad<acc_t>(g, scale));
    }
  }
}

}  // namespace

void forward_cpu(const LossProblem& pb, ForwardOut out) {
  switch (pb.kind) {
    case ScalarKind::Float32: return forward_impl<float, float>(pb, out);
    case ScalarKind::Float64: return forward_impl<double, double>(pb, out);
    case ScalarKind::Float16: return forward_impl<c10::Half, float>(pb, out);
    case ScalarKind::BFloat16: return forward_impl<c10::BFloat16, float>(pb, out);
  }
}

void backward_cpu(const LossProblem& pb, BackwardIn in, BackwardOut out) {
  switch (pb.kind) {
    case ScalarKind::Float32: return backward_impl<float, float>(pb, in, out);
    case ScalarKind::Float64: return backward_impl<double, double>(pb, in, out);
    case ScalarKind::Float16: return backward_impl<c10::Half, float>(pb, in, out);
    case ScalarKind::BFloat16: return backward_impl<c10::BFloat16, float>(pb, in, out);
  }
}

}  // namespace safemax
