// The lecture cells' recurrence as two TensorFlow CPU kernels, used by `keras_rnnx.RNN` in
// training (see keras_rnnx/_native/__init__.py, which compiles this file on first use), and a
// forward-only kernel for inference (RnnxCellInfer and the XLA custom call, further down).
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
#include <chrono>
#include <string>

#include <Eigen/Core>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/blocking_counter.h"
#include "tensorflow/core/lib/core/threadpool.h"
#include "unsupported/Eigen/CXX11/Tensor"

#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
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

int64_t PoolThreads(OpKernelContext* context) {
  return std::max(1, context->device()->tensorflow_cpu_worker_threads()->num_threads);
}

// Runs body(k) for k = 0 .. blocks - 1, in parallel on the calling thread and up to threads - 1
// threads of the intra-op pool. They take blocks from a shared counter, so a block whose pool
// thread has not started yet (the pool is busy, e.g. with the input pipeline during
// model.fit) is run by whichever thread is free first.
template <typename Body>
void ForBlocks(OpKernelContext* context, int64_t blocks, Body body) {
  if (blocks <= 1) {
    if (blocks == 1) body(0);
    return;
  }
  std::atomic<int64_t> next{0};
  const auto take_blocks = [&]() {
    for (int64_t k = next.fetch_add(1); k < blocks; k = next.fetch_add(1)) body(k);
  };
  const int64_t helpers = std::min(PoolThreads(context), blocks) - 1;
  tensorflow::BlockingCounter done(static_cast<int>(helpers));
  for (int64_t i = 0; i < helpers; ++i) {
    context->device()->tensorflow_cpu_worker_threads()->workers->Schedule([&]() {
      take_blocks();
      done.DecrementCount();
    });
  }
  take_blocks();
  done.Wait();
}

// Runs body(first_row, rows) for row blocks of the batch with ForBlocks: one block per thread
// (smaller blocks make the per-step product slower: measured 10-30 % slower with two or four
// blocks per thread on a 2-core AMD EPYC), at least kMinRows rows each.
constexpr int64_t kMinRows = 8;

template <typename Body>
void ForRowBlocks(OpKernelContext* context, int64_t batch, Body body) {
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>(PoolThreads(context), batch / kMinRows));
  ForBlocks(context, blocks, [&](int64_t k) {
    const int64_t first = k * batch / blocks;
    body(first, (k + 1) * batch / blocks - first);
  });
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
// The forward loop without the block activations that training keeps for its backward pass,
// fused per step into one pass over the units: for a tile of rows and a column block of the
// units (for the gated cells 16 units with all their gates, for cec and vanilla up to 64
// units), a_t = b + x_t W + h_{t-1} R accumulates in registers, reading W and R where they are
// (InferWeights), and the cell's update of c and h follows on the same registers: no (rows,
// width) array of gates is written and read back between the product and the update (Eigen's
// product packs its right operand again at every step; a projection of all steps before the
// loop writes and reads back a (T, B, width) intermediate; both measured slower than
// PyTorch's loop). tanh is Eigen's (the same rational approximation as TensorFlow's Tanh),
// σ(x) = 0.5 tanh(x/2) + 0.5. Used by the RnnxCellInfer op and, under XLA, by the custom call
// "rnnx_cell_infer".

typedef float Vec16 __attribute__((vector_size(64), aligned(64)));
typedef float Vec16u __attribute__((vector_size(64), aligned(4)));
using Packet = Eigen::internal::packet_traits<float>::type;
constexpr int kPacket = Eigen::internal::unpacket_traits<Packet>::size;
static_assert(16 % kPacket == 0, "Eigen's float packet must divide 16 lanes");

struct InferShape {
  Cell cell;
  int64_t steps, batch, features, units, width;
  bool backwards;
};

// Column blocks of 16-float vectors: for the gated cells vector v of block b holds gate v of
// units 16·b .. 16·b + 15; for cec and vanilla units 64·b + 16·v .. 64·b + 16·v + 15 (up to
// four vectors). States are kept `padded_units` wide.
struct Columns {
  explicit Columns(const InferShape& s)
      : gates(Blocks(s.cell)), groups((s.units + 15) / 16),
        blocks(gates > 1 ? groups : (groups + 3) / 4), padded_units(16 * groups) {}
  // Vectors in block b (the last cec or vanilla block may have fewer).
  int In(int64_t b) const {
    return gates > 1 ? gates : static_cast<int>(std::min<int64_t>(4, groups - 4 * b));
  }
  // The first unit of vector v in block b.
  int64_t Unit(int64_t b, int v) const { return gates > 1 ? 16 * b : 64 * b + 16 * v; }
  int gates;
  int64_t groups, blocks, padded_units;
};

struct Buffer {
  // No allocation for 0 floats (data null).
  explicit Buffer(int64_t floats)
      : data(floats == 0 ? nullptr
                         : static_cast<float*>(std::aligned_alloc(
                               64, sizeof(float) * ((floats + 15) / 16 * 16)))) {}
  ~Buffer() { std::free(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* data;
};

// The weights as the loop reads them: W (features rows), R (units rows) and b, of `ld` columns
// each, vector v of column block b starting at column Offset(b, v). Where the units are a
// multiple of 16 these are the op's inputs as they are (no copy per call); otherwise a copy in
// which each gate's columns are padded with zeros to a multiple of 16, so that no vector reads
// past its gate or the array.
struct InferWeights {
  InferWeights(const InferShape& s, const float* kernel, const float* bias,
               const float* recurrent)
      : columns(s), copy(s.units % 16 == 0 && bias ? 0
                         : (s.features + s.units + 1) * columns.gates * columns.padded_units) {
    if (s.units % 16 == 0 && bias) {
      w = kernel, r = recurrent, b = bias;
      ld = s.width, gate_ld = s.units;
      return;
    }
    gate_ld = columns.padded_units;
    ld = columns.gates * gate_ld;
    if (!copy.data) return;
    float* out = copy.data;
    const auto pad = [&](const float* row) {
      for (int g = 0; g < columns.gates; ++g, out += gate_ld) {
        if (row) std::memcpy(out, row + g * s.units, sizeof(float) * s.units);
        else std::memset(out, 0, sizeof(float) * s.units);
        std::memset(out + s.units, 0, sizeof(float) * (gate_ld - s.units));
      }
    };
    w = out;
    for (int64_t k = 0; k < s.features; ++k) pad(kernel + k * s.width);
    r = out;
    for (int64_t k = 0; k < s.units; ++k) pad(recurrent + k * s.width);
    b = out;
    pad(bias);
  }
  bool ok() const { return w != nullptr; }
  int64_t Offset(int64_t block, int v) const {
    return columns.gates > 1 ? v * gate_ld + 16 * block : 64 * block + 16 * v;
  }
  Columns columns;
  Buffer copy;
  const float *w = nullptr, *r = nullptr, *b = nullptr;
  int64_t ld = 0, gate_ld = 0;
};

// One row block's view of a step: MR rows' inputs (x_t rows of stride ldx, h_{t-1} rows of
// stride `padded_units`), their c (updated in place) and h_t rows, and where h_t also goes.
struct StepRows {
  const float* x;
  int64_t ldx;
  const float* h_prev;
  float* c;
  float* h_next;
  float* h_seq;  // row r of h_t in the output sequence at h_seq + r * ld_seq, or null
  int64_t ld_seq;
};

inline Packet Sigmoid(const Packet& a) {
  using namespace Eigen::internal;
  const Packet half = pset1<Packet>(0.5f);
  return padd(pmul(ptanh(pmul(a, half)), half), half);
}

// The cell's update of one 16-unit vector: a points at the vectors of its gates (the gated
// cells) or at its one pre-activation (cec, vanilla); c and h are the unit's state and new
// output, `lanes` of them valid for the output sequence.
inline void Update(Cell cell, const float* a, int gate_stride, float* c, float* h,
                   float* h_seq, int lanes) {
  using namespace Eigen::internal;
  alignas(64) float out[16];
  for (int q = 0; q < 16; q += kPacket) {
    Packet c_t, h_t;
    switch (cell) {
      case Cell::kForget: {
        const Packet i = Sigmoid(ploadu<Packet>(a + q));
        const Packet f = Sigmoid(ploadu<Packet>(a + gate_stride + q));
        const Packet z = ptanh(ploadu<Packet>(a + 2 * gate_stride + q));
        const Packet o = Sigmoid(ploadu<Packet>(a + 3 * gate_stride + q));
        c_t = padd(pmul(f, ploadu<Packet>(c + q)), pmul(i, z));
        h_t = pmul(o, ptanh(c_t));
        break;
      }
      case Cell::kOriginal: {
        const Packet i = Sigmoid(ploadu<Packet>(a + q));
        const Packet z = ptanh(ploadu<Packet>(a + gate_stride + q));
        const Packet o = Sigmoid(ploadu<Packet>(a + 2 * gate_stride + q));
        c_t = padd(ploadu<Packet>(c + q), pmul(i, z));
        h_t = pmul(o, ptanh(c_t));
        break;
      }
      case Cell::kCec:
        c_t = padd(ploadu<Packet>(c + q), ptanh(ploadu<Packet>(a + q)));
        h_t = ptanh(c_t);
        break;
      default:
        h_t = c_t = ptanh(ploadu<Packet>(a + q));
        break;
    }
    pstoreu(c + q, c_t);
    pstoreu(h + q, h_t);
    pstore(out + q, h_t);
  }
  if (h_seq) std::memcpy(h_seq, out, sizeof(float) * lanes);
}

// MR rows × one column block of NV vectors: a = bias + x_t W + h_{t-1} R in registers, then
// the cell's update.
template <int MR, int NV>
void Tile(const InferShape& s, const InferWeights& w, int64_t block, const StepRows& rows) {
  const Columns& columns = w.columns;
  int64_t offset[NV];
  for (int v = 0; v < NV; ++v) offset[v] = w.Offset(block, v);
  Vec16 acc[MR][NV];
  for (int v = 0; v < NV; ++v) {
    const Vec16 b = *reinterpret_cast<const Vec16u*>(w.b + offset[v]);
    for (int r = 0; r < MR; ++r) acc[r][v] = b;
  }
  const auto accumulate = [&](const float* u, int64_t ldu, int64_t depth, const float* m) {
    for (int64_t k = 0; k < depth; ++k, m += w.ld) {
      Vec16 row[NV];
      for (int v = 0; v < NV; ++v) row[v] = *reinterpret_cast<const Vec16u*>(m + offset[v]);
      for (int r = 0; r < MR; ++r) {
        const float scalar = u[r * ldu + k];
        for (int v = 0; v < NV; ++v) acc[r][v] += scalar * row[v];
      }
    }
  };
  accumulate(rows.x, rows.ldx, s.features, w.w);
  accumulate(rows.h_prev, columns.padded_units, s.units, w.r);
  alignas(64) float a[MR][NV][16];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<Vec16*>(a[r][v]) = acc[r][v];
  const int updates = columns.gates > 1 ? 1 : NV;
  const int gate_stride = columns.gates > 1 ? 16 : 0;
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < updates; ++v) {
      const int64_t unit = columns.Unit(block, v);
      const int lanes = static_cast<int>(std::min<int64_t>(16, s.units - unit));
      const int64_t at = r * columns.padded_units + unit;
      Update(s.cell, a[r][v], gate_stride, rows.c + at, rows.h_next + at,
             rows.h_seq ? rows.h_seq + r * rows.ld_seq + unit : nullptr, lanes);
    }
}

constexpr int RowsPerTile(int nv) { return nv >= 4 ? 4 : 6; }

template <int NV, int MR = RowsPerTile(NV)>
void TileRows(const InferShape& s, const InferWeights& w, int64_t block, int64_t rows,
              StepRows at) {
  const int64_t ld = w.columns.padded_units;
  const auto advance = [&](int64_t n) {
    at.x += n * at.ldx;
    at.h_prev += n * ld;
    at.c += n * ld;
    at.h_next += n * ld;
    if (at.h_seq) at.h_seq += n * at.ld_seq;
  };
  int64_t r = 0;
  for (; r + MR <= rows; r += MR, advance(MR)) Tile<MR, NV>(s, w, block, at);
  switch (rows - r) {
    case 5: if constexpr (MR > 5) Tile<5, NV>(s, w, block, at); break;
    case 4: if constexpr (MR > 4) Tile<4, NV>(s, w, block, at); break;
    case 3: Tile<3, NV>(s, w, block, at); break;
    case 2: Tile<2, NV>(s, w, block, at); break;
    case 1: Tile<1, NV>(s, w, block, at); break;
    default: break;
  }
}

// Column blocks first_block .. last_block of one step for `rows` rows.
void StepBlocks(const InferShape& s, const InferWeights& w, int64_t first_block,
                int64_t last_block, int64_t rows, const StepRows& at) {
  for (int64_t b = first_block; b < last_block; ++b) {
    switch (w.columns.In(b)) {
      case 4: TileRows<4>(s, w, b, rows, at); break;
      case 3: TileRows<3>(s, w, b, rows, at); break;
      case 2: TileRows<2>(s, w, b, rows, at); break;
      default: TileRows<1>(s, w, b, rows, at); break;
    }
  }
}

// The states of a row block through the steps: c (rows, padded units) and h_{t-1}, h_t
// alternating, initialised from h0 and c0 (past the units zero).
struct RowState {
  RowState(const InferShape& s, const Columns& columns, const float* h0, const float* c0,
           int64_t first, int64_t rows)
      : ld(columns.padded_units), h(2 * rows * ld), c(rows * ld) {
    if (!h.data || !c.data) return;
    std::memset(h.data, 0, sizeof(float) * 2 * rows * ld);
    std::memset(c.data, 0, sizeof(float) * rows * ld);
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(h.data + r * ld, h0 + (first + r) * s.units, sizeof(float) * s.units);
      std::memcpy(c.data + r * ld, c0 + (first + r) * s.units, sizeof(float) * s.units);
    }
  }
  bool ok() const { return h.data && c.data; }
  // Step t's view for the rows of x from row `first`.
  StepRows At(const InferShape& s, const float* x, int64_t first, int64_t rows, int64_t t,
              float* h_seq) const {
    const int64_t input_step = s.backwards ? s.steps - 1 - t : t;
    return StepRows{x + (first * s.steps + input_step) * s.features, s.steps * s.features,
                    h.data + (t % 2) * rows * ld, c.data, h.data + ((t + 1) % 2) * rows * ld,
                    h_seq ? h_seq + (first * s.steps + t) * s.units : nullptr,
                    s.steps * s.units};
  }
  // h_T and c_T of the rows into h_last, c_last (batch, units).
  void Finish(const InferShape& s, int64_t first, int64_t rows, float* h_last,
              float* c_last) const {
    const float* h_final = h.data + (s.steps % 2) * rows * ld;
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(h_last + (first + r) * s.units, h_final + r * ld, sizeof(float) * s.units);
      std::memcpy(c_last + (first + r) * s.units, c.data + r * ld, sizeof(float) * s.units);
    }
  }
  int64_t ld;
  Buffer h, c;
};

// Rows first .. first + rows of the batch through all steps. x: (batch, steps, features);
// h_seq (batch, steps, units), in the order the steps run, or null; h_last, c_last (batch,
// units). False: out of memory.
bool InferRows(const InferShape& s, const float* x, const InferWeights& w, const float* h0,
               const float* c0, int64_t first, int64_t rows, float* h_seq, float* h_last,
               float* c_last) {
  const RowState state(s, w.columns, h0, c0, first, rows);
  if (!state.ok()) return false;
  for (int64_t t = 0; t < s.steps; ++t)
    StepBlocks(s, w, 0, w.columns.blocks, rows, state.At(s, x, first, rows, t, h_seq));
  state.Finish(s, first, rows, h_last, c_last);
  return true;
}

// A spinning thread's hint to the CPU.
inline void Pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// The steps of one row block shared between threads. Each thread owns one part (a contiguous
// range of column blocks) for all steps, so that the part's weights stay in its core's cache,
// and starts step t of it when every part has finished step t - 1. A part that no thread owns
// yet (its pool thread has not woken up, or the pool is busy) is run, step by step, by the
// threads waiting on it; a thread that arrives later takes it over from the next step on. So
// the steps never wait on a thread that is late, and a late thread still takes its share of
// the rest. Work is called once per part (the parallel runner runs every block once, on
// whichever thread is free): each call owns a different part and returns when it is done.
class StepParts {
 public:
  static constexpr int64_t kMaxParts = 16;
  StepParts(int64_t steps, int64_t parts) : steps_(steps), parts_(std::min(parts, kMaxParts)) {}
  int64_t parts() const { return parts_; }

  template <typename Body>  // body(step, part)
  void Work(Body body) {
    int64_t own = -1;
    for (int64_t q = 0; q < parts_ && own < 0; ++q) {
      bool expected = false;
      if (part_[q].owned.compare_exchange_strong(expected, true)) own = q;
    }
    if (own < 0) return;
    for (int64_t t = part_[own].next.load(); t < steps_; t = part_[own].next.load()) {
      for (int64_t q = 0; q < parts_; ++q) WaitFor(body, q, t);
      // Fails only where another thread started step t of this part before it was owned.
      TryRun(body, own, t);
    }
  }

 private:
  struct alignas(64) Part {
    std::atomic<bool> owned{false};
    std::atomic<int64_t> next{0};  // steps started
    std::atomic<int64_t> done{0};  // steps finished
  };

  // Until part q has finished `steps` steps; while no thread owns it, runs its next step here
  // whenever every part has finished the step before.
  template <typename Body>
  void WaitFor(Body& body, int64_t q, int64_t steps) {
    for (int64_t spins = 0;; ++spins) {
      const int64_t u = part_[q].done.load(std::memory_order_acquire);
      if (u >= steps) return;
      if (!part_[q].owned.load(std::memory_order_acquire) && Finished(u) && TryRun(body, q, u))
        continue;
      if (spins < 20000) Pause();
      else std::this_thread::yield();
    }
  }
  bool Finished(int64_t steps) const {
    for (int64_t q = 0; q < parts_; ++q)
      if (part_[q].done.load(std::memory_order_acquire) < steps) return false;
    return true;
  }
  // Runs step t of part q unless another thread has started it.
  template <typename Body>
  bool TryRun(Body& body, int64_t q, int64_t t) {
    int64_t expected = t;
    if (!part_[q].next.compare_exchange_strong(expected, t + 1, std::memory_order_acq_rel))
      return false;
    body(t, q);
    part_[q].done.store(t + 1, std::memory_order_release);
    return true;
  }
  const int64_t steps_, parts_;
  Part part_[kMaxParts];
};

// Calls with fewer multiply-adds than this (tens of microseconds on one core) run on the
// calling thread alone: waking or starting a second thread costs about as much.
constexpr double kMinParallelMacs = 2e6;
constexpr double kMinPartBytes = 64 * 1024;

// The whole batch on `threads` threads; parallel(n, body) runs body(k) for k = 0 .. n - 1 in
// parallel, each once. With at least kMinRows rows a thread, row blocks run through all steps
// without synchronisation; with fewer (small batches, where streaming W and R from the cache
// dominates) the column blocks of each step are split between the threads. False: out of
// memory.
template <typename Parallel>
bool InferAll(const InferShape& s, const float* x, const InferWeights& w, const float* h0,
              const float* c0, float* h_seq, float* h_last, float* c_last, int64_t threads,
              Parallel parallel) {
  std::atomic<bool> failed{false};
  const double macs = static_cast<double>(s.steps) * s.batch * (s.features + s.units) * s.width;
  if (macs < kMinParallelMacs) threads = 1;
  const int64_t row_blocks = std::min<int64_t>(threads, s.batch / kMinRows);
  // Each part of a split step reads at least kMinPartBytes of W and R: the threads meet once
  // a step (about 0.2 us on a 2-core AMD EPYC), which must stay small against a part's work.
  const double step_bytes = sizeof(float) * static_cast<double>(s.features + s.units) * s.width;
  const int64_t parts = std::min<int64_t>(
      {threads, w.columns.blocks,
       std::max<int64_t>(1, static_cast<int64_t>(step_bytes / kMinPartBytes))});
  if (row_blocks >= 2 || parts < 2) {
    const int64_t blocks = std::max<int64_t>(1, row_blocks);
    parallel(blocks, [&](int64_t k) {
      const int64_t first = k * s.batch / blocks;
      if (!InferRows(s, x, w, h0, c0, first, (k + 1) * s.batch / blocks - first, h_seq,
                     h_last, c_last))
        failed = true;
    });
    return !failed;
  }
  const RowState state(s, w.columns, h0, c0, 0, s.batch);
  if (!state.ok()) return false;
  StepParts steps(s.steps, parts);
  const int64_t blocks = w.columns.blocks, n = steps.parts();
  parallel(n, [&](int64_t) {
    steps.Work([&](int64_t t, int64_t part) {
      StepBlocks(s, w, part * blocks / n, (part + 1) * blocks / n, s.batch,
                 state.At(s, x, 0, s.batch, t, h_seq));
    });
  });
  state.Finish(s, 0, s.batch, h_last, c_last);
  return true;
}

// The inference kernel's threads, for the op and for the custom call (which gets none from
// XLA): one fewer than the CPUs this process may run on, started on first use and kept (a
// thread started per call costs about 55 us on a 2-core AMD EPYC, a fifth of a batch-1 forward
// pass). After a job they spin for kSpin, yielding the CPU about every microsecond, before they
// sleep, so that calls in quick succession (a batch-1 call from Python comes back within
// 0.3-0.5 ms) mostly find them awake. Measured on a 2-core AMD EPYC in alternating processes
// (batch 1, T = 100, units 128, medians of six): a tf.function call took 0.64 ms on these
// threads against 0.91 ms on TensorFlow's intra-op pool, and under XLA 0.57 ms against 0.77 ms
// with a 0.2 ms spin. One job at a time: a call that finds them busy (another inference call at
// the same moment) runs its blocks on its own thread. A forked child starts threads of its own.
class Helpers {
 public:
  static Helpers& Get() {
    static std::mutex mu;
    static Helpers* helpers = nullptr;
    static pid_t pid = 0;
    std::lock_guard<std::mutex> lock(mu);
    if (!helpers || pid != getpid()) {
      helpers = new Helpers(Cpus() - 1);  // never deleted: its threads live as long as the process
      pid = getpid();
    }
    return *helpers;
  }

  static int64_t Cpus() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1u, std::thread::hardware_concurrency());
  }

  // The helper threads (the calling thread makes one more).
  int64_t threads() const { return threads_; }

  // body(k) for k = 0 .. n - 1 (n < 2^16), each once, on the calling thread and the helpers
  // that are awake to take a block before the calling thread has taken them all (like
  // ForBlocks: a helper that wakes late finds nothing left and does not hold the call up). A
  // single block runs on the calling thread without starting the helpers.
  template <typename Body>
  static void For(int64_t n, const Body& body) {
    if (n < 2) {
      for (int64_t k = 0; k < n; ++k) body(k);
      return;
    }
    Get().Run(n, body);
  }

 private:
  template <typename Body>
  void Run(int64_t n, const Body& body) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock() || threads_ == 0) {
      for (int64_t k = 0; k < n; ++k) body(k);
      return;
    }
    const std::function<void(int64_t)> job = [&body](int64_t k) { body(k); };
    uint64_t generation;
    {
      std::lock_guard<std::mutex> lock(mu_);
      generation = generation_.load() + 1;
      job_ = &job;
      done_.store(0);
      next_.store(generation << 32 | static_cast<uint64_t>(n) << 16);
      generation_.store(generation, std::memory_order_release);
    }
    // Helpers still spinning from an earlier job see the new generation; of those asleep,
    // no more are woken than the job has blocks to spare (they spin after it, see kSpin).
    for (int64_t i = 0; i < std::min<int64_t>(n - 1, threads_); ++i) wake_.notify_one();
    MoveOffCpu(sched_getcpu());
    for (int64_t k = Take(generation); k >= 0; k = Take(generation)) {
      body(k);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
    while (done_.load(std::memory_order_acquire) < n) Pause();
  }

  static constexpr std::chrono::microseconds kSpin{1500};
  // Per helper: its thread id, the CPU it last spun on (-1 while it sleeps), and whether Run
  // has narrowed its affinity (undone by the helper when it next waits for a job).
  struct alignas(64) Slot {
    std::atomic<pid_t> tid{0};
    std::atomic<int> cpu{-1};
    std::atomic<bool> moved{false};
  };
  explicit Helpers(int64_t threads)
      : threads_(std::max<int64_t>(0, threads)), slots_(new Slot[threads_]) {
    CPU_ZERO(&home_);
    home_ok_ = sched_getaffinity(0, sizeof(home_), &home_) == 0;  // what the helpers inherit
    for (int64_t i = 0; i < threads_; ++i) std::thread([this, i]() { Loop(slots_[i]); }).detach();
  }
  // A helper that spins on the calling thread's CPU (`cpu`) shares it with the call: each
  // would run at half speed, and the scheduler leaves two such recently-run threads together
  // for milliseconds even when another CPU is idle (on a 2-core AMD EPYC, batch 64, 7 % of
  // calls took twice as long, the helper waiting 2.9 ms for its first time slice). Such a
  // helper gets the affinity it started with less that CPU, which moves it at once; it takes
  // its starting affinity back when it next waits for a job (staying where it was moved).
  // Measured there: batch-64 calls over 1.4 x the median went from 9-11 % to 2-8 % (three
  // alternating pairs of processes), batch-1 calls whose helper never came from 13-16 % to
  // 0.2 %.
  void MoveOffCpu(int cpu) {
    if (!home_ok_ || cpu < 0 || !CPU_ISSET(cpu, &home_) || CPU_COUNT(&home_) < 2) return;
    for (int64_t i = 0; i < threads_; ++i) {
      Slot& slot = slots_[i];
      if (slot.cpu.load(std::memory_order_relaxed) != cpu || slot.tid.load() == 0) continue;
      cpu_set_t away = home_;
      CPU_CLR(cpu, &away);
      if (sched_setaffinity(slot.tid.load(), sizeof(away), &away) == 0) slot.moved.store(true);
    }
  }
  // The next block of job `generation`, or -1 when it has none left (or a later job started).
  // next_ holds generation (32 bits), blocks (16) and the next block (16), so that a helper
  // can only take blocks of the job whose body it read.
  int64_t Take(uint64_t generation) {
    uint64_t ticket = next_.load();
    for (;;) {
      const uint64_t k = ticket & 0xffff, n = (ticket >> 16) & 0xffff;
      if ((ticket >> 32) != (generation & 0xffffffff) || k >= n) return -1;
      if (next_.compare_exchange_weak(ticket, ticket + 1)) return static_cast<int64_t>(k);
    }
  }
  void Loop(Slot& slot) {
    slot.tid.store(static_cast<pid_t>(syscall(SYS_gettid)));
    uint64_t seen = 0;
    for (;;) {
      const auto since = std::chrono::steady_clock::now();
      // Between jobs (Run may narrow it while the helper is still waiting for the job).
      const auto go_home = [&]() {
        if (slot.moved.load(std::memory_order_relaxed) && slot.moved.exchange(false))
          sched_setaffinity(0, sizeof(home_), &home_);
      };
      go_home();
      slot.cpu.store(sched_getcpu(), std::memory_order_relaxed);
      for (int64_t spins = 0; generation_.load(std::memory_order_acquire) == seen; ++spins) {
        Pause();
        if (spins % 64 == 63) {  // about 1 us apart
          std::this_thread::yield();
          go_home();
          slot.cpu.store(sched_getcpu(), std::memory_order_relaxed);
        }
        if (spins % 256 == 255 && std::chrono::steady_clock::now() - since > kSpin) {
          go_home();
          slot.cpu.store(-1, std::memory_order_relaxed);
          std::unique_lock<std::mutex> lock(mu_);
          wake_.wait(lock, [&]() { return generation_.load() != seen; });
        }
      }
      const std::function<void(int64_t)>* job;
      {
        std::lock_guard<std::mutex> lock(mu_);  // the generation and its body, read together
        seen = generation_.load();
        job = job_;
      }
      for (int64_t k = Take(seen); k >= 0; k = Take(seen)) {
        (*job)(k);
        done_.fetch_add(1, std::memory_order_acq_rel);
      }
    }
  }
  const int64_t threads_;
  const std::unique_ptr<Slot[]> slots_;
  cpu_set_t home_;
  bool home_ok_ = false;
  std::mutex run_mu_, mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0}, next_{0};
  const std::function<void(int64_t)>* job_ = nullptr;
  std::atomic<int64_t> done_{0};
};

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
                tensorflow::errors::ResourceExhausted("out of memory copying the weights"));
    // On the kernel's own threads, not TensorFlow's intra-op pool (see Helpers), and no more
    // than the pool has (intra_op_parallelism_threads).
    const int64_t pool = PoolThreads(context);
    const bool done = InferAll(
        s, x.flat<float>().data(), weights, h0.flat<float>().data(), c0.flat<float>().data(),
        sequences_ ? h->flat<float>().data() : nullptr, h_last->flat<float>().data(),
        c_last->flat<float>().data(), pool > 1 ? std::min(pool, Helpers::Get().threads() + 1) : 1,
        [](int64_t n, const auto& body) { Helpers::For(n, body); });
    OP_REQUIRES(context, done,
                tensorflow::errors::ResourceExhausted("out of memory for the cell states"));
  }

 private:
  bool sequences_ = false;
  bool backwards_ = false;
};

#ifdef RNNX_XLA_CUSTOM_CALL
// The same loop as an XLA custom call (API_VERSION_STATUS_RETURNING_UNIFIED), for graphs that
// XLA compiles (where a TensorFlow op without an XLA kernel cannot run). backend_config:
// "<cell> <steps> <batch> <features> <units> <sequences 0/1> <backwards 0/1>"; operands x,
// kernel, bias, recurrent_kernel, h0, c0; results (h_seq,) h_last, c_last. It runs on the
// calling thread and the Helpers. TensorFlow does not export the status setter: out of
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
  const auto fail = [&]() {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    if (h_seq) std::fill(h_seq, h_seq + steps * batch * units, nan);
    std::fill(h_last, h_last + batch * units, nan);
    std::fill(c_last, c_last + batch * units, nan);
  };
  const InferWeights weights(s, static_cast<const float*>(in[1]),
                             static_cast<const float*>(in[2]), static_cast<const float*>(in[3]));
  if (!weights.ok()) return fail();
  if (!InferAll(s, static_cast<const float*>(in[0]), weights, h0, c0, h_seq, h_last, c_last,
                Helpers::Get().threads() + 1,
                [](int64_t n, const auto& body) { Helpers::For(n, body); }))
    fail();
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
