// oneDNN kernels bound to XLA as FFI handlers: 2-D convolutions (NHWC
// activations, HWIO weights, float32 or bfloat16) and batch normalization with
// batch statistics (NHWC, float32).
//
// Convolutions: three handlers per element type, one per oneDNN primitive:
// forward, backward-data (input gradient) and backward-weights (weight
// gradient); the bfloat16 ones are the float32 names with a `_bf16` suffix.
// Both operands and the result share one element type; oneDNN accumulates in
// float32, and the bfloat16 weight gradient is kept in float32 until its final
// reorder to HWIO. Activations stay in the caller's NHWC layout; weights are
// reordered between JAX's HWIO and the blocked layout oneDNN picks (a few KB
// per call).
//
// Batch normalization (training, per-channel scale and shift): a forward
// handler returning y and the batch mean and biased variance, and a backward
// one returning the gradients of x, scale and shift from x, dy and those
// statistics. epsilon is an attribute.
//
// Primitives are built once per shape, element type (and epsilon) and cached.
// Calls are serialised: each one already uses every core through oneDNN's
// OpenMP threads. Built by experiments/kernels/onednn.py.
#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <new>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

// n, h, w, c, kh, kw, k, oh, ow, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
// kind, element type (a dnnl::memory::data_type), post-op (forward only)
using Key = std::array<int64_t, 18>;
enum Kind : int64_t { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };
// What the forward convolution applies to its result before writing it:
// nothing, relu(.), or relu(. + r) with r a tensor of the output's shape (the
// residual of a ResNet block). Fused, they save one or two passes over the
// activation (oneDNN post-ops).
enum Post : int64_t { kNone = 0, kRelu = 1, kAddRelu = 2 };

struct Entry {
  dnnl::primitive prim;
  memory::desc act_a, act_b;   // the two activation-shaped operands / results
  memory::desc wei_user, wei_prim;
  memory::desc scratch;
  bool reorder;
};

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

std::mutex& Mutex() {
  static std::mutex m;
  return m;
}

std::map<Key, std::shared_ptr<Entry>>& Cache() {
  static std::map<Key, std::shared_ptr<Entry>> c;
  return c;
}

// Scratch space reused across calls (they are serialised by Mutex()), grown
// on demand and 64-byte aligned; not zeroed: oneDNN initialises what it reads.
struct Scratch {
  void* ptr = nullptr;
  size_t size = 0;
  void* Get(size_t n) {
    if (n > size) {
      std::free(ptr);
      size = (n + 63) / 64 * 64;
      ptr = std::aligned_alloc(64, size);
      if (!ptr) { size = 0; throw std::bad_alloc(); }
    }
    return ptr;
  }
};

Scratch& ScratchSpace() { static Scratch s; return s; }
Scratch& WeightSpace() { static Scratch s; return s; }

std::shared_ptr<Entry> Build(const Key& k) {
  auto& eng = Engine();
  memory::dims src{k[0], k[3], k[1], k[2]}, dst{k[0], k[6], k[7], k[8]};
  memory::dims wei{k[6], k[3], k[4], k[5]};
  memory::dims strides{k[9], k[10]}, pl{k[11], k[13]}, pr{k[12], k[14]};
  const dt type = static_cast<dt>(k[16]);
  memory::desc src_md(src, type, tag::nhwc), dst_md(dst, type, tag::nhwc);
  memory::desc wany(wei, type, tag::any), wuser(wei, type, tag::hwio);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto fwd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      src_md, wany, dst_md, strides, pl, pr, attr);
  auto e = std::make_shared<Entry>();
  e->wei_user = wuser;
  if (k[15] == kFwd) {
    if (k[17] != kNone) {
      dnnl::post_ops ops;
      if (k[17] == kAddRelu) ops.append_binary(dnnl::algorithm::binary_add, dst_md);
      ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      dnnl::primitive_attr post_attr;
      post_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      post_attr.set_post_ops(ops);
      fwd = dnnl::convolution_forward::primitive_desc(
          eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          src_md, wany, dst_md, strides, pl, pr, post_attr);
    }
    e->prim = dnnl::convolution_forward(fwd);
    e->act_a = src_md; e->act_b = dst_md;
    e->wei_prim = fwd.weights_desc();
    e->scratch = fwd.scratchpad_desc();
  } else if (k[15] == kBwdData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src_md, wany, dst_md, strides, pl, pr, fwd, attr);
    e->prim = dnnl::convolution_backward_data(pd);
    e->act_a = dst_md; e->act_b = src_md;
    e->wei_prim = pd.weights_desc();
    e->scratch = pd.scratchpad_desc();
  } else {
    // The weight gradient sums over batch and pixels: accumulate it in f32
    // (a supported config with bf16 src/diff_dst); the reorder to the user's
    // HWIO rounds it to the weights' type once.
    memory::desc dw_any(wei, dt::f32, tag::any);
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src_md, dw_any, dst_md, strides, pl, pr, fwd, attr);
    e->prim = dnnl::convolution_backward_weights(pd);
    e->act_a = src_md; e->act_b = dst_md;
    e->wei_prim = pd.diff_weights_desc();
    e->scratch = pd.scratchpad_desc();
  }
  e->reorder = !(e->wei_prim == e->wei_user);
  return e;
}

// Runs `body` under the lock that serialises every call (the cache and the
// scratch space are shared), turning oneDNN and allocation failures into FFI
// errors instead of exceptions crossing into XLA.
template <typename F>
ffi::Error Guarded(const char* what, F&& body) {
  try {
    std::lock_guard<std::mutex> lock(Mutex());
    body();
  } catch (const dnnl::error& err) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + err.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      std::string(what) + ": out of memory for scratch space");
  }
  return ffi::Error::Success();
}

ffi::Error Run(int64_t kind, dt type, const int64_t* nhwc, const int64_t* hwio, const int64_t* out_nhwc,
               ffi::Span<const int64_t> geom, void* a, void* b, void* out,
               Post post = kNone, void* residual = nullptr) {
  if (geom.size() != 6) return ffi::Error(ffi::ErrorCode::kInvalidArgument, "geometry must have 6 entries");
  Key k{nhwc[0], nhwc[1], nhwc[2], nhwc[3], hwio[0], hwio[1], hwio[3], out_nhwc[1], out_nhwc[2],
        geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], kind, static_cast<int64_t>(type), post};
  return Guarded("oneDNN convolution", [&] {
    auto& cache = Cache();
    auto it = cache.find(k);
    if (it == cache.end()) it = cache.emplace(k, Build(k)).first;
    Entry& e = *it->second;
    auto& eng = Engine();
    dnnl::stream strm(eng);
    memory scratch(e.scratch, eng, ScratchSpace().Get(e.scratch.get_size()));
    if (kind == kFwd || kind == kBwdData) {
      // a: activation input, b: user weights, out: activation output
      memory wu(e.wei_user, eng, b);
      memory wp = wu;
      if (e.reorder) {
        wp = memory(e.wei_prim, eng, WeightSpace().Get(e.wei_prim.get_size()));
        dnnl::reorder(wu, wp).execute(strm, wu, wp);
      }
      memory ma(e.act_a, eng, a), mo(e.act_b, eng, out);
      if (kind == kFwd && post == kAddRelu) {
        memory mr(e.act_b, eng, residual);
        e.prim.execute(strm, {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, wp}, {DNNL_ARG_DST, mo},
                              {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, mr},
                              {DNNL_ARG_SCRATCHPAD, scratch}});
      } else if (kind == kFwd)
        e.prim.execute(strm, {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, wp}, {DNNL_ARG_DST, mo}, {DNNL_ARG_SCRATCHPAD, scratch}});
      else
        e.prim.execute(strm, {{DNNL_ARG_DIFF_DST, ma}, {DNNL_ARG_WEIGHTS, wp}, {DNNL_ARG_DIFF_SRC, mo}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      // a: src, b: diff_dst, out: user-format weight gradient
      memory ms(e.act_a, eng, a), md(e.act_b, eng, b), wu(e.wei_user, eng, out);
      memory wp = wu;
      if (e.reorder) {
        wp = memory(e.wei_prim, eng, WeightSpace().Get(e.wei_prim.get_size()));
      }
      e.prim.execute(strm, {{DNNL_ARG_SRC, ms}, {DNNL_ARG_DIFF_DST, md}, {DNNL_ARG_DIFF_WEIGHTS, wp}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (e.reorder) dnnl::reorder(wp, wu).execute(strm, wp, wu);
    }
    strm.wait();
  });
}

// The handlers, one instantiation per element type T (F32 or BF16).
template <ffi::DataType T>
constexpr dt DnnlType() { return T == ffi::DataType::BF16 ? dt::bf16 : dt::f32; }

template <ffi::DataType T>
ffi::Error Fwd(ffi::Buffer<T> x, ffi::Buffer<T> w, ffi::ResultBuffer<T> y,
               ffi::Span<const int64_t> geom) {
  return Run(kFwd, DnnlType<T>(), x.dimensions().begin(), w.dimensions().begin(),
             y->dimensions().begin(), geom, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

template <ffi::DataType T>
ffi::Error FwdRelu(ffi::Buffer<T> x, ffi::Buffer<T> w, ffi::ResultBuffer<T> y,
                   ffi::Span<const int64_t> geom) {
  return Run(kFwd, DnnlType<T>(), x.dimensions().begin(), w.dimensions().begin(),
             y->dimensions().begin(), geom, x.untyped_data(), w.untyped_data(), y->untyped_data(),
             kRelu);
}

template <ffi::DataType T>
ffi::Error FwdAddRelu(ffi::Buffer<T> x, ffi::Buffer<T> w, ffi::Buffer<T> r,
                      ffi::ResultBuffer<T> y, ffi::Span<const int64_t> geom) {
  auto rd = r.dimensions(), yd = y->dimensions();
  if (rd.size() != yd.size() || !std::equal(rd.begin(), rd.end(), yd.begin()))
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "conv add relu: the residual must have the output's shape");
  return Run(kFwd, DnnlType<T>(), x.dimensions().begin(), w.dimensions().begin(),
             y->dimensions().begin(), geom, x.untyped_data(), w.untyped_data(), y->untyped_data(),
             kAddRelu, r.untyped_data());
}

template <ffi::DataType T>
ffi::Error BwdData(ffi::Buffer<T> g, ffi::Buffer<T> w, ffi::ResultBuffer<T> dx,
                   ffi::Span<const int64_t> geom) {
  return Run(kBwdData, DnnlType<T>(), dx->dimensions().begin(), w.dimensions().begin(),
             g.dimensions().begin(), geom, g.untyped_data(), w.untyped_data(), dx->untyped_data());
}

template <ffi::DataType T>
ffi::Error BwdWeights(ffi::Buffer<T> x, ffi::Buffer<T> g, ffi::ResultBuffer<T> dw,
                      ffi::Span<const int64_t> geom) {
  return Run(kBwdWeights, DnnlType<T>(), x.dimensions().begin(), dw->dimensions().begin(),
             g.dimensions().begin(), geom, x.untyped_data(), g.untyped_data(), dw->untyped_data());
}

// Two T operands, one T result, the geometry attribute: all three handlers.
template <ffi::DataType T>
auto Binding() {
  return ffi::Ffi::Bind().Arg<ffi::Buffer<T>>().template Arg<ffi::Buffer<T>>()
      .template Ret<ffi::Buffer<T>>().template Attr<ffi::Span<const int64_t>>("geometry");
}

// ------------------------------------------------- elementwise (ReLU) kernels

// Elementwise primitives on tensors treated as flat (one dimension), cached
// per kind, element count and type.
enum FlatKind : int64_t { kFlatReluBwd = 0, kFlatAddRelu = 1 };

struct FlatEntry {
  dnnl::primitive prim;
  memory::desc md;
};

std::shared_ptr<FlatEntry> BuildFlat(FlatKind kind, int64_t n, dt type) {
  auto& eng = Engine();
  auto e = std::make_shared<FlatEntry>();
  e->md = memory::desc({n}, type, tag::a);
  if (kind == kFlatReluBwd) {
    // dz = dy where y > 0, else 0: the gradient through y = relu(z), from y.
    auto alg = dnnl::algorithm::eltwise_relu_use_dst_for_bwd;
    auto fwd = dnnl::eltwise_forward::primitive_desc(
        eng, dnnl::prop_kind::forward_training, alg, e->md, e->md, 0.f, 0.f);
    e->prim = dnnl::eltwise_backward(
        dnnl::eltwise_backward::primitive_desc(eng, alg, e->md, e->md, e->md, 0.f, 0.f, fwd));
  } else {
    // z = relu(a + b): a binary add with a ReLU post-op (the end of a ResNet
    // block with BatchNorm: relu(bn(conv(h)) + shortcut)).
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    e->prim = dnnl::binary(dnnl::binary::primitive_desc(
        eng, dnnl::algorithm::binary_add, e->md, e->md, e->md, attr));
  }
  return e;
}

// Runs the `kind` primitive on three same-sized buffers (two operands, one
// result), mapped to oneDNN's argument ids `ids`.
ffi::Error RunFlat(FlatKind kind, const char* what, dt type, size_t n0, size_t n1, size_t n2,
                   std::array<int, 3> ids, std::array<void*, 3> ptrs) {
  if (n1 != n0 || n2 != n0)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      std::string(what) + ": operands differ in size");
  return Guarded(what, [&] {
    static std::map<std::array<int64_t, 3>, std::shared_ptr<FlatEntry>> cache;
    const int64_t n = static_cast<int64_t>(n0);
    std::array<int64_t, 3> key{kind, n, static_cast<int64_t>(type)};
    auto it = cache.find(key);
    if (it == cache.end()) it = cache.emplace(key, BuildFlat(kind, n, type)).first;
    FlatEntry& e = *it->second;
    auto& eng = Engine();
    dnnl::stream strm(eng);
    std::unordered_map<int, memory> args;
    for (int i = 0; i < 3; ++i) args.emplace(ids[i], memory(e.md, eng, ptrs[i]));
    e.prim.execute(strm, args);
    strm.wait();
  });
}

template <ffi::DataType T>
ffi::Error ReluBwd(ffi::Buffer<T> dy, ffi::Buffer<T> y, ffi::ResultBuffer<T> dz) {
  return RunFlat(kFlatReluBwd, "oneDNN relu backward", DnnlType<T>(), dy.element_count(),
                 y.element_count(), dz->element_count(),
                 {DNNL_ARG_DIFF_DST, DNNL_ARG_DST, DNNL_ARG_DIFF_SRC},
                 {dy.untyped_data(), y.untyped_data(), dz->untyped_data()});
}

template <ffi::DataType T>
ffi::Error AddRelu(ffi::Buffer<T> a, ffi::Buffer<T> b, ffi::ResultBuffer<T> z) {
  return RunFlat(kFlatAddRelu, "oneDNN add relu", DnnlType<T>(), a.element_count(),
                 b.element_count(), z->element_count(),
                 {DNNL_ARG_SRC_0, DNNL_ARG_SRC_1, DNNL_ARG_DST},
                 {a.untyped_data(), b.untyped_data(), z->untyped_data()});
}

// ------------------------------------------------------- batch normalization

// n, h, w, c, kind, bit pattern of epsilon (a float)
using BnKey = std::array<int64_t, 6>;
// kBnReluFwd: forward with the ReLU fused (y = relu(bn(x))); its gradient is
// the ReLU gradient (from y) followed by kBnBwd.
// (oneDNN 3.2 has no CPU implementation of fuse_norm_add_relu, the add of a
// residual before the ReLU: measured, primitive creation fails.)
enum BnKind : int64_t { kBnFwd = 0, kBnBwd = 1, kBnReluFwd = 2 };

struct BnEntry {
  dnnl::primitive prim;
  memory::desc act;          // x, y, dy, dx: NHWC float32
  memory::desc mean, var;    // per-channel statistics
  memory::desc chan;         // scale, shift and their gradients
  memory::desc scratch;
  memory::desc workspace;    // kBnReluFwd: oneDNN's ReLU mask, not used by us
};

Scratch& BnWorkspace() { static Scratch s; return s; }

std::map<BnKey, std::shared_ptr<BnEntry>>& BnCache() {
  static std::map<BnKey, std::shared_ptr<BnEntry>> c;
  return c;
}

std::shared_ptr<BnEntry> BuildBn(const BnKey& k, float epsilon) {
  auto& eng = Engine();
  memory::desc act({k[0], k[3], k[1], k[2]}, dt::f32, tag::nhwc);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  // forward_training: statistics of this batch are computed and returned
  // (the caller updates its running averages with them).
  auto fwd = dnnl::batch_normalization_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, act, act, epsilon, flags, attr);
  auto e = std::make_shared<BnEntry>();
  e->act = act;
  e->chan = memory::desc({k[3]}, dt::f32, tag::a);
  if (k[4] == kBnFwd) {
    e->prim = dnnl::batch_normalization_forward(fwd);
    e->mean = fwd.mean_desc(); e->var = fwd.variance_desc();
    e->scratch = fwd.scratchpad_desc();
  } else if (k[4] == kBnReluFwd) {
    auto pd = dnnl::batch_normalization_forward::primitive_desc(
        eng, dnnl::prop_kind::forward_training, act, act, epsilon,
        flags | dnnl::normalization_flags::fuse_norm_relu, attr);
    e->prim = dnnl::batch_normalization_forward(pd);
    e->mean = pd.mean_desc(); e->var = pd.variance_desc();
    e->scratch = pd.scratchpad_desc();
    e->workspace = pd.workspace_desc();
  } else {
    // prop_kind::backward: the gradients of the scale and shift too.
    auto pd = dnnl::batch_normalization_backward::primitive_desc(
        eng, dnnl::prop_kind::backward, act, act, act, epsilon, flags, fwd, attr);
    e->prim = dnnl::batch_normalization_backward(pd);
    e->mean = pd.mean_desc(); e->var = pd.variance_desc();
    e->scratch = pd.scratchpad_desc();
  }
  return e;
}

// The cached entry of this shape, kind and epsilon (call under the lock).
BnEntry& BnLookup(BnKind kind, const int64_t* nhwc, float epsilon) {
  uint32_t bits;
  std::memcpy(&bits, &epsilon, sizeof bits);
  BnKey k{nhwc[0], nhwc[1], nhwc[2], nhwc[3], kind, static_cast<int64_t>(bits)};
  auto& cache = BnCache();
  auto it = cache.find(k);
  if (it == cache.end()) it = cache.emplace(k, BuildBn(k, epsilon)).first;
  return *it->second;
}

const memory::desc& BnDesc(const BnEntry& e, int arg) {
  switch (arg) {
    case DNNL_ARG_MEAN: return e.mean;
    case DNNL_ARG_VARIANCE: return e.var;
    case DNNL_ARG_SCALE: case DNNL_ARG_SHIFT: case DNNL_ARG_DIFF_SCALE: case DNNL_ARG_DIFF_SHIFT:
      return e.chan;
    default: return e.act;
  }
}

// One batch-norm primitive call on x's shape: `args` maps oneDNN argument ids
// to the FFI buffers; `channel_sizes` are the sizes of the per-channel ones,
// which must all equal x's C.
ffi::Error RunBn(BnKind kind, ffi::Span<const int64_t> nhwc, float epsilon,
                 std::initializer_list<size_t> channel_sizes,
                 std::initializer_list<std::pair<int, void*>> args) {
  bool ok = nhwc.size() == 4;
  for (size_t c : channel_sizes) ok = ok && c == static_cast<size_t>(nhwc[3]);
  if (!ok)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "batch norm: x must be NHWC and every per-channel operand of size C");
  return Guarded("oneDNN batch norm", [&] {
    BnEntry& e = BnLookup(kind, nhwc.begin(), epsilon);
    auto& eng = Engine();
    dnnl::stream strm(eng);
    std::unordered_map<int, memory> margs;
    for (const auto& [id, ptr] : args) margs.emplace(id, memory(BnDesc(e, id), eng, ptr));
    margs.emplace(DNNL_ARG_SCRATCHPAD,
                  memory(e.scratch, eng, ScratchSpace().Get(e.scratch.get_size())));
    if (e.workspace.get_size())
      margs.emplace(DNNL_ARG_WORKSPACE,
                    memory(e.workspace, eng, BnWorkspace().Get(e.workspace.get_size())));
    e.prim.execute(strm, margs);
    strm.wait();
  });
}

ffi::Error BnFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
                 ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean,
                 ffi::ResultBuffer<ffi::F32> var, float epsilon) {
  return RunBn(kBnFwd, x.dimensions(), epsilon,
               {scale.element_count(), shift.element_count(), mean->element_count(),
                var->element_count()},
               {{DNNL_ARG_SRC, x.untyped_data()}, {DNNL_ARG_DST, y->untyped_data()},
                {DNNL_ARG_SCALE, scale.untyped_data()}, {DNNL_ARG_SHIFT, shift.untyped_data()},
                {DNNL_ARG_MEAN, mean->untyped_data()}, {DNNL_ARG_VARIANCE, var->untyped_data()}});
}

ffi::Error BnReluFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                     ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> y,
                     ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var,
                     float epsilon) {
  return RunBn(kBnReluFwd, x.dimensions(), epsilon,
               {scale.element_count(), shift.element_count(), mean->element_count(),
                var->element_count()},
               {{DNNL_ARG_SRC, x.untyped_data()}, {DNNL_ARG_DST, y->untyped_data()},
                {DNNL_ARG_SCALE, scale.untyped_data()}, {DNNL_ARG_SHIFT, shift.untyped_data()},
                {DNNL_ARG_MEAN, mean->untyped_data()}, {DNNL_ARG_VARIANCE, var->untyped_data()}});
}

ffi::Error BnBwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> mean,
                 ffi::Buffer<ffi::F32> var, ffi::Buffer<ffi::F32> scale,
                 ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                 ffi::ResultBuffer<ffi::F32> dshift, float epsilon) {
  return RunBn(kBnBwd, x.dimensions(), epsilon,
               {mean.element_count(), var.element_count(), scale.element_count(),
                dscale->element_count(), dshift->element_count()},
               {{DNNL_ARG_SRC, x.untyped_data()}, {DNNL_ARG_DIFF_DST, dy.untyped_data()},
                {DNNL_ARG_MEAN, mean.untyped_data()}, {DNNL_ARG_VARIANCE, var.untyped_data()},
                {DNNL_ARG_SCALE, scale.untyped_data()}, {DNNL_ARG_DIFF_SRC, dx->untyped_data()},
                {DNNL_ARG_DIFF_SCALE, dscale->untyped_data()},
                {DNNL_ARG_DIFF_SHIFT, dshift->untyped_data()}});
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(experiments_onednn_conv_fwd, Fwd<ffi::F32>, Binding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(experiments_onednn_conv_bwd_data, BwdData<ffi::F32>, Binding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(experiments_onednn_conv_bwd_weights, BwdWeights<ffi::F32>, Binding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(experiments_onednn_conv_fwd_bf16, Fwd<ffi::BF16>, Binding<ffi::BF16>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(experiments_onednn_conv_bwd_data_bf16, BwdData<ffi::BF16>, Binding<ffi::BF16>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(experiments_onednn_conv_bwd_weights_bf16, BwdWeights<ffi::BF16>,
                              Binding<ffi::BF16>());
#define EXPERIMENTS_FUSED_HANDLERS(T, SUFFIX)                                                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(experiments_onednn_conv_fwd_relu##SUFFIX, FwdRelu<T>, Binding<T>()); \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                                 \
      experiments_onednn_conv_fwd_add_relu##SUFFIX, FwdAddRelu<T>,                               \
      ffi::Ffi::Bind().Arg<ffi::Buffer<T>>().Arg<ffi::Buffer<T>>().Arg<ffi::Buffer<T>>()          \
          .Ret<ffi::Buffer<T>>().Attr<ffi::Span<const int64_t>>("geometry"));                    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                                 \
      experiments_onednn_relu_bwd##SUFFIX, ReluBwd<T>,                                           \
      ffi::Ffi::Bind().Arg<ffi::Buffer<T>>().Arg<ffi::Buffer<T>>().Ret<ffi::Buffer<T>>());        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                                 \
      experiments_onednn_add_relu##SUFFIX, AddRelu<T>,                                           \
      ffi::Ffi::Bind().Arg<ffi::Buffer<T>>().Arg<ffi::Buffer<T>>().Ret<ffi::Buffer<T>>())
EXPERIMENTS_FUSED_HANDLERS(ffi::F32, );
EXPERIMENTS_FUSED_HANDLERS(ffi::BF16, _bf16);
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    experiments_onednn_batch_norm_fwd, BnFwd,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Attr<float>("epsilon"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    experiments_onednn_batch_norm_relu_fwd, BnReluFwd,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Attr<float>("epsilon"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    experiments_onednn_batch_norm_bwd, BnBwd,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
        .Attr<float>("epsilon"));
