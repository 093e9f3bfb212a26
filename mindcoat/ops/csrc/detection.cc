// Host-side detection steps whose sizes depend on the data (mindcoat.ops.detection calls them
// through ctypes on NumPy arrays; they are not MindSpore operators):
//   RoiAlign  RoIAlign (average, aligned or not, adaptive or fixed sampling grid) of k RoIs on a
//             channels-last feature map (H, W, C) -> (k, out_h, out_w, C)
//   Nms       greedy NMS over boxes already in visiting order -> the positions kept
// Both compute what the NumPy reference in mindcoat/ops/detection computes, in the same order of
// floating-point operations, so the results are equal bit for bit: no contraction of a * b + c
// into one FMA (that rounds once instead of twice), which -march=native would otherwise allow.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "common.h"

#include <cmath>
#include <cstdint>
#include <vector>

using mindcoat::ParallelFor;

namespace {

// The sampling positions along one axis of one RoI: for bin p and sample i, the two pixels read
// and the weight of each (zero weights and pixel 0 where the sample falls outside the map).
struct Axis {
  std::vector<int64_t> low, high;
  std::vector<float> low_weight, high_weight;
};

void AxisSamples(float start, float bin, int64_t grid, int64_t pooled, int64_t size, Axis *axis) {
  const int64_t n = pooled * grid;
  axis->low.assign(n, 0);
  axis->high.assign(n, 0);
  axis->low_weight.assign(n, 0.0f);
  axis->high_weight.assign(n, 0.0f);
  for (int64_t p = 0; p < pooled; ++p)
    for (int64_t i = 0; i < grid; ++i) {
      float c = (start + static_cast<float>(p) * bin) +
                ((static_cast<float>(i) + 0.5f) * bin) / static_cast<float>(grid);
      if (c < -1.0f || c > static_cast<float>(size)) continue;
      if (c <= 0) c = 0;
      int64_t low = static_cast<int64_t>(c), high;
      if (low >= size - 1) {
        low = high = size - 1;
        c = static_cast<float>(low);
      } else {
        high = low + 1;
      }
      const float lw = c - static_cast<float>(low);
      axis->low[p * grid + i] = low;
      axis->high[p * grid + i] = high;
      axis->low_weight[p * grid + i] = 1.0f - lw;
      axis->high_weight[p * grid + i] = lw;
    }
}

}  // namespace

// feat (height, width, channels) float32; rois (k, 4) x1, y1, x2, y2 in input pixels; out (k,
// out_h, out_w, channels). sampling_ratio <= 0: ceil(roi size / out size) samples per bin and
// axis, as torchvision.
// Returns 0, or 1 for sizes it cannot take.
extern "C" int RoiAlign(const float *feat, int64_t height, int64_t width, int64_t channels,
                        const float *rois, int64_t k, int64_t out_h, int64_t out_w,
                        float spatial_scale, int64_t sampling_ratio, int aligned, float *out) {
  if (height <= 0 || width <= 0 || channels <= 0 || k < 0 || out_h <= 0 || out_w <= 0) return 1;
  const int64_t plane = out_h * out_w * channels;
  ParallelFor(k, [&](int64_t begin, int64_t end) {
    Axis ys, xs;
    std::vector<float> acc(channels);
    for (int64_t r = begin; r < end; ++r) {
      const float *roi = rois + 4 * r;
      float *dst = out + r * plane;
      const float offset = aligned ? 0.5f : 0.0f;
      const float start_w = roi[0] * spatial_scale - offset;
      const float start_h = roi[1] * spatial_scale - offset;
      float roi_w = (roi[2] * spatial_scale - offset) - start_w;
      float roi_h = (roi[3] * spatial_scale - offset) - start_h;
      if (!aligned) {
        roi_w = std::max(roi_w, 1.0f);
        roi_h = std::max(roi_h, 1.0f);
      }
      const float bin_h = roi_h / static_cast<float>(out_h);
      const float bin_w = roi_w / static_cast<float>(out_w);
      // ceil(roi size / output size) samples per bin and axis, unless fixed (a positive ratio)
      int64_t grid_h = sampling_ratio, grid_w = sampling_ratio;
      if (sampling_ratio <= 0) {
        grid_h = static_cast<int64_t>(std::ceil(roi_h / static_cast<float>(out_h)));
        grid_w = static_cast<int64_t>(std::ceil(roi_w / static_cast<float>(out_w)));
      }
      if (grid_h <= 0 || grid_w <= 0) {  // an empty grid averages nothing
        std::fill(dst, dst + plane, 0.0f);
        continue;
      }
      const float count = static_cast<float>(grid_h * grid_w);
      AxisSamples(start_h, bin_h, grid_h, out_h, height, &ys);
      AxisSamples(start_w, bin_w, grid_w, out_w, width, &xs);
      for (int64_t ph = 0; ph < out_h; ++ph)
        for (int64_t pw = 0; pw < out_w; ++pw) {
          std::fill(acc.begin(), acc.end(), 0.0f);
          float *a = acc.data();
          for (int64_t iy = 0; iy < grid_h; ++iy) {
            const int64_t y = ph * grid_h + iy;
            const float hy = ys.low_weight[y], ly = ys.high_weight[y];  // torchvision's names
            const float *row_l = feat + ys.low[y] * width * channels;
            const float *row_h = feat + ys.high[y] * width * channels;
            for (int64_t ix = 0; ix < grid_w; ++ix) {
              const int64_t x = pw * grid_w + ix;
              const float hx = xs.low_weight[x], lx = xs.high_weight[x];
              const float w1 = hy * hx, w2 = hy * lx, w3 = ly * hx, w4 = ly * lx;
              const float *f1 = row_l + xs.low[x] * channels, *f2 = row_l + xs.high[x] * channels;
              const float *f3 = row_h + xs.low[x] * channels, *f4 = row_h + xs.high[x] * channels;
#pragma omp simd
              for (int64_t c = 0; c < channels; ++c)
                a[c] += ((w1 * f1[c] + w2 * f2[c]) + w3 * f3[c]) + w4 * f4[c];
            }
          }
          float *o = dst + (ph * out_w + pw) * channels;
#pragma omp simd
          for (int64_t c = 0; c < channels; ++c) o[c] = a[c] / count;
        }
    }
  });
  return 0;
}

// boxes (n, 4) x1, y1, x2, y2 in the order NMS visits them (score descending); box j is
// suppressed by a kept box i when inter / (area_i + area_j - inter) > threshold. Writes the
// positions kept, in order, to keep (room for n); returns how many.
extern "C" int64_t Nms(const float *boxes, int64_t n, float threshold, int64_t *keep) {
  std::vector<float> area(n);
  for (int64_t i = 0; i < n; ++i)
    area[i] = (boxes[4 * i + 2] - boxes[4 * i]) * (boxes[4 * i + 3] - boxes[4 * i + 1]);
  std::vector<char> alive(n, 1);
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!alive[i]) continue;
    keep[kept++] = i;
    const float *b = boxes + 4 * i;
    for (int64_t j = i + 1; j < n; ++j) {
      if (!alive[j]) continue;
      const float *o = boxes + 4 * j;
      const float w = std::max(0.0f, std::min(b[2], o[2]) - std::max(b[0], o[0]));
      const float h = std::max(0.0f, std::min(b[3], o[3]) - std::max(b[1], o[1]));
      const float inter = w * h;
      if (inter / ((area[i] + area[j]) - inter) > threshold) alive[j] = 0;
    }
  }
  return kept;
}

// ---- self-check (see common.h) ---------------------------------------------------------------
// RoiAlign on a ramp f(y, x, c) = y + 2x + c, where each output is the mean sampled position's
// value (bilinear interpolation is exact on it), and Nms on three boxes.
extern "C" int MindcoatSelfCheck(char *message, int length) {
  const int64_t H = 9, W = 11, C = 3;
  std::vector<float> feat(H * W * C);
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      for (int64_t c = 0; c < C; ++c) feat[(y * W + x) * C + c] = y + 2.0f * x + c;
  const float rois[4] = {2.0f, 1.0f, 8.0f, 5.0f};  // at scale 1, aligned: starts at (1.5, 0.5)
  std::vector<float> got(2 * 2 * C), want(2 * 2 * C);
  for (int64_t ph = 0; ph < 2; ++ph)
    for (int64_t pw = 0; pw < 2; ++pw)
      for (int64_t c = 0; c < C; ++c)  // bin centres: y 0.5 + (ph + .5) * 2, x 1.5 + (pw + .5) * 3
        want[(ph * 2 + pw) * C + c] = (1.5f + 2.0f * ph) + 2.0f * (3.0f + 3.0f * pw) + c;
  int status = RoiAlign(feat.data(), H, W, C, rois, 1, 2, 2, 1.0f, 0, 1, got.data());
  if (mindcoat::Verdict("RoiAlign", status, got, want, 1e-5f, message, length)) return 1;
  const float boxes[12] = {0, 0, 10, 10, 1, 1, 10, 10, 20, 20, 30, 30};
  int64_t keep[3] = {-1, -1, -1};
  const int64_t kept = Nms(boxes, 3, 0.5f, keep);
  if (kept != 2 || keep[0] != 0 || keep[1] != 2) {
    std::snprintf(message, length, "Nms kept %lld boxes, not boxes 0 and 2",
                  static_cast<long long>(kept));
    return 1;
  }
  return 0;
}
