// Fused CPU kernels for the two layers that dominate MobileFaceNet training time in Paddle eager
// mode: per-channel PReLU and depthwise convolution (NCHW, float32). Paddle's own CPU kernels for
// these run far below memory bandwidth; these plain loops work on one (n, c) plane at a time so
// the data stays in L1/L2 and the compiler can vectorise the inner loops.
#include <algorithm>
#include <cmath>
#include <vector>
#include "paddle/extension.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

void check_cpu_f32(const paddle::Tensor& t, const char* name) {
  PD_CHECK(t.is_cpu(), name, " must be on CPU");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, name, " must be float32");
}

}  // namespace

// ---------------------------------------------------------------- PReLU, weight [C], x [N, C, ...]
std::vector<paddle::Tensor> PreluForward(const paddle::Tensor& x, const paddle::Tensor& w) {
  check_cpu_f32(x, "x");
  check_cpu_f32(w, "weight");
  const auto& shape = x.shape();
  PD_CHECK(shape.size() >= 2, "x must be at least 2-D");
  const int64_t n = shape[0], c = shape[1];
  PD_CHECK(w.numel() == c, "weight size must equal the channel count");
  const int64_t plane = c == 0 || n == 0 ? 0 : x.numel() / (n * c);
  auto out = paddle::empty(shape, x.dtype(), x.place());
  const float* px = x.data<float>();
  const float* pw = w.data<float>();
  float* po = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < n * c; ++nc) {
    const float a = pw[nc % c];
    const float* xi = px + nc * plane;
    float* oi = po + nc * plane;
    for (int64_t i = 0; i < plane; ++i) {
      const float v = xi[i];
      oi[i] = v > 0.f ? v : a * v;
    }
  }
  return {out};
}

std::vector<paddle::Tensor> PreluBackward(const paddle::Tensor& x, const paddle::Tensor& w,
                                          const paddle::Tensor& grad_out) {
  const auto& shape = x.shape();
  const int64_t n = shape[0], c = shape[1];
  const int64_t plane = c == 0 || n == 0 ? 0 : x.numel() / (n * c);
  auto dx = paddle::empty(shape, x.dtype(), x.place());
  auto dw = paddle::empty(w.shape(), w.dtype(), w.place());
  const float* px = x.data<float>();
  const float* pw = w.data<float>();
  const float* pg = grad_out.data<float>();
  float* pdx = dx.data<float>();
  float* pdw = dw.data<float>();
  // Parallel over channels so that each thread owns its dw entries (no atomics, fixed order).
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < c; ++ch) {
    const float a = pw[ch];
    double acc = 0.0;
    for (int64_t b = 0; b < n; ++b) {
      const int64_t off = (b * c + ch) * plane;
      const float* xi = px + off;
      const float* gi = pg + off;
      float* di = pdx + off;
      float part = 0.f;
#pragma omp simd reduction(+ : part)
      for (int64_t i = 0; i < plane; ++i) {
        const float v = xi[i], g = gi[i];
        const bool pos = v > 0.f;
        di[i] = pos ? g : a * g;
        part += pos ? 0.f : v * g;
      }
      acc += part;
    }
    pdw[ch] = static_cast<float>(acc);
  }
  return {dx, dw};
}

std::vector<std::vector<int64_t>> PreluInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w) {
  return {x};
}
std::vector<paddle::DataType> PreluInferDtype(const paddle::DataType& x, const paddle::DataType& w) { return {x}; }

PD_BUILD_OP(fast_prelu)
    .Inputs({"X", "Weight"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(PreluForward))
    .SetInferShapeFn(PD_INFER_SHAPE(PreluInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(PreluInferDtype));

PD_BUILD_GRAD_OP(fast_prelu)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight")})
    .SetKernelFn(PD_KERNEL(PreluBackward));

// ------------------------------------------- depthwise conv, x [N, C, H, W], weight [C, 1, K, K]
// Each (n, c) plane is copied into a zero-padded buffer of width Wp = W + 2p. Then every tap
// (kh, kw) is one long contiguous multiply-add over the padded plane: for stride 1 the whole
// plane is a single 1-D loop of OH*Wp elements (the Wp - OW extra columns per row are computed
// and dropped); for stride s > 1 it is one loop per output row over the (OW-1)*s+1 input columns
// it spans (the in-between columns are computed and dropped, or multiply zeros in the gradient).
// No bounds tests in the inner loops, so the compiler vectorises them.
namespace {
struct DwGeom {
  int64_t n, c, h, w, k, oh, ow, stride, pad, hp, wp;
};

DwGeom dw_geometry(const paddle::Tensor& x, const paddle::Tensor& weight, int stride, int pad) {
  const auto& xs = x.shape();
  const auto& ws = weight.shape();
  PD_CHECK(xs.size() == 4, "depthwise conv input must be NCHW");
  PD_CHECK(ws.size() == 4 && ws[1] == 1 && ws[0] == xs[1] && ws[2] == ws[3],
           "depthwise conv weight must be [C, 1, K, K] with C the input channels");
  PD_CHECK(stride >= 1 && pad >= 0, "bad stride/padding");
  DwGeom g;
  g.n = xs[0]; g.c = xs[1]; g.h = xs[2]; g.w = xs[3]; g.k = ws[2];
  g.stride = stride; g.pad = pad;
  g.hp = g.h + 2 * pad; g.wp = g.w + 2 * pad;
  g.oh = (g.hp - g.k) / stride + 1;
  g.ow = (g.wp - g.k) / stride + 1;
  PD_CHECK(g.hp >= g.k && g.wp >= g.k && g.oh > 0 && g.ow > 0, "depthwise conv output would be empty");
  return g;
}

// Padded plane plus k floats of slack: the stride-1 1-D loops read up to k-1 past the last row.
inline int64_t padded_size(const DwGeom& g) { return g.hp * g.wp + g.k; }

void pad_plane(const DwGeom& g, const float* src, float* dst) {
  std::fill(dst, dst + padded_size(g), 0.f);
  for (int64_t r = 0; r < g.h; ++r) std::copy(src + r * g.w, src + (r + 1) * g.w, dst + (r + g.pad) * g.wp + g.pad);
}
}  // namespace

std::vector<paddle::Tensor> DwForward(const paddle::Tensor& x, const paddle::Tensor& weight, int stride, int padding) {
  check_cpu_f32(x, "x");
  check_cpu_f32(weight, "weight");
  const DwGeom g = dw_geometry(x, weight, stride, padding);
  auto out = paddle::empty({g.n, g.c, g.oh, g.ow}, x.dtype(), x.place());
  const float* px = x.data<float>();
  const float* pw = weight.data<float>();
  float* po = out.data<float>();
  const int64_t s = g.stride, k = g.k, wp = g.wp;
  const int64_t span = (g.ow - 1) * s + 1;  // input columns one output row covers
#pragma omp parallel
  {
    std::vector<float> xpad(padded_size(g));
    std::vector<float> acc(s == 1 ? g.oh * wp : span);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < g.n * g.c; ++nc) {
      pad_plane(g, px + nc * g.h * g.w, xpad.data());
      const float* wi = pw + (nc % g.c) * k * k;
      float* oi = po + nc * g.oh * g.ow;
      float* a = acc.data();
      const float* xp = xpad.data();
      if (s == 1) {
        const int64_t len = g.oh * wp;
        std::fill(a, a + len, 0.f);
        for (int64_t kh = 0; kh < k; ++kh)
          for (int64_t kw = 0; kw < k; ++kw) {
            const float wv = wi[kh * k + kw];
            const float* xs = xp + kh * wp + kw;
#pragma omp simd
            for (int64_t i = 0; i < len; ++i) a[i] += wv * xs[i];
          }
        for (int64_t r = 0; r < g.oh; ++r) std::copy(a + r * wp, a + r * wp + g.ow, oi + r * g.ow);
      } else {
        for (int64_t r = 0; r < g.oh; ++r) {
          std::fill(a, a + span, 0.f);
          for (int64_t kh = 0; kh < k; ++kh)
            for (int64_t kw = 0; kw < k; ++kw) {
              const float wv = wi[kh * k + kw];
              const float* xs = xp + (r * s + kh) * wp + kw;
#pragma omp simd
              for (int64_t j = 0; j < span; ++j) a[j] += wv * xs[j];
            }
          for (int64_t c = 0; c < g.ow; ++c) oi[r * g.ow + c] = a[c * s];
        }
      }
    }
  }
  return {out};
}

std::vector<paddle::Tensor> DwBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                       const paddle::Tensor& grad_out, int stride, int padding) {
  const DwGeom g = dw_geometry(x, weight, stride, padding);
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dw = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  const float* px = x.data<float>();
  const float* pw = weight.data<float>();
  const float* pg = grad_out.data<float>();
  float* pdx = dx.data<float>();
  float* pdw = dw.data<float>();
  const int64_t s = g.stride, k = g.k, kk = k * k, wp = g.wp;
  const int64_t span = (g.ow - 1) * s + 1;
  // Parallel over channels: each thread owns dw[c] and the dx planes of its channels.
#pragma omp parallel
  {
    std::vector<float> xpad(padded_size(g)), dxpad(padded_size(g));
    // The output gradient spread on the padded grid: g[r][c] at row r*s, column c*s; zeros elsewhere.
    std::vector<float> gspread(s == 1 ? g.oh * wp : g.oh * span);
    std::vector<double> acc(kk);
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < g.c; ++ch) {
      const float* wi = pw + ch * kk;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t b = 0; b < g.n; ++b) {
        const int64_t nc = b * g.c + ch;
        pad_plane(g, px + nc * g.h * g.w, xpad.data());
        std::fill(dxpad.begin(), dxpad.end(), 0.f);
        const float* gi = pg + nc * g.oh * g.ow;
        const float* xp = xpad.data();
        float* dp = dxpad.data();
        float* gs = gspread.data();
        if (s == 1) {
          const int64_t len = g.oh * wp;
          std::fill(gs, gs + len, 0.f);
          for (int64_t r = 0; r < g.oh; ++r) std::copy(gi + r * g.ow, gi + (r + 1) * g.ow, gs + r * wp);
          for (int64_t kh = 0; kh < k; ++kh)
            for (int64_t kw = 0; kw < k; ++kw) {
              const float wv = wi[kh * k + kw];
              const int64_t off = kh * wp + kw;
              float part = 0.f;
#pragma omp simd reduction(+ : part)
              for (int64_t i = 0; i < len; ++i) part += gs[i] * xp[off + i];
              acc[kh * k + kw] += part;
#pragma omp simd
              for (int64_t i = 0; i < len; ++i) dp[off + i] += wv * gs[i];
            }
        } else {
          std::fill(gs, gs + g.oh * span, 0.f);
          for (int64_t r = 0; r < g.oh; ++r)
            for (int64_t c = 0; c < g.ow; ++c) gs[r * span + c * s] = gi[r * g.ow + c];
          for (int64_t kh = 0; kh < k; ++kh)
            for (int64_t kw = 0; kw < k; ++kw) {
              const float wv = wi[kh * k + kw];
              float part = 0.f;
              for (int64_t r = 0; r < g.oh; ++r) {
                const float* gr = gs + r * span;
                const int64_t off = (r * s + kh) * wp + kw;
#pragma omp simd reduction(+ : part)
                for (int64_t j = 0; j < span; ++j) part += gr[j] * xp[off + j];
#pragma omp simd
                for (int64_t j = 0; j < span; ++j) dp[off + j] += wv * gr[j];
              }
              acc[kh * k + kw] += part;
            }
        }
        float* di = pdx + nc * g.h * g.w;
        for (int64_t r = 0; r < g.h; ++r)
          std::copy(dp + (r + g.pad) * wp + g.pad, dp + (r + g.pad) * wp + g.pad + g.w, di + r * g.w);
      }
      for (int64_t i = 0; i < kk; ++i) pdw[ch * kk + i] = static_cast<float>(acc[i]);
    }
  }
  return {dx, dw};
}

std::vector<std::vector<int64_t>> DwInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                               int stride, int padding) {
  return {{x[0], x[1], (x[2] + 2 * padding - w[2]) / stride + 1, (x[3] + 2 * padding - w[3]) / stride + 1}};
}
std::vector<paddle::DataType> DwInferDtype(const paddle::DataType& x, const paddle::DataType& w) { return {x}; }

PD_BUILD_OP(fast_depthwise_conv2d)
    .Inputs({"X", "Weight"})
    .Outputs({"Out"})
    .Attrs({"stride: int", "padding: int"})
    .SetKernelFn(PD_KERNEL(DwForward))
    .SetInferShapeFn(PD_INFER_SHAPE(DwInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DwInferDtype));

PD_BUILD_GRAD_OP(fast_depthwise_conv2d)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight")})
    .Attrs({"stride: int", "padding: int"})
    .SetKernelFn(PD_KERNEL(DwBackward));

// ------------------------------------ BatchNorm (batch statistics) + PReLU, saving only the output
// Training-mode BatchNorm over dim 1 of x [N, C, ...] followed by per-channel PReLU (slope [C]):
//   z = gamma * (x - mean) * inv_std + beta,   y = z > 0 ? z : slope * z.
// The backward pass is written from y alone (as InPlace-ABN does), so autograd keeps neither x
// (the convolution output) nor z: with slope > 0, z > 0 exactly when y > 0 and z = y / slope
// otherwise; x_hat = (z - beta) / gamma. The caller (models/fast_cpu_ops.py) only takes this path
// when every slope is > 0 and every |gamma| is away from zero. A slope of 1 is plain BatchNorm.
// Statistics are accumulated in double, per channel, in a fixed order (deterministic).
namespace {
struct BnGeom {
  int64_t n, c, plane;
};

BnGeom bn_geometry(const paddle::Tensor& x) {
  const auto& shape = x.shape();
  PD_CHECK(shape.size() >= 2, "x must be at least 2-D");
  BnGeom g;
  g.n = shape[0];
  g.c = shape[1];
  g.plane = g.c == 0 || g.n == 0 ? 0 : x.numel() / (g.n * g.c);
  return g;
}
}  // namespace

std::vector<paddle::Tensor> BnPreluForward(const paddle::Tensor& x, const paddle::Tensor& gamma,
                                           const paddle::Tensor& beta, const paddle::Tensor& slope, float eps) {
  check_cpu_f32(x, "x");
  check_cpu_f32(gamma, "gamma");
  check_cpu_f32(beta, "beta");
  check_cpu_f32(slope, "slope");
  const BnGeom g = bn_geometry(x);
  PD_CHECK(gamma.numel() == g.c && beta.numel() == g.c && slope.numel() == g.c,
           "gamma, beta and slope must have one value per channel");
  const int64_t m = g.n * g.plane;
  PD_CHECK(m > 0, "BatchNorm needs at least one value per channel");
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  auto mean = paddle::empty({g.c}, x.dtype(), x.place());
  auto var = paddle::empty({g.c}, x.dtype(), x.place());
  auto inv_std = paddle::empty({g.c}, x.dtype(), x.place());
  const float* px = x.data<float>();
  const float* pg = gamma.data<float>();
  const float* pb = beta.data<float>();
  const float* pa = slope.data<float>();
  float* py = y.data<float>();
  float* pmean = mean.data<float>();
  float* pvar = var.data<float>();
  float* pinv = inv_std.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < g.c; ++ch) {
    double s = 0.0;
    for (int64_t b = 0; b < g.n; ++b) {
      const float* xi = px + (b * g.c + ch) * g.plane;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < g.plane; ++i) s += xi[i];
    }
    const double mu = s / static_cast<double>(m);
    double ss = 0.0;  // second pass around the mean: no cancellation
    for (int64_t b = 0; b < g.n; ++b) {
      const float* xi = px + (b * g.c + ch) * g.plane;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < g.plane; ++i) {
        const double d = static_cast<double>(xi[i]) - mu;
        ss += d * d;
      }
    }
    const double v = ss / static_cast<double>(m);  // biased, as Paddle's CPU kernel
    const double inv = 1.0 / std::sqrt(v + static_cast<double>(eps));
    pmean[ch] = static_cast<float>(mu);
    pvar[ch] = static_cast<float>(v);
    pinv[ch] = static_cast<float>(inv);
    const float scale = static_cast<float>(pg[ch] * inv);
    const float shift = static_cast<float>(pb[ch] - mu * pg[ch] * inv);
    const float a = pa[ch];
    for (int64_t b = 0; b < g.n; ++b) {
      const int64_t off = (b * g.c + ch) * g.plane;
      const float* xi = px + off;
      float* yi = py + off;
#pragma omp simd
      for (int64_t i = 0; i < g.plane; ++i) {
        const float z = xi[i] * scale + shift;
        yi[i] = z > 0.f ? z : a * z;
      }
    }
  }
  return {y, mean, var, inv_std};
}

std::vector<paddle::Tensor> BnPreluBackward(const paddle::Tensor& y, const paddle::Tensor& grad_y,
                                            const paddle::Tensor& gamma, const paddle::Tensor& beta,
                                            const paddle::Tensor& slope, const paddle::Tensor& inv_std) {
  check_cpu_f32(y, "y");
  check_cpu_f32(grad_y, "grad_y");
  const BnGeom g = bn_geometry(y);
  PD_CHECK(grad_y.numel() == y.numel(), "grad_y must have the shape of y");
  const int64_t m = g.n * g.plane;
  auto dx = paddle::empty(y.shape(), y.dtype(), y.place());
  auto dgamma = paddle::empty({g.c}, y.dtype(), y.place());
  auto dbeta = paddle::empty({g.c}, y.dtype(), y.place());
  auto dslope = paddle::empty({g.c}, y.dtype(), y.place());
  const float* py = y.data<float>();
  const float* pdy = grad_y.data<float>();
  const float* pg = gamma.data<float>();
  const float* pb = beta.data<float>();
  const float* pa = slope.data<float>();
  const float* pinv = inv_std.data<float>();
  float* pdx = dx.data<float>();
  float* pdg = dgamma.data<float>();
  float* pdb = dbeta.data<float>();
  float* pda = dslope.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < g.c; ++ch) {
    const float a = pa[ch], inv_a = 1.f / pa[ch];
    const float beta_c = pb[ch], inv_gamma = 1.f / pg[ch];
    double sum_dz = 0.0, sum_dz_xhat = 0.0, sum_da = 0.0;
    for (int64_t b = 0; b < g.n; ++b) {
      const int64_t off = (b * g.c + ch) * g.plane;
      const float* yi = py + off;
      const float* gi = pdy + off;
      float p_dz = 0.f, p_dzx = 0.f, p_da = 0.f;
#pragma omp simd reduction(+ : p_dz, p_dzx, p_da)
      for (int64_t i = 0; i < g.plane; ++i) {
        const float yv = yi[i], gv = gi[i];
        const bool pos = yv > 0.f;
        const float z = pos ? yv : yv * inv_a;
        const float dz = pos ? gv : a * gv;
        const float xhat = (z - beta_c) * inv_gamma;
        p_dz += dz;
        p_dzx += dz * xhat;
        p_da += pos ? 0.f : z * gv;
      }
      sum_dz += p_dz;
      sum_dz_xhat += p_dzx;
      sum_da += p_da;
    }
    pdg[ch] = static_cast<float>(sum_dz_xhat);
    pdb[ch] = static_cast<float>(sum_dz);
    pda[ch] = static_cast<float>(sum_da);
    const float k = pg[ch] * pinv[ch];
    const float mean_dz = static_cast<float>(sum_dz / static_cast<double>(m));
    const float mean_dzx = static_cast<float>(sum_dz_xhat / static_cast<double>(m));
    for (int64_t b = 0; b < g.n; ++b) {
      const int64_t off = (b * g.c + ch) * g.plane;
      const float* yi = py + off;
      const float* gi = pdy + off;
      float* di = pdx + off;
#pragma omp simd
      for (int64_t i = 0; i < g.plane; ++i) {
        const float yv = yi[i], gv = gi[i];
        const bool pos = yv > 0.f;
        const float z = pos ? yv : yv * inv_a;
        const float dz = pos ? gv : a * gv;
        const float xhat = (z - beta_c) * inv_gamma;
        di[i] = k * (dz - mean_dz - xhat * mean_dzx);
      }
    }
  }
  return {dx, dgamma, dbeta, dslope};
}

std::vector<std::vector<int64_t>> BnPreluInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& gamma,
                                                    const std::vector<int64_t>& beta, const std::vector<int64_t>& slope,
                                                    float eps) {
  return {x, {x[1]}, {x[1]}, {x[1]}};
}
std::vector<paddle::DataType> BnPreluInferDtype(const paddle::DataType& x, const paddle::DataType& gamma,
                                                const paddle::DataType& beta, const paddle::DataType& slope) {
  return {x, x, x, x};
}

// No grad op: models/fast_cpu_ops.py wraps the pair in a PyLayer that saves only y.
PD_BUILD_OP(fast_bn_prelu)
    .Inputs({"X", "Gamma", "Beta", "Slope"})
    .Outputs({"Y", "Mean", "Var", "InvStd"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(BnPreluForward))
    .SetInferShapeFn(PD_INFER_SHAPE(BnPreluInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(BnPreluInferDtype));

std::vector<std::vector<int64_t>> BnPreluBwdInferShape(const std::vector<int64_t>& y, const std::vector<int64_t>& dy,
                                                       const std::vector<int64_t>& gamma,
                                                       const std::vector<int64_t>& beta,
                                                       const std::vector<int64_t>& slope,
                                                       const std::vector<int64_t>& inv_std) {
  return {y, {y[1]}, {y[1]}, {y[1]}};
}
std::vector<paddle::DataType> BnPreluBwdInferDtype(const paddle::DataType& y, const paddle::DataType& dy,
                                                   const paddle::DataType& gamma, const paddle::DataType& beta,
                                                   const paddle::DataType& slope, const paddle::DataType& inv_std) {
  return {y, y, y, y};
}

PD_BUILD_OP(fast_bn_prelu_backward)
    .Inputs({"Y", "GradY", "Gamma", "Beta", "Slope", "InvStd"})
    .Outputs({"GradX", "GradGamma", "GradBeta", "GradSlope"})
    .SetKernelFn(PD_KERNEL(BnPreluBackward))
    .SetInferShapeFn(PD_INFER_SHAPE(BnPreluBwdInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(BnPreluBwdInferDtype));
