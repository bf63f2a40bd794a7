// Anderson's bookkeeping on the CPU in one call per step: deqkit.solvers.Anderson(native=True).
//
// The eager step of _anderson.py is about 30 small torch operations; at batch 64 x width 256
// each costs about as much as a tenth of one evaluation of a tanh layer, and at 128 x 1024
// each is a pass over memory. These two functions do the same arithmetic in one call:
//
//   propose: per sample, the Cholesky factorisation of the m x m Gram matrix A (ridge
//            included), the weights gamma = A^{-1} rhs, the checks (factorisation fails,
//            ||gamma|| > max_weight, non-finite), and the extrapolation
//            z_next = z + beta g - D^T gamma  (= f(z) - D^T gamma for beta = 1).
//   advance: after f(z_next), the safeguard ||g_next|| <= safeguard ||g||, the new
//            differences dg = g_next - g and d = f_next - f - (1 - beta) dg into column k of
//            the rings, the new Gram row dG dg and right-hand side dG g_next (one pass over
//            the ring), written into row and column k of A with the relative ridge, and
//            then propose's work for the step after, sample by sample while that sample's
//            ring is still in cache. So a step is one call.
//
// Where any sample fails the safeguard, advance writes nothing (and propose writes nothing
// where any sample fails a check), so the caller takes its per-sample path for that step
// with the state untouched. Dot products are summed in the state dtype, as the eager step's
// batched products are, but in another order, and the m x m solve is not LAPACK's, so the
// iterates agree with the eager step's to rounding, not bit for bit.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <vector>

namespace {

// Cholesky solve of one m x m SPD system, in double. False where the factorisation fails.
bool spd_solve(const double* a, const double* rhs, int64_t m, double* l, double* out) {
  for (int64_t j = 0; j < m; ++j) {
    double s = a[j * m + j];
    for (int64_t k = 0; k < j; ++k) s -= l[j * m + k] * l[j * m + k];
    if (!(s > 0.0) || !std::isfinite(s)) return false;
    const double d = std::sqrt(s);
    l[j * m + j] = d;
    for (int64_t i = j + 1; i < m; ++i) {
      double t = a[i * m + j];
      for (int64_t k = 0; k < j; ++k) t -= l[i * m + k] * l[j * m + k];
      l[i * m + j] = t / d;
    }
  }
  for (int64_t i = 0; i < m; ++i) {  // L y = rhs
    double t = rhs[i];
    for (int64_t k = 0; k < i; ++k) t -= l[i * m + k] * out[k];
    out[i] = t / l[i * m + i];
  }
  for (int64_t i = m - 1; i >= 0; --i) {  // L^T x = y
    double t = out[i];
    for (int64_t k = i + 1; k < m; ++k) t -= l[k * m + i] * out[k];
    out[i] = t / l[i * m + i];
  }
  return true;
}

// Every tensor is read through raw pointers: its device, dtype, sizes and layout are checked.
void check(const torch::Tensor& t, const char* name, torch::ScalarType dtype,
           c10::IntArrayRef sizes) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), ", expected ",
              dtype);
  TORCH_CHECK(t.sizes() == sizes, name, " has shape ", t.sizes(), ", expected ", sizes);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Per sample b: gamma = A_b^{-1} rhs_b into w (double), false where a check fails.
bool weights_of(const double* a, const double* rhs, int64_t m, double max_weight, double* l,
                double* w) {
  if (!spd_solve(a, rhs, m, l, w)) return false;
  double norm = 0.0;
  for (int64_t i = 0; i < m; ++i) norm += w[i] * w[i];
  return std::sqrt(norm) <= max_weight;  // NaN fails <=
}

// out = (beta == 1 ? fz : z + beta g) - sum_j w_j D_j, one sample, one pass over D.
template <typename T>
void extrapolate(const T* z, const T* g, const T* fz, const T* D, const T* w, int64_t m,
                 int64_t n, double beta, T* __restrict__ out) {
  const T bt = static_cast<T>(beta);
  if (beta == 1.0) {
    for (int64_t i = 0; i < n; ++i) out[i] = fz[i];
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = z[i] + bt * g[i];
  }
  for (int64_t j = 0; j < m; ++j) {
    const T* __restrict__ dj = D + j * n;
    const T wj = w[j];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] -= wj * dj[i];
  }
}

// Column k of the rings gets dg = g1 - g0 and d = f1 - f0 - (1 - beta) dg; the new Gram row
// dG_j . dg and right-hand side dG_j . g1 (one pass over the ring; columns not written yet are
// zero, and so are their entries) go into gram (row 0 raw, row 1 rhs) and, with the relative
// ridge on entry k, into row and column k of A.
template <typename T>
void record_one(const T* g0, const T* f0, const T* g1, const T* f1, T* dG, T* D, double* a,
                double* gram, int64_t k, int64_t m, int64_t n, double lam, double tiny,
                double beta) {
  T* __restrict__ dgk = dG + k * n;
  T* __restrict__ dk = D + k * n;
  const T keep = static_cast<T>(1.0 - beta);
  if (beta == 1.0) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      dgk[i] = g1[i] - g0[i];
      dk[i] = f1[i] - f0[i];
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const T dg = g1[i] - g0[i];
      dgk[i] = dg;
      dk[i] = (f1[i] - f0[i]) - keep * dg;
    }
  }
  for (int64_t j = 0; j < m; ++j) {
    const T* __restrict__ col = dG + j * n;
    T s = 0, t = 0;  // in the state dtype, as the eager step's batched product
#pragma omp simd reduction(+ : s, t)
    for (int64_t i = 0; i < n; ++i) {
      s += col[i] * dgk[i];
      t += col[i] * g1[i];
    }
    gram[j] = s;
    gram[m + j] = t;
  }
  for (int64_t j = 0; j < m; ++j) {
    const double v = j == k ? gram[j] + (gram[j] * lam + tiny) : gram[j];
    a[k * m + j] = v;
    a[j * m + k] = v;
  }
}

template <typename T>
bool propose_impl(const torch::Tensor& A, const torch::Tensor& gram, const torch::Tensor& D,
                  const torch::Tensor& z, const torch::Tensor& g, const torch::Tensor& fz,
                  double beta, double max_weight, torch::Tensor& gamma, torch::Tensor& prop) {
  const int64_t B = D.size(0), m = D.size(1), n = D.size(2);
  const double* a = A.data_ptr<double>();
  const double* gr = gram.data_ptr<double>();
  std::vector<double> weights(B * m), l(m * m);
  for (int64_t b = 0; b < B; ++b)  // every check first: nothing is written where one fails
    if (!weights_of(a + b * m * m, gr + (b * 2 + 1) * m, m, max_weight, l.data(),
                    weights.data() + b * m))
      return false;
  const T *d = D.data_ptr<T>(), *zp = z.data_ptr<T>(), *gp = g.data_ptr<T>();
  const T* fp = fz.data_ptr<T>();
  T* out = prop.data_ptr<T>();
  T* gam = gamma.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      for (int64_t j = 0; j < m; ++j) gam[b * m + j] = static_cast<T>(weights[b * m + j]);
      extrapolate(zp + b * n, gp + b * n, fp + b * n, d + b * m * n, gam + b * m, m, n, beta,
                  out + b * n);
    }
  });
  return true;
}

// 0: recorded and the next proposal written; 1: a sample fails the safeguard, nothing
// written; 2: recorded, but a sample's weights fail their checks, so no proposal.
template <typename T>
int64_t advance_impl(const torch::Tensor& pg, const torch::Tensor& pfz, const torch::Tensor& qz,
                     const torch::Tensor& qg, const torch::Tensor& qfz,
                     const torch::Tensor& pgnorm, const torch::Tensor& qgnorm, double safeguard,
                     torch::Tensor& dG, torch::Tensor& D, torch::Tensor& A, torch::Tensor& gram,
                     int64_t k, double lam, double tiny, double beta, double max_weight,
                     torch::Tensor& gamma, torch::Tensor& prop) {
  const int64_t B = D.size(0), m = D.size(1), n = D.size(2);
  const T* pn = pgnorm.data_ptr<T>();
  const T* qn = qgnorm.data_ptr<T>();
  const T sg = static_cast<T>(safeguard);
  for (int64_t b = 0; b < B; ++b)
    if (!(qn[b] <= pn[b] * sg)) return 1;  // NaN fails <=: the per-sample path decides
  const T *g0 = pg.data_ptr<T>(), *f0 = pfz.data_ptr<T>(), *z1 = qz.data_ptr<T>();
  const T *g1 = qg.data_ptr<T>(), *f1 = qfz.data_ptr<T>();
  T *dgp = dG.data_ptr<T>(), *dp = D.data_ptr<T>(), *out = prop.data_ptr<T>();
  T* gam = gamma.data_ptr<T>();
  double *a = A.data_ptr<double>(), *gr = gram.data_ptr<double>();
  std::atomic<bool> proposed{true};
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    std::vector<double> l(m * m), w(m);
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t x = b * n, r = b * m * n;
      // While sample b's ring is in cache: record, solve, extrapolate.
      record_one(g0 + x, f0 + x, g1 + x, f1 + x, dgp + r, dp + r, a + b * m * m, gr + b * 2 * m,
                 k, m, n, lam, tiny, beta);
      if (!weights_of(a + b * m * m, gr + b * 2 * m + m, m, max_weight, l.data(), w.data())) {
        proposed = false;
        continue;
      }
      for (int64_t j = 0; j < m; ++j) gam[b * m + j] = static_cast<T>(w[j]);
      extrapolate(z1 + x, g1 + x, f1 + x, dp + r, gam + b * m, m, n, beta, out + x);
    }
  });
  return proposed ? 0 : 2;
}

}  // namespace

bool propose(torch::Tensor A, torch::Tensor gram, torch::Tensor D, torch::Tensor z,
             torch::Tensor g, torch::Tensor fz, double beta, double max_weight,
             torch::Tensor gamma, torch::Tensor prop) {
  TORCH_CHECK(D.dim() == 3, "D must be [B, m, n], got ", D.sizes());
  const auto dt = D.scalar_type();
  const int64_t B = D.size(0), m = D.size(1), n = D.size(2);
  check(A, "A", torch::kDouble, {B, m, m});
  check(gram, "gram", torch::kDouble, {B, 2, m});
  check(D, "D", dt, {B, m, n});
  check(gamma, "gamma", dt, {B, m});
  for (auto* t : {&z, &g, &fz, &prop}) check(*t, "a [B, n] state tensor", dt, {B, n});
  if (dt == torch::kFloat)
    return propose_impl<float>(A, gram, D, z, g, fz, beta, max_weight, gamma, prop);
  TORCH_CHECK(dt == torch::kDouble, "native Anderson needs float32 or float64, got ", dt);
  return propose_impl<double>(A, gram, D, z, g, fz, beta, max_weight, gamma, prop);
}

int64_t advance(torch::Tensor pg, torch::Tensor pfz, torch::Tensor qz, torch::Tensor qg,
                torch::Tensor qfz, torch::Tensor pgnorm, torch::Tensor qgnorm, double safeguard,
                torch::Tensor dG, torch::Tensor D, torch::Tensor A, torch::Tensor gram, int64_t k,
                double lam, double tiny, double beta, double max_weight, torch::Tensor gamma,
                torch::Tensor prop) {
  TORCH_CHECK(D.dim() == 3, "D must be [B, m, n], got ", D.sizes());
  const auto dt = D.scalar_type();
  const int64_t B = D.size(0), m = D.size(1), n = D.size(2);
  check(A, "A", torch::kDouble, {B, m, m});
  check(gram, "gram", torch::kDouble, {B, 2, m});
  check(D, "D", dt, {B, m, n});
  check(dG, "dG", dt, {B, m, n});
  check(gamma, "gamma", dt, {B, m});
  for (auto* t : {&pg, &pfz, &qz, &qg, &qfz, &prop}) check(*t, "a [B, n] state tensor", dt, {B, n});
  check(pgnorm, "pgnorm", dt, {B});
  check(qgnorm, "qgnorm", dt, {B});
  TORCH_CHECK(0 <= k && k < m, "column k out of range");
  if (dt == torch::kFloat)
    return advance_impl<float>(pg, pfz, qz, qg, qfz, pgnorm, qgnorm, safeguard, dG, D, A, gram,
                               k, lam, tiny, beta, max_weight, gamma, prop);
  TORCH_CHECK(dt == torch::kDouble, "native Anderson needs float32 or float64, got ", dt);
  return advance_impl<double>(pg, pfz, qz, qg, qfz, pgnorm, qgnorm, safeguard, dG, D, A, gram,
                              k, lam, tiny, beta, max_weight, gamma, prop);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("propose", &propose, "Anderson's weights and extrapolation, every sample");
  module.def("advance", &advance,
             "Anderson's safeguard, differences, Gram update and next proposal, every sample");
}
