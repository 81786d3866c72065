// Multi-head softmax attention over the few tokens of each row, for evaluation on the CPU.
//
// LRD scores every (user, candidate) pair through attention over its ~10 relation tokens. PyTorch
// runs that as head-by-head q/k/v products, batched 10 x 16 products, five element-wise passes and
// a head-merging copy, each streaming the whole block through memory; here each (row, head) is done
// in one pass while its q, k and v sit in cache. Lanes of a vector are query tokens, so the softmax
// over keys is vertical (no horizontal reductions) and exp is ATen's vectorised (Sleef) exp, as
// torch.exp.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
using IVec = at::vec::Vectorized<int32_t>;

// kHeadSize is a compile-time constant so the transposed queries stay in registers.
template <int64_t kHeadSize>
void attend(const float* qkv, float* out, int64_t n_rows, int64_t n_tokens, int64_t n_heads, int64_t ld) {
  constexpr int64_t kLanes = Vec::size();
  const int64_t width = n_heads * kHeadSize;
  at::parallel_for(0, n_rows * n_heads, 16, [&](int64_t begin, int64_t end) {
    std::vector<Vec> scores(n_tokens);            // [key] -> lanes: query tokens
    std::vector<float> probs(n_tokens * kLanes);  // [key, query lane]
    for (int64_t job = begin; job < end; ++job) {
      const int64_t row = job / n_heads, head = job % n_heads;
      const float* base = qkv + row * n_tokens * ld + head * kHeadSize;  // q; k at +width, v at +2 width
      for (int64_t first = 0; first < n_tokens; first += kLanes) {
        const int64_t n_queries = std::min(kLanes, n_tokens - first);
        // lanes past the last token repeat it: finite, and never written out
        const IVec offsets = at::vec::minimum(IVec::arange(0, 1), IVec(n_queries - 1)) * IVec(ld);
        Vec query[kHeadSize];  // [feature] -> lanes: query tokens
        for (int64_t e = 0; e < kHeadSize; ++e) query[e] = at::vec::gather<4>(base + first * ld + e, offsets);
        for (int64_t s = 0; s < n_tokens; ++s) {
          const float* key = base + s * ld + width;
          Vec dot(0.f);
          for (int64_t e = 0; e < kHeadSize; ++e) dot = at::vec::fmadd(Vec(key[e]), query[e], dot);
          scores[s] = dot;
        }
        Vec top = scores[0];
        for (int64_t s = 1; s < n_tokens; ++s) top = at::vec::maximum(top, scores[s]);
        Vec total(0.f);
        for (int64_t s = 0; s < n_tokens; ++s) {
          scores[s] = (scores[s] - top).exp();
          total = total + scores[s];
        }
        const Vec inverse = Vec(1.f) / total;
        for (int64_t s = 0; s < n_tokens; ++s) (scores[s] * inverse).store(probs.data() + s * kLanes);
        for (int64_t i = 0; i < n_queries; ++i) {
          float* target = out + (row * n_tokens + first + i) * width + head * kHeadSize;
          for (int64_t e = 0; e < kHeadSize; e += kLanes) {
            constexpr int64_t kCount = std::min(kHeadSize, kLanes);
            Vec mixed(0.f);
            for (int64_t s = 0; s < n_tokens; ++s) {
              const Vec value = Vec::loadu(base + s * ld + 2 * width + e, kCount);
              mixed = at::vec::fmadd(Vec(probs[s * kLanes + i]), value, mixed);
            }
            mixed.store(target + e, kCount);
          }
        }
      }
    }
  });
}

// qkv: [rows * n_tokens, 3 * n_heads * head_size], rows of q | k | v with heads in blocks of
// head_size and the 1/sqrt(head_size) scale already in q. Returns the attended values with heads
// concatenated: [rows * n_tokens, n_heads * head_size].
torch::Tensor relation_attention(const torch::Tensor& qkv, int64_t n_tokens, int64_t n_heads) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.scalar_type() == torch::kFloat, "qkv must be a float32 CPU tensor");
  TORCH_CHECK(qkv.dim() == 2 && qkv.stride(1) == 1, "qkv must be a 2-D tensor with unit column stride");
  TORCH_CHECK(n_tokens > 0 && qkv.size(0) % n_tokens == 0, "qkv rows must be a multiple of n_tokens");
  TORCH_CHECK(n_heads > 0 && qkv.size(1) % (3 * n_heads) == 0, "qkv width must be 3 * n_heads * head_size");
  const int64_t width = qkv.size(1) / 3, head_size = width / n_heads, n_rows = qkv.size(0) / n_tokens;
  auto out = torch::empty({qkv.size(0), width}, qkv.options());
  const float* source = qkv.data_ptr<float>();
  float* target = out.data_ptr<float>();
  switch (head_size) {
    case 8: attend<8>(source, target, n_rows, n_tokens, n_heads, qkv.stride(0)); break;
    case 16: attend<16>(source, target, n_rows, n_tokens, n_heads, qkv.stride(0)); break;
    case 32: attend<32>(source, target, n_rows, n_tokens, n_heads, qkv.stride(0)); break;
    case 64: attend<64>(source, target, n_rows, n_tokens, n_heads, qkv.stride(0)); break;
    default: TORCH_CHECK(false, "relation_attention supports head sizes 8, 16, 32 and 64, got ", head_size);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("relation_attention", &relation_attention, "Softmax attention over the tokens of each row (CPU, float32)");
}
