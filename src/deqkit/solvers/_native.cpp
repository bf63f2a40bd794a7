// Anderson's whole solve on the CPU, one call per evaluation of f:
// deqkit.solvers.Anderson(native=True).
//
// The shared loop of _loop.py and Anderson's eager step are a few dozen small torch
// operations per evaluation; at batch 64 x width 256 each costs about as much as a tenth of
// one evaluation of a tanh layer, and at 128 x 1024 each is a pass over memory. Here the
// loop's and the solver's work between two evaluations is one call, `advance(fz)`, which for
// every running sample b, while its rows are in cache,
//
//   1. finishes the evaluated point: g = f(z) - z, ||g||, ||f(z)||, the residual under the
//      stopping criterion, and counts the evaluation;
//   2. applies the safeguard (an accelerated proposal is rejected where ||g|| is non-finite
//      or grew by more than `safeguard` times; the sample then stays where it was, clears
//      its history and takes a plain damped step next);
//   3. marks a sample whose accepted point is non-finite as failed and freezes it;
//   4. records the differences dG_k = g_new - g_old and D_k = dZ + beta dG in ring column
//      k, the new Gram row dG_j . dG_k and right-hand side dG_j . g_new (one pass over the
//      ring; only the leading min(accepted, m) columns are ever valid, since a reset restarts
//      the ring at column 0), written into row and column k of A with the relative ridge;
//   5. keeps the lowest-residual point (lazily: a row is copied to `best_z` only when the
//      sample leaves its best point for a worse one);
//   6. stops the sample where the residual meets `tol` or the budget is spent;
//   7. otherwise makes its next proposal: gamma = A^{-1} rhs by Cholesky in double over the
//      valid columns (a failed factorisation or ||gamma|| > max_weight clears the history
//      and takes the plain step), z_next = z + beta g - D gamma (f(z) - D gamma for beta 1),
//      into the other of two iterate buffers, which f evaluates next.
//
// These are the semantics of the shared loop with Anderson's per-sample step, including
// per-sample stopping, evaluation counts and status; the sums run in another order and the
// small solve is not LAPACK's, so iterates agree with the eager solve's to rounding.
// A stopped sample's row holds its final iterate in both buffers, so f sees a finite row
// there (as in the eager loop, where a stopped sample proposes its own z).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

namespace {

struct Options {
  int64_t m;
  double beta, lam, tiny, safeguard, max_weight, tol, eps;
  bool rel;
  int64_t max_iter;
};

// Cholesky solve of the leading k x k block of the m x m SPD matrix a, in double, with
// l (m x m) and inv (m) as scratch. False where the factorisation fails. The reciprocals of the diagonal are kept, so that
// the two triangular solves multiply instead of dividing (a division's latency, chained,
// was most of this function's time at m = 5).
bool spd_solve(const double* a, const double* rhs, int64_t k, int64_t m, double* l,
               double* inv, double* out) {
  for (int64_t j = 0; j < k; ++j) {
    double s = a[j * m + j];
    for (int64_t p = 0; p < j; ++p) s -= l[j * m + p] * l[j * m + p];
    if (!(s > 0.0) || !std::isfinite(s)) return false;
    inv[j] = 1.0 / std::sqrt(s);
    for (int64_t i = j + 1; i < k; ++i) {
      double t = a[i * m + j];
      for (int64_t p = 0; p < j; ++p) t -= l[i * m + p] * l[j * m + p];
      l[i * m + j] = t * inv[j];
    }
  }
  for (int64_t i = 0; i < k; ++i) {  // L y = rhs
    double t = rhs[i];
    for (int64_t p = 0; p < i; ++p) t -= l[i * m + p] * out[p];
    out[i] = t * inv[i];
  }
  for (int64_t i = k - 1; i >= 0; --i) {  // L^T x = y
    double t = out[i];
    for (int64_t p = i + 1; p < k; ++p) t -= l[p * m + i] * out[p];
    out[i] = t * inv[i];
  }
  return true;
}

void check(const torch::Tensor& t, const char* name, torch::ScalarType dtype,
           c10::IntArrayRef sizes) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), ", expected ",
              dtype);
  TORCH_CHECK(t.sizes() == sizes, name, " has shape ", t.sizes(), ", expected ", sizes);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

class Loop {
 public:
  virtual ~Loop() = default;
  // Finish the evaluation of the proposal (f's output fz, [B, n]) and make the next one;
  // returns the number of samples still running (0: the solve is over).
  virtual int64_t advance(const torch::Tensor& fz) = 0;
  // The [B, n] tensor f evaluates next.
  torch::Tensor proposal() const { return Z_[1 - cur_]; }
  int64_t running() const { return running_; }
  // (best_z [B, n], best_res [B], nfev [B] long, failed [B] bool), once the solve is over.
  virtual std::vector<torch::Tensor> result() = 0;

 protected:
  torch::Tensor Z_[2];
  int cur_ = 0;  // Z_[cur_] holds every sample's current point, Z_[1 - cur_] the proposal
  int64_t running_ = 0;
};

template <typename T>
class LoopT final : public Loop {
 public:
  LoopT(const torch::Tensor& z, const torch::Tensor& fz, const torch::Tensor& g,
        const torch::Tensor& gnorm, const torch::Tensor& res, const torch::Tensor& active,
        const torch::Tensor& failed, const Options& o)
      : o_(o), B_(z.size(0)), n_(z.size(1)) {
    const auto dt = z.scalar_type();
    for (auto* t : {&z, &fz, &g}) check(*t, "a [B, n] point tensor", dt, {B_, n_});
    check(gnorm, "gnorm", dt, {B_});
    check(res, "res", dt, {B_});
    check(active, "active", torch::kBool, {B_});
    check(failed, "failed", torch::kBool, {B_});
    const int64_t m = o.m;
    Z_[0] = z.clone();
    Z_[1] = torch::empty_like(z);
    G_[0] = g.clone();
    G_[1] = torch::empty_like(g);
    best_z_ = torch::empty_like(z);
    D_ = torch::empty({B_, m, n_}, z.options());
    dG_ = torch::empty({B_, m, n_}, z.options());
    gnorm_ = gnorm.clone();
    res_ = res.clone();
    best_res_ = res.clone();
    nfev_ = torch::ones({B_}, torch::kLong);
    failed_ = failed.clone();
    // Raw pointers, taken once: the buffers are never reallocated, and a data_ptr call
    // per sample and step cost more than the sample's arithmetic at 64 x 256.
    zp_[0] = Z_[0].data_ptr<T>();
    zp_[1] = Z_[1].data_ptr<T>();
    gp_[0] = G_[0].data_ptr<T>();
    gp_[1] = G_[1].data_ptr<T>();
    best_ = best_z_.data_ptr<T>();
    dp_ = D_.data_ptr<T>();
    dgp_ = dG_.data_ptr<T>();
    gn_ = gnorm_.data_ptr<T>();
    rs_ = res_.data_ptr<T>();
    br_ = best_res_.data_ptr<T>();
    nf_ = nfev_.data_ptr<int64_t>();
    fl_ = failed_.data_ptr<bool>();
    A_.assign(B_ * m * m, 0.0);
    rhs_.assign(B_ * m, 0.0);
    accepted_.assign(B_, 0);
    active_.assign(B_, 0);
    best_cur_.assign(B_, 1);
    const bool* act = active.data_ptr<bool>();
    const T *zp = z.data_ptr<T>(), *fp = fz.data_ptr<T>(), *gp = g.data_ptr<T>();
    T* out = Z_[1].data_ptr<T>();
    for (int64_t b = 0; b < B_; ++b) {
      const int64_t x = b * n_;
      if (act[b]) {
        active_[b] = 1;
        ++running_;
        plain(zp + x, gp + x, fp + x, out + x);  // no history yet: the plain damped step
      } else {
        std::copy(zp + x, zp + x + n_, out + x);
      }
    }
  }

  int64_t advance(const torch::Tensor& fz) override {
    check(fz, "f(z)", Z_[0].scalar_type(), {B_, n_});
    const int nw = 1 - cur_, od = cur_;
    const T* f1 = fz.data_ptr<T>();
    T *znew = zp_[nw], *zold = zp_[od], *gnew = gp_[nw], *gold = gp_[od];
    at::parallel_for(0, B_, 1, [&](int64_t lo, int64_t hi) {
      std::vector<double> l(o_.m * o_.m + o_.m), w(o_.m);
      for (int64_t b = lo; b < hi; ++b) {
        if (!active_[b]) continue;
        const int64_t x = b * n_;
        step(b, znew + x, zold + x, gnew + x, gold + x, f1 + x, l.data(), w.data());
      }
    });
    cur_ = nw;
    running_ = 0;
    for (int64_t b = 0; b < B_; ++b) running_ += active_[b];
    return running_;
  }

  std::vector<torch::Tensor> result() override {
    const T* zc = zp_[cur_];
    for (int64_t b = 0; b < B_; ++b)
      if (best_cur_[b]) {
        std::copy(zc + b * n_, zc + (b + 1) * n_, best_ + b * n_);
        best_cur_[b] = 0;
      }
    return {best_z_, best_res_, nfev_, failed_};
  }

 private:
  // out = z + beta g, or f(z) itself for beta = 1 where it is at hand.
  void plain(const T* z, const T* g, const T* f, T* __restrict__ out) const {
    if (o_.beta == 1.0 && f != nullptr) {
      std::copy(f, f + n_, out);
      return;
    }
    const T bt = static_cast<T>(o_.beta);
#pragma omp simd
    for (int64_t i = 0; i < n_; ++i) out[i] = z[i] + bt * g[i];
  }

  // Sample b's work between two evaluations (see the header). z1, g1: its rows of the
  // buffers holding the evaluated proposal (and, after this, its current point); z0, g0:
  // its current point's rows, which receive the next proposal; f1: f(z1).
  void step(int64_t b, T* __restrict__ z1, T* __restrict__ z0, T* __restrict__ g1,
            T* __restrict__ g0, const T* __restrict__ f1, double* l, double* w) {
    const int64_t m = o_.m, n = n_;
    T *gn = gn_, *rs = rs_, *br = br_;
    int64_t* nf = nf_;
    nf[b] += 1;
    const int64_t have = accepted_[b];
    const int64_t slot = have % m;
    T* __restrict__ dgk = dgp_ + (b * m + slot) * n;
    T* __restrict__ dk = dp_ + (b * m + slot) * n;
    const T bt = static_cast<T>(o_.beta);
    // 1. The evaluated point, and its differences written ahead into the next ring column:
    // where the proposal is rejected the history is cleared, so that column is never read.
    double sg = 0.0, sf = 0.0;
#pragma omp simd reduction(+ : sg, sf)
    for (int64_t i = 0; i < n; ++i) {
      const T gi = f1[i] - z1[i];
      g1[i] = gi;
      const T dg = gi - g0[i];
      dgk[i] = dg;
      dk[i] = (z1[i] - z0[i]) + bt * dg;
      sg += static_cast<double>(gi) * gi;
      sf += static_cast<double>(f1[i]) * f1[i];
    }
    const T gnorm = static_cast<T>(std::sqrt(sg));
    const T res = o_.rel ? gnorm / (static_cast<T>(std::sqrt(sf)) + static_cast<T>(o_.eps))
                         : gnorm;
    // 2. The safeguard applies to accelerated proposals only (NaN fails <=).
    const bool accept = have == 0 || gnorm <= gn[b] * static_cast<T>(o_.safeguard);
    if (!accept) {
      accepted_[b] = 0;  // stay at the current point, whose rows move to the new buffers
      std::copy(z0, z0 + n, z1);
      std::copy(g0, g0 + n, g1);
      if (nf[b] >= o_.max_iter) {
        active_[b] = 0;  // z0 still holds it too
        return;
      }
      plain(z1, g1, nullptr, z0);
      return;
    }
    // 3. An accepted non-finite point fails the sample, which stays where it was.
    if (!std::isfinite(static_cast<double>(gnorm))) {
      fl_[b] = true;
      active_[b] = 0;
      std::copy(z0, z0 + n, z1);
      return;
    }
    // 4. The Gram row and right-hand side over the valid columns, into A and rhs.
    const int64_t valid = std::min(have + 1, m);
    double* a = A_.data() + b * m * m;
    double* rhs = rhs_.data() + b * m;
    const T* ring = dgp_ + b * m * n;
    for (int64_t j = 0; j < valid; ++j) {
      const T* __restrict__ col = ring + j * n;
      T s = 0, t = 0;  // in the state dtype, as the eager step's batched product
#pragma omp simd reduction(+ : s, t)
      for (int64_t i = 0; i < n; ++i) {
        s += col[i] * dgk[i];
        t += col[i] * g1[i];
      }
      const double v = j == slot ? s + (s * o_.lam + o_.tiny) : static_cast<double>(s);
      a[slot * m + j] = v;
      a[j * m + slot] = v;
      rhs[j] = t;
    }
    accepted_[b] = have + 1;
    // 5. The best point: the current one is dropped for z1, so keep it if it was the best.
    if (res < br[b]) {
      br[b] = res;
      if (!best_cur_[b]) best_cur_[b] = 1;
    } else if (best_cur_[b]) {
      std::copy(z0, z0 + n, best_ + b * n);
      best_cur_[b] = 0;
    }
    gn[b] = gnorm;
    rs[b] = res;
    // 6. Stop where the tolerance is met or the budget is spent.
    if (!(res > static_cast<T>(o_.tol)) || nf[b] >= o_.max_iter) {
      active_[b] = 0;
      std::copy(z1, z1 + n, z0);
      return;
    }
    // 7. The next proposal into z0's row.
    const int64_t k = accepted_[b] < m ? accepted_[b] : m;
    bool ok = spd_solve(a, rhs, k, m, l, l + m * m, w);
    if (ok) {
      double norm = 0.0;
      for (int64_t j = 0; j < k; ++j) norm += w[j] * w[j];
      ok = std::sqrt(norm) <= o_.max_weight;  // NaN fails <=
    }
    if (!ok) {  // clear the history, take the plain step
      accepted_[b] = 0;
      std::fill(a, a + m * m, 0.0);
      plain(z1, g1, f1, z0);
      return;
    }
    const T* dring = dp_ + b * m * n;
    plain(z1, g1, f1, z0);
    for (int64_t j = 0; j < k; ++j) {
      const T* __restrict__ dj = dring + j * n;
      const T wj = static_cast<T>(w[j]);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) z0[i] -= wj * dj[i];
    }
  }

  Options o_;
  int64_t B_, n_;
  torch::Tensor G_[2], best_z_, D_, dG_, gnorm_, res_, best_res_, nfev_, failed_;
  std::vector<double> A_, rhs_;
  std::vector<int64_t> accepted_;
  std::vector<uint8_t> active_, best_cur_;
  T *zp_[2], *gp_[2], *best_, *dp_, *dgp_, *gn_, *rs_, *br_;
  int64_t* nf_;
  bool* fl_;
};

std::shared_ptr<Loop> start(torch::Tensor z, torch::Tensor fz, torch::Tensor g,
                            torch::Tensor gnorm, torch::Tensor res, torch::Tensor active,
                            torch::Tensor failed, int64_t m, double beta, double lam,
                            double tiny, double safeguard, double max_weight, double tol,
                            bool rel, double eps, int64_t max_iter) {
  TORCH_CHECK(z.dim() == 2, "z must be [B, n], got ", z.sizes());
  TORCH_CHECK(m >= 1, "m must be >= 1, got ", m);
  TORCH_CHECK(max_iter >= 1, "max_iter must be >= 1, got ", max_iter);
  const Options o{m, beta, lam, tiny, safeguard, max_weight, tol, eps, rel, max_iter};
  if (z.scalar_type() == torch::kFloat)
    return std::make_shared<LoopT<float>>(z, fz, g, gnorm, res, active, failed, o);
  TORCH_CHECK(z.scalar_type() == torch::kDouble, "native Anderson needs float32 or float64, got ",
              z.scalar_type());
  return std::make_shared<LoopT<double>>(z, fz, g, gnorm, res, active, failed, o);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  pybind11::class_<Loop, std::shared_ptr<Loop>>(module, "Loop")
      .def("advance", &Loop::advance, "finish f's output for the proposal, make the next one")
      .def("proposal", &Loop::proposal, "the [B, n] iterate f evaluates next")
      .def("running", &Loop::running, "samples still running")
      .def("result", &Loop::result, "(best_z, best_res, nfev, failed)");
  module.def("start", &start, "Anderson's native loop from an evaluated first point");
}
