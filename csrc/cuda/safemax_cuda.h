// Launchers of the CUDA kernels: plain C++ (no CUDA or torch types), so that the torch binding
// compiles with the host compiler and the kernels with nvcc alone.
#pragma once

#include <cstddef>

#include "../safemax_problem.h"

namespace safemax {

// Bytes of device scratch the forward launcher needs (per-chunk partials and a ticket).
size_t forward_cuda_workspace_bytes(const LossProblem& pb);

// Enqueue on `stream` (a cudaStream_t); return a cudaError_t code, 0 on success.
int forward_cuda(const LossProblem& pb, ForwardOut out, void* workspace, void* stream);
int backward_cuda(const LossProblem& pb, BackwardIn in, BackwardOut out, void* stream);

const char* cuda_error_string(int code);

}  // namespace safemax
