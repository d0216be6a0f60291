// Channels-last (NHWC) CPU training kernels for MobileFaceNet: convolutions as single matrix
// products, depthwise convolution and BatchNorm + PReLU with the channel as the innermost index.
//
// Why NHWC: a 1x1 convolution over NHWC activations is one matrix product [N*H*W, Cin] x
// [Cin, Cout]; over NCHW it is N small products of [Cout, Cin] x [Cin, H*W], which MKL runs at
// half the rate or less on this network's 14x14 and 7x7 maps. Depthwise convolution and the
// per-channel BatchNorm / PReLU arithmetic vectorise over the contiguous channel index instead of
// over short 7x7 or 14x14 planes.
//
// The matrix products call cblas_sgemm of the MKL library that ships with Paddle
// (libmklml_intel.so, linked by models/fast_cpu_ops.py); without it this file is compiled out
// (FACEFEAT_HAVE_CBLAS undefined) and the models keep their NCHW path. Parameters keep Paddle's
// layouts: dense weight [Cout, Cin, K, K], depthwise weight [C, 1, K, K], BatchNorm [C].
// Sums over the batch are accumulated in double, in an order fixed by the thread count.
#ifdef FACEFEAT_HAVE_CBLAS
#include <algorithm>
#include <cmath>
#include <vector>
#include "paddle/extension.h"

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_max_threads() { return 1; }
inline int omp_get_thread_num() { return 0; }
inline int omp_get_num_threads() { return 1; }
#endif

#ifdef FACEFEAT_GEMM_DNNL
// oneDNN's C API (row-major; dnnl_dim_t is int64_t); its own kernels, fast on any x86 vendor.
extern "C" int dnnl_sgemm(char trans_a, char trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
#else
extern "C" void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);
#endif

namespace {
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

void check_f32(const paddle::Tensor& t, const char* name) {
  PD_CHECK(t.is_cpu(), name, " must be on CPU");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, name, " must be float32");
}

// C[m, n] = op(A) op(B), row-major; op = transpose when the flag is set.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
#ifdef FACEFEAT_GEMM_DNNL
  const int status = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, 1.f, a, ta ? m : k, b, tb ? k : n, 0.f, c, n);
  PD_CHECK(status == 0, "dnnl_sgemm failed with status ", status);
#else
  PD_CHECK(m < (1LL << 31) && n < (1LL << 31) && k < (1LL << 31), "matrix too large for 32-bit BLAS");
  cblas_sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.f, a, static_cast<int>(ta ? m : k), b, static_cast<int>(tb ? k : n), 0.f, c,
              static_cast<int>(n));
#endif
}

// [rows) of `total` for thread t of nt: a fixed split, so sums are reproducible for one thread count.
inline void thread_rows(int64_t total, int t, int nt, int64_t* begin, int64_t* end) {
  *begin = total * t / nt;
  *end = total * (t + 1) / nt;
}

// Sums of `width` columns over `rows` rows, in double: each thread sums its fixed share of rows,
// `block_rows` at a time in float (vectorised over the columns), and the threads' sums are added
// in thread order. `add_block(r0, r1, float* part)` adds rows [r0, r1) into part[width] (zeroed).
template <typename AddBlock>
void column_sums(int64_t rows, int64_t width, int64_t block_rows, AddBlock add_block, std::vector<double>* out) {
  const int nt_max = omp_get_max_threads();
  std::vector<double> partial(static_cast<size_t>(nt_max) * width, 0.0);
  int used = 1;
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#pragma omp single
    used = nt;
    int64_t r0, r1;
    thread_rows(rows, t, nt, &r0, &r1);
    double* __restrict acc = partial.data() + static_cast<size_t>(t) * width;
    std::vector<float> block(width);
    float* __restrict part = block.data();
    for (int64_t r = r0; r < r1; r += block_rows) {
      std::fill(part, part + width, 0.f);
      add_block(r, std::min(r + block_rows, r1), part);
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) acc[i] += part[i];
    }
  }
  out->assign(width, 0.0);
  for (int t = 0; t < used; ++t)
    for (int64_t i = 0; i < width; ++i) (*out)[i] += partial[static_cast<size_t>(t) * width + i];
}

struct ConvGeom {
  int64_t n, h, w, ci, co, k, stride, pad, oh, ow;
};

// x [N, H, W, Cin] with weight [Cout, Cin/groups, K, K] (groups = 1 or Cin, told by `depthwise`).
ConvGeom conv_geometry(const paddle::Tensor& x, const paddle::Tensor& weight, int stride, int pad, bool depthwise) {
  const auto& xs = x.shape();
  const auto& ws = weight.shape();
  PD_CHECK(xs.size() == 4, "channels-last conv input must be [N, H, W, C]");
  PD_CHECK(ws.size() == 4 && ws[2] == ws[3], "conv weight must be [Cout, Cin, K, K]");
  if (depthwise) {
    PD_CHECK(ws[1] == 1 && ws[0] == xs[3], "depthwise weight must be [C, 1, K, K] with C the input channels");
  } else {
    PD_CHECK(ws[1] == xs[3], "conv weight's Cin must equal the input channels");
  }
  PD_CHECK(stride >= 1 && pad >= 0, "bad stride/padding");
  ConvGeom g;
  g.n = xs[0]; g.h = xs[1]; g.w = xs[2]; g.ci = xs[3]; g.co = ws[0]; g.k = ws[2];
  g.stride = stride; g.pad = pad;
  g.oh = (g.h + 2 * pad - g.k) / stride + 1;
  g.ow = (g.w + 2 * pad - g.k) / stride + 1;
  PD_CHECK(g.oh > 0 && g.ow > 0, "conv output would be empty");
  return g;
}

bool is_pointwise(const ConvGeom& g) { return g.k == 1 && g.stride == 1 && g.pad == 0; }

// Patches of x [N, H, W, C] as rows [N*OH*OW, K*K*C] in (kh, kw, c) order; zeros outside.
void im2col(const ConvGeom& g, const float* x, float* cols) {
  const int64_t row = g.k * g.k * g.ci;
#pragma omp parallel for schedule(static)
  for (int64_t nr = 0; nr < g.n * g.oh; ++nr) {
    const int64_t b = nr / g.oh, oh = nr % g.oh;
    for (int64_t ow = 0; ow < g.ow; ++ow) {
      float* dst = cols + (nr * g.ow + ow) * row;
      for (int64_t kh = 0; kh < g.k; ++kh) {
        const int64_t ih = oh * g.stride - g.pad + kh;
        for (int64_t kw = 0; kw < g.k; ++kw) {
          const int64_t iw = ow * g.stride - g.pad + kw;
          float* d = dst + (kh * g.k + kw) * g.ci;
          if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) {
            std::fill(d, d + g.ci, 0.f);
          } else {
            const float* s = x + ((b * g.h + ih) * g.w + iw) * g.ci;
            std::copy(s, s + g.ci, d);
          }
        }
      }
    }
  }
}

// dx [N, H, W, C] = the sum of the patch gradients back onto the pixels they came from.
// Parallel over images: an image's patches touch only that image.
void col2im(const ConvGeom& g, const float* cols, float* dx) {
  const int64_t row = g.k * g.k * g.ci;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < g.n; ++b) {
    float* img = dx + b * g.h * g.w * g.ci;
    std::fill(img, img + g.h * g.w * g.ci, 0.f);
    for (int64_t oh = 0; oh < g.oh; ++oh)
      for (int64_t ow = 0; ow < g.ow; ++ow) {
        const float* src = cols + ((b * g.oh + oh) * g.ow + ow) * row;
        for (int64_t kh = 0; kh < g.k; ++kh) {
          const int64_t ih = oh * g.stride - g.pad + kh;
          if (ih < 0 || ih >= g.h) continue;
          for (int64_t kw = 0; kw < g.k; ++kw) {
            const int64_t iw = ow * g.stride - g.pad + kw;
            if (iw < 0 || iw >= g.w) continue;
            const float* s = src + (kh * g.k + kw) * g.ci;
            float* d = img + (ih * g.w + iw) * g.ci;
#pragma omp simd
            for (int64_t c = 0; c < g.ci; ++c) d[c] += s[c];
          }
        }
      }
  }
}

// [Cout, Cin, K, K] <-> [Cout, K, K, Cin] (the patch order of im2col).
void weight_to_khwc(const ConvGeom& g, const float* w, float* out) {
  for (int64_t o = 0; o < g.co; ++o)
    for (int64_t c = 0; c < g.ci; ++c)
      for (int64_t t = 0; t < g.k * g.k; ++t) out[(o * g.k * g.k + t) * g.ci + c] = w[(o * g.ci + c) * g.k * g.k + t];
}
void weight_from_khwc(const ConvGeom& g, const float* w, float* out) {
  for (int64_t o = 0; o < g.co; ++o)
    for (int64_t c = 0; c < g.ci; ++c)
      for (int64_t t = 0; t < g.k * g.k; ++t) out[(o * g.ci + c) * g.k * g.k + t] = w[(o * g.k * g.k + t) * g.ci + c];
}
}  // namespace

// ----------------------------------------------- dense conv (groups 1), x [N, H, W, Cin] -> NHWC
// 1x1 / stride 1 / no padding: y = x W^T directly. Otherwise through im2col (the 3x3 stem only:
// patches of a 3-channel image are small).
std::vector<paddle::Tensor> ConvNhwcForward(const paddle::Tensor& x, const paddle::Tensor& weight, int stride,
                                            int padding, bool need_dx) {
  check_f32(x, "x");
  check_f32(weight, "weight");
  const ConvGeom g = conv_geometry(x, weight, stride, padding, false);
  auto y = paddle::empty({g.n, g.oh, g.ow, g.co}, x.dtype(), x.place());
  const int64_t m = g.n * g.oh * g.ow, kdim = g.k * g.k * g.ci;
  if (is_pointwise(g)) {
    gemm(false, true, m, g.co, g.ci, x.data<float>(), weight.data<float>(), y.data<float>());
  } else {
    std::vector<float> cols(m * kdim), w(g.co * kdim);
    im2col(g, x.data<float>(), cols.data());
    weight_to_khwc(g, weight.data<float>(), w.data());
    gemm(false, true, m, g.co, kdim, cols.data(), w.data(), y.data<float>());
  }
  return {y};
}

std::vector<paddle::Tensor> ConvNhwcBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                             const paddle::Tensor& grad_y, int stride, int padding, bool need_dx) {
  const ConvGeom g = conv_geometry(x, weight, stride, padding, false);
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dw = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  const int64_t m = g.n * g.oh * g.ow, kdim = g.k * g.k * g.ci;
  const float* pdy = grad_y.data<float>();
  if (is_pointwise(g)) {
    gemm(true, false, g.co, g.ci, m, pdy, x.data<float>(), dw.data<float>());
    if (need_dx) gemm(false, false, m, g.ci, g.co, pdy, weight.data<float>(), dx.data<float>());
  } else {
    std::vector<float> cols(m * kdim), w(g.co * kdim), dwk(g.co * kdim);
    im2col(g, x.data<float>(), cols.data());
    gemm(true, false, g.co, kdim, m, pdy, cols.data(), dwk.data());
    weight_from_khwc(g, dwk.data(), dw.data<float>());
    if (need_dx) {
      weight_to_khwc(g, weight.data<float>(), w.data());
      gemm(false, false, m, kdim, g.co, pdy, w.data(), cols.data());  // the patch gradients
      col2im(g, cols.data(), dx.data<float>());
    }
  }
  // need_dx false: x is the input image (no gradient); dx is left unwritten and autograd drops it.
  return {dx, dw};
}

std::vector<std::vector<int64_t>> ConvNhwcInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                     int stride, int padding, bool need_dx) {
  return {{x[0], (x[1] + 2 * padding - w[2]) / stride + 1, (x[2] + 2 * padding - w[3]) / stride + 1, w[0]}};
}
std::vector<paddle::DataType> ConvNhwcInferDtype(const paddle::DataType& x, const paddle::DataType& w) { return {x}; }

PD_BUILD_OP(fast_conv2d_nhwc)
    .Inputs({"X", "Weight"})
    .Outputs({"Out"})
    .Attrs({"stride: int", "padding: int", "need_dx: bool"})
    .SetKernelFn(PD_KERNEL(ConvNhwcForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConvNhwcInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ConvNhwcInferDtype));

PD_BUILD_GRAD_OP(fast_conv2d_nhwc)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight")})
    .Attrs({"stride: int", "padding: int", "need_dx: bool"})
    .SetKernelFn(PD_KERNEL(ConvNhwcBackward));

// ------------------------------------------------- depthwise conv, x [N, H, W, C], weight [C,1,K,K]
// The weight is read as taps [K*K][C] so every multiply-add runs over the contiguous channels.
namespace {
std::vector<float> taps_of(const ConvGeom& g, const float* w) {
  std::vector<float> t(g.k * g.k * g.ci);
  for (int64_t c = 0; c < g.ci; ++c)
    for (int64_t i = 0; i < g.k * g.k; ++i) t[i * g.ci + c] = w[c * g.k * g.k + i];
  return t;
}
}  // namespace

std::vector<paddle::Tensor> DwNhwcForward(const paddle::Tensor& x, const paddle::Tensor& weight, int stride,
                                          int padding) {
  check_f32(x, "x");
  check_f32(weight, "weight");
  const ConvGeom g = conv_geometry(x, weight, stride, padding, true);
  auto y = paddle::empty({g.n, g.oh, g.ow, g.ci}, x.dtype(), x.place());
  const std::vector<float> taps = taps_of(g, weight.data<float>());
  const float* px = x.data<float>();
  const float* pt = taps.data();
  float* py = y.data<float>();
  const int64_t c = g.ci;
#pragma omp parallel for schedule(static)
  for (int64_t nr = 0; nr < g.n * g.oh; ++nr) {
    const int64_t b = nr / g.oh, oh = nr % g.oh;
    for (int64_t ow = 0; ow < g.ow; ++ow) {
      float* yo = py + (nr * g.ow + ow) * c;
      std::fill(yo, yo + c, 0.f);
      for (int64_t kh = 0; kh < g.k; ++kh) {
        const int64_t ih = oh * g.stride - g.pad + kh;
        if (ih < 0 || ih >= g.h) continue;
        for (int64_t kw = 0; kw < g.k; ++kw) {
          const int64_t iw = ow * g.stride - g.pad + kw;
          if (iw < 0 || iw >= g.w) continue;
          const float* xi = px + ((b * g.h + ih) * g.w + iw) * c;
          const float* wk = pt + (kh * g.k + kw) * c;
#pragma omp simd
          for (int64_t j = 0; j < c; ++j) yo[j] += xi[j] * wk[j];
        }
      }
    }
  }
  return {y};
}

std::vector<paddle::Tensor> DwNhwcBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                           const paddle::Tensor& grad_y, int stride, int padding) {
  const ConvGeom g = conv_geometry(x, weight, stride, padding, true);
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dw = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  const std::vector<float> taps = taps_of(g, weight.data<float>());
  const float* px = x.data<float>();
  const float* pdy = grad_y.data<float>();
  const float* pt = taps.data();
  float* pdx = dx.data<float>();
  const int64_t c = g.ci, kk = g.k * g.k;
  // dx, gathered per input pixel from the outputs whose window covers it (no write conflicts).
#pragma omp parallel for schedule(static)
  for (int64_t nr = 0; nr < g.n * g.h; ++nr) {
    const int64_t b = nr / g.h, ih = nr % g.h;
    for (int64_t iw = 0; iw < g.w; ++iw) {
      float* d = pdx + (nr * g.w + iw) * c;
      std::fill(d, d + c, 0.f);
      for (int64_t kh = 0; kh < g.k; ++kh) {
        const int64_t th = ih + g.pad - kh;  // = oh * stride
        if (th < 0 || th % g.stride != 0 || th / g.stride >= g.oh) continue;
        const int64_t oh = th / g.stride;
        for (int64_t kw = 0; kw < g.k; ++kw) {
          const int64_t tw = iw + g.pad - kw;
          if (tw < 0 || tw % g.stride != 0 || tw / g.stride >= g.ow) continue;
          const float* go = pdy + ((b * g.oh + oh) * g.ow + tw / g.stride) * c;
          const float* wk = pt + (kh * g.k + kw) * c;
#pragma omp simd
          for (int64_t j = 0; j < c; ++j) d[j] += go[j] * wk[j];
        }
      }
    }
  }
  // dw[tap][c] = sum over outputs of dy * x under that tap: per output row in float, then in double.
  std::vector<double> sums;
  column_sums(g.n * g.oh, kk * c, 1, [&](int64_t r0, int64_t r1, float* row) {
    for (int64_t nr = r0; nr < r1; ++nr) {
      const int64_t b = nr / g.oh, oh = nr % g.oh;
      for (int64_t ow = 0; ow < g.ow; ++ow) {
        const float* go = pdy + (nr * g.ow + ow) * c;
        for (int64_t kh = 0; kh < g.k; ++kh) {
          const int64_t ih = oh * g.stride - g.pad + kh;
          if (ih < 0 || ih >= g.h) continue;
          for (int64_t kw = 0; kw < g.k; ++kw) {
            const int64_t iw = ow * g.stride - g.pad + kw;
            if (iw < 0 || iw >= g.w) continue;
            const float* xi = px + ((b * g.h + ih) * g.w + iw) * c;
            float* r = row + (kh * g.k + kw) * c;
#pragma omp simd
            for (int64_t j = 0; j < c; ++j) r[j] += go[j] * xi[j];
          }
        }
      }
    }
  }, &sums);
  float* pdw = dw.data<float>();
  for (int64_t ch = 0; ch < c; ++ch)
    for (int64_t i = 0; i < kk; ++i) pdw[ch * kk + i] = static_cast<float>(sums[i * c + ch]);
  return {dx, dw};
}

std::vector<std::vector<int64_t>> DwNhwcInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                   int stride, int padding) {
  return {{x[0], (x[1] + 2 * padding - w[2]) / stride + 1, (x[2] + 2 * padding - w[3]) / stride + 1, x[3]}};
}
std::vector<paddle::DataType> DwNhwcInferDtype(const paddle::DataType& x, const paddle::DataType& w) { return {x}; }

PD_BUILD_OP(fast_depthwise_conv2d_nhwc)
    .Inputs({"X", "Weight"})
    .Outputs({"Out"})
    .Attrs({"stride: int", "padding: int"})
    .SetKernelFn(PD_KERNEL(DwNhwcForward))
    .SetInferShapeFn(PD_INFER_SHAPE(DwNhwcInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DwNhwcInferDtype));

PD_BUILD_GRAD_OP(fast_depthwise_conv2d_nhwc)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight")})
    .Attrs({"stride: int", "padding: int"})
    .SetKernelFn(PD_KERNEL(DwNhwcBackward));

// ------------------------------------------ BatchNorm + PReLU over the last dim, saving only y
// The NCHW kernel's arithmetic (models/csrc/fast_cpu_ops.cc) on rows of C channels: x [M, C].
// Mean and variance come from one pass of sums of x and x^2 (float over 16 rows, then double: the
// variance E[x^2] - mean^2 in double loses nothing that matters unless |mean| >> spread).
namespace {
constexpr int64_t kBlockRows = 16;  // rows summed in float before they are added to the double sums

// sum and sum of squares of x's rows [r0, r1) into part[0:c] and part[c:2c]
inline void add_moments(const float* __restrict x, int64_t c, int64_t r0, int64_t r1, float* __restrict part) {
  float* __restrict s1 = part;
  float* __restrict s2 = part + c;
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict xr = x + r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      s1[j] += xr[j];
      s2[j] += xr[j] * xr[j];
    }
  }
}

// the BatchNorm + PReLU backward sums of rows [r0, r1): dz, dz * x_hat and the slope gradient
inline void add_backward_sums(const float* __restrict y, const float* __restrict dy, const float* __restrict a,
                              const float* __restrict inv_a, const float* __restrict beta,
                              const float* __restrict inv_gamma, int64_t c, int64_t r0, int64_t r1,
                              float* __restrict part) {
  float* __restrict s_dz = part;
  float* __restrict s_dzx = part + c;
  float* __restrict s_da = part + 2 * c;
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict yr = y + r * c;
    const float* __restrict gr = dy + r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const float yv = yr[j], gv = gr[j];
      const bool pos = yv > 0.f;
      const float z = pos ? yv : yv * inv_a[j];
      const float dz = pos ? gv : a[j] * gv;
      s_dz[j] += dz;
      s_dzx[j] += dz * ((z - beta[j]) * inv_gamma[j]);
      s_da[j] += pos ? 0.f : z * gv;
    }
  }
}
}  // namespace

std::vector<paddle::Tensor> BnPreluNhwcForward(const paddle::Tensor& x, const paddle::Tensor& gamma,
                                               const paddle::Tensor& beta, const paddle::Tensor& slope, float eps) {
  check_f32(x, "x");
  check_f32(gamma, "gamma");
  check_f32(beta, "beta");
  check_f32(slope, "slope");
  const int64_t c = x.shape().back();
  PD_CHECK(c > 0 && gamma.numel() == c && beta.numel() == c && slope.numel() == c,
           "gamma, beta and slope must have one value per channel (the last dim)");
  const int64_t m = x.numel() / c;
  PD_CHECK(m > 0, "BatchNorm needs at least one value per channel");
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  auto mean = paddle::empty({c}, x.dtype(), x.place());
  auto var = paddle::empty({c}, x.dtype(), x.place());
  auto inv_std = paddle::empty({c}, x.dtype(), x.place());
  const float* px = x.data<float>();
  std::vector<double> sums;
  column_sums(m, 2 * c, kBlockRows, [&](int64_t r0, int64_t r1, float* part) { add_moments(px, c, r0, r1, part); }, &sums);
  std::vector<float> scale(c), shift(c);
  const float* pg = gamma.data<float>();
  const float* pb = beta.data<float>();
  for (int64_t j = 0; j < c; ++j) {
    const double mu = sums[j] / static_cast<double>(m);
    const double v = std::max(sums[c + j] / static_cast<double>(m) - mu * mu, 0.0);  // biased, as Paddle's
    const double inv = 1.0 / std::sqrt(v + static_cast<double>(eps));
    mean.data<float>()[j] = static_cast<float>(mu);
    var.data<float>()[j] = static_cast<float>(v);
    inv_std.data<float>()[j] = static_cast<float>(inv);
    scale[j] = static_cast<float>(pg[j] * inv);
    shift[j] = static_cast<float>(pb[j] - mu * pg[j] * inv);
  }
  const float* pa = slope.data<float>();
  const float* ps = scale.data();
  const float* pf = shift.data();
  float* py = y.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = px + r * c;
    float* yr = py + r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const float z = xr[j] * ps[j] + pf[j];
      yr[j] = z > 0.f ? z : pa[j] * z;
    }
  }
  return {y, mean, var, inv_std};
}

std::vector<paddle::Tensor> BnPreluNhwcBackward(const paddle::Tensor& y, const paddle::Tensor& grad_y,
                                                const paddle::Tensor& gamma, const paddle::Tensor& beta,
                                                const paddle::Tensor& slope, const paddle::Tensor& inv_std) {
  check_f32(y, "y");
  check_f32(grad_y, "grad_y");
  PD_CHECK(grad_y.numel() == y.numel(), "grad_y must have the shape of y");
  const int64_t c = y.shape().back(), m = y.numel() / c;
  auto dx = paddle::empty(y.shape(), y.dtype(), y.place());
  auto dgamma = paddle::empty({c}, y.dtype(), y.place());
  auto dbeta = paddle::empty({c}, y.dtype(), y.place());
  auto dslope = paddle::empty({c}, y.dtype(), y.place());
  const float* py = y.data<float>();
  const float* pdy = grad_y.data<float>();
  const float* pa = slope.data<float>();
  const float* pb = beta.data<float>();
  std::vector<float> inv_a(c), inv_g(c);
  for (int64_t j = 0; j < c; ++j) {
    inv_a[j] = 1.f / pa[j];
    inv_g[j] = 1.f / gamma.data<float>()[j];
  }
  const float* pia = inv_a.data();
  const float* pig = inv_g.data();
  // sums of dz, dz * x_hat and the slope gradient, per channel
  std::vector<double> sums;
  column_sums(m, 3 * c, kBlockRows, [&](int64_t r0, int64_t r1, float* part) {
    add_backward_sums(py, pdy, pa, pia, pb, pig, c, r0, r1, part);
  }, &sums);
  std::vector<float> k(c), mean_dz(c), mean_dzx(c);
  for (int64_t j = 0; j < c; ++j) {
    dbeta.data<float>()[j] = static_cast<float>(sums[j]);
    dgamma.data<float>()[j] = static_cast<float>(sums[c + j]);
    dslope.data<float>()[j] = static_cast<float>(sums[2 * c + j]);
    k[j] = gamma.data<float>()[j] * inv_std.data<float>()[j];
    mean_dz[j] = static_cast<float>(sums[j] / static_cast<double>(m));
    mean_dzx[j] = static_cast<float>(sums[c + j] / static_cast<double>(m));
  }
  const float* pk = k.data();
  const float* pmd = mean_dz.data();
  const float* pmx = mean_dzx.data();
  float* pdx = dx.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r) {
    const float* yr = py + r * c;
    const float* gr = pdy + r * c;
    float* dr = pdx + r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const float yv = yr[j], gv = gr[j];
      const bool pos = yv > 0.f;
      const float z = pos ? yv : yv * pia[j];
      const float dz = pos ? gv : pa[j] * gv;
      const float xhat = (z - pb[j]) * pig[j];
      dr[j] = pk[j] * (dz - pmd[j] - xhat * pmx[j]);
    }
  }
  return {dx, dgamma, dbeta, dslope};
}

std::vector<std::vector<int64_t>> BnNhwcInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& gamma,
                                                   const std::vector<int64_t>& beta, const std::vector<int64_t>& slope,
                                                   float eps) {
  return {x, {x.back()}, {x.back()}, {x.back()}};
}
std::vector<paddle::DataType> BnNhwcInferDtype(const paddle::DataType& x, const paddle::DataType& gamma,
                                               const paddle::DataType& beta, const paddle::DataType& slope) {
  return {x, x, x, x};
}

// No grad op: models/fast_cpu_ops.py wraps the pair in a PyLayer that saves only y.
PD_BUILD_OP(fast_bn_prelu_nhwc)
    .Inputs({"X", "Gamma", "Beta", "Slope"})
    .Outputs({"Y", "Mean", "Var", "InvStd"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(BnPreluNhwcForward))
    .SetInferShapeFn(PD_INFER_SHAPE(BnNhwcInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(BnNhwcInferDtype));

std::vector<std::vector<int64_t>> BnNhwcBwdInferShape(const std::vector<int64_t>& y, const std::vector<int64_t>& dy,
                                                      const std::vector<int64_t>& gamma,
                                                      const std::vector<int64_t>& beta,
                                                      const std::vector<int64_t>& slope,
                                                      const std::vector<int64_t>& inv_std) {
  return {y, {y.back()}, {y.back()}, {y.back()}};
}
std::vector<paddle::DataType> BnNhwcBwdInferDtype(const paddle::DataType& y, const paddle::DataType& dy,
                                                  const paddle::DataType& gamma, const paddle::DataType& beta,
                                                  const paddle::DataType& slope, const paddle::DataType& inv_std) {
  return {y, y, y, y};
}

PD_BUILD_OP(fast_bn_prelu_nhwc_backward)
    .Inputs({"Y", "GradY", "Gamma", "Beta", "Slope", "InvStd"})
    .Outputs({"GradX", "GradGamma", "GradBeta", "GradSlope"})
    .SetKernelFn(PD_KERNEL(BnPreluNhwcBackward))
    .SetInferShapeFn(PD_INFER_SHAPE(BnNhwcBwdInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(BnNhwcBwdInferDtype));
#endif  // FACEFEAT_HAVE_CBLAS
