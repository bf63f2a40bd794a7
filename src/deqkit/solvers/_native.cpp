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
//      g_new replaces g_old in place (it is first computed into a per-thread row that stays
//      in L1, since a rejected proposal keeps g_old);
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
//
// At batch 128 x width 1024 a step is a pass over memory: 2m history columns are read per
// step, and what the history displaces from the cache makes the next evaluation of f
// slower. The rings may therefore be stored in a narrower type than the state (history
// "bfloat16", or "float32" under a float64 state): differences are rounded once when
// written, and the Gram matrix, right-hand side and extrapolation use the stored values, in
// the state's precision. Residuals, norms, stopping and the returned iterate stay exact: a
// rounded history changes which points are proposed, never what a point's residual is.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
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

// The history's storage: Hist<H>::get reads a stored value as float or double, put rounds
// a value of the state type to it (bfloat16: round to nearest even, on the bits).
struct BF16 {};

template <typename H>
struct Hist {
  using S = H;
  static H get(S v) { return v; }
  template <typename T>
  static S put(T v) { return static_cast<S>(v); }
  static constexpr torch::ScalarType dtype =
      std::is_same<H, float>::value ? torch::kFloat : torch::kDouble;
};

template <>
struct Hist<BF16> {
  using S = uint16_t;
  static float get(S v) {
    const uint32_t u = static_cast<uint32_t>(v) << 16;
    float x;
    std::memcpy(&x, &u, sizeof x);
    return x;
  }
  template <typename T>
  static S put(T v) {
    const float x = static_cast<float>(v);
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<S>(u >> 16);
  }
  static constexpr torch::ScalarType dtype = torch::kBFloat16;
};

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
  // The rings (D, dG), [B, m, n] each in the history's dtype, for tests.
  std::vector<torch::Tensor> history() const { return {D_, dG_}; }

 protected:
  torch::Tensor Z_[2], D_, dG_;
  int cur_ = 0;  // Z_[cur_] holds every sample's current point, Z_[1 - cur_] the proposal
  int64_t running_ = 0;
};

template <typename T, typename H>
class LoopT final : public Loop {
  using S = typename Hist<H>::S;
  static constexpr int kLanes = 16;  // partial sums per reduction

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
    G_ = g.clone();
    best_z_ = torch::empty_like(z);
    D_ = torch::empty({B_, m, n_}, z.options().dtype(Hist<H>::dtype));
    dG_ = torch::empty({B_, m, n_}, z.options().dtype(Hist<H>::dtype));
    gnorm_ = gnorm.clone();
    res_ = res.clone();
    best_res_ = res.clone();
    nfev_ = torch::ones({B_}, torch::kLong);
    failed_ = failed.clone();
    // Raw pointers, taken once: the buffers are never reallocated, and a data_ptr call
    // per sample and step cost more than the sample's arithmetic at 64 x 256.
    zp_[0] = Z_[0].data_ptr<T>();
    zp_[1] = Z_[1].data_ptr<T>();
    gp_ = G_.data_ptr<T>();
    best_ = best_z_.data_ptr<T>();
    dp_ = static_cast<S*>(D_.data_ptr());
    dgp_ = static_cast<S*>(dG_.data_ptr());
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
    T *znew = zp_[nw], *zold = zp_[od];
    at::parallel_for(0, B_, 1, [&](int64_t lo, int64_t hi) {
      std::vector<double> l(o_.m * o_.m + o_.m), w(o_.m);
      std::vector<T> row(n_);
      for (int64_t b = lo; b < hi; ++b) {
        if (!active_[b]) continue;
        const int64_t x = b * n_;
        step(b, znew + x, zold + x, gp_ + x, f1 + x, row.data(), l.data(), w.data());
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

  // Sample b's work between two evaluations (see the header). z1: its row of the buffer
  // holding the evaluated proposal (and, after this, its current point); z0: its current
  // point's row, which receives the next proposal; g: its residual row (the current
  // point's, replaced in place where the proposal is accepted); f1: f(z1); r: a scratch
  // row of n values.
  void step(int64_t b, T* __restrict__ z1, T* __restrict__ z0, T* __restrict__ g,
            const T* __restrict__ f1, T* __restrict__ r, double* l, double* w) {
    const int64_t m = o_.m, n = n_;
    T *gn = gn_, *rs = rs_, *br = br_;
    int64_t* nf = nf_;
    nf[b] += 1;
    const int64_t have = accepted_[b];
    const int64_t slot = have % m;
    S* __restrict__ dgk = dgp_ + (b * m + slot) * n;
    S* __restrict__ dk = dp_ + (b * m + slot) * n;
    const T bt = static_cast<T>(o_.beta);
    // 1. The evaluated point's residual, into the scratch row.
    // Each sum keeps kLanes partial sums, so that the additions form kLanes / (vector
    // width) independent chains instead of one: a single chain was latency-bound (one add
    // per vector per 4-5 cycles) and made the sums most of a step's time.
    double pg[kLanes] = {}, pf[kLanes] = {};
    int64_t i0 = 0;
    for (; i0 + kLanes <= n; i0 += kLanes) {
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) {
        const T gi = f1[i0 + j] - z1[i0 + j];
        r[i0 + j] = gi;
        pg[j] += static_cast<double>(gi) * gi;
        pf[j] += static_cast<double>(f1[i0 + j]) * f1[i0 + j];
      }
    }
    for (int64_t i = i0; i < n; ++i) {
      const T gi = f1[i] - z1[i];
      r[i] = gi;
      pg[0] += static_cast<double>(gi) * gi;
      pf[0] += static_cast<double>(f1[i]) * f1[i];
    }
    double sg = 0.0, sf = 0.0;
    for (int j = 0; j < kLanes; ++j) {
      sg += pg[j];
      sf += pf[j];
    }
    const T gnorm = static_cast<T>(std::sqrt(sg));
    const T res = o_.rel ? gnorm / (static_cast<T>(std::sqrt(sf)) + static_cast<T>(o_.eps))
                         : gnorm;
    // 2. The safeguard applies to accelerated proposals only (NaN fails <=).
    const bool accept = have == 0 || gnorm <= gn[b] * static_cast<T>(o_.safeguard);
    if (!accept) {
      accepted_[b] = 0;  // stay at the current point (g still holds its residual)
      std::copy(z0, z0 + n, z1);
      if (nf[b] >= o_.max_iter) {
        active_[b] = 0;  // z0 still holds it too
        return;
      }
      plain(z1, g, nullptr, z0);
      return;
    }
    // 3. An accepted non-finite point fails the sample, which stays where it was.
    if (!std::isfinite(static_cast<double>(gnorm))) {
      fl_[b] = true;
      active_[b] = 0;
      std::copy(z0, z0 + n, z1);
      return;
    }
    // 4. The differences into ring column `slot`, the residual in place, then the Gram row
    // and right-hand side over the valid columns, into A and rhs.
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const T dg = r[i] - g[i];
      g[i] = r[i];
      dgk[i] = Hist<H>::put(dg);
      dk[i] = Hist<H>::put((z1[i] - z0[i]) + bt * dg);
    }
    const int64_t valid = std::min(have + 1, m);
    double* a = A_.data() + b * m * m;
    double* rhs = rhs_.data() + b * m;
    const S* ring = dgp_ + b * m * n;
    for (int64_t j = 0; j < valid; ++j) {
      const S* __restrict__ col = ring + j * n;
      T ps[kLanes] = {}, pt[kLanes] = {};  // in the state dtype, as the eager product
      int64_t i1 = 0;
      for (; i1 + kLanes <= n; i1 += kLanes) {
#pragma omp simd
        for (int q = 0; q < kLanes; ++q) {
          const T c = static_cast<T>(Hist<H>::get(col[i1 + q]));
          ps[q] += c * static_cast<T>(Hist<H>::get(dgk[i1 + q]));
          pt[q] += c * g[i1 + q];
        }
      }
      for (int64_t i = i1; i < n; ++i) {
        const T c = static_cast<T>(Hist<H>::get(col[i]));
        ps[0] += c * static_cast<T>(Hist<H>::get(dgk[i]));
        pt[0] += c * g[i];
      }
      T s = 0, t = 0;
      for (int q = 0; q < kLanes; ++q) {
        s += ps[q];
        t += pt[q];
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
      plain(z1, g, f1, z0);
      return;
    }
    const S* dring = dp_ + b * m * n;
    plain(z1, g, f1, z0);
    for (int64_t j = 0; j < k; ++j) {
      const S* __restrict__ dj = dring + j * n;
      const T wj = static_cast<T>(w[j]);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) z0[i] -= wj * static_cast<T>(Hist<H>::get(dj[i]));
    }
  }

  Options o_;
  int64_t B_, n_;
  torch::Tensor G_, best_z_, gnorm_, res_, best_res_, nfev_, failed_;
  std::vector<double> A_, rhs_;
  std::vector<int64_t> accepted_;
  std::vector<uint8_t> active_, best_cur_;
  T *zp_[2], *gp_, *best_, *gn_, *rs_, *br_;
  S *dp_, *dgp_;
  int64_t* nf_;
  bool* fl_;
};

std::shared_ptr<Loop> start(torch::Tensor z, torch::Tensor fz, torch::Tensor g,
                            torch::Tensor gnorm, torch::Tensor res, torch::Tensor active,
                            torch::Tensor failed, int64_t m, double beta, double lam,
                            double tiny, double safeguard, double max_weight, double tol,
                            bool rel, double eps, int64_t max_iter,
                            const std::string& history) {
  TORCH_CHECK(z.dim() == 2, "z must be [B, n], got ", z.sizes());
  TORCH_CHECK(m >= 1, "m must be >= 1, got ", m);
  TORCH_CHECK(max_iter >= 1, "max_iter must be >= 1, got ", max_iter);
  const Options o{m, beta, lam, tiny, safeguard, max_weight, tol, eps, rel, max_iter};
  const bool f32 = z.scalar_type() == torch::kFloat;
  TORCH_CHECK(f32 || z.scalar_type() == torch::kDouble,
              "native Anderson needs float32 or float64, got ", z.scalar_type());
  TORCH_CHECK(history == "state" || history == "bfloat16" || (!f32 && history == "float32"),
              "history must be 'state', 'bfloat16' or (under a float64 state) 'float32', got '",
              history, "'");
  if (f32) {
    if (history == "bfloat16")
      return std::make_shared<LoopT<float, BF16>>(z, fz, g, gnorm, res, active, failed, o);
    return std::make_shared<LoopT<float, float>>(z, fz, g, gnorm, res, active, failed, o);
  }
  if (history == "bfloat16")
    return std::make_shared<LoopT<double, BF16>>(z, fz, g, gnorm, res, active, failed, o);
  if (history == "float32")
    return std::make_shared<LoopT<double, float>>(z, fz, g, gnorm, res, active, failed, o);
  return std::make_shared<LoopT<double, double>>(z, fz, g, gnorm, res, active, failed, o);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  pybind11::class_<Loop, std::shared_ptr<Loop>>(module, "Loop")
      .def("advance", &Loop::advance, "finish f's output for the proposal, make the next one")
      .def("proposal", &Loop::proposal, "the [B, n] iterate f evaluates next")
      .def("running", &Loop::running, "samples still running")
      .def("result", &Loop::result, "(best_z, best_res, nfev, failed)")
      .def("history", &Loop::history, "the rings (D, dG), [B, m, n] in the history's dtype");
  module.def("start", &start, "Anderson's native loop from an evaluated first point");
}
