// CPU kernels of safemax_loss (see safemax_problem.h for the data they take).
#pragma once

#include "../safemax_problem.h"

namespace safemax {

void forward_cpu(const LossProblem& pb, ForwardOut out);
void backward_cpu(const LossProblem& pb, BackwardIn in, BackwardOut out);

}  // namespace safemax
