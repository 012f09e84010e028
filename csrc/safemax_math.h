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
  double c;      // nats per unit squared error: c_t = β_t / (2 α_t (1 − ᾱ_t)) (epsilon), 1 (flow)
  double weight; // w_b: 0 if inactive, forget_weight on forget rows, 1 on retain rows
};

// The forget rows' max-entropy coefficient, per parametrization (docs/method.md derives both).
// Epsilon: ε*(x_t, t) = √(1−ᾱ_t)·x_t, the Bayes-optimal noise prediction if the class were N(0, I).
SAFEMAX_HD double epsilon_target_scale(double abar_t) { return sqrt(1.0 - abar_t); }

// Flow (x_σ = (1−σ)·x_0 + σ·ε, velocity target ε − x_0): v*(x_σ, σ) = k(σ)·x_σ with
// k(σ) = (2σ − 1) / ((1 − σ)² + σ²). The denominator is >= 1/2 for every real σ.
SAFEMAX_HD double flow_target_scale(double sigma) {
  return (2.0 * sigma - 1.0) / ((1.0 - sigma) * (1.0 - sigma) + sigma * sigma);
}

// `table` holds the schedule in float64, indexed by t = 0..T−1: ᾱ_t (flow = false) or σ_t
// (flow = true). An out-of-range t gives a NaN plan, so that a kernel which cannot raise (CUDA)
// poisons the outputs instead of reading out of bounds.
// `given`: the forget rows' target is the tensor handed as x_t itself (scale 1) — a target the
// caller formed, e.g. one that makes the classifier-free-guided prediction the max-entropy one.
SAFEMAX_HD RowPlan plan_row(const double* table, int64_t T, int64_t t, bool forget,
                            int64_t t_min, double forget_weight, bool flow, bool given) {
  RowPlan p;
  if (t < 0 || t >= T) {
    const double nan = NAN;
    p.active = true;
    p.scale = nan;
    p.c = nan;
    p.weight = nan;
    return p;
  }
  if (flow) {
    // Flow matching has no per-step KL coefficient ("vlb" is refused before any kernel runs):
    // c := 1, so a row's "nats" is its mean squared velocity residual.
    p.c = 1.0;
    p.scale = forget && !given ? flow_target_scale(table[t]) : 1.0;
  } else {
    const double abar_t = table[t];
    const double abar_prev = t > 0 ? table[t - 1] : 1.0;  // ᾱ_{−1} := 1
    const double alpha = abar_t / abar_prev;
    const double beta = 1.0 - alpha;
    p.c = beta / (2.0 * alpha * (1.0 - abar_t));
    p.scale = forget && !given ? epsilon_target_scale(abar_t) : 1.0;
  }
  p.active = !forget || t >= t_min;
  p.weight = !p.active ? 0.0 : (forget ? forget_weight : 1.0);
  return p;
}

// nats_b: the row's mean per-pixel KL (epsilon) or mean squared residual (flow), 0 where the
// row is masked out.
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
