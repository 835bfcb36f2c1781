// The lecture cells' recurrence as two TensorFlow CPU kernels, used by `keras_rnnx.RNN` in
// training (see keras_rnnx/_native/__init__.py, which compiles this file on first use).
//
// With a_t = p_t + h_{t-1} R, where p_t = x_t W + b is computed for all t by TensorFlow before
// the loop, and the blocks of a_t in the cells' column order (attribute `cell`):
//   "forget":   [i f z o] = [σ σ tanh σ](a_t),  c_t = f c_{t-1} + i z,  h_t = o tanh(c_t)
//   "original": [i z o]   = [σ tanh σ](a_t),    c_t = c_{t-1} + i z,    h_t = o tanh(c_t)
//   "cec":      z = tanh(a_t),                  c_t = c_{t-1} + z,      h_t = tanh(c_t)
//   "vanilla":  h_t = tanh(a_t)                 (c_t is h_t: the cell has one state)
//
// RnnxCellForward runs the loop once and keeps the block activations; RnnxCellBackward runs
// it backwards from them: per step only the elementwise derivatives and dh_{t-1} = da_t Rᵀ,
// then dR = Σ_t h_{t-1}ᵀ da_t as one large product (unless attribute
// `with_d_recurrent_kernel` is false: then that output is an empty [0, width] tensor and the
// caller computes dR, e.g. with TensorFlow's MatMul, which measured faster than Eigen's
// contraction). The recurrence of
// each sample is independent of the others, so the batch is split into row blocks that
// TensorFlow's intra-op thread pool runs through all steps at once, without a synchronisation
// per step; dR runs on the whole pool.

#define EIGEN_USE_THREADS
#include <algorithm>
#include <atomic>
#include <string>

#include <Eigen/Core>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/blocking_counter.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "unsupported/Eigen/CXX11/Tensor"

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#ifdef RNNX_XLA_CUSTOM_CALL
#include "xla/service/custom_call_status.h"
#include "xla/service/custom_call_target_registry.h"
#endif

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;

using Array = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ArrayMap = Eigen::Map<Array>;
using ConstArrayMap = Eigen::Map<const Array>;
using Matrix = Eigen::TensorMap<Eigen::Tensor<float, 2, Eigen::RowMajor>>;
using ConstMatrix = Eigen::TensorMap<Eigen::Tensor<const float, 2, Eigen::RowMajor>>;
using Product = Eigen::array<Eigen::IndexPair<int>, 1>;
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrixMap = Eigen::Map<RowMatrix>;
using ConstRowMatrixMap = Eigen::Map<const RowMatrix>;

// Contraction index pairs: a·b, a·bᵀ and aᵀ·b.
const Product kAtB = {Eigen::IndexPair<int>(0, 0)};

// Runs body(first_row, rows) for row blocks of the batch, in parallel on the intra-op pool:
// one block per thread (smaller blocks make the per-step product slower: measured 10-30 %
// slower with two or four blocks per thread on a 2-core AMD EPYC), at least kMinRows rows
// each. The calling thread and the pool threads take blocks from a shared counter, so a block
// whose pool thread has not started yet (the pool is busy, e.g. with the input pipeline
// during model.fit) is run by whichever thread is free first.
constexpr int64_t kMinRows = 8;

template <typename Body>
void ForRowBlocks(OpKernelContext* context, int64_t batch, Body body) {
  const auto* workers = context->device()->tensorflow_cpu_worker_threads();
  const int64_t threads = std::max(1, workers->num_threads);
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>(threads, batch / kMinRows));
  const auto run_block = [&](int64_t k) {
    const int64_t first = k * batch / blocks;
    body(first, (k + 1) * batch / blocks - first);
  };
  if (blocks == 1) {
    run_block(0);
    return;
  }
  std::atomic<int64_t> next{0};
  const auto take_blocks = [&]() {
    for (int64_t k = next.fetch_add(1); k < blocks; k = next.fetch_add(1)) run_block(k);
  };
  const int64_t helpers = std::min(threads, blocks) - 1;
  tensorflow::BlockingCounter done(static_cast<int>(helpers));
  for (int64_t i = 0; i < helpers; ++i) {
    workers->workers->Schedule([&]() {
      take_blocks();
      done.DecrementCount();
    });
  }
  take_blocks();
  done.Wait();
}

tensorflow::Status CheckMatrix(const Tensor& t, const char* name, int64_t rows, int64_t cols) {
  if (t.dims() != 2 || t.dim_size(0) != rows || t.dim_size(1) != cols) {
    return InvalidArgument(name, " must have shape [", rows, ", ", cols, "], got ",
                           t.shape().DebugString());
  }
  return absl::OkStatus();
}

tensorflow::Status CheckSequence(const Tensor& t, const char* name, int64_t steps,
                                  int64_t batch, int64_t width) {
  if (t.dims() != 3 || t.dim_size(0) != steps || t.dim_size(1) != batch ||
      t.dim_size(2) != width) {
    return InvalidArgument(name, " must have shape [", steps, ", ", batch, ", ", width,
                           "], got ", t.shape().DebugString());
  }
  return absl::OkStatus();
}

enum class Cell { kForget, kOriginal, kCec, kVanilla };

int Blocks(Cell cell) {
  switch (cell) {
    case Cell::kForget: return 4;
    case Cell::kOriginal: return 3;
    default: return 1;
  }
}

// The cell named by the ops' `cell` attribute (and the XLA custom call's config).
bool CellFromName(const std::string& name, Cell* cell) {
  if (name == "forget") *cell = Cell::kForget;
  else if (name == "original") *cell = Cell::kOriginal;
  else if (name == "cec") *cell = Cell::kCec;
  else if (name == "vanilla") *cell = Cell::kVanilla;
  else return false;
  return true;
}

tensorflow::Status ParseCell(OpKernelConstruction* context, Cell* cell) {
  std::string name;
  TF_RETURN_IF_ERROR(context->GetAttr("cell", &name));
  if (!CellFromName(name, cell)) return InvalidArgument("unknown cell ", name);
  return absl::OkStatus();
}

// Both kernels: an OpKernel that knows its cell from the `cell` attribute.
class CellKernel : public OpKernel {
 public:
  explicit CellKernel(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, ParseCell(context, &cell_));
  }

 protected:
  Cell cell_;
};

class CellForward : public CellKernel {
 public:
  using CellKernel::CellKernel;

  void Compute(OpKernelContext* context) override {
    const Tensor& p = context->input(0);
    const Tensor& r = context->input(1);
    const Tensor& h0 = context->input(2);
    const Tensor& c0 = context->input(3);
    const int blocks = Blocks(cell_);
    OP_REQUIRES(context, p.dims() == 3 && p.dim_size(2) % blocks == 0,
                InvalidArgument("p must have shape [time, batch, ", blocks, " * units], got ",
                                p.shape().DebugString()));
    const int64_t steps = p.dim_size(0), batch = p.dim_size(1), width = p.dim_size(2);
    const int64_t units = width / blocks;
    OP_REQUIRES_OK(context, CheckMatrix(r, "recurrent_kernel", units, width));
    OP_REQUIRES_OK(context, CheckMatrix(h0, "h0", batch, units));
    OP_REQUIRES_OK(context, CheckMatrix(c0, "c0", batch, units));

    Tensor *h = nullptr, *c = nullptr, *gates = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({steps, batch, units}), &h));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({steps, batch, units}), &c));
    OP_REQUIRES_OK(context, context->allocate_output(2, p.shape(), &gates));
    if (steps == 0 || batch == 0 || units == 0) return;

    const float* p_data = p.flat<float>().data();
    float* h_data = h->flat<float>().data();
    float* c_data = c->flat<float>().data();
    float* g_data = gates->flat<float>().data();
    ConstRowMatrixMap rec(r.flat<float>().data(), units, width);
    const int64_t state = batch * units, gate = batch * width;
    ForRowBlocks(context, batch, [&](int64_t first, int64_t rows) {
      // Rows first .. first + rows of one step are contiguous in every [time, batch, ·] array.
      const float* h_prev = h0.flat<float>().data() + first * units;
      const float* c_prev = c0.flat<float>().data() + first * units;
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t at_gate = t * gate + first * width, at_state = t * state + first * units;
        RowMatrixMap a(g_data + at_gate, rows, width);
        a = ConstRowMatrixMap(p_data + at_gate, rows, width);
        a.noalias() += ConstRowMatrixMap(h_prev, rows, units) * rec;
        ArrayMap g(g_data + at_gate, rows, width);
        ArrayMap c_t(c_data + at_state, rows, units), h_t(h_data + at_state, rows, units);
        const ConstArrayMap c_before(c_prev, rows, units);
        switch (cell_) {
          case Cell::kForget:
            g.leftCols(2 * units) = g.leftCols(2 * units).logistic();
            g.middleCols(2 * units, units) = g.middleCols(2 * units, units).tanh();
            g.rightCols(units) = g.rightCols(units).logistic();
            c_t = g.middleCols(units, units) * c_before +
                  g.leftCols(units) * g.middleCols(2 * units, units);
            h_t = g.rightCols(units) * c_t.tanh();
            break;
          case Cell::kOriginal:
            g.leftCols(units) = g.leftCols(units).logistic();
            g.middleCols(units, units) = g.middleCols(units, units).tanh();
            g.rightCols(units) = g.rightCols(units).logistic();
            c_t = c_before + g.leftCols(units) * g.middleCols(units, units);
            h_t = g.rightCols(units) * c_t.tanh();
            break;
          case Cell::kCec:
            g = g.tanh();
            c_t = c_before + g;
            h_t = c_t.tanh();
            break;
          case Cell::kVanilla:
            g = g.tanh();
            h_t = g;
            c_t = g;
            break;
        }
        h_prev = h_data + at_state;
        c_prev = c_data + at_state;
      }
    });
  }
};

class CellBackward : public CellKernel {
 public:
  explicit CellBackward(OpKernelConstruction* context) : CellKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("with_d_recurrent_kernel", &d_recurrent_kernel_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& r = context->input(0);
    const Tensor& h0 = context->input(1);
    const Tensor& c0 = context->input(2);
    const Tensor& h = context->input(3);
    const Tensor& c = context->input(4);
    const Tensor& gates = context->input(5);
    const Tensor& dh_seq = context->input(6);
    const Tensor& dh_last = context->input(7);
    const Tensor& dc_last = context->input(8);
    const int blocks = Blocks(cell_);
    OP_REQUIRES(context, gates.dims() == 3 && gates.dim_size(2) % blocks == 0,
                InvalidArgument("gates must have shape [time, batch, ", blocks,
                                " * units], got ", gates.shape().DebugString()));
    const int64_t steps = gates.dim_size(0), batch = gates.dim_size(1);
    const int64_t width = gates.dim_size(2), units = width / blocks;
    OP_REQUIRES_OK(context, CheckMatrix(r, "recurrent_kernel", units, width));
    OP_REQUIRES_OK(context, CheckMatrix(h0, "h0", batch, units));
    OP_REQUIRES_OK(context, CheckMatrix(c0, "c0", batch, units));
    OP_REQUIRES_OK(context, CheckSequence(h, "h", steps, batch, units));
    OP_REQUIRES_OK(context, CheckSequence(c, "c", steps, batch, units));
    OP_REQUIRES_OK(context, CheckSequence(dh_seq, "dh_seq", steps, batch, units));
    OP_REQUIRES_OK(context, CheckMatrix(dh_last, "dh_last", batch, units));
    OP_REQUIRES_OK(context, CheckMatrix(dc_last, "dc_last", batch, units));

    Tensor *dp = nullptr, *dr = nullptr, *dh0 = nullptr, *dc0 = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, gates.shape(), &dp));
    OP_REQUIRES_OK(context, context->allocate_output(
                                1, d_recurrent_kernel_ ? r.shape() : TensorShape({0, width}),
                                &dr));
    OP_REQUIRES_OK(context, context->allocate_output(2, h0.shape(), &dh0));
    OP_REQUIRES_OK(context, context->allocate_output(3, c0.shape(), &dc0));
    const auto& device = context->eigen_device<Eigen::ThreadPoolDevice>();
    Matrix d_rec(dr->flat<float>().data(), d_recurrent_kernel_ ? units : 0, width);
    if (steps == 0 || batch == 0 || units == 0) {
      d_rec.device(device) = d_rec.constant(0.0f);
      ArrayMap(dh0->flat<float>().data(), batch, units) =
          ConstArrayMap(dh_last.flat<float>().data(), batch, units);
      ArrayMap(dc0->flat<float>().data(), batch, units) =
          ConstArrayMap(dc_last.flat<float>().data(), batch, units);
      return;
    }

    ConstRowMatrixMap rec(r.flat<float>().data(), units, width);
    const float* c_data = c.flat<float>().data();
    const float* g_data = gates.flat<float>().data();
    const float* dh_data = dh_seq.flat<float>().data();
    float* da_data = dp->flat<float>().data();
    const int64_t state = batch * units, gate = batch * width;
    ForRowBlocks(context, batch, [&](int64_t first, int64_t rows) {
      Array dh = ConstArrayMap(dh_last.flat<float>().data() + first * units, rows, units);
      Array dc = ConstArrayMap(dc_last.flat<float>().data() + first * units, rows, units);
      Array tanh_c(rows, units);
      for (int64_t t = steps - 1; t >= 0; --t) {
        const int64_t at_gate = t * gate + first * width, at_state = t * state + first * units;
        dh += ConstArrayMap(dh_data + at_state, rows, units);
        ConstArrayMap g(g_data + at_gate, rows, width);
        ArrayMap da(da_data + at_gate, rows, width);
        const float* c_prev = t > 0 ? c_data + at_state - state
                                    : c0.flat<float>().data() + first * units;
        if (cell_ != Cell::kVanilla) {
          tanh_c = ConstArrayMap(c_data + at_state, rows, units).tanh();
        }
        switch (cell_) {
          case Cell::kForget: {
            const auto i = g.leftCols(units);
            const auto f = g.middleCols(units, units);
            const auto z = g.middleCols(2 * units, units);
            const auto o = g.rightCols(units);
            dc += dh * o * (1.0f - tanh_c.square());
            da.leftCols(units) = dc * z * i * (1.0f - i);
            da.middleCols(units, units) =
                dc * ConstArrayMap(c_prev, rows, units) * f * (1.0f - f);
            da.middleCols(2 * units, units) = dc * i * (1.0f - z.square());
            da.rightCols(units) = dh * tanh_c * o * (1.0f - o);
            dc *= f;
            break;
          }
          case Cell::kOriginal: {
            const auto i = g.leftCols(units);
            const auto z = g.middleCols(units, units);
            const auto o = g.rightCols(units);
            dc += dh * o * (1.0f - tanh_c.square());
            da.leftCols(units) = dc * z * i * (1.0f - i);
            da.middleCols(units, units) = dc * i * (1.0f - z.square());
            da.rightCols(units) = dh * tanh_c * o * (1.0f - o);
            break;  // ∂c_t/∂c_{t-1} = 1
          }
          case Cell::kCec:
            dc += dh * (1.0f - tanh_c.square());
            da = dc * (1.0f - g.square());
            break;  // ∂c_t/∂c_{t-1} = 1
          case Cell::kVanilla:
            da = dh * (1.0f - g.square());
            break;
        }
        dh.matrix().noalias() = ConstRowMatrixMap(da_data + at_gate, rows, width) *
                                rec.transpose();
      }
      ArrayMap(dh0->flat<float>().data() + first * units, rows, units) = dh;
      ArrayMap(dc0->flat<float>().data() + first * units, rows, units) = dc;
    });
    if (!d_recurrent_kernel_) return;
    // dR = h_{-1}ᵀ da_0 + Σ_{t ≥ 1} h_{t-1}ᵀ da_t, the sum as one (T-1)·B-deep product.
    d_rec.device(device) = ConstMatrix(h0.flat<float>().data(), batch, units)
                               .contract(ConstMatrix(da_data, batch, width), kAtB);
    if (steps > 1) {
      d_rec.device(device) =
          d_rec + ConstMatrix(h.flat<float>().data(), (steps - 1) * batch, units)
                      .contract(ConstMatrix(da_data + gate, (steps - 1) * batch, width), kAtB);
    }
  }

 private:
  bool d_recurrent_kernel_ = true;
};



// --- Inference -----------------------------------------------------------------------------
// The forward loop without the block activations that training keeps for its backward pass:
// a_t = b + x_t W + h_{t-1} R, both products register-blocked on W and R packed once per call
// into panels of 16 columns (Eigen's product packs its right operand again at every step, and
// a projection of all steps before the loop writes and reads back a (T, B, width)
// intermediate; both measured slower than PyTorch's loop), σ as 0.5 tanh(x/2) + 0.5. Used by
// the RnnxCellInfer op and, under XLA, by the custom call "rnnx_cell_infer".

typedef float Vec16 __attribute__((vector_size(64), aligned(64)));
typedef float Vec16u __attribute__((vector_size(64), aligned(4)));

int64_t PaddedWidth(int64_t width) { return (width + 15) / 16 * 16; }

// M (depth, width) row-major -> panels[v][k][16] (columns past width zero).
void PackPanels(const float* m, int64_t depth, int64_t width, float* packed) {
  const int64_t vectors = PaddedWidth(width) / 16;
  for (int64_t v = 0; v < vectors; ++v) {
    const int64_t cols = std::min<int64_t>(16, width - 16 * v);
    for (int64_t k = 0; k < depth; ++k) {
      float* out = packed + (v * depth + k) * 16;
      std::memcpy(out, m + k * width + 16 * v, sizeof(float) * cols);
      std::memset(out + cols, 0, sizeof(float) * (16 - cols));
    }
  }
}

// a[MR rows, 16·NV columns] += u[MR rows (stride ldu), depth] · (NV panels).
template <int MR, int NV>
inline void ProductTile(const float* u, int64_t ldu, int64_t depth, const float* panels,
                        float* a, int64_t lda) {
  Vec16 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = *reinterpret_cast<const Vec16u*>(a + r * lda + 16 * v);
  for (int64_t k = 0; k < depth; ++k) {
    Vec16 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const Vec16*>(panels + (v * depth + k) * 16);
    for (int r = 0; r < MR; ++r) {
      const float s = u[r * ldu + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += s * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<Vec16u*>(a + r * lda + 16 * v) = acc[r][v];
}

template <int MR>
inline void ProductRows(const float* u, int64_t ldu, int64_t depth, const float* packed,
                        int64_t padded, float* a) {
  // Accumulators and panel registers within the 32 vector registers of AVX-512.
  constexpr int NV = MR >= 5 ? 2 : MR >= 3 ? 3 : 4;
  const int64_t vectors = padded / 16;
  int64_t v = 0;
  for (; v + NV <= vectors; v += NV)
    ProductTile<MR, NV>(u, ldu, depth, packed + v * depth * 16, a + 16 * v, padded);
  for (; v < vectors; ++v)
    ProductTile<MR, 1>(u, ldu, depth, packed + v * depth * 16, a + 16 * v, padded);
}

// a (rows, padded) += u (rows, depth; row stride ldu) · M, M packed by PackPanels.
void PackedProduct(const float* u, int64_t ldu, int64_t rows, int64_t depth,
                   const float* packed, int64_t padded, float* a) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6)
    ProductRows<6>(u + r * ldu, ldu, depth, packed, padded, a + r * padded);
  const float* ur = u + r * ldu;
  float* ar = a + r * padded;
  switch (rows - r) {
    case 5: ProductRows<5>(ur, ldu, depth, packed, padded, ar); break;
    case 4: ProductRows<4>(ur, ldu, depth, packed, padded, ar); break;
    case 3: ProductRows<3>(ur, ldu, depth, packed, padded, ar); break;
    case 2: ProductRows<2>(ur, ldu, depth, packed, padded, ar); break;
    case 1: ProductRows<1>(ur, ldu, depth, packed, padded, ar); break;
    default: break;
  }
}

using StridedArrayMap = Eigen::Map<Array, Eigen::Unaligned, Eigen::OuterStride<>>;

template <typename Block>
void Sigmoid(Block&& g) {
  g = g * 0.5f;
  g = g.tanh() * 0.5f + 0.5f;
}

struct InferShape {
  Cell cell;
  int64_t steps, batch, features, units, width;
  bool backwards;
};

struct Buffer {
  explicit Buffer(int64_t floats)
      : data(static_cast<float*>(std::aligned_alloc(64, sizeof(float) * std::max<int64_t>(16, (floats + 15) / 16 * 16)))) {}
  ~Buffer() { std::free(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* data;
};

// The packed kernels of one call.
struct InferWeights {
  InferWeights(const InferShape& s, const float* kernel, const float* bias,
               const float* recurrent)
      : kernel(s.features * PaddedWidth(s.width)), recurrent(s.units * PaddedWidth(s.width)),
        bias(PaddedWidth(s.width)) {
    if (!ok()) return;
    PackPanels(kernel, s.features, s.width, this->kernel.data);
    PackPanels(recurrent, s.units, s.width, this->recurrent.data);
    std::memset(this->bias.data, 0, sizeof(float) * PaddedWidth(s.width));
    if (bias) std::memcpy(this->bias.data, bias, sizeof(float) * s.width);
  }
  bool ok() const { return kernel.data && recurrent.data && bias.data; }
  Buffer kernel, recurrent, bias;
};

// Rows first .. first + rows of the batch through all steps. x: (batch, steps, features);
// h_seq (batch, steps, units), in the order the steps run, or null; h_last, c_last (batch,
// units).
void InferRows(const InferShape& s, const float* x, const InferWeights& w, const float* h0,
               const float* c0, int64_t first, int64_t rows, float* h_seq, float* h_last,
               float* c_last) {
  const int64_t units = s.units, width = s.width, padded = PaddedWidth(width);
  std::vector<float> a(rows * padded), h_buf(2 * rows * units), c_buf(2 * rows * units);
  std::memcpy(h_buf.data(), h0 + first * units, sizeof(float) * rows * units);
  std::memcpy(c_buf.data(), c0 + first * units, sizeof(float) * rows * units);
  const float* h_prev = h_buf.data();
  int64_t h_stride = units;
  const float* c_prev = c_buf.data();
  for (int64_t t = 0; t < s.steps; ++t) {
    const int64_t input_step = s.backwards ? s.steps - 1 - t : t;
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(a.data() + r * padded, w.bias.data, sizeof(float) * padded);
    PackedProduct(x + (first * s.steps + input_step) * s.features, s.steps * s.features, rows,
                  s.features, w.kernel.data, padded, a.data());
    PackedProduct(h_prev, h_stride, rows, units, w.recurrent.data, padded, a.data());
    const int64_t slot = (t + 1) % 2;
    float* h_next = h_seq ? h_seq + (first * s.steps + t) * units
                          : h_buf.data() + slot * rows * units;
    const int64_t next_stride = h_seq ? s.steps * units : units;
    float* c_next = c_buf.data() + slot * rows * units;
    StridedArrayMap g(a.data(), rows, width, Eigen::OuterStride<>(padded));
    StridedArrayMap h_t(h_next, rows, units, Eigen::OuterStride<>(next_stride));
    ArrayMap c_t(c_next, rows, units);
    const ConstArrayMap c_before(c_prev, rows, units);
    switch (s.cell) {
      case Cell::kForget:
        Sigmoid(g.leftCols(2 * units));
        g.middleCols(2 * units, units) = g.middleCols(2 * units, units).tanh();
        Sigmoid(g.rightCols(units));
        c_t = g.middleCols(units, units) * c_before +
              g.leftCols(units) * g.middleCols(2 * units, units);
        h_t = g.rightCols(units) * c_t.tanh();
        break;
      case Cell::kOriginal:
        Sigmoid(g.leftCols(units));
        g.middleCols(units, units) = g.middleCols(units, units).tanh();
        Sigmoid(g.rightCols(units));
        c_t = c_before + g.leftCols(units) * g.middleCols(units, units);
        h_t = g.rightCols(units) * c_t.tanh();
        break;
      case Cell::kCec:
        c_t = c_before + g.tanh();
        h_t = c_t.tanh();
        break;
      case Cell::kVanilla:
        c_t = g.tanh();
        h_t = c_t;
        break;
    }
    h_prev = h_next;
    h_stride = next_stride;
    c_prev = c_next;
  }
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(h_last + (first + r) * units, h_prev + r * h_stride, sizeof(float) * units);
  std::memcpy(c_last + first * units, c_prev, sizeof(float) * rows * units);
}

class CellInfer : public CellKernel {
 public:
  explicit CellInfer(OpKernelConstruction* context) : CellKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("sequences", &sequences_));
    OP_REQUIRES_OK(context, context->GetAttr("backwards", &backwards_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& kernel = context->input(1);
    const Tensor& bias = context->input(2);
    const Tensor& r = context->input(3);
    const Tensor& h0 = context->input(4);
    const Tensor& c0 = context->input(5);
    OP_REQUIRES(context, x.dims() == 3,
                InvalidArgument("x must have shape [batch, time, features], got ",
                                x.shape().DebugString()));
    const int64_t width = r.dims() == 2 ? r.dim_size(1) : 0;
    const InferShape s{cell_, x.dim_size(1), x.dim_size(0), x.dim_size(2),
                       width / Blocks(cell_), width, backwards_};
    OP_REQUIRES(context, r.dims() == 2 && width % Blocks(cell_) == 0 && s.units == r.dim_size(0),
                InvalidArgument("recurrent_kernel must have shape [units, ", Blocks(cell_),
                                " * units], got ", r.shape().DebugString()));
    OP_REQUIRES_OK(context, CheckMatrix(kernel, "kernel", s.features, width));
    OP_REQUIRES(context, bias.dims() == 1 && bias.dim_size(0) == width,
                InvalidArgument("bias must have shape [", width, "], got ",
                                bias.shape().DebugString()));
    OP_REQUIRES_OK(context, CheckMatrix(h0, "h0", s.batch, s.units));
    OP_REQUIRES_OK(context, CheckMatrix(c0, "c0", s.batch, s.units));
    Tensor *h = nullptr, *h_last = nullptr, *c_last = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
        0, TensorShape({s.batch, sequences_ ? s.steps : 0, s.units}), &h));
    OP_REQUIRES_OK(context, context->allocate_output(1, h0.shape(), &h_last));
    OP_REQUIRES_OK(context, context->allocate_output(2, c0.shape(), &c_last));
    if (s.batch == 0 || s.units == 0) return;
    if (s.steps == 0) {
      h_last->flat<float>() = h0.flat<float>();
      c_last->flat<float>() = c0.flat<float>();
      return;
    }
    const InferWeights weights(s, kernel.flat<float>().data(), bias.flat<float>().data(),
                               r.flat<float>().data());
    OP_REQUIRES(context, weights.ok(),
                tensorflow::errors::ResourceExhausted("out of memory packing the kernels"));
    ForRowBlocks(context, s.batch, [&](int64_t first, int64_t rows) {
      InferRows(s, x.flat<float>().data(), weights, h0.flat<float>().data(),
                c0.flat<float>().data(), first, rows,
                sequences_ ? h->flat<float>().data() : nullptr, h_last->flat<float>().data(),
                c_last->flat<float>().data());
    });
  }

 private:
  bool sequences_ = false;
  bool backwards_ = false;
};

#ifdef RNNX_XLA_CUSTOM_CALL
// The same loop as an XLA custom call (API_VERSION_STATUS_RETURNING_UNIFIED), for graphs that
// XLA compiles (where a TensorFlow op without an XLA kernel cannot run). backend_config:
// "<cell> <steps> <batch> <features> <units> <sequences 0/1> <backwards 0/1>"; operands x,
// kernel, bias, recurrent_kernel, h0, c0; results (h_seq,) h_last, c_last. Row blocks run
// on threads of their own, one per core. TensorFlow does not export the status setter: out of
// memory leaves NaN in the results, a config it cannot parse (never one from keras_rnnx.RNN)
// leaves them unset.
extern "C" void RnnxCellInferXla(void* out, const void** in, const char* opaque,
                                 size_t opaque_len, XlaCustomCallStatus* status) {
  const std::string config(opaque, opaque_len);
  char name[16] = {0};
  long long steps = 0, batch = 0, features = 0, units = 0;
  int sequences = 0, backwards = 0;
  Cell cell = Cell::kVanilla;
  const bool parsed = std::sscanf(config.c_str(), "%15s %lld %lld %lld %lld %d %d", name, &steps,
                                  &batch, &features, &units, &sequences, &backwards) == 7 &&
                      CellFromName(name, &cell);
  const InferShape s{cell, steps, batch, features, units, Blocks(cell) * units, backwards != 0};
  void** outputs = static_cast<void**>(out);
  float* h_seq = sequences ? static_cast<float*>(outputs[0]) : nullptr;
  float* h_last = static_cast<float*>(outputs[sequences ? 1 : 0]);
  float* c_last = static_cast<float*>(outputs[sequences ? 2 : 1]);
  const float* h0 = static_cast<const float*>(in[4]);
  const float* c0 = static_cast<const float*>(in[5]);
  if (!parsed || batch == 0 || units == 0) return;
  if (steps == 0) {
    std::memcpy(h_last, h0, sizeof(float) * batch * units);
    std::memcpy(c_last, c0, sizeof(float) * batch * units);
    return;
  }
  const InferWeights weights(s, static_cast<const float*>(in[1]),
                             static_cast<const float*>(in[2]), static_cast<const float*>(in[3]));
  if (!weights.ok()) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    if (h_seq) std::fill(h_seq, h_seq + steps * batch * units, nan);
    std::fill(h_last, h_last + batch * units, nan);
    std::fill(c_last, c_last + batch * units, nan);
    return;
  }
  const float* x = static_cast<const float*>(in[0]);
  const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(cores, batch / kMinRows));
  const auto run_block = [&](int64_t k) {
    const int64_t first = k * batch / blocks;
    InferRows(s, x, weights, h0, c0, first, (k + 1) * batch / blocks - first, h_seq, h_last,
              c_last);
  };
  std::vector<std::thread> helpers;
  for (int64_t k = 1; k < blocks; ++k) helpers.emplace_back(run_block, k);
  run_block(0);
  for (auto& helper : helpers) helper.join();
}

const bool kRegistered = [] {
  xla::CustomCallTargetRegistry::Global()->Register(
      "rnnx_cell_infer", reinterpret_cast<void*>(&RnnxCellInferXla), "Host");
  return true;
}();
#endif

}  // namespace

REGISTER_OP("RnnxCellForward")
    .Attr("cell: {'forget', 'original', 'cec', 'vanilla'}")
    .Input("p: float")
    .Input("recurrent_kernel: float")
    .Input("h0: float")
    .Input("c0: float")
    .Output("h: float")
    .Output("c: float")
    .Output("gates: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* ctx) {
      tensorflow::shape_inference::ShapeHandle states;
      TF_RETURN_IF_ERROR(ctx->Concatenate(ctx->Vector(ctx->Dim(ctx->input(0), 0)),
                                          ctx->input(2), &states));
      ctx->set_output(0, states);
      ctx->set_output(1, states);
      ctx->set_output(2, ctx->input(0));
      return absl::OkStatus();
    });

REGISTER_OP("RnnxCellBackward")
    .Attr("cell: {'forget', 'original', 'cec', 'vanilla'}")
    .Attr("with_d_recurrent_kernel: bool = true")
    .Input("recurrent_kernel: float")
    .Input("h0: float")
    .Input("c0: float")
    .Input("h: float")
    .Input("c: float")
    .Input("gates: float")
    .Input("dh_seq: float")
    .Input("dh_last: float")
    .Input("dc_last: float")
    .Output("dp: float")
    .Output("d_recurrent_kernel: float")
    .Output("dh0: float")
    .Output("dc0: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* ctx) {
      ctx->set_output(0, ctx->input(5));
      bool d_recurrent_kernel = true;
      TF_RETURN_IF_ERROR(ctx->GetAttr("with_d_recurrent_kernel", &d_recurrent_kernel));
      ctx->set_output(1, d_recurrent_kernel
                             ? ctx->input(0)
                             : ctx->Matrix(0, ctx->Dim(ctx->input(0), 1)));
      ctx->set_output(2, ctx->input(1));
      ctx->set_output(3, ctx->input(2));
      return absl::OkStatus();
    });

REGISTER_OP("RnnxCellInfer")
    .Attr("cell: {'forget', 'original', 'cec', 'vanilla'}")
    .Attr("sequences: bool = false")
    .Attr("backwards: bool = false")
    .Input("x: float")
    .Input("kernel: float")
    .Input("bias: float")
    .Input("recurrent_kernel: float")
    .Input("h0: float")
    .Input("c0: float")
    .Output("h: float")
    .Output("h_last: float")
    .Output("c_last: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* ctx) {
      bool sequences = false;
      TF_RETURN_IF_ERROR(ctx->GetAttr("sequences", &sequences));
      auto x = ctx->input(0);
      auto h0 = ctx->input(4);
      TF_RETURN_IF_ERROR(ctx->WithRank(x, 3, &x));
      TF_RETURN_IF_ERROR(ctx->WithRank(h0, 2, &h0));
      ctx->set_output(0, ctx->MakeShape({ctx->Dim(x, 0), sequences ? ctx->Dim(x, 1)
                                         : ctx->MakeDim(0), ctx->Dim(h0, 1)}));
      ctx->set_output(1, h0);
      ctx->set_output(2, ctx->input(5));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("RnnxCellForward").Device(tensorflow::DEVICE_CPU), CellForward);
REGISTER_KERNEL_BUILDER(Name("RnnxCellBackward").Device(tensorflow::DEVICE_CPU), CellBackward);
REGISTER_KERNEL_BUILDER(Name("RnnxCellInfer").Device(tensorflow::DEVICE_CPU), CellInfer);
