// Test driver: runs the hermes CUDA kernels (csrc/cuda/assign_kernels.cuh, compiled by g++ under the SIMT
// emulator) on buffers read from raw binary files, and writes the results back to files for
// tests/simt/test_simt.py to compare with the CPU executor. Grid shapes mirror csrc/cuda/assign_cuda.cu.
//
// Usage: simt_driver COMMAND key=value ...      one kernel launch
//        simt_driver script FILE                 one command per line (# comments), run in order
// Commands (arrays are raw little-endian files; "none" passes a null pointer):
//   norms_split    dtype x n d ldx wtb bb normalize out_inv [out_x16 out_xn out_dxn]   (x16: bf16 bits)
//   screen_rescore dtype x n d ldx g16 ldg levels=K0,K1,.. metric beta cterm T mt m16n dmn shadow inv xn dxn
//                  out_codes out_count [variant=ok|nan_dropped]      (T: l=1 j=0, l=2 j=0, l=2 j=1, ... files)
//   argmax_levels  g n ldg levels metric beta cterm T inv out_codes     (the fp32 epilogue over a given g)
//   normalize_rows h n d ldh normalize out_h out_inv
//   gemm_argmax    dtype a n d lda b b_off ldb K level L metric beta beta_off cterm T inv codes out_codes
//                  [variant=ok|tail_oob|shared_oob|early_exit|no_second_barrier]   (T: comma-separated files)
//   affine         dtype x n d ldx wt bias out_h
//   subtract_codeword r n d ldr C codes L level out_r [grid=G block=B]
//   to_float       dtype in out          (16-bit bit patterns -> float32, all through __half2float etc.)
//   from_float     dtype in out          (float32 -> 16-bit bit patterns, round to nearest even)
//   spin                                  (a kernel that never yields: exercises SIMT_TIMEOUT_S)
//   selftest                              (the emulator's own warp/barrier/atomic semantics)
//   misuse         what=divergent_barrier|shfl_mask_excludes_self|shfl_missing_lane   (must abort)
#define HERMES_SIMT_EMULATION 1
#include "cuda/assign_kernels.cuh"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "broken_kernels.h"
#include "selftest_kernels.h"

namespace {

using hermes::core::LevelParams;
namespace k = hermes::kernels;

[[noreturn]] void die(const std::string& msg) {
  fprintf(stderr, "simt_driver: %s\n", msg.c_str());
  exit(2);
}

// An exactly sized heap buffer, so that ASan flags a read one element past the end.
struct Buf {
  std::unique_ptr<char, void (*)(void*)> data{nullptr, free};
  size_t bytes = 0;
  template <class T>
  T* as() const { return reinterpret_cast<T*>(data.get()); }
};

Buf alloc(size_t bytes) {
  Buf b;
  b.data.reset(static_cast<char*>(malloc(bytes == 0 ? 1 : bytes)));
  b.bytes = bytes;
  return b;
}

Buf load(const std::string& path, size_t elem, size_t min_elems, const char* what) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) die(std::string("cannot open ") + what + " file " + path);
  size_t bytes = static_cast<size_t>(f.tellg());
  if (bytes % elem != 0 || bytes / elem < min_elems)
    die(std::string(what) + " file " + path + " holds " + std::to_string(bytes) + " bytes; needs at least " +
        std::to_string(min_elems) + " elements of " + std::to_string(elem) + " bytes");
  Buf b = alloc(bytes);
  f.seekg(0);
  f.read(b.data.get(), static_cast<std::streamsize>(bytes));
  return b;
}

void save(const std::string& path, const void* p, size_t bytes) {
  std::string tmp = path + ".tmp";
  FILE* f = fopen(tmp.c_str(), "wb");
  if (!f || fwrite(p, 1, bytes, f) != bytes || fclose(f) != 0) die("cannot write " + path);
  if (rename(tmp.c_str(), path.c_str()) != 0) die("cannot rename " + tmp);
}

struct Args {
  std::map<std::string, std::string> kv;
  std::string cmd;
  const std::string& str(const char* key) const {
    auto it = kv.find(key);
    if (it == kv.end()) die(cmd + ": missing argument " + key + "=");
    return it->second;
  }
  int64_t i64(const char* key) const { return std::stoll(str(key)); }
  int64_t i64_or(const char* key, int64_t dflt) const { return kv.count(key) ? i64(key) : dflt; }
  float f32(const char* key) const { return std::stof(str(key)); }
  bool has(const char* key) const { return kv.count(key) && kv.at(key) != "none"; }
};

// Smallest element count of a strided [n, d] matrix: the last row ends at (n - 1) * ld + d.
size_t span(int64_t n, int64_t d, int64_t ld) { return n == 0 ? 0 : static_cast<size_t>((n - 1) * ld + d); }

int dtype_code(const std::string& s) {
  if (s == "f32") return hermes::core::kF32;
  if (s == "f16") return hermes::core::kF16;
  if (s == "bf16") return hermes::core::kBF16;
  die("dtype must be f32, f16 or bf16, got " + s);
}

template <class F>
void dispatch(int dtype, F&& f) {
  switch (dtype) {
    case hermes::core::kF32: f(float{}); break;
    case hermes::core::kF16: f(__half{}); break;
    default: f(__nv_bfloat16{}); break;
  }
}

size_t dtype_size(int dtype) { return dtype == hermes::core::kF32 ? 4 : 2; }

unsigned grid_1d(int64_t work, int64_t per_block) { return static_cast<unsigned>((work + per_block - 1) / per_block); }

void cmd_norms_split(const Args& a) {
  const int dt = dtype_code(a.str("dtype"));
  const int64_t n = a.i64("n"), d = a.i64("d"), ldx = a.i64("ldx");
  Buf x = load(a.str("x"), dtype_size(dt), span(n, d, ldx), "x");
  Buf wtb = load(a.str("wtb"), 4, d, "wtb");
  Buf inv = alloc(4 * n);
  const bool split = a.has("out_x16");
  Buf x16 = split ? alloc(2 * n * d) : Buf{};
  Buf xn = a.has("out_xn") ? alloc(4 * n) : Buf{};
  Buf dxn = a.has("out_dxn") ? alloc(4 * n) : Buf{};
  if (n > 0) {
    dispatch(dt, [&](auto tag) {
      using T = decltype(tag);
      simt::set_kernel_name("norms_split_kernel");
      simt::launch(grid_1d(n, k::kRowsPerNormBlock), k::kRowsPerNormBlock * hermes::core::kWarp,
                   k::norms_split_kernel<T>, x.as<const T>(), n, d, ldx, wtb.as<const float>(), a.f32("bb"),
                   a.i64("normalize") != 0, inv.as<float>(), split ? x16.as<uint16_t>() : nullptr,
                   a.has("out_xn") ? xn.as<float>() : nullptr, a.has("out_dxn") ? dxn.as<float>() : nullptr);
    });
  }
  save(a.str("out_inv"), inv.data.get(), inv.bytes);
  if (split) save(a.str("out_x16"), x16.data.get(), x16.bytes);
  if (a.has("out_xn")) save(a.str("out_xn"), xn.data.get(), xn.bytes);
  if (a.has("out_dxn")) save(a.str("out_dxn"), dxn.data.get(), dxn.bytes);
}

std::vector<std::string> split(const std::string& s, char sep);

// The model tables of screen_rescore / argmax_levels from files; `bufs` keeps them alive.
hermes::core::Tables load_tables(const Args& a, int64_t d, bool screen, std::vector<Buf>& bufs) {
  hermes::core::Tables t;
  std::vector<int> Ks;
  for (const auto& k : split(a.str("levels"), ',')) Ks.push_back(std::stoi(k));
  t.L = static_cast<int>(Ks.size());
  if (t.L < 1 || t.L > hermes::core::kMaxLevels) die("levels must hold 1 to 8 sizes");
  t.d = d;
  for (int l = 0; l < t.L; ++l) t.offset[l + 1] = t.offset[l] + Ks[l];
  t.cols = t.offset[t.L];
  auto keep = [&](Buf b) -> const void* {
    bufs.push_back(std::move(b));
    return bufs.back().data.get();
  };
  const float* beta = static_cast<const float*>(keep(load(a.str("beta"), 4, t.cols, "beta")));
  const float* cterm = static_cast<const float*>(keep(load(a.str("cterm"), 4, t.cols, "cterm")));
  std::vector<std::string> Tf = a.has("T") ? split(a.str("T"), ',') : std::vector<std::string>{};
  if (static_cast<int>(Tf.size()) != t.L * (t.L - 1) / 2) die("T must name one file per (l, j < l)");
  size_t ti = 0;
  for (int l = 0; l < t.L; ++l) {
    hermes::core::LevelParams& p = t.p[l];
    p.K = Ks[l];
    p.level = l;
    p.L = t.L;
    p.metric = static_cast<int>(a.i64("metric"));
    p.beta = beta + t.offset[l];
    p.cterm = cterm + t.offset[l];
    for (int j = 0; j < l; ++j)
      p.T[j] = static_cast<const float*>(keep(load(Tf[ti++], 4, static_cast<size_t>(Ks[j]) * Ks[l], "T")));
  }
  if (screen) {
    t.mt = static_cast<const float*>(keep(load(a.str("mt"), 4, t.cols * d, "mt")));
    t.m16_norm = static_cast<const float*>(keep(load(a.str("m16n"), 4, t.cols, "m16n")));
    t.dm_norm = static_cast<const float*>(keep(load(a.str("dmn"), 4, t.cols, "dmn")));
    t.shadow = static_cast<const uint8_t*>(keep(load(a.str("shadow"), 1, t.cols, "shadow")));
  }
  return t;
}

template <class T>
using ScreenKernel = void (*)(const uint16_t*, int64_t, const T*, int64_t, int64_t, hermes::core::Tables,
                              const float*, const float*, const float*, int32_t*, unsigned long long*);

void cmd_screen_rescore(const Args& a) {
  const int dt = dtype_code(a.str("dtype"));
  const int64_t n = a.i64("n"), d = a.i64("d"), ldx = a.i64("ldx"), ldg = a.i64("ldg");
  std::vector<Buf> bufs;
  const hermes::core::Tables t = load_tables(a, d, true, bufs);
  Buf x = load(a.str("x"), dtype_size(dt), span(n, d, ldx), "x");
  Buf g16 = load(a.str("g16"), 2, span(n, t.cols, ldg), "g16");
  Buf inv = load(a.str("inv"), 4, n, "inv"), xn = load(a.str("xn"), 4, n, "xn"), dxn = load(a.str("dxn"), 4, n, "dxn");
  Buf codes = alloc(4 * n * t.L);
  Buf count = alloc(8);
  *count.as<unsigned long long>() = 0;
  const std::string variant = a.kv.count("variant") ? a.str("variant") : "ok";
  if (n > 0) {
    dispatch(dt, [&](auto tag) {
      using T = decltype(tag);
      ScreenKernel<T> kern = k::screen_rescore_kernel<T>;
      if (variant == "nan_dropped")
        kern = broken::screen_rescore_nan_dropped_kernel<T>;
      else if (variant != "ok")
        die("unknown screen_rescore variant " + variant);
      simt::set_kernel_name(variant == "ok" ? "screen_rescore_kernel" : "screen_rescore_kernel (broken variant)");
      simt::launch(grid_1d(n, k::kRowsPerNormBlock), k::kRowsPerNormBlock * hermes::core::kWarp, kern,
                   g16.as<const uint16_t>(), ldg, x.as<const T>(), n, ldx, t, inv.as<const float>(),
                   xn.as<const float>(), dxn.as<const float>(), codes.as<int32_t>(),
                   count.as<unsigned long long>());
    });
  }
  save(a.str("out_codes"), codes.data.get(), codes.bytes);
  save(a.str("out_count"), count.data.get(), count.bytes);
}

void cmd_argmax_levels(const Args& a) {
  const int64_t n = a.i64("n"), ldg = a.i64("ldg");
  std::vector<Buf> bufs;
  const hermes::core::Tables t = load_tables(a, 0, false, bufs);
  Buf g = load(a.str("g"), 4, span(n, t.cols, ldg), "g");
  Buf inv = a.has("inv") ? load(a.str("inv"), 4, n, "inv") : Buf{};
  Buf codes = alloc(4 * n * t.L);
  if (n > 0) {
    simt::set_kernel_name("argmax_levels_kernel");
    simt::launch(grid_1d(n, k::kRowsPerNormBlock), k::kRowsPerNormBlock * hermes::core::kWarp,
                 k::argmax_levels_kernel, g.as<const float>(), ldg, n, t, 0, t.L,
                 a.has("inv") ? inv.as<const float>() : static_cast<const float*>(nullptr), codes.as<int32_t>());
  }
  save(a.str("out_codes"), codes.data.get(), codes.bytes);
}

void cmd_normalize_rows(const Args& a) {
  const int64_t n = a.i64("n"), d = a.i64("d"), ldh = a.i64("ldh");
  Buf h = load(a.str("h"), 4, span(n, d, ldh), "h");
  Buf inv = alloc(4 * n);
  if (n > 0) {
    simt::set_kernel_name("normalize_rows_kernel");
    simt::launch(grid_1d(n, k::kRowsPerNormBlock), k::kRowsPerNormBlock * hermes::core::kWarp,
                 k::normalize_rows_kernel, h.as<float>(), n, d, ldh, a.i64("normalize") != 0, inv.as<float>());
  }
  save(a.str("out_h"), h.data.get(), h.bytes);
  save(a.str("out_inv"), inv.data.get(), inv.bytes);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

template <class T>
using GemmKernel = void (*)(const T*, int64_t, int64_t, int64_t, const float*, int64_t, LevelParams, const float*,
                            int32_t*);

template <class T>
GemmKernel<T> gemm_variant(const std::string& v) {
  if (v == "ok") return k::gemm_argmax_kernel<T>;
  if (v == "tail_oob") return broken::gemm_argmax_tail_oob_kernel<T>;
  if (v == "shared_oob") return broken::gemm_argmax_shared_oob_kernel<T>;
  if (v == "early_exit") return broken::gemm_argmax_early_exit_kernel<T>;
  if (v == "no_second_barrier") return broken::gemm_argmax_no_second_barrier_kernel<T>;
  die("unknown gemm_argmax variant " + v);
}

void cmd_gemm_argmax(const Args& a) {
  const int dt = dtype_code(a.str("dtype"));
  const int64_t n = a.i64("n"), d = a.i64("d"), lda = a.i64("lda"), ldb = a.i64("ldb");
  const int64_t b_off = a.i64_or("b_off", 0), beta_off = a.i64_or("beta_off", 0);
  const int K = static_cast<int>(a.i64("K")), level = static_cast<int>(a.i64("level"));
  const int L = static_cast<int>(a.i64("L"));
  Buf A = load(a.str("a"), dtype_size(dt), span(n, d, lda), "a");
  Buf B = load(a.str("b"), 4, static_cast<size_t>(b_off) + span(d, K, ldb), "b");
  Buf beta = a.has("beta") ? load(a.str("beta"), 4, beta_off + K, "beta") : Buf{};
  Buf cterm = load(a.str("cterm"), 4, K, "cterm");
  Buf inv = a.has("inv") ? load(a.str("inv"), 4, n, "inv") : Buf{};
  Buf codes = load(a.str("codes"), 4, static_cast<size_t>(n * L), "codes");
  std::vector<Buf> T;
  if (a.has("T"))
    for (const auto& path : split(a.str("T"), ',')) T.push_back(load(path, 4, K, "T"));
  if (level < 0 || level >= L || L > hermes::core::kMaxLevels || static_cast<int>(T.size()) > level)
    die("gemm_argmax: bad level/L/T");
  LevelParams p{};
  p.K = K;
  p.level = level;
  p.L = L;
  p.metric = static_cast<int>(a.i64("metric"));
  p.beta = a.has("beta") ? beta.as<const float>() + beta_off : nullptr;
  p.cterm = cterm.as<const float>();
  for (size_t j = 0; j < T.size(); ++j) p.T[j] = T[j].as<const float>();
  const std::string variant = a.kv.count("variant") ? a.str("variant") : "ok";
  if (n > 0) {
    dispatch(dt, [&](auto tag) {
      using TT = decltype(tag);
      simt::set_kernel_name(variant == "ok" ? "gemm_argmax_kernel" : "gemm_argmax_kernel (broken variant)");
      simt::launch(grid_1d(n, k::kTileRows), dim3(k::kThreadsX, k::kThreadsY), gemm_variant<TT>(variant),
                   A.as<const TT>(), n, d, lda, B.as<const float>() + b_off, ldb, p,
                   a.has("inv") ? inv.as<const float>() : static_cast<const float*>(nullptr), codes.as<int32_t>());
    });
  }
  save(a.str("out_codes"), codes.data.get(), codes.bytes);
}

void cmd_affine(const Args& a) {
  const int dt = dtype_code(a.str("dtype"));
  const int64_t n = a.i64("n"), d = a.i64("d"), ldx = a.i64("ldx");
  Buf x = load(a.str("x"), dtype_size(dt), span(n, d, ldx), "x");
  Buf wt = load(a.str("wt"), 4, static_cast<size_t>(d * d), "wt");
  Buf bias = load(a.str("bias"), 4, d, "bias");
  Buf h = alloc(4 * n * d);
  if (n > 0) {
    dispatch(dt, [&](auto tag) {
      using T = decltype(tag);
      simt::set_kernel_name("affine_kernel");
      simt::launch(dim3(grid_1d(n, k::kTileRows), grid_1d(d, k::kTileCols)), dim3(k::kThreadsX, k::kThreadsY),
                   k::affine_kernel<T>, x.as<const T>(), n, d, ldx, wt.as<const float>(), bias.as<const float>(),
                   h.as<float>());
    });
  }
  save(a.str("out_h"), h.data.get(), h.bytes);
}

void cmd_subtract_codeword(const Args& a) {
  const int64_t n = a.i64("n"), d = a.i64("d"), ldr = a.i64("ldr");
  const int L = static_cast<int>(a.i64("L")), level = static_cast<int>(a.i64("level"));
  Buf r = load(a.str("r"), 4, span(n, d, ldr), "r");
  Buf C = load(a.str("C"), 4, 0, "C");
  Buf codes = load(a.str("codes"), 4, static_cast<size_t>(n * L), "codes");
  if (n > 0) {
    constexpr int kThreads = 256;  // the launcher's configuration, unless the test asks for another
    int64_t blocks = (n * d + kThreads - 1) / kThreads;
    if (blocks > 65535 * 16) blocks = 65535 * 16;
    simt::set_kernel_name("subtract_codeword_kernel");
    simt::launch(static_cast<unsigned>(a.i64_or("grid", blocks)), static_cast<unsigned>(a.i64_or("block", kThreads)),
                 k::subtract_codeword_kernel, r.as<float>(), n, d, ldr, C.as<const float>(),
                 codes.as<const int32_t>(), L, level);
  }
  save(a.str("out_r"), r.data.get(), r.bytes);
}

void cmd_to_float(const Args& a) {
  const int dt = dtype_code(a.str("dtype"));
  Buf in = load(a.str("in"), 2, 0, "in");
  const size_t n = in.bytes / 2;
  Buf out = alloc(4 * n);
  for (size_t i = 0; i < n; ++i) {
    uint16_t bits = in.as<uint16_t>()[i];
    out.as<float>()[i] = dt == hermes::core::kF16 ? __half2float(__half{bits}) : __bfloat162float(__nv_bfloat16{bits});
  }
  save(a.str("out"), out.data.get(), out.bytes);
}

void cmd_from_float(const Args& a) {
  const int dt = dtype_code(a.str("dtype"));
  Buf in = load(a.str("in"), 4, 0, "in");
  const size_t n = in.bytes / 4;
  Buf out = alloc(2 * n);
  for (size_t i = 0; i < n; ++i) {
    float v = in.as<float>()[i];
    out.as<uint16_t>()[i] = dt == hermes::core::kF16 ? __float2half(v).bits : __float2bfloat16(v).bits;
  }
  save(a.str("out"), out.data.get(), out.bytes);
}

void cmd_spin(const Args&) {
  Buf flag = alloc(sizeof(int));
  *flag.as<int>() = 0;
  simt::set_kernel_name("spin_kernel (broken)");
  simt::launch(1, 64, broken::spin_kernel, flag.as<int>());
}

void cmd_misuse(const Args& a) {
  const std::string what = a.str("what");
  std::vector<int> out(64, 0);
  simt::set_kernel_name(what.c_str());
  if (what == "divergent_barrier") return simt::launch(1, 64, broken::divergent_barrier_kernel, out.data());
  if (what == "shfl_mask_excludes_self") return simt::launch(1, 32, broken::shfl_mask_excludes_self_kernel, out.data());
  if (what == "shfl_missing_lane") return simt::launch(1, 40, broken::shfl_missing_lane_kernel, out.data());
  die("unknown misuse " + what);
}

void cmd_selftest(const Args&) {
  int failures = selftest::run_all();
  if (failures) die("selftest: " + std::to_string(failures) + " check(s) failed");
  printf("selftest: ok\n");
}

void run(const Args& a) {
  if (a.cmd == "norms_split") return cmd_norms_split(a);
  if (a.cmd == "screen_rescore") return cmd_screen_rescore(a);
  if (a.cmd == "argmax_levels") return cmd_argmax_levels(a);
  if (a.cmd == "normalize_rows") return cmd_normalize_rows(a);
  if (a.cmd == "gemm_argmax") return cmd_gemm_argmax(a);
  if (a.cmd == "affine") return cmd_affine(a);
  if (a.cmd == "subtract_codeword") return cmd_subtract_codeword(a);
  if (a.cmd == "to_float") return cmd_to_float(a);
  if (a.cmd == "from_float") return cmd_from_float(a);
  if (a.cmd == "spin") return cmd_spin(a);
  if (a.cmd == "selftest") return cmd_selftest(a);
  if (a.cmd == "misuse") return cmd_misuse(a);
  die("unknown command " + a.cmd);
}

Args parse(const std::vector<std::string>& words) {
  Args a;
  a.cmd = words.at(0);
  for (size_t i = 1; i < words.size(); ++i) {
    size_t eq = words[i].find('=');
    if (eq == std::string::npos) die(a.cmd + ": argument '" + words[i] + "' is not key=value");
    a.kv[words[i].substr(0, eq)] = words[i].substr(eq + 1);
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: simt_driver COMMAND key=value ... | simt_driver script FILE");
  if (std::string(argv[1]) == "script") {
    if (argc != 3) die("usage: simt_driver script FILE");
    std::ifstream f(argv[2]);
    if (!f) die(std::string("cannot open script ") + argv[2]);
    std::string line;
    while (std::getline(f, line)) {
      if (line.empty() || line[0] == '#') continue;
      std::vector<std::string> words = split(line, ' ');
      if (!words.empty()) run(parse(words));
    }
    return 0;
  }
  run(parse(std::vector<std::string>(argv + 1, argv + argc)));
  return 0;
}
