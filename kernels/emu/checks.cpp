// The emulator's checks, as compute-sanitizer's memcheck, racecheck and initcheck would make them:
//
// - Shared memory: one arena per OS thread holds the running block's dynamic and static shared
//   memory, poisoned (0xFF bytes, a NaN as f32) whenever a block starts or a declaration is placed.
//   With checks on, every 4-byte word has shadow state: its last writer and the barrier interval
//   (epoch) of that write, and the readers of the current interval. A read of a word another thread
//   wrote in the same interval, a write of one another thread wrote or read in it, and a read of a
//   word nobody wrote since the block started are reported.
// - Global memory: every region the launch was given, with its length; an access inside an
//   emulator buffer but outside every region is out of bounds. Per word, the launch's last writer:
//   two threads writing one word, or a thread reading a word another thread wrote, in one launch.
//
// Accesses are seen through ThreadSanitizer's instrumentation: the kernel files are compiled with
// -fsanitize=thread (build.rs), which makes g++ call __tsan_read4(address) and friends before every
// load and store it cannot prove local. The functions below replace the sanitizer's runtime (it is
// never linked); they look at addresses only, so stack and thread-local accesses pass untouched.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "state.h"

namespace emu_rt {
namespace {

// The largest per-block shared memory of the devices emulated (an H200 opts in to 227 KiB); each
// launch has its own limit (Launch::max_shared, the device's, from src/backend/gpu/emu.rs).
constexpr std::size_t kSharedLimit = 227 * 1024;
// Room past the limit, so that a block over it is reported instead of writing past the arena.
constexpr std::size_t kArenaBytes = 2 * kSharedLimit;
constexpr int kNobody = -1;
constexpr int kSeveral = -2;
constexpr unsigned kNoEpoch = ~0u;

struct Word {
    unsigned w_epoch;
    int writer;  // kNobody: not written since the block started
    unsigned r_epoch;
    int reader;  // kNobody or kSeveral, for r_epoch
    unsigned w_sync;  // the writer's warp's __syncwarp count at the write
    // Bytes of the word: ever written in this block; written by `writer`; read in r_epoch. Two
    // threads touching different bytes of one word (16-bit data) do not race.
    unsigned char init_bytes, w_bytes, r_bytes;
};

struct SharedArena {
    alignas(64) unsigned char mem[kArenaBytes];
    Word shadow[kArenaBytes / 4];
    std::size_t used;
    unsigned long long gen;
};

thread_local SharedArena* t_arena;

SharedArena& arena() {
    if (t_arena == nullptr) {
        t_arena = static_cast<SharedArena*>(std::calloc(1, sizeof(SharedArena)));
        if (t_arena == nullptr) {
            std::fprintf(stderr, "revseg emulator: cannot allocate shared memory\n");
            std::abort();
        }
    }
    return *t_arena;
}

void reset(SharedArena& s, std::size_t begin, std::size_t end) {
    std::memset(s.mem + begin, 0xFF, end - begin);
    for (std::size_t w = begin / 4; w < (end + 3) / 4; ++w) {
        s.shadow[w] = Word{0, kNobody, kNoEpoch, kNobody, 0, 0, 0, 0};
    }
}

std::mutex g_buffers_mu;
std::vector<std::pair<std::uintptr_t, std::uintptr_t>> g_buffers;

std::string code_at(void* pc) {
    Dl_info info;
    if (dladdr(pc, &info) == 0 || info.dli_fname == nullptr) {
        return "";
    }
    const unsigned long off =
        static_cast<unsigned long>(reinterpret_cast<std::uintptr_t>(pc) -
                                   reinterpret_cast<std::uintptr_t>(info.dli_fbase));
    char buf[512];
    std::snprintf(buf, sizeof buf, "; code at %s+0x%lx (`addr2line -Cfie %s 0x%lx` names the line)",
                  info.dli_fname, off, info.dli_fname, off);
    return buf;
}

std::string kernel_name() {
    return t_launch->kernel->name;
}

void shared_report(const char* what, std::size_t word, int other, void* pc) {
    char buf[768];
    std::string other_s = other >= 0 ? where(t_block, static_cast<unsigned>(other)) : "";
    std::snprintf(buf, sizeof buf,
                  "kernel %s, %s: %s shared-memory word %zu (byte %zu)%s%s%s", kernel_name().c_str(),
                  where(t_block, t_tid).c_str(), what, word, 4 * word,
                  other >= 0 ? " of " : "", other_s.c_str(), code_at(pc).c_str());
    t_launch->fail(kCheckFailed, buf);
}

void shared_access(SharedArena& s, std::size_t off, unsigned size, bool write, void* pc) {
    if (off + size > s.used) {
        char buf[512];
        std::snprintf(buf, sizeof buf,
                      "kernel %s, %s: %s %u bytes at shared-memory byte %zu, outside the block's "
                      "%zu bytes%s",
                      kernel_name().c_str(), where(t_block, t_tid).c_str(),
                      write ? "writes" : "reads", size, off, s.used, code_at(pc).c_str());
        t_launch->fail(kCheckFailed, buf);
        return;
    }
    const int tid = static_cast<int>(t_tid);
    for (std::size_t w = off / 4; w <= (off + size - 1) / 4; ++w) {
        Word& x = s.shadow[w];
        // The bytes of this word the access touches.
        const std::size_t lo = w * 4 > off ? w * 4 : off;
        const std::size_t hi = (w + 1) * 4 < off + size ? (w + 1) * 4 : off + size;
        const unsigned char bm =
            static_cast<unsigned char>(((1u << (hi - lo)) - 1u) << (lo - w * 4));
        const bool synced_in_warp = t_warp_syncs != nullptr && x.writer >= 0 &&
                                    x.writer / 32 == tid / 32 &&
                                    t_warp_syncs[tid / 32] > x.w_sync;
        const bool other_wrote = x.writer >= 0 && x.writer != tid && x.w_epoch == t_epoch &&
                                 !synced_in_warp && (x.w_bytes & bm) != 0;
        if (!write) {
            if ((x.init_bytes & bm) != bm) {
                shared_report("reads uninitialised (never written in this block)", w, -1, pc);
            } else if (other_wrote) {
                shared_report(
                    "race: no __syncthreads between another thread's write and this read of", w,
                    x.writer, pc);
            }
            if (x.r_epoch != t_epoch) {
                x.r_epoch = t_epoch;
                x.reader = tid;
                x.r_bytes = bm;
            } else {
                x.reader = x.reader == tid ? tid : kSeveral;
                x.r_bytes |= bm;
            }
            continue;
        }
        if (other_wrote) {
            shared_report("race: two writes without a __syncthreads between them to", w, x.writer,
                          pc);
        } else if (x.r_epoch == t_epoch && x.reader != tid && x.reader != kNobody &&
                   (x.r_bytes & bm) != 0) {
            shared_report(
                "race: no __syncthreads between another thread's read and this write of", w,
                x.reader >= 0 ? x.reader : -1, pc);
        }
        const bool same = x.writer == tid && x.w_epoch == t_epoch;
        x.w_bytes = same ? static_cast<unsigned char>(x.w_bytes | bm) : bm;
        x.init_bytes |= bm;
        x.writer = tid;
        x.w_epoch = t_epoch;
        x.w_sync = t_warp_syncs != nullptr ? t_warp_syncs[tid / 32] : 0;
    }
}

void global_report(const char* what, const Region& r, std::size_t k, std::uintptr_t a,
                   unsigned long long other_gid, void* pc) {
    const Launch& l = *t_launch;
    std::string other;
    if (other_gid != 0) {
        other = " of " + where((other_gid - 1) / l.threads, (other_gid - 1) % l.threads);
    }
    char buf[768];
    std::snprintf(buf, sizeof buf,
                  "kernel %s, %s: %s word %zu of region %zu (%zu floats)%s in one launch%s",
                  kernel_name().c_str(), where(t_block, t_tid).c_str(), what,
                  static_cast<std::size_t>((a - r.begin) / 4), k,
                  static_cast<std::size_t>((r.end - r.begin) / 4), other.c_str(),
                  code_at(pc).c_str());
    t_launch->fail(kCheckFailed, buf);
}

}  // namespace

void check_access(std::uintptr_t a, unsigned size, bool write, void* pc) {
    if (!t_check) {
        return;
    }
    SharedArena& s = *t_arena;
    const std::uintptr_t sbase = reinterpret_cast<std::uintptr_t>(s.mem);
    if (a - sbase < kArenaBytes) {
        shared_access(s, a - sbase, size, write, pc);
        return;
    }
    Launch& l = *t_launch;
    for (std::size_t k = 0; k < l.regions.size(); ++k) {
        Region& r = l.regions[k];
        if (a < r.begin || a >= r.end) {
            continue;
        }
        if (a + size > r.end) {
            global_report("access runs past the end of", r, k, a, 0, pc);
            return;
        }
        const unsigned long long gid = t_block * l.threads + t_tid + 1;
        std::atomic<unsigned long long>& slot = r.writers[(a - r.begin) / 4];
        const unsigned long long prev = write ? slot.exchange(gid, std::memory_order_relaxed)
                                              : slot.load(std::memory_order_relaxed);
        if (prev != 0 && prev != gid) {
            global_report(write ? "race: writes the word another thread wrote,"
                                : "race: reads the word another thread wrote,",
                          r, k, a, prev, pc);
        }
        return;
    }
    for (const auto& b : l.buffers) {
        if (a >= b.first && a < b.second) {
            char buf[512];
            std::snprintf(buf, sizeof buf,
                          "kernel %s, %s: %s %u bytes at 0x%lx, outside every region the launch "
                          "was given (out of bounds)%s",
                          kernel_name().c_str(), where(t_block, t_tid).c_str(),
                          write ? "writes" : "reads", size, static_cast<unsigned long>(a),
                          code_at(pc).c_str());
            l.fail(kCheckFailed, buf);
            return;
        }
    }
}

void shared_block_start(unsigned dynamic_bytes) {
    SharedArena& s = arena();
    ++s.gen;
    s.used = (dynamic_bytes + 15u) / 16u * 16u;
    reset(s, 0, s.used);
}

std::string where(unsigned long long block, unsigned tid) {
    const Launch& l = *t_launch;
    const unsigned long long gx = l.grid.x, gy = l.grid.y;
    const unsigned bx = l.block.x, by = l.block.y;
    char buf[160];
    std::snprintf(buf, sizeof buf, "block (%llu,%llu,%llu) thread (%u,%u,%u)", block % gx,
                  (block / gx) % gy, block / (gx * gy), tid % bx, (tid / bx) % by, tid / (bx * by));
    return buf;
}

std::vector<std::pair<std::uintptr_t, std::uintptr_t>> buffers_snapshot() {
    std::lock_guard<std::mutex> g(g_buffers_mu);
    return g_buffers;
}

}  // namespace emu_rt

using namespace emu_rt;

void* emu::dynamic_shared() {
    return arena().mem;
}

void* emu::static_shared(SharedSite& site, std::size_t bytes) {
    SharedArena& s = arena();
    if (site.block_gen != s.gen) {
        const std::size_t off = (s.used + 15) / 16 * 16;
        if (off + bytes > t_launch->max_shared) {
            char buf[256];
            std::snprintf(buf, sizeof buf,
                          "kernel %s: %zu bytes of shared memory (static and dynamic) in a block, "
                          "over the device's %u bytes",
                          t_launch->kernel->name, off + bytes, t_launch->max_shared);
            t_launch->fail(kSharedTooLarge, buf);
            if (off + bytes > kArenaBytes) {
                std::fprintf(stderr, "revseg emulator: %s\n", buf);
                std::abort();
            }
        }
        reset(s, off, off + bytes);
        s.used = off + bytes;
        site.block_gen = s.gen;
        site.ptr = s.mem + off;
    }
    return site.ptr;
}

// Buffers made by the Rust side (src/backend/gpu/emu.rs), guard zones included.
extern "C" void emu_register_buffer(const void* p, std::size_t bytes) {
    const auto b = reinterpret_cast<std::uintptr_t>(p);
    std::lock_guard<std::mutex> g(g_buffers_mu);
    g_buffers.emplace_back(b, b + bytes);
}

extern "C" void emu_unregister_buffer(const void* p) {
    const auto b = reinterpret_cast<std::uintptr_t>(p);
    std::lock_guard<std::mutex> g(g_buffers_mu);
    for (std::size_t i = 0; i < g_buffers.size(); ++i) {
        if (g_buffers[i].first == b) {
            g_buffers[i] = g_buffers.back();
            g_buffers.pop_back();
            return;
        }
    }
}

// The sanitizer interface g++ emits calls to (see the top of this file).
#define EMU_HOOK(n)                                                                       \
    extern "C" void __tsan_read##n(void* p) {                                             \
        check_access(reinterpret_cast<std::uintptr_t>(p), n, false, __builtin_return_address(0)); \
    }                                                                                     \
    extern "C" void __tsan_write##n(void* p) {                                            \
        check_access(reinterpret_cast<std::uintptr_t>(p), n, true, __builtin_return_address(0));  \
    }                                                                                     \
    extern "C" void __tsan_unaligned_read##n(void* p) {                                   \
        check_access(reinterpret_cast<std::uintptr_t>(p), n, false, __builtin_return_address(0)); \
    }                                                                                     \
    extern "C" void __tsan_unaligned_write##n(void* p) {                                  \
        check_access(reinterpret_cast<std::uintptr_t>(p), n, true, __builtin_return_address(0));  \
    }
EMU_HOOK(1)
EMU_HOOK(2)
EMU_HOOK(4)
EMU_HOOK(8)
EMU_HOOK(16)

extern "C" void __tsan_read_range(void* p, unsigned long n) {
    check_access(reinterpret_cast<std::uintptr_t>(p), static_cast<unsigned>(n), false,
              __builtin_return_address(0));
}
extern "C" void __tsan_write_range(void* p, unsigned long n) {
    check_access(reinterpret_cast<std::uintptr_t>(p), static_cast<unsigned>(n), true,
              __builtin_return_address(0));
}
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void*, void*) {}
extern "C" void __tsan_vptr_read(void*) {}
