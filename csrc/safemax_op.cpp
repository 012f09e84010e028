// The safemax::safemax_loss operator: schema, argument checks, layout handling and the CPU
// registration. The CUDA registration lives in cuda/safemax_cuda.cpp and reuses
// prepare_forward / prepare_backward around its own kernels.
#include "safemax_op.h"

#include <Python.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "cpu/safemax_cpu.h"

namespace safemax {
namespace {

std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

ScalarKind kind_of(const at::Tensor& eps_pred) {
  switch (eps_pred.scalar_type()) {
    case at::kFloat: return ScalarKind::Float32;
    case at::kDouble: return ScalarKind::Float64;
    case at::kHalf: return ScalarKind::Float16;
    case at::kBFloat16: return ScalarKind::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, "safemax_loss: eps_pred must be float32, float64, float16 or "
                       "bfloat16, got ", eps_pred.scalar_type());
  }
}

at::ScalarType acc_dtype(ScalarKind kind) { return acc_is_double(kind) ? at::kDouble : at::kFloat; }

void check_like(const at::Tensor& t, const char* name, const at::Tensor& eps_pred) {
  TORCH_CHECK_TYPE(t.scalar_type() == eps_pred.scalar_type(), "safemax_loss: ", name,
                   " must have the dtype of eps_pred (", eps_pred.scalar_type(), "), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == eps_pred.device(), "safemax_loss: ", name,
                    " must be on the device of eps_pred (", eps_pred.device(), "), got ",
                    t.device());
  TORCH_CHECK_VALUE(t.sizes() == eps_pred.sizes(), "safemax_loss: ", name,
                    " must have the shape of eps_pred ", shape_str(eps_pred), ", got ",
                    shape_str(t));
}

void check_per_sample(const at::Tensor& t, const char* name, at::ScalarType dtype,
                      const char* fix, const at::Tensor& eps_pred) {
  const int64_t B = eps_pred.size(0);
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "safemax_loss: ", name, " must be ", dtype,
                   ", got ", t.scalar_type(), " (", fix, ")");
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == B, "safemax_loss: ", name,
                    " must have shape [B] = [", B, "] (one per sample of eps_pred), got ",
                    shape_str(t));
  TORCH_CHECK_VALUE(t.device() == eps_pred.device(), "safemax_loss: ", name,
                    " must be on the device of eps_pred (", eps_pred.device(), "), got ",
                    t.device());
}

// Rows are dense when row b occupies exactly elements [b·P, (b+1)·P) from the data pointer,
// in any order inside the row (the loss is a sum over the row). Contiguous and
// channels_last tensors qualify; if all three share such a layout, no copy is made.
bool rows_dense(const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return false;
  const int64_t B = t.size(0);
  return B <= 1 || t.stride(0) * B == t.numel();
}

void check_timesteps_on_host(const LossProblem& pb) {
  for (int64_t b = 0; b < pb.batch; ++b) {
    const int64_t t = pb.timesteps[b];
    TORCH_CHECK_VALUE(t >= 0 && t < pb.num_timesteps, "safemax_loss: timesteps[", b, "] = ", t,
                      " is outside [0, T) = [0, ", pb.num_timesteps,
                      ") of alphas_cumprod");
  }
}

PreparedInputs prepare(const at::Tensor& eps_pred, const at::Tensor& eps, const at::Tensor& x_t,
                       const at::Tensor& timesteps, const at::Tensor& alphas_cumprod,
                       const at::Tensor& forget, int64_t t_min, double forget_weight,
                       c10::string_view weighting, c10::string_view parametrization,
                       c10::string_view forget_target,
                       TimestepCheck timestep_check) {
  // alphas_cumprod is the schedule table: ᾱ_t for "epsilon", σ_t for "flow".
  const bool flow = parametrization == "flow";
  TORCH_CHECK_VALUE(eps_pred.layout() == at::kStrided,
                    "safemax_loss: eps_pred must be a dense (strided) tensor");
  TORCH_CHECK_VALUE(eps_pred.dim() >= 1,
                    "safemax_loss: eps_pred must be batched, shape [B, ...], got a 0-dim tensor");
  PreparedInputs p;
  p.pb.kind = kind_of(eps_pred);
  check_like(eps, "eps", eps_pred);
  check_like(x_t, "x_t", eps_pred);
  check_per_sample(timesteps, "timesteps", at::kLong, "use timesteps.long()", eps_pred);
  check_per_sample(forget, "forget", at::kBool, "use a bool mask, e.g. labels == forget_class",
                   eps_pred);
  TORCH_CHECK_TYPE(at::isFloatingType(alphas_cumprod.scalar_type()),
                   "safemax_loss: alphas_cumprod must be a floating tensor, got ",
                   alphas_cumprod.scalar_type());
  TORCH_CHECK_VALUE(alphas_cumprod.dim() == 1 && alphas_cumprod.numel() >= 1,
                    "safemax_loss: alphas_cumprod must have shape [T] with T >= 1, got ",
                    shape_str(alphas_cumprod));
  TORCH_CHECK_VALUE(alphas_cumprod.device() == eps_pred.device(),
                    "safemax_loss: alphas_cumprod must be on the device of eps_pred (",
                    eps_pred.device(), "), got ", alphas_cumprod.device(),
                    flow ? "; move the sigma table once with sigmas.to(device)"
                         : "; move it once with scheduler.alphas_cumprod.to(device)");
  const int64_t T = alphas_cumprod.size(0);
  TORCH_CHECK_VALUE(t_min >= 0 && t_min <= T, "safemax_loss: t_min must be in [0, T] = [0, ",
                    T, "], got ", t_min);
  TORCH_CHECK_VALUE(std::isfinite(forget_weight),
                    "safemax_loss: forget_weight must be finite, got ", forget_weight);
  TORCH_CHECK_VALUE(weighting == "simple" || weighting == "vlb",
                    "safemax_loss: weighting must be \"simple\" or \"vlb\", got \"",
                    std::string(weighting), "\"");
  TORCH_CHECK_VALUE(flow || parametrization == "epsilon",
                    "safemax_loss: parametrization must be \"epsilon\" or \"flow\", got \"",
                    std::string(parametrization), "\"");
  TORCH_CHECK_VALUE(forget_target == "max-entropy" || forget_target == "given",
                    "safemax_loss: forget_target must be \"max-entropy\" (the parametrization's halting "
                    "target) or \"given\" (x_t holds the forget rows' target), got \"",
                    std::string(forget_target), "\"");
  TORCH_CHECK_VALUE(!(flow && weighting == "vlb"),
                    "safemax_loss: weighting \"vlb\" is not defined for parametrization "
                    "\"flow\" (its KL coefficient has no flow-matching derivation); use "
                    "weighting=\"simple\"");
  const int64_t B = eps_pred.size(0);
  const int64_t P = B > 0 ? eps_pred.numel() / B : 0;
  TORCH_CHECK_VALUE(B == 0 || P > 0, "safemax_loss: eps_pred has no elements per sample, shape ",
                    shape_str(eps_pred));

  const bool shared_layout = eps.strides() == eps_pred.strides() &&
                             x_t.strides() == eps_pred.strides() && rows_dense(eps_pred);
  p.copied = !shared_layout;
  p.eps_pred = shared_layout ? eps_pred : eps_pred.contiguous();
  p.eps = shared_layout ? eps : eps.contiguous();
  p.x_t = shared_layout ? x_t : x_t.contiguous();
  p.timesteps = timesteps.contiguous();
  p.forget = forget.contiguous();
  p.abar = alphas_cumprod.to(at::kDouble).contiguous();

  LossProblem& pb = p.pb;
  pb.batch = B;
  pb.per_sample = P;
  pb.num_timesteps = T;
  pb.eps_pred = p.eps_pred.data_ptr();
  pb.eps = p.eps.data_ptr();
  pb.x_t = p.x_t.data_ptr();
  pb.timesteps = p.timesteps.data_ptr<int64_t>();
  pb.alphas_cumprod = p.abar.data_ptr<double>();
  pb.forget = p.forget.data_ptr<bool>();
  pb.t_min = t_min;
  pb.forget_weight = forget_weight;
  pb.vlb = weighting == "vlb";
  pb.flow = flow;
  pb.given_target = forget_target == "given";
  if (timestep_check == TimestepCheck::kOnHost) check_timesteps_on_host(pb);
  return p;
}

GradSlot grad_slot(const at::Tensor& like, bool copied) {
  GradSlot s;
  s.result = at::empty_like(like);
  s.buffer = (!copied || s.result.is_contiguous()) ? s.result
                                                    : at::empty(like.sizes(), like.options());
  return s;
}

}  // namespace

ForwardCall prepare_forward(const at::Tensor& eps_pred, const at::Tensor& eps,
                            const at::Tensor& x_t, const at::Tensor& timesteps,
                            const at::Tensor& alphas_cumprod, const at::Tensor& forget,
                            int64_t t_min, double forget_weight, c10::string_view weighting,
                            c10::string_view parametrization, c10::string_view forget_target,
                            TimestepCheck timestep_check) {
  ForwardCall call;
  call.in = prepare(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min, forget_weight,
                    weighting, parametrization, forget_target, timestep_check);
  const auto opts = eps_pred.options().dtype(acc_dtype(call.in.pb.kind));
  call.loss = at::empty({}, opts);
  call.nats = at::empty({call.in.pb.batch}, opts);
  if (!call.has_work()) call.loss.zero_();
  return call;
}

BackwardCall prepare_backward(const at::Tensor& grad_loss, const at::Tensor& grad_nats,
                              const at::Tensor& eps_pred, const at::Tensor& eps,
                              const at::Tensor& x_t, const at::Tensor& timesteps,
                              const at::Tensor& alphas_cumprod, const at::Tensor& forget,
                              int64_t t_min, double forget_weight, c10::string_view weighting,
                              std::array<bool, 3> output_mask, c10::string_view parametrization,
                              c10::string_view forget_target,
                              TimestepCheck timestep_check) {
  BackwardCall call;
  call.in = prepare(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min, forget_weight,
                    weighting, parametrization, forget_target, timestep_check);
  const auto acc = eps_pred.options().dtype(acc_dtype(call.in.pb.kind));
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, "safemax_loss_backward: grad_loss must be a scalar");
  TORCH_CHECK_VALUE(grad_nats.dim() == 1 && grad_nats.size(0) == call.in.pb.batch,
                    "safemax_loss_backward: grad_nats must have shape [B]");
  call.grad_loss = grad_loss.to(acc).contiguous();
  call.grad_nats = grad_nats.to(acc).contiguous();
  call.wanted = output_mask;
  const at::Tensor* originals[3] = {&eps_pred, &eps, &x_t};
  for (int k = 0; k < 3; ++k) {
    call.grads[k] = output_mask[k] ? grad_slot(*originals[k], call.in.copied)
                                   : GradSlot{at::empty({0}, eps_pred.options()), {}};
  }
  return call;
}

BackwardOut BackwardCall::out() {
  void* ptrs[3] = {nullptr, nullptr, nullptr};
  for (int k = 0; k < 3; ++k) {
    if (wanted[k]) ptrs[k] = grads[k].buffer.data_ptr();
  }
  return {ptrs[0], ptrs[1], ptrs[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> BackwardCall::result() {
  for (int k = 0; k < 3; ++k) {
    if (wanted[k] && !grads[k].buffer.is_same(grads[k].result)) {
      grads[k].result.copy_(grads[k].buffer);
    }
  }
  return {grads[0].result, grads[1].result, grads[2].result};
}

namespace {

std::tuple<at::Tensor, at::Tensor> forward_cpu_op(
    const at::Tensor& eps_pred, const at::Tensor& eps, const at::Tensor& x_t,
    const at::Tensor& timesteps, const at::Tensor& alphas_cumprod, const at::Tensor& forget,
    int64_t t_min, double forget_weight, c10::string_view weighting,
    c10::string_view parametrization, c10::string_view forget_target) {
  ForwardCall call = prepare_forward(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min,
                                     forget_weight, weighting, parametrization, forget_target,
                                     TimestepCheck::kOnHost);
  if (call.has_work()) forward_cpu(call.problem(), call.out());
  return call.result();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu_op(
    const at::Tensor& grad_loss, const at::Tensor& grad_nats, const at::Tensor& eps_pred,
    const at::Tensor& eps, const at::Tensor& x_t, const at::Tensor& timesteps,
    const at::Tensor& alphas_cumprod, const at::Tensor& forget, int64_t t_min,
    double forget_weight, c10::string_view weighting, std::array<bool, 3> output_mask,
    c10::string_view parametrization, c10::string_view forget_target) {
  BackwardCall call = prepare_backward(grad_loss, grad_nats, eps_pred, eps, x_t, timesteps,
                                       alphas_cumprod, forget, t_min, forget_weight, weighting,
                                       output_mask, parametrization, forget_target,
                                       TimestepCheck::kOnHost);
  if (call.has_work()) backward_cpu(call.problem(), call.in_grads(), call.out());
  return call.result();
}

}  // namespace
}  // namespace safemax

// `alphas_cumprod` is the schedule table: ᾱ_t for parametrization "epsilon" (DDPM-style noise
// prediction), σ_t for "flow" (rectified flow, velocity prediction). `forget_target` "given": the
// forget rows' target is x_t itself rather than the parametrization's max-entropy multiple of it.
// The later arguments come last in both schemas, with defaults, so that every call written
// before they existed means what it meant ("epsilon", "max-entropy").
TORCH_LIBRARY(safemax, m) {
  m.def(
      "safemax_loss(Tensor eps_pred, Tensor eps, Tensor x_t, Tensor timesteps, "
      "Tensor alphas_cumprod, Tensor forget, int t_min, float forget_weight=1.0, "
      "str weighting=\"simple\", str parametrization=\"epsilon\", str forget_target=\"max-entropy\") "
      "-> (Tensor loss, Tensor nats)");
  m.def(
      "safemax_loss_backward(Tensor grad_loss, Tensor grad_nats, Tensor eps_pred, Tensor eps, "
      "Tensor x_t, Tensor timesteps, Tensor alphas_cumprod, Tensor forget, int t_min, "
      "float forget_weight, str weighting, bool[3] output_mask, "
      "str parametrization=\"epsilon\", str forget_target=\"max-entropy\") "
      "-> (Tensor grad_eps_pred, Tensor grad_eps, Tensor grad_x_t)");
}

TORCH_LIBRARY_IMPL(safemax, CPU, m) {
  m.impl("safemax_loss", &safemax::forward_cpu_op);
  m.impl("safemax_loss_backward", &safemax::backward_cpu_op);
}

// `import safemax._C` loads this library, whose static initialisers register the ops above.
// BACKENDS records what was compiled in, so Python can tell a CPU-only build from a CUDA one.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "safemax's compiled kernels (torch.ops.safemax)", -1,
                                          nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
#ifdef SAFEMAX_WITH_CUDA
  const char* backends = "cpu,cuda";
#else
  const char* backends = "cpu";
#endif
#ifdef _OPENMP
  const int openmp = 1;
#else
  const int openmp = 0;
#endif
  if (PyModule_AddStringConstant(m, "BACKENDS", backends) < 0 ||
      PyModule_AddIntConstant(m, "WITH_OPENMP", openmp) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
