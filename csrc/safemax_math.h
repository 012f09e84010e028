// The one definition of SAFEMax's per-sample and per-element math (docs/method.md derives it;
// docs/op.md is the op's contract).
// Plain C++: included by the CPU kernel (g++) and the CUDA kernel (nvcc, no torch headers).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SAFEMAX_HD __host__ __device__ __forceinline__
#else
#define SAFEMAX_HD inline
#endif

namespace safemax {

// What one sample (row) of the batch contributes, decided once per row in float64:
// β_t = 1 − ᾱ_t/ᾱ_{t−1} cancels badly in float32.
struct RowPlan {
  bool active;   // retain row, or forget row with t >= t_min
  double scale;  // the row's target is scale * (x_t on forget rows, eps on retain rows)
  double c;      // KL coefficient c_t = β_t / (2 α_t (1 − ᾱ_t)), nats per unit squared error
  double weight; // w_b: 0 if inactive, forget_weight on forget rows, 1 on retain rows
};

// `abar` holds ᾱ_0..ᾱ_{T−1} in float64. An out-of-range t gives a NaN plan, so that a
// kernel which cannot raise (CUDA) poisons the outputs instead of reading out of bounds.
SAFEMAX_HD RowPlan plan_row(const double* abar, int64_t T, int64_t t, bool forget,
                            int64_t t_min, double forget_weight) {
  RowPlan p;
  if (t < 0 || t >= T) {
    const double nan = NAN;
    p.active = true;
    p.scale = nan;
    p.c = nan;
    p.weight = nan;
    return p;
  }
  const double abar_t = abar[t];
  const double abar_prev = t > 0 ? abar[t - 1] : 1.0;  // ᾱ_{−1} := 1
  const double alpha = abar_t / abar_prev;
  const double beta = 1.0 - alpha;
  p.c = beta / (2.0 * alpha * (1.0 - abar_t));
  // ε*(x_t, t) = √(1−ᾱ_t)·x_t: the Bayes-optimal prediction if the class were N(0, I).
  p.scale = forget ? sqrt(1.0 - abar_t) : 1.0;
  p.active = !forget || t >= t_min;
  p.weight = !p.active ? 0.0 : (forget ? forget_weight : 1.0);
  return p;
}

// nats_b: the row's mean per-pixel KL, 0 where the row is masked out.
SAFEMAX_HD double row_nats(const RowPlan& p, double mse) {
  return p.active ? p.c * mse : 0.0;
}

// The row's term of B·loss: w_b·mse_b ("simple") or w_b·nats_b ("vlb").
SAFEMAX_HD double row_loss_term(const RowPlan& p, double mse, bool vlb) {
  return p.active ? p.weight * (vlb ? p.c * mse : mse) : 0.0;
}

// d(total)/d r for every element of the row is row_grad_coef · r, where total is
// grad_loss·loss + Σ_b grad_nats_b·nats_b and r = eps_pred − target.
SAFEMAX_HD double row_grad_coef(const RowPlan& p, double grad_loss, double grad_nats,
                                int64_t B, int64_t P, bool vlb) {
  if (!p.active) return 0.0;
  const double dloss = grad_loss * p.weight * (vlb ? p.c : 1.0) / static_cast<double>(B);
  return 2.0 * (dloss + grad_nats * p.c) / static_cast<double>(P);
}

// r = eps_pred − target, with target = scale · (x_t or eps).
template <typename acc_t>
SAFEMAX_HD acc_t residual(acc_t pred, acc_t target, acc_t scale) {
  return pred - scale * target;
}

// ∂/∂(the row's target tensor) = −scale · ∂/∂eps_pred; the other tensor gets zero.
template <typename acc_t>
SAFEMAX_HD acc_t target_grad(acc_t grad_pred, acc_t scale) {
  return -scale * grad_pred;
}

}  // namespace safemax
