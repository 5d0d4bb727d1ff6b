// The emulator's scheduler: blocks one after another, the threads of a block as cooperative fibers.
//
// A fiber runs until it reaches a synchronisation point (it then records what it waits for and switches back to
// the scheduler) or the end of the kernel. Warps run one at a time, each as far as it can: its lanes are resumed
// in turn, and a warp intrinsic is resolved as soon as every lane of its mask waits at it with the same mask, until
// every lane of the warp has finished or waits at __syncthreads. When no warp can go on, __syncthreads is released
// if every thread of the block waits at the same one. Anything else is a deadlock on real hardware too, and is
// reported with the threads involved. AIAYN_EMU_ORDER (forward | reverse | shuffle, seed AIAYN_EMU_SEED) sets the
// order in which runnable fibers are resumed, and the order of the blocks, so that a missing barrier changes the
// result.
//
// Context switching is a few instructions of x86-64 assembly (callee-saved registers and the stack pointer; the
// SSE and x87 control words are left alone: every fiber runs on the launching thread, and device code never changes
// rounding modes, so they stay the launcher's, and ldmxcsr/fldcw on every switch cost more than the rest of it);
// each fiber has its own mmap'd stack with a guard page below it. A fiber that stops hands over to the next fiber
// to resume directly (yield_to_scheduler), not through the scheduler.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "aiayn/error.hpp"
#include "aiayn_emu/cuda_emu.hpp"
#include "emu_internal.hpp"

#if !defined(__x86_64__)
#error "the CUDA emulator's context switch is written for x86-64"
#endif

extern "C" {
// void aiayn_emu_switch(void** save_sp, void* load_sp): saves the callee-saved state on the current stack, stores
// the stack pointer in *save_sp, and resumes the context whose stack pointer is load_sp.
void aiayn_emu_switch(void** save_sp, void* load_sp);
void aiayn_emu_trampoline();
__attribute__((visibility("hidden"))) void aiayn_emu_fiber_main(void* fiber);
// Static __shared__ storage of the emulated kernels (linker-defined; absent when no kernel declares any).
extern char __start_aiayn_emu_shared[] __attribute__((weak));
extern char __stop_aiayn_emu_shared[] __attribute__((weak));
}

asm(R"(
  .text
  .globl aiayn_emu_switch
  .hidden aiayn_emu_switch
  .type aiayn_emu_switch, @function
aiayn_emu_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size aiayn_emu_switch, .-aiayn_emu_switch

  .globl aiayn_emu_trampoline
  .hidden aiayn_emu_trampoline
  .type aiayn_emu_trampoline, @function
aiayn_emu_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %rbx, %rdi
  call aiayn_emu_fiber_main@PLT
  ud2
  .cfi_endproc
  .size aiayn_emu_trampoline, .-aiayn_emu_trampoline
)");

namespace aiayn::emu {

namespace detail {
FiberState* g_fiber = nullptr;
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim, g_grid_dim;
unsigned char* g_dynamic_shared = nullptr;
}  // namespace detail

namespace {

enum class Status : uint8_t { Ready, AtBarrier, AtWarp, Done, Failed };

struct Fiber : detail::FiberState {
  void* sp = nullptr;
  char* stack_lo = nullptr;  // lowest usable byte; the guard page lies just below
  char* stack_hi = nullptr;
  unsigned linear = 0;
  Status status = Status::Ready;
  const char* bar_file = nullptr;
  int bar_line = 0;
  WarpOp op = WarpOp::Sync;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = 32;
  std::exception_ptr error;
};

using Order = Schedule;

struct Scheduler {
  std::mutex mu;  // one launch at a time: static __shared__ storage and the fibers are process-wide
  std::vector<Fiber> fibers;
  size_t stack_bytes = 0, page = 4096;
  void* sched_sp = nullptr;
  std::vector<Fiber*> run_list;  // the fibers to resume in turn (see yield_to_scheduler), and the one running
  size_t run_pos = 0;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  const LaunchConfig* running = nullptr;
  char* smem_map = nullptr;  // dynamic shared memory buffer, guard page after smem_end
  char* smem_end = nullptr;
  Order order = Order::Forward;
  uint64_t seed = 1;
  uint64_t launches = 0;
  bool trace = false;  // AIAYN_EMU_TRACE=1: one line per launch on stderr

  Scheduler() {
    page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const char* kb = std::getenv("AIAYN_EMU_STACK_KB");
    stack_bytes = (kb ? std::max(16L, std::atol(kb)) : 128L) * 1024;
    stack_bytes = (stack_bytes + page - 1) / page * page;
    const char* o = std::getenv("AIAYN_EMU_ORDER");
    const std::string os = o ? o : "forward";
    if (os == "reverse") order = Order::Reverse;
    else if (os == "shuffle") order = Order::Shuffle;
    else if (os != "forward" && !os.empty()) {
      report("AIAYN_EMU_ORDER must be forward, reverse or shuffle, not '" + os + "'");
      std::abort();
    }
    if (const char* s = std::getenv("AIAYN_EMU_SEED")) seed = std::strtoull(s, nullptr, 10);
    if (const char* t = std::getenv("AIAYN_EMU_TRACE")) trace = std::strcmp(t, "0") != 0;
    const size_t smem_bytes = (kMaxDynamicSharedOptIn + page - 1) / page * page;
    void* m = mmap(nullptr, smem_bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      std::perror("aiayn emu: mmap");
      std::abort();
    }
    smem_map = static_cast<char*>(m);
    smem_end = smem_map + smem_bytes;
    mprotect(smem_end, page, PROT_NONE);
  }

  void ensure_fibers(size_t n) {
    while (fibers.size() < n) {
      Fiber f;
      void* m = mmap(nullptr, stack_bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      if (m == MAP_FAILED) {
        std::perror("aiayn emu: mmap (fiber stack)");
        std::abort();
      }
      mprotect(m, page, PROT_NONE);
      f.stack_lo = static_cast<char*>(m) + page;
      f.stack_hi = f.stack_lo + stack_bytes;
      fibers.push_back(std::move(f));
    }
  }
};

Scheduler& sched() {
  static Scheduler* s = new Scheduler;  // never destroyed (kernels may run from static destructors)
  return *s;
}

Fiber* current() { return static_cast<Fiber*>(detail::g_fiber); }

// A fresh context that starts aiayn_emu_fiber_main(f) (see aiayn_emu_switch for the frame it pops).
void prepare(Fiber& f) {
  auto top = reinterpret_cast<uintptr_t>(f.stack_hi) & ~uintptr_t(15);
  auto* frame = reinterpret_cast<uint64_t*>(top - 80);
  std::memset(frame, 0, 80);  // frame[0]: a padding slot that keeps the stack 16-byte aligned
  frame[5] = reinterpret_cast<uint64_t>(&f);                       // rbx: the trampoline's argument
  frame[7] = reinterpret_cast<uint64_t>(&aiayn_emu_trampoline);    // return address
  f.sp = frame;
}

// A fiber that stops (at a synchronisation point, or at its end) passes control straight to the next fiber of the
// scheduler's run list, the last one back to the scheduler: one context switch per stop instead of two.
void yield_to_scheduler(Fiber* f) {
  Scheduler& s = sched();
  if (++s.run_pos < s.run_list.size()) {
    Fiber* next = s.run_list[s.run_pos];
    detail::g_fiber = next;
    aiayn_emu_switch(&f->sp, next->sp);
  } else {
    aiayn_emu_switch(&f->sp, s.sched_sp);
  }
}

// Runs the fibers of s.run_list in turn, each until it stops.
void run_list(Scheduler& s) {
  if (s.run_list.empty()) return;
  s.run_pos = 0;
  detail::g_fiber = s.run_list[0];
  aiayn_emu_switch(&s.sched_sp, s.run_list[0]->sp);
  detail::g_fiber = nullptr;
}

std::string dims(const dim3& d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}
std::string dims(const uint3& d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::Sync: return "__syncwarp";
    case WarpOp::Shfl: return "__shfl_sync";
    case WarpOp::ShflUp: return "__shfl_up_sync";
    case WarpOp::ShflDown: return "__shfl_down_sync";
    case WarpOp::ShflXor: return "__shfl_xor_sync";
    case WarpOp::Ballot: return "__ballot_sync";
    case WarpOp::Any: return "__any_sync";
    case WarpOp::All: return "__all_sync";
  }
  return "?";
}

std::string hex(unsigned v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

[[noreturn]] void fail(const std::string& what) {
  const Scheduler& s = sched();
  const std::string msg = "aiayn emu: kernel '" + std::string(s.running ? s.running->what : "?") + "' block " +
                          dims(detail::g_block_idx) + " of grid " + dims(detail::g_grid_dim) + ", block " +
                          dims(detail::g_block_dim) + ": " + what;
  report(msg.substr(11));
  throw Error(msg);
}

std::string thread_name(const Fiber& f) { return "thread " + dims(f.thread_idx) + " (warp " + std::to_string(f.linear / 32) + " lane " + std::to_string(f.linear % 32) + ")"; }

std::string waiting_at(const Fiber& f) {
  switch (f.status) {
    case Status::Done: return "exited";
    case Status::Failed: return "failed";
    case Status::Ready: return "is runnable";
    case Status::AtBarrier: return "waits at __syncthreads (" + std::string(f.bar_file) + ":" + std::to_string(f.bar_line) + ")";
    case Status::AtWarp: return "waits at " + std::string(op_name(f.op)) + " with mask " + hex(f.mask);
  }
  return "?";
}

// Source lane of a shuffle, or -1 when the lane keeps its own value.
int shuffle_source(WarpOp op, int lane, int arg, int width) {
  const int seg = lane & ~(width - 1);
  switch (op) {
    case WarpOp::Shfl: return seg + (arg & (width - 1));
    case WarpOp::ShflUp: return lane - arg >= seg ? lane - arg : -1;
    case WarpOp::ShflDown: return (lane & (width - 1)) + arg < width ? lane + arg : -1;
    case WarpOp::ShflXor: {
      const int src = lane ^ arg;
      return src >= 0 && src < seg + width ? src : -1;
    }
    default: return -1;
  }
}

// Resolves every warp intrinsic of warp w whose lanes have all arrived; returns whether any was.
bool resolve_warp(std::vector<Fiber>& fb, unsigned n, unsigned w) {
  bool any = false;
  const unsigned base = w * 32;
  const unsigned lanes = std::min(32u, n - base);
  const unsigned present = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
  for (unsigned l = 0; l < lanes; ++l) {
    Fiber& f = fb[base + l];
    if (f.status != Status::AtWarp) continue;
    const unsigned m = f.mask;
    if (!((m >> l) & 1u))
      fail(thread_name(f) + " calls " + op_name(f.op) + " with mask " + hex(m) + ", which does not name its own lane");
    if (m & ~present)
      fail(thread_name(f) + " calls " + op_name(f.op) + " with mask " + hex(m) + ", which names lanes beyond the " +
           std::to_string(lanes) + " threads of this warp (block size not a multiple of 32)");
    if (f.width < 1 || f.width > 32 || (f.width & (f.width - 1)))
      fail(thread_name(f) + " calls " + op_name(f.op) + " with width " + std::to_string(f.width) +
           " (must be a power of two up to 32)");
    bool all = true;
    for (unsigned j = 0; j < 32 && all; ++j)
      if ((m >> j) & 1u) {
        const Fiber& g = fb[base + j];
        all = g.status == Status::AtWarp && g.mask == m && g.op == f.op && g.width == f.width;
      }
    if (!all) continue;
    uint64_t vote = 0;
    for (unsigned j = 0; j < 32; ++j)
      if (((m >> j) & 1u) && fb[base + j].value != 0) vote |= uint64_t(1) << j;
    for (unsigned j = 0; j < 32; ++j) {
      if (!((m >> j) & 1u)) continue;
      Fiber& g = fb[base + j];
      switch (g.op) {
        case WarpOp::Sync: g.result = 0; break;
        case WarpOp::Ballot: g.result = vote; break;
        case WarpOp::Any: g.result = vote != 0; break;
        case WarpOp::All: g.result = vote == m; break;
        default: {
          const int src = shuffle_source(g.op, int(j), g.arg, g.width);
          if (src < 0) {
            g.result = g.value;
          } else if (!((m >> src) & 1u)) {
            fail(thread_name(g) + " reads lane " + std::to_string(src) + " in " + op_name(g.op) + " with mask " +
                 hex(m) + ", which does not name that lane (undefined result)");
          } else {
            g.result = fb[base + unsigned(src)].value;
          }
        }
      }
    }
    for (unsigned j = 0; j < 32; ++j)
      if ((m >> j) & 1u) fb[base + j].status = Status::Ready;
    any = true;
  }
  return any;
}

// Nothing runnable and no warp intrinsic resolvable: release __syncthreads if every thread waits at the same one,
// otherwise report the deadlock.
void release_barrier_or_fail(std::vector<Fiber>& fb, unsigned n) {
  const Fiber* at_bar = nullptr;
  const Fiber* exited = nullptr;
  for (unsigned i = 0; i < n; ++i) {
    const Fiber& f = fb[i];
    if (f.status == Status::AtWarp) {
      const unsigned base = i / 32 * 32;
      for (unsigned j = 0; j < 32; ++j)
        if (((f.mask >> j) & 1u) && base + j < n) {
          const Fiber& g = fb[base + j];
          if (g.status != Status::AtWarp || g.mask != f.mask || g.op != f.op || g.width != f.width)
            fail(std::string(op_name(f.op)) + " with mask " + hex(f.mask) + " is never reached by all its lanes: " +
                 thread_name(f) + " waits at it, but " + thread_name(g) + " " + waiting_at(g));
        }
      fail(thread_name(f) + " " + waiting_at(f) + ", unresolved");  // not reached: every lane matched
    }
    if (f.status == Status::AtBarrier && !at_bar) at_bar = &f;
    if (f.status == Status::Done && !exited) exited = &f;
  }
  if (!at_bar) fail("scheduler found nothing to run (internal error)");
  if (exited) {
    unsigned waiting = 0;
    for (unsigned i = 0; i < n; ++i) waiting += fb[i].status == Status::AtBarrier;
    fail("__syncthreads (" + std::string(at_bar->bar_file) + ":" + std::to_string(at_bar->bar_line) + ") is reached by " +
         std::to_string(waiting) + " of " + std::to_string(n) + " threads: " + thread_name(*exited) +
         " exited without reaching it (a barrier under a condition that is not uniform across the block)");
  }
  for (unsigned i = 0; i < n; ++i) {
    const Fiber& f = fb[i];
    if (f.bar_line != at_bar->bar_line || std::strcmp(f.bar_file, at_bar->bar_file) != 0)
      fail("threads wait at different __syncthreads: " + thread_name(*at_bar) + " " + waiting_at(*at_bar) + ", " +
           thread_name(f) + " " + waiting_at(f));
  }
  for (unsigned i = 0; i < n; ++i) fb[i].status = Status::Ready;
}

void order_of(std::vector<unsigned>& order, unsigned n, Order o, std::mt19937_64& rng) {
  order.resize(n);
  std::iota(order.begin(), order.end(), 0u);
  if (o == Order::Reverse) std::reverse(order.begin(), order.end());
  if (o == Order::Shuffle) std::shuffle(order.begin(), order.end(), rng);
}

void run_block(Scheduler& s, unsigned n, std::mt19937_64& rng) {
  std::vector<Fiber>& fb = s.fibers;
  const dim3 bd = detail::g_block_dim;
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = fb[i];
    f.thread_idx = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
    f.linear = i;
    f.status = Status::Ready;
    f.bar_file = nullptr;
    f.bar_line = 0;
    f.error = nullptr;
    prepare(f);
  }
  // Shared memory holds garbage on a GPU: NaN bytes here, so that a read before a write shows.
  if (+__start_aiayn_emu_shared && +__stop_aiayn_emu_shared > +__start_aiayn_emu_shared)
    std::memset(__start_aiayn_emu_shared, 0xff, size_t(__stop_aiayn_emu_shared - __start_aiayn_emu_shared));
  std::memset(detail::g_dynamic_shared, 0xff, size_t(s.smem_end - reinterpret_cast<char*>(detail::g_dynamic_shared)));
  // Each warp runs as far as it can (its lanes in order, its own warp intrinsics resolved as they complete) before
  // the next warp starts: warps drift apart as far as real hardware may let them between two __syncthreads.
  const unsigned warps = (n + 31) / 32;
  std::vector<unsigned> warp_order, lane_order;
  for (;;) {
    order_of(warp_order, warps, s.order, rng);
    for (unsigned w : warp_order) {
      const unsigned lanes = std::min(32u, n - w * 32);
      do {
        order_of(lane_order, lanes, s.order, rng);
        s.run_list.clear();
        for (unsigned l : lane_order)
          if (fb[w * 32 + l].status == Status::Ready) s.run_list.push_back(&fb[w * 32 + l]);
        run_list(s);
        for (Fiber* f : s.run_list) {
          if (f->status != Status::Failed) continue;
          try {
            std::rethrow_exception(f->error);
          } catch (const std::exception& e) {
            fail(thread_name(*f) + ": " + e.what());
          }
        }
      } while (resolve_warp(fb, n, w));
    }
    bool done = true;
    for (unsigned i = 0; i < n && done; ++i) done = fb[i].status == Status::Done;
    if (done) return;
    release_barrier_or_fail(fb, n);
  }
}

}  // namespace
}  // namespace aiayn::emu

extern "C" void aiayn_emu_fiber_main(void* fiber) {
  using namespace aiayn::emu;
  auto* f = static_cast<Fiber*>(fiber);
  try {
    sched().body(sched().ctx);
    f->status = Status::Done;
  } catch (...) {
    f->error = std::current_exception();
    f->status = Status::Failed;
  }
  yield_to_scheduler(f);
  std::abort();  // a finished fiber is never resumed
}

namespace aiayn::emu {

void syncthreads(const char* file, int line) {
  Fiber* f = current();
  AIAYN_CHECK(f != nullptr, "aiayn emu: __syncthreads called outside a kernel");
  f->status = Status::AtBarrier;
  f->bar_file = file;
  f->bar_line = line;
  yield_to_scheduler(f);
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t bits, int arg, int width) {
  Fiber* f = current();
  AIAYN_CHECK(f != nullptr, std::string("aiayn emu: ") + op_name(op) + " called outside a kernel");
  f->status = Status::AtWarp;
  f->op = op;
  f->mask = mask;
  f->value = bits;
  f->arg = arg;
  f->width = width;
  yield_to_scheduler(f);
  return f->result;
}

void check_pointer_argument(const LaunchConfig& cfg, int index, const void* p) {
  if (!p || is_device_pointer(p)) return;
  if (is_device_pointer(static_cast<const char*>(p) - 1)) return;  // one past the end of an allocation
  const std::string msg = "CUDA launch of " + std::string(cfg.what) + " failed: aiayn emu: argument " +
                          std::to_string(index) + " is " + describe_pointer(p) +
                          "; a kernel can only dereference device memory";
  report(msg);
  AIAYN_FAIL(msg);
}

void run_grid(const LaunchConfig& cfg, void (*body)(void*), void* ctx, const void* const* touched, size_t n) {
  auto bad_launch = [&](const std::string& why) {
    const std::string msg = "CUDA launch of " + std::string(cfg.what) + " failed: aiayn emu: " + why;
    report(msg);
    AIAYN_FAIL(msg);
  };
  if (detail::g_fiber) bad_launch("a kernel launched from inside a kernel (dynamic parallelism is not emulated)");
  const dim3 g = cfg.grid, b = cfg.block;
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0 || threads == 0)
    bad_launch("empty grid " + dims(g) + " or block " + dims(b) + " (invalid configuration argument)");
  if (b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024)
    bad_launch("block " + dims(b) + " has " + std::to_string(threads) +
               " threads; at most 1024 (x, y <= 1024, z <= 64) per block");
  if (g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    bad_launch("grid " + dims(g) + " exceeds (2^31 - 1, 65535, 65535)");
  const size_t smem_limit = max_dynamic_shared(cfg.kernel);
  if (cfg.dynamic_shared > smem_limit)
    bad_launch("requests " + std::to_string(cfg.dynamic_shared) + " bytes of dynamic shared memory; this kernel may use " +
               std::to_string(smem_limit) + " (48 KiB unless cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) "
               "raises it, to at most 227 KiB)");
  if (!valid_stream(cfg.stream)) bad_launch("the stream is not a live stream");
  stream_order(cfg.stream);
  order_operation(cfg.stream, cfg.what, touched, n);

  Scheduler& s = sched();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.trace)
    std::fprintf(stderr, "aiayn emu: launch %s grid %s block %s shared %zu\n", cfg.what, dims(g).c_str(),
                 dims(b).c_str(), cfg.dynamic_shared);
  install_fault_handler();
  s.ensure_fibers(threads);
  s.body = body;
  s.ctx = ctx;
  s.running = &cfg;
  detail::g_grid_dim = g;
  detail::g_block_dim = b;
  detail::g_dynamic_shared =
      reinterpret_cast<unsigned char*>(s.smem_end - (cfg.dynamic_shared + 15) / 16 * 16);
  struct Clear {
    Scheduler& s;
    ~Clear() {
      s.running = nullptr;
      detail::g_fiber = nullptr;
    }
  } clear{s};

  std::mt19937_64 rng(s.seed * 0x9E3779B97F4A7C15ull + ++s.launches);
  const uint64_t blocks = uint64_t(g.x) * g.y * g.z;
  std::vector<uint64_t> block_order;
  if (s.order != Order::Forward) {
    block_order.resize(blocks);
    std::iota(block_order.begin(), block_order.end(), uint64_t(0));
    if (s.order == Order::Reverse) std::reverse(block_order.begin(), block_order.end());
    else std::shuffle(block_order.begin(), block_order.end(), rng);
  }
  DeviceAccess access(cfg.what);
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t id = block_order.empty() ? i : block_order[i];
    detail::g_block_idx = uint3{unsigned(id % g.x), unsigned((id / g.x) % g.y), unsigned(id / (uint64_t(g.x) * g.y))};
    run_block(s, unsigned(threads), rng);
  }
  access.close();
}

void set_schedule(Schedule order, uint64_t seed) {
  Scheduler& s = sched();
  std::lock_guard<std::mutex> lock(s.mu);
  s.order = order;
  s.seed = seed;
}

size_t describe_running_kernel(char* buf, size_t size) {
  const Scheduler& s = sched();
  if (!s.running || size == 0) return 0;
  const uint3 bi = detail::g_block_idx;
  const Fiber* f = current();
  int n = f ? std::snprintf(buf, size, "kernel '%s' block (%u,%u,%u) thread (%u,%u,%u)", s.running->what, bi.x, bi.y,
                            bi.z, f->thread_idx.x, f->thread_idx.y, f->thread_idx.z)
            : std::snprintf(buf, size, "kernel '%s' block (%u,%u,%u)", s.running->what, bi.x, bi.y, bi.z);
  return n < 0 ? 0 : std::min(size - 1, size_t(n));
}

bool describe_scheduler_fault(uintptr_t address, char* buf, size_t size) {
  const Scheduler& s = sched();
  const auto guard = reinterpret_cast<uintptr_t>(s.smem_end);
  if (address >= guard && address < guard + s.page) {
    const size_t requested = s.running ? s.running->dynamic_shared : 0;
    const auto start = reinterpret_cast<uintptr_t>(detail::g_dynamic_shared);
    std::snprintf(buf, size,
                  "dynamic shared memory overrun: byte %zu of a block that requested %zu bytes at launch (rounded to "
                  "%zu)",
                  size_t(address - start), requested, size_t(guard - start));
    return true;
  }
  for (const Fiber& f : s.fibers) {
    const auto lo = reinterpret_cast<uintptr_t>(f.stack_lo);
    if (address >= lo - s.page && address < lo) {
      std::snprintf(buf, size, "stack overflow of an emulated thread (%zu KiB per thread; raise AIAYN_EMU_STACK_KB)",
                    s.stack_bytes / 1024);
      return true;
    }
  }
  return false;
}

}  // namespace aiayn::emu
