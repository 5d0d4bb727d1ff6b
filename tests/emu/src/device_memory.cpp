// Emulated device memory: one mapping per allocation, inaccessible to host code except inside a DeviceAccess,
// with a guard page after it and canaries around it; and the fault handler that turns a stray access into a
// message naming the allocation (and the kernel, block and thread when one is running).
//
// Layout of one allocation (P = page size):
//   [map ........ leading canary ... | base: `bytes` of data | < 256 trailing canary bytes | guard page (P)]
// base is 256-byte aligned (cudaMalloc aligns to at least 256) and as close to the guard page as that allows.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>

#include "aiayn/error.hpp"
#include "emu_internal.hpp"

namespace aiayn::emu {
namespace {

constexpr size_t kAlign = 256;
constexpr unsigned char kPoison = 0xff;  // NaN as float, double and bf16; -1 as integers
constexpr unsigned char kCanary = 0xa5;
constexpr size_t kCanaryCheck = 256;     // leading bytes checked (the rest of the leading slack is not)
constexpr size_t kFreedKept = 4096;      // recent frees remembered for "use after free" messages

struct Allocation {
  char* map = nullptr;
  size_t data_bytes = 0;  // accessible part of the mapping (the guard page follows)
  char* base = nullptr;
  size_t bytes = 0;
};

struct State {
  std::recursive_mutex mu;
  std::map<uintptr_t, Allocation> live;          // by base
  std::deque<std::pair<uintptr_t, size_t>> freed;  // (base, bytes), most recent last
  int access_depth = 0;
  bool protect = true;
  size_t page = 4096;
};

State& state() {
  static State* s = [] {
    auto* st = new State;  // never destroyed: device memory may be freed by static destructors
    const char* env = std::getenv("AIAYN_EMU_PROTECT");
    st->protect = !(env && std::strcmp(env, "0") == 0);
    st->page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return st;
  }();
  return *s;
}

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

void set_access(const Allocation& a, bool accessible) {
  if (mprotect(a.map, a.data_bytes, accessible ? PROT_READ | PROT_WRITE : PROT_NONE) != 0) {
    std::perror("aiayn emu: mprotect");
    std::abort();
  }
}

const Allocation* containing(State& s, uintptr_t p) {
  auto it = s.live.upper_bound(p);
  if (it == s.live.begin()) return nullptr;
  --it;
  const Allocation& a = it->second;
  return p < reinterpret_cast<uintptr_t>(a.base) + a.bytes ? &a : nullptr;
}

// The allocation whose mapping (including slack and guard) contains p.
const Allocation* mapping_of(State& s, uintptr_t p) {
  for (auto& kv : s.live) {
    const Allocation& a = kv.second;
    const auto lo = reinterpret_cast<uintptr_t>(a.map);
    if (p >= lo && p < lo + a.data_bytes + s.page) return &a;
  }
  return nullptr;
}

bool recently_freed(State& s, uintptr_t p, uintptr_t* base, size_t* bytes) {
  for (auto it = s.freed.rbegin(); it != s.freed.rend(); ++it)
    if (p >= it->first && p < it->first + std::max<size_t>(it->second, 1)) {
      *base = it->first;
      *bytes = it->second;
      return true;
    }
  return false;
}

// Checks (and repairs) the canaries of `a`; returns a message when some were overwritten.
std::string check_canaries(const Allocation& a) {
  const char* end = a.base + a.bytes;
  const char* trail_end = a.map + a.data_bytes;
  size_t last_bad = 0;
  for (const char* p = end; p < trail_end; ++p)
    if (static_cast<unsigned char>(*p) != kCanary) last_bad = size_t(p - end) + 1;
  const size_t lead = std::min<size_t>(kCanaryCheck, size_t(a.base - a.map));
  size_t first_bad = 0;
  for (size_t i = 0; i < lead; ++i)
    if (static_cast<unsigned char>(a.base[-1 - std::ptrdiff_t(i)]) != kCanary) first_bad = i + 1;
  if (last_bad == 0 && first_bad == 0) return {};
  std::memset(const_cast<char*>(end), kCanary, size_t(trail_end - end));
  std::memset(a.base - lead, kCanary, lead);
  char buf[256];
  if (last_bad)
    std::snprintf(buf, sizeof buf, "wrote up to %zu bytes past the end of the %zu-byte device allocation at %p",
                  last_bad, a.bytes, static_cast<void*>(a.base));
  else
    std::snprintf(buf, sizeof buf, "wrote up to %zu bytes before the start of the %zu-byte device allocation at %p",
                  first_bad, a.bytes, static_cast<void*>(a.base));
  return buf;
}

// ---- fault handler ----
struct sigaction g_old_segv, g_old_bus;
thread_local bool t_altstack = false;

void append(char* buf, size_t size, size_t* len, const char* text) {
  const size_t n = std::strlen(text);
  const size_t room = *len + 1 < size ? size - *len - 1 : 0;
  const size_t take = n < room ? n : room;
  std::memcpy(buf + *len, text, take);
  *len += take;
  buf[*len] = '\0';
}

void on_fault(int sig, siginfo_t* info, void* uctx) {
  State& s = state();
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  char msg[1024];
  char part[512];
  size_t len = 0;
  msg[0] = '\0';
  bool ours = false;
  if (describe_scheduler_fault(addr, part, sizeof part)) {
    append(msg, sizeof msg, &len, part);
    ours = true;
  } else if (const Allocation* a = mapping_of(s, addr)) {
    const auto base = reinterpret_cast<uintptr_t>(a->base);
    const auto guard = reinterpret_cast<uintptr_t>(a->map) + a->data_bytes;
    if (addr >= guard)
      std::snprintf(part, sizeof part,
                    "out-of-bounds device access at %p: %" PRIuPTR " bytes past the end of the %zu-byte allocation at %p",
                    info->si_addr, addr - (base + a->bytes), a->bytes, static_cast<void*>(a->base));
    else if (s.access_depth == 0 && addr >= base && addr < base + a->bytes)
      std::snprintf(part, sizeof part,
                    "host code accessed device memory at %p (offset %" PRIuPTR " of the %zu-byte allocation at %p): "
                    "a device pointer was dereferenced on the host, outside any kernel or cudaMemcpy",
                    info->si_addr, addr - base, a->bytes, static_cast<void*>(a->base));
    else
      std::snprintf(part, sizeof part, "device access at %p outside the %zu-byte allocation at %p (%s)", info->si_addr,
                    a->bytes, static_cast<void*>(a->base), s.access_depth == 0 ? "from host code" : "from a kernel");
    append(msg, sizeof msg, &len, part);
    ours = true;
  } else {
    uintptr_t fb = 0;
    size_t fbytes = 0;
    if (recently_freed(s, addr, &fb, &fbytes)) {
      std::snprintf(part, sizeof part, "access to freed device memory at %p (offset %" PRIuPTR " of a freed %zu-byte allocation)",
                    info->si_addr, addr - fb, fbytes);
      append(msg, sizeof msg, &len, part);
      ours = true;
    }
  }
  if (!ours) {  // not the emulator's: let the fault happen as it would have without us
    sigaction(sig, sig == SIGSEGV ? &g_old_segv : &g_old_bus, nullptr);
    return;
  }
  if (describe_running_kernel(part, sizeof part) > 0) {
    append(msg, sizeof msg, &len, "; in ");
    append(msg, sizeof msg, &len, part);
  }
  const char prefix[] = "\naiayn emu: fatal: ";
  (void)!write(2, prefix, sizeof prefix - 1);
  (void)!write(2, msg, len);
  (void)!write(2, "\n", 1);
  (void)uctx;
  signal(SIGABRT, SIG_DFL);
  abort();
}

}  // namespace

void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa{};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
  });
  if (!t_altstack) {  // fiber stack overflows fault on the fiber's stack: report from another one
    stack_t cur{};
    if (sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) {
      const size_t size = 256 * 1024;
      stack_t ss{};
      ss.ss_sp = std::malloc(size);  // kept for the thread's life
      ss.ss_size = size;
      if (ss.ss_sp) sigaltstack(&ss, nullptr);
    }
    t_altstack = true;
  }
}

void report(const std::string& message) { std::fprintf(stderr, "aiayn emu: %s\n", message.c_str()); }

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  install_fault_handler();
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mu);
  Allocation a;
  a.bytes = bytes;
  a.data_bytes = round_up(bytes + kCanaryCheck, s.page);
  void* m = mmap(nullptr, a.data_bytes + s.page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (m == MAP_FAILED) return nullptr;
  a.map = static_cast<char*>(m);
  mprotect(a.map + a.data_bytes, s.page, PROT_NONE);  // guard page
  const auto end = reinterpret_cast<uintptr_t>(a.map) + a.data_bytes;
  a.base = reinterpret_cast<char*>((end - bytes) / kAlign * kAlign);
  std::memset(a.map, kCanary, size_t(a.base - a.map));
  std::memset(a.base, kPoison, bytes);
  std::memset(a.base + bytes, kCanary, size_t(a.map + a.data_bytes - (a.base + bytes)));
  if (s.protect && s.access_depth == 0) set_access(a, false);
  s.live[reinterpret_cast<uintptr_t>(a.base)] = a;
  return a.base;
}

FreeResult device_free(void* p) {
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mu);
  const auto key = reinterpret_cast<uintptr_t>(p);
  auto it = s.live.find(key);
  if (it == s.live.end()) {
    uintptr_t fb = 0;
    size_t fbytes = 0;
    if (containing(s, key)) return FreeResult::NotBase;
    if (recently_freed(s, key, &fb, &fbytes)) return FreeResult::AlreadyFreed;
    return FreeResult::NotDevice;
  }
  const Allocation a = it->second;
  if (s.protect && s.access_depth == 0) set_access(a, true);
  const std::string damage = check_canaries(a);
  s.live.erase(it);
  munmap(a.map, a.data_bytes + s.page);
  s.freed.emplace_back(key, a.bytes);
  if (s.freed.size() > kFreedKept) s.freed.pop_front();
  if (!damage.empty()) {  // found at free: the writer is gone, but the corruption must not pass silently
    report("fatal: a kernel or copy " + damage + " (found when it was freed)");
    std::abort();
  }
  return FreeResult::Ok;
}

bool find_allocation(const void* p, uintptr_t* base, size_t* bytes) {
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mu);
  const Allocation* a = containing(s, reinterpret_cast<uintptr_t>(p));
  if (!a) return false;
  if (base) *base = reinterpret_cast<uintptr_t>(a->base);
  if (bytes) *bytes = a->bytes;
  return true;
}

bool is_device_pointer(const void* p) { return p && find_allocation(p); }

bool device_range_ok(const void* p, size_t bytes, std::string* why) {
  uintptr_t base = 0;
  size_t size = 0;
  if (!find_allocation(p, &base, &size)) {
    if (why) *why = describe_pointer(p);
    return false;
  }
  const auto at = reinterpret_cast<uintptr_t>(p);
  if (bytes > size - (at - base)) {
    if (why) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "%zu bytes at offset %" PRIuPTR " overrun the %zu-byte device allocation at %p",
                    bytes, at - base, size, reinterpret_cast<void*>(base));
      *why = buf;
    }
    return false;
  }
  return true;
}

std::string describe_pointer(const void* p) {
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mu);
  const auto at = reinterpret_cast<uintptr_t>(p);
  char buf[256];
  if (const Allocation* a = containing(s, at)) {
    std::snprintf(buf, sizeof buf, "%p (offset %" PRIuPTR " of the %zu-byte device allocation at %p)", p,
                  at - reinterpret_cast<uintptr_t>(a->base), a->bytes, static_cast<void*>(a->base));
    return buf;
  }
  uintptr_t fb = 0;
  size_t fbytes = 0;
  if (recently_freed(s, at, &fb, &fbytes)) {
    std::snprintf(buf, sizeof buf, "%p (freed device memory: offset %" PRIuPTR " of a freed %zu-byte allocation)", p,
                  at - fb, fbytes);
    return buf;
  }
  if (mapping_of(s, at)) {
    std::snprintf(buf, sizeof buf, "%p (outside any device allocation, next to one)", p);
    return buf;
  }
  std::snprintf(buf, sizeof buf, "%p (a host pointer, not device memory)", p);
  return buf;
}

DeviceAccess::DeviceAccess(const char* who) : who_(who) {
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mu);
  if (s.access_depth++ == 0 && s.protect)
    for (auto& kv : s.live) set_access(kv.second, true);
}

void DeviceAccess::close() {
  if (!open_) return;
  open_ = false;
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mu);
  std::string damage;
  for (auto& kv : s.live) {
    const std::string d = check_canaries(kv.second);
    if (!d.empty() && damage.empty()) damage = d;
  }
  if (--s.access_depth == 0 && s.protect)
    for (auto& kv : s.live) set_access(kv.second, false);
  if (!damage.empty()) {
    report(std::string(who_) + " " + damage);
    AIAYN_FAIL(std::string("aiayn emu: ") + who_ + " " + damage);
  }
}

DeviceAccess::~DeviceAccess() {
  if (!open_) return;
  open_ = false;
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mu);
  if (--s.access_depth == 0 && s.protect)
    for (auto& kv : s.live) set_access(kv.second, false);
}

}  // namespace aiayn::emu
