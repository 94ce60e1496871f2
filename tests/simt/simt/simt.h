// SIMT emulator for tests: lets g++ compile CUDA __global__ kernels unchanged and run them on the CPU,
// each CUDA thread a ucontext fiber, blocks one after another, under ASan/UBSan. Not for production.
//
// Model (see tests/simt/README.md):
//  - simt::launch(grid, block, kernel, args...) runs the grid's blocks sequentially; inside a block every
//    CUDA thread is a fiber on the calling OS thread, scheduled cooperatively: a fiber runs until it
//    reaches __syncthreads(), a warp intrinsic, or its end. The schedule is deterministic (forward lane
//    order by default; SIMT_SCHEDULE=reverse or random[:seed] permutes it), so a missing barrier shows
//    up as a wrong result every run rather than as a rare race.
//  - __shared__ is `static`: one object per kernel (blocks are sequential and the fibers of a block share
//    it), so ASan sees shared memory as a global array with redzones.
//  - __syncthreads() is a real barrier over the block's threads. Threads at different barriers abort with
//    "simt: divergent __syncthreads"; a barrier or warp op that can never complete (threads exited, or
//    wait elsewhere) aborts with "simt: __syncthreads deadlock in block (x,y,z) ..." naming the sites and
//    threads. A fiber that runs SIMT_TIMEOUT_S seconds (default 10) without yielding (a spin-wait, an
//    endless loop) is stopped by a watchdog: "simt: timeout in block (x,y,z) ...", exit code 124.
//  - Warp intrinsics (__shfl*_sync, __ballot_sync, __any/__all_sync, __syncwarp) rendezvous the lanes
//    named in the mask (lane = linear thread index % 32, as on NVIDIA hardware) and then exchange values.
//  - __half / __nv_bfloat16 are 16-bit storage types with bit-exact conversions.
#pragma once

#include <math.h>
#include <stdarg.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#endif
#if defined(SIMT_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

// ------------------------------------------------------------------------------------ qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static
#define __grid_constant__
// __restrict__ is a g++ keyword already.

// ------------------------------------------------------------------------------ built-in vectors
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
constexpr int warpSize = 32;

using std::isfinite;
using std::isinf;
using std::isnan;

namespace simt {

[[noreturn]] inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

namespace detail {

struct Site {
  const char* file;
  int line;
};

enum class State { kReady, kBarrier, kWarp, kDone };

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;  // usable stack (above a PROT_NONE guard page)
  size_t stack_size = 0;
  uint3 tid{0, 0, 0};
  int linear = 0;
  State state = State::kReady;
  unsigned long long wait_gen = 0;  // the barrier / warp generation this fiber waits to see pass
  Site site{nullptr, 0};            // where it waits
  uint64_t warp_result[32];         // the lanes' values of this fiber's last warp exchange
  void* fake_stack = nullptr;       // ASan fake stack while switched out
};

struct Warp {
  unsigned arrived = 0;  // lanes at the current exchange
  unsigned mask = 0;
  unsigned long long gen = 0;
  Site site{nullptr, 0};
  uint64_t vals[32];
};

struct Block {
  uint3 idx{0, 0, 0};
  dim3 dim;
  int nthreads = 0;
  std::vector<Warp> warps;
  int arrived = 0;  // threads at the current __syncthreads
  unsigned long long gen = 0;
  Site bar_site{nullptr, 0};
};

struct Engine {
  std::mutex launch_mu;  // one launch at a time (the __shared__ statics are process-wide)
  std::vector<Fiber> fibers;
  Block block;
  dim3 grid;
  Fiber* cur = nullptr;
  ucontext_t sched_ctx;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
  std::function<void()> body;
  const char* kernel_name = "kernel";
  // Watchdog: the scheduler bumps `ticks` at every switch; a stuck fiber stops the ticks.
  std::atomic<unsigned long long> ticks{0};
  std::atomic<bool> running{false};
  std::atomic<int> watch_block[3];
  std::atomic<int> watch_thread[3];
  std::thread watchdog;
  double timeout_s = 10.0;
  int schedule = 0;  // 0 forward, 1 reverse, 2 random
  std::mt19937 rng{12345};
};

inline Engine& engine() {
  static Engine* e = new Engine();  // never destroyed: fibers may outlive static destruction order
  return *e;
}

// The per-thread built-ins seen by the running fiber; the scheduler sets them before each switch.
inline uint3 g_thread_idx{0, 0, 0};
inline uint3 g_block_idx{0, 0, 0};
inline dim3 g_block_dim;
inline dim3 g_grid_dim;

}  // namespace detail

inline void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("simt: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fflush(stderr);
  abort();
}

namespace detail {

inline std::string where(const Block& b) {
  char buf[96];
  snprintf(buf, sizeof buf, "block (%u,%u,%u)", b.idx.x, b.idx.y, b.idx.z);
  return buf;
}

inline std::string tid_str(const Fiber& f) {
  char buf[64];
  snprintf(buf, sizeof buf, "(%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z);
  return buf;
}

inline std::string site_str(Site s) {
  if (s.file == nullptr) return "?";
  const char* base = strrchr(s.file, '/');
  return std::string(base ? base + 1 : s.file) + ":" + std::to_string(s.line);
}

// Switches from the running fiber back to the scheduler.
inline void yield_to_scheduler() {
  Engine& e = engine();
  Fiber* f = e.cur;
#if defined(SIMT_ASAN)
  __sanitizer_start_switch_fiber(&f->fake_stack, e.sched_stack_bottom, e.sched_stack_size);
#endif
  swapcontext(&f->ctx, &e.sched_ctx);
#if defined(SIMT_ASAN)
  __sanitizer_finish_switch_fiber(f->fake_stack, &e.sched_stack_bottom, &e.sched_stack_size);
#endif
}

inline void fiber_entry() {
  Engine& e = engine();
#if defined(SIMT_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &e.sched_stack_bottom, &e.sched_stack_size);
#endif
  e.body();
  Fiber* f = e.cur;
  f->state = State::kDone;
#if defined(SIMT_ASAN)
  __sanitizer_start_switch_fiber(nullptr, e.sched_stack_bottom, e.sched_stack_size);  // frees the fake stack
#endif
  setcontext(&e.sched_ctx);
  fail("fiber returned from setcontext");
}

inline Fiber& current() {
  Engine& e = engine();
  if (e.cur == nullptr) fail("a device intrinsic was called outside simt::launch");
  return *e.cur;
}

}  // namespace detail

// ------------------------------------------------------------------------------------ barriers
namespace detail {

inline void syncthreads(Site site) {
  Engine& e = engine();
  Block& b = e.block;
  Fiber& f = current();
  if (b.arrived == 0) {
    b.bar_site = site;
  } else if (b.bar_site.line != site.line || strcmp(b.bar_site.file, site.file) != 0) {
    fail("divergent __syncthreads in %s of %s: thread %s is at %s while %d thread(s) wait at %s",
         where(b).c_str(), e.kernel_name, tid_str(f).c_str(), site_str(site).c_str(), b.arrived,
         site_str(b.bar_site).c_str());
  }
  if (++b.arrived == b.nthreads) {  // the last arrival releases the block and runs on
    b.arrived = 0;
    ++b.gen;
    return;
  }
  f.state = State::kBarrier;
  f.wait_gen = b.gen;
  f.site = site;
  yield_to_scheduler();
}

// Rendezvous of the lanes in `mask` of the caller's warp; returns the 32 lanes' deposited values
// (entries of lanes outside the mask are unspecified).
inline const uint64_t* warp_exchange(Site site, unsigned mask, uint64_t value, const char* op) {
  Engine& e = engine();
  Block& b = e.block;
  Fiber& f = current();
  const int w = f.linear / 32, lane = f.linear % 32;
  Warp& W = b.warps[w];
  const int lanes_here = std::min(32, b.nthreads - w * 32);
  const unsigned present = lanes_here == 32 ? 0xffffffffu : ((1u << lanes_here) - 1u);
  if (!(mask >> lane & 1u))
    fail("%s at %s in %s: thread %s (lane %d) calls it with mask 0x%08x that excludes its own lane", op,
         site_str(site).c_str(), where(b).c_str(), tid_str(f).c_str(), lane, mask);
  if (mask & ~present)
    fail("%s at %s in %s: mask 0x%08x names lanes that do not exist in warp %d (the block has %d threads)", op,
         site_str(site).c_str(), where(b).c_str(), mask, w, b.nthreads);
  if (W.arrived == 0) {
    W.mask = mask;
    W.site = site;
  } else if (W.mask != mask || W.site.line != site.line || strcmp(W.site.file, site.file) != 0) {
    fail("divergent warp operation in %s, warp %d: thread %s (lane %d) calls %s at %s with mask 0x%08x while "
         "lanes 0x%08x wait at %s with mask 0x%08x",
         where(b).c_str(), w, tid_str(f).c_str(), lane, op, site_str(site).c_str(), mask, W.arrived,
         site_str(W.site).c_str(), W.mask);
  }
  W.vals[lane] = value;
  W.arrived |= 1u << lane;
  if (W.arrived == W.mask) {  // the last lane hands every participant its copy of the values
    for (int l = 0; l < 32; ++l)
      if (W.mask >> l & 1u) memcpy(e.fibers[w * 32 + l].warp_result, W.vals, sizeof W.vals);
    W.arrived = 0;
    ++W.gen;
    return f.warp_result;
  }
  f.state = State::kWarp;
  f.wait_gen = W.gen;
  f.site = site;
  yield_to_scheduler();
  return f.warp_result;
}

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp shuffle of an unsupported type");
  uint64_t u = 0;
  memcpy(&u, &v, sizeof(T));
  return u;
}

template <class T>
T from_bits(uint64_t u) {
  T v;
  memcpy(&v, &u, sizeof(T));
  return v;
}

inline int lane_id() { return current().linear % 32; }

// CUDA's rule for width < 32: lanes are split into segments of `width`; a source outside the caller's
// segment (for up/down/xor) or an index taken modulo width (for idx) selects within the segment.
inline void check_width(Site site, int width, const char* op) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
    fail("%s at %s: width %d is not a power of two in [1, 32]", op, site_str(site).c_str(), width);
}

template <class T>
T shfl_sync(Site site, unsigned mask, T var, int src, int width = warpSize) {
  check_width(site, width, "__shfl_sync");
  const int lane = lane_id();
  const uint64_t* v = warp_exchange(site, mask, to_bits(var), "__shfl_sync");
  const int s = (lane & ~(width - 1)) + (src & (width - 1));
  if (!(mask >> s & 1u)) fail("__shfl_sync at %s: source lane %d is not in mask 0x%08x", site_str(site).c_str(), s, mask);
  return from_bits<T>(v[s]);
}

template <class T>
T shfl_xor_sync(Site site, unsigned mask, T var, int lane_mask, int width = warpSize) {
  check_width(site, width, "__shfl_xor_sync");
  const int lane = lane_id();
  const uint64_t* v = warp_exchange(site, mask, to_bits(var), "__shfl_xor_sync");
  const int s = lane ^ lane_mask;
  if (s >= ((lane / width) + 1) * width || s >= 32) return var;  // later segment: own value
  if (!(mask >> s & 1u))
    fail("__shfl_xor_sync at %s: source lane %d is not in mask 0x%08x", site_str(site).c_str(), s, mask);
  return from_bits<T>(v[s]);
}

template <class T>
T shfl_down_sync(Site site, unsigned mask, T var, unsigned delta, int width = warpSize) {
  check_width(site, width, "__shfl_down_sync");
  const int lane = lane_id();
  const uint64_t* v = warp_exchange(site, mask, to_bits(var), "__shfl_down_sync");
  const int s = lane + static_cast<int>(delta);
  if ((s & ~(width - 1)) != (lane & ~(width - 1)) || s >= 32) return var;
  if (!(mask >> s & 1u))
    fail("__shfl_down_sync at %s: source lane %d is not in mask 0x%08x", site_str(site).c_str(), s, mask);
  return from_bits<T>(v[s]);
}

template <class T>
T shfl_up_sync(Site site, unsigned mask, T var, unsigned delta, int width = warpSize) {
  check_width(site, width, "__shfl_up_sync");
  const int lane = lane_id();
  const uint64_t* v = warp_exchange(site, mask, to_bits(var), "__shfl_up_sync");
  const int s = lane - static_cast<int>(delta);
  if (s < 0 || (s & ~(width - 1)) != (lane & ~(width - 1))) return var;
  if (!(mask >> s & 1u))
    fail("__shfl_up_sync at %s: source lane %d is not in mask 0x%08x", site_str(site).c_str(), s, mask);
  return from_bits<T>(v[s]);
}

inline unsigned ballot_sync(Site site, unsigned mask, int pred) {
  const uint64_t* v = warp_exchange(site, mask, pred != 0, "__ballot_sync");
  unsigned r = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && v[l]) r |= 1u << l;
  return r;
}

inline void syncwarp(Site site, unsigned mask = 0xffffffffu) { warp_exchange(site, mask, 0, "__syncwarp"); }

}  // namespace detail

// ---------------------------------------------------------------------------------- the launch
namespace detail {

constexpr size_t kStackSize = 256 * 1024;  // ASan frames are large; untouched pages cost nothing
constexpr int kMaxThreads = 1024;

inline void ensure_fibers(Engine& e, int n) {
  if (static_cast<int>(e.fibers.size()) >= n) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t old = e.fibers.size();
  std::vector<Fiber> grown(n);
  for (size_t i = 0; i < old; ++i) grown[i] = e.fibers[i];
  for (int i = static_cast<int>(old); i < n; ++i) {
    void* p = mmap(nullptr, kStackSize + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("cannot map a %zu-byte fiber stack", kStackSize);
    mprotect(p, page, PROT_NONE);  // guard page: a fiber stack overflow faults instead of corrupting
    grown[i].stack = static_cast<char*>(p) + page;
    grown[i].stack_size = kStackSize;
  }
  e.fibers.swap(grown);
}

inline void watchdog_loop() {
  Engine& e = engine();
  unsigned long long last = ~0ull;
  auto since = std::chrono::steady_clock::now();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!e.running.load()) {
      last = ~0ull;
      continue;
    }
    unsigned long long t = e.ticks.load();
    auto now = std::chrono::steady_clock::now();
    if (t != last) {
      last = t;
      since = now;
      continue;
    }
    double idle = std::chrono::duration<double>(now - since).count();
    if (idle > e.timeout_s) {
      fprintf(stderr,
              "simt: timeout in block (%d,%d,%d) of %s: thread (%d,%d,%d) ran %.1f s without "
              "reaching a barrier, a warp operation or its end (SIMT_TIMEOUT_S=%g)\n",
              e.watch_block[0].load(), e.watch_block[1].load(), e.watch_block[2].load(), e.kernel_name,
              e.watch_thread[0].load(), e.watch_thread[1].load(), e.watch_thread[2].load(), idle, e.timeout_s);
      fflush(stderr);
      _exit(124);  // abort() from this thread could deadlock on the stuck fiber's locks
    }
  }
}

// Called by ASan/UBSan before they end the process: says which emulated thread was running.
// SIGABRT (UBSan with abort_on_error=1, a failed assert) gets the same line.
inline void on_sanitizer_death() {
  static bool said = false;
  Engine& e = engine();
  if (e.cur == nullptr || said) return;
  said = true;
  fprintf(stderr, "simt: the error above happened in %s, thread %s of %s\n", where(e.block).c_str(),
          tid_str(*e.cur).c_str(), e.kernel_name);
}

inline void on_abort(int sig) {
  on_sanitizer_death();
  signal(sig, SIG_DFL);
  raise(sig);
}

inline void configure(Engine& e) {
  static bool done = false;
  if (done) return;
  done = true;
#if defined(SIMT_ASAN)
  __sanitizer_set_death_callback(on_sanitizer_death);
#endif
  signal(SIGABRT, on_abort);
  if (const char* t = getenv("SIMT_TIMEOUT_S")) e.timeout_s = atof(t);
  if (const char* s = getenv("SIMT_SCHEDULE")) {
    if (strcmp(s, "forward") == 0) {
      e.schedule = 0;
    } else if (strcmp(s, "reverse") == 0) {
      e.schedule = 1;
    } else if (strncmp(s, "random", 6) == 0) {
      e.schedule = 2;
      if (s[6] == ':') e.rng.seed(static_cast<unsigned>(strtoul(s + 7, nullptr, 10)));
    } else {
      fail("SIMT_SCHEDULE must be forward, reverse or random[:seed], got '%s'", s);
    }
  }
  e.watchdog = std::thread(watchdog_loop);
  e.watchdog.detach();
}

[[noreturn]] inline void report_deadlock(Engine& e) {
  Block& b = e.block;
  std::string msg;
  int exited = 0, at_bar = 0;
  const Fiber* first_exited = nullptr;
  for (int i = 0; i < b.nthreads; ++i) {
    const Fiber& f = e.fibers[i];
    if (f.state == State::kDone) {
      ++exited;
      if (!first_exited) first_exited = &f;
    }
    if (f.state == State::kBarrier) ++at_bar;
  }
  if (at_bar > 0) {
    msg += std::to_string(at_bar) + " of " + std::to_string(b.nthreads) + " threads wait at __syncthreads (" +
           site_str(b.bar_site) + ")";
    if (exited > 0)
      msg += "; " + std::to_string(exited) + " exited without reaching it (first: thread " +
             tid_str(*first_exited) + ")";
  }
  for (size_t w = 0; w < b.warps.size(); ++w) {
    const Warp& W = b.warps[w];
    if (W.arrived == 0) continue;
    unsigned missing = W.mask & ~W.arrived;
    std::string lanes;
    for (int l = 0; l < 32; ++l) {
      if (!(missing >> l & 1u)) continue;
      const Fiber& f = e.fibers[w * 32 + l];
      const char* st = f.state == State::kDone ? "exited" : f.state == State::kBarrier ? "at __syncthreads" : "elsewhere";
      if (lanes.size() < 200) lanes += " " + std::to_string(l) + "(" + st + ")";
    }
    char head[160];
    snprintf(head, sizeof head, "; warp %zu: lanes 0x%08x wait at %s for mask 0x%08x, missing lanes:", w, W.arrived,
             site_str(W.site).c_str(), W.mask);
    msg += head + lanes;
  }
  fail("__syncthreads deadlock in %s of %s: no thread can run: %s", where(b).c_str(), e.kernel_name,
       msg.c_str());
}

inline bool runnable(const Engine& e, const Fiber& f) {
  switch (f.state) {
    case State::kReady: return true;
    case State::kBarrier: return e.block.gen != f.wait_gen;
    case State::kWarp: return e.block.warps[f.linear / 32].gen != f.wait_gen;
    default: return false;
  }
}

// Runs fiber f until it waits or ends. Kept out of line: swapcontext returns twice.
__attribute__((noinline)) inline void switch_to(Engine& e, Fiber& f) {
  f.state = State::kReady;
  e.cur = &f;
  g_thread_idx = f.tid;
  e.watch_thread[0] = f.tid.x, e.watch_thread[1] = f.tid.y, e.watch_thread[2] = f.tid.z;
  e.ticks.fetch_add(1, std::memory_order_relaxed);
  void* fake = nullptr;
#if defined(SIMT_ASAN)
  __sanitizer_start_switch_fiber(&fake, f.stack, f.stack_size);
#endif
  swapcontext(&e.sched_ctx, &f.ctx);
#if defined(SIMT_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  e.ticks.fetch_add(1, std::memory_order_relaxed);
  e.cur = nullptr;
}

// Out of line: getcontext returns twice.
__attribute__((noinline)) inline void init_fiber(Fiber& f, int i, dim3 dim) {
  f.linear = i;
  f.tid = uint3{static_cast<unsigned>(i % dim.x), static_cast<unsigned>(i / dim.x % dim.y),
                static_cast<unsigned>(i / (dim.x * dim.y))};
  f.state = State::kReady;
  f.fake_stack = nullptr;
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = f.stack_size;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_entry, 0);
}

inline void run_block(Engine& e) {
  Block& b = e.block;
  const int n = b.nthreads;
  for (int i = 0; i < n; ++i) init_fiber(e.fibers[i], i, b.dim);
  b.arrived = 0;
  b.gen = 0;
  b.warps.assign((n + 31) / 32, Warp{});
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = e.schedule == 1 ? n - 1 - i : i;
  int done = 0;
  while (done < n) {
    if (e.schedule == 2) std::shuffle(order.begin(), order.end(), e.rng);
    bool progressed = false;
    for (int i : order) {
      Fiber& f = e.fibers[i];
      if (!runnable(e, f)) continue;
      switch_to(e, f);
      if (f.state == State::kDone) ++done;
      progressed = true;
    }
    if (!progressed) report_deadlock(e);
  }
}

}  // namespace detail

// Runs kernel<<<grid, block>>>(args...) to completion: blocks in x-fastest order, one at a time.
// Arguments are copied, as CUDA copies kernel parameters. Aborts on an invalid configuration.
template <class... P, class... A>
void launch(dim3 grid, dim3 block, void (*kernel)(P...), A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "simt::launch: wrong number of kernel arguments");
  detail::Engine& e = detail::engine();
  std::lock_guard<std::mutex> lock(e.launch_mu);
  detail::configure(e);
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nthreads == 0 || nthreads > detail::kMaxThreads ||
      block.z > 64 || grid.y > 65535 || grid.z > 65535)
    fail("invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u)", grid.x, grid.y, grid.z, block.x, block.y,
         block.z);
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  e.body = [&] { std::apply(kernel, params); };
  detail::ensure_fibers(e, static_cast<int>(nthreads));
  e.grid = grid;
  detail::g_grid_dim = grid;
  detail::g_block_dim = block;
  e.block.dim = block;
  e.block.nthreads = static_cast<int>(nthreads);
  e.running = true;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        e.block.idx = uint3{x, y, z};
        detail::g_block_idx = e.block.idx;
        e.watch_block[0] = x, e.watch_block[1] = y, e.watch_block[2] = z;
        detail::run_block(e);
      }
  e.running = false;
  e.body = nullptr;
}

// Names the kernel in diagnostics for the launches that follow (optional).
inline void set_kernel_name(const char* name) { detail::engine().kernel_name = name; }

}  // namespace simt

// ------------------------------------------------------------------------- built-in variables
#define threadIdx (static_cast<const uint3&>(::simt::detail::g_thread_idx))
#define blockIdx (static_cast<const uint3&>(::simt::detail::g_block_idx))
#define blockDim (static_cast<const dim3&>(::simt::detail::g_block_dim))
#define gridDim (static_cast<const dim3&>(::simt::detail::g_grid_dim))

// ------------------------------------------------------------------------ barriers and warps
#define SIMT_SITE (::simt::detail::Site{__FILE__, __LINE__})
#define __syncthreads() ::simt::detail::syncthreads(SIMT_SITE)
#define __syncwarp(...) ::simt::detail::syncwarp(SIMT_SITE, ##__VA_ARGS__)
#define __shfl_sync(...) ::simt::detail::shfl_sync(SIMT_SITE, __VA_ARGS__)
#define __shfl_xor_sync(...) ::simt::detail::shfl_xor_sync(SIMT_SITE, __VA_ARGS__)
#define __shfl_down_sync(...) ::simt::detail::shfl_down_sync(SIMT_SITE, __VA_ARGS__)
#define __shfl_up_sync(...) ::simt::detail::shfl_up_sync(SIMT_SITE, __VA_ARGS__)
#define __ballot_sync(mask, pred) ::simt::detail::ballot_sync(SIMT_SITE, (mask), (pred))
#define __any_sync(mask, pred) (::simt::detail::ballot_sync(SIMT_SITE, (mask), (pred)) != 0u)
#define __all_sync(mask, pred) (::simt::detail::ballot_sync(SIMT_SITE, (mask), (pred)) == (mask))
#define __threadfence() std::atomic_thread_fence(std::memory_order_seq_cst)
#define __threadfence_block() std::atomic_thread_fence(std::memory_order_seq_cst)

// --------------------------------------------------------------- atomics (fibers never preempt)
// The value parameters are not deduced, so atomicAdd(float_ptr, 1) converts 1 as CUDA's overloads do.
namespace simt {
template <class T>
struct same {
  using type = T;
};
}  // namespace simt
template <class T>
inline T atomicAdd(T* p, typename simt::same<T>::type v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <class T>
inline T atomicSub(T* p, typename simt::same<T>::type v) {
  T old = *p;
  *p = old - v;
  return old;
}
template <class T>
inline T atomicMax(T* p, typename simt::same<T>::type v) {
  T old = *p;
  *p = old > v ? old : v;
  return old;
}
template <class T>
inline T atomicMin(T* p, typename simt::same<T>::type v) {
  T old = *p;
  *p = old < v ? old : v;
  return old;
}
template <class T>
inline T atomicExch(T* p, typename simt::same<T>::type v) {
  T old = *p;
  *p = v;
  return old;
}
template <class T>
inline T atomicCAS(T* p, typename simt::same<T>::type cmp, typename simt::same<T>::type v) {
  T old = *p;
  if (old == cmp) *p = v;
  return old;
}

// ------------------------------------------------------------------------ integer intrinsics
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}

// ------------------------------------------------------------------ 16-bit floating-point types
// Storage types with the CUDA conversion functions; both decode exactly (every f16 and bf16 value is a
// float). Encoding rounds to nearest even, as __float2half / __float2bfloat16 do.
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "16-bit storage types");

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  uint32_t f;
  if (exp == 0x1f) {
    f = sign | 0x7f800000u | (man << 13);  // Inf, NaN (payload kept; quiet bit stays where it was)
  } else if (exp != 0) {
    f = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    f = sign;
  } else {  // subnormal: 0.man * 2^-14, normalized
    int e = -1;
    do {
      man <<= 1;
      ++e;
    } while (!(man & 0x400u));
    f = sign | ((112u - static_cast<uint32_t>(e)) << 23) | ((man & 0x3ffu) << 13);
  }
  float out;
  memcpy(&out, &f, 4);
  return out;
}

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t f = static_cast<uint32_t>(h.bits) << 16;
  float out;
  memcpy(&out, &f, 4);
  return out;
}

inline __nv_bfloat16 __float2bfloat16(float v) {
  uint32_t f;
  memcpy(&f, &v, 4);
  if ((f & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<uint16_t>((f >> 16) | 0x40u)};  // NaN
  f += 0x7fffu + ((f >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>(f >> 16)};
}

inline __half __float2half(float v) {
  uint32_t f;
  memcpy(&f, &v, 4);
  const uint16_t sign = static_cast<uint16_t>((f >> 16) & 0x8000u);
  const uint32_t a = f & 0x7fffffffu;
  if (a > 0x7f800000u) return __half{static_cast<uint16_t>(sign | 0x7e00u)};  // NaN
  if (a >= 0x477ff000u) return __half{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to >= 65520: Inf
  if (a < 0x38800000u) {  // below 2^-14: subnormal half, or zero
    if (a < 0x33000000u) return __half{sign};  // below half the smallest subnormal (2^-25): zero
    const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14 + 23 - (e - 127) - 10 ... maps m to units of 2^-24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return __half{static_cast<uint16_t>(sign | q)};
  }
  uint32_t h = ((a >> 13) - (112u << 10));
  const uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return __half{static_cast<uint16_t>(sign | h)};
}
