// The emulator's runtime: runs a kernel of kernels/*.cu, compiled for the CPU, over its grid.
//
// Blocks are handed out to a pool of OS threads (one per core). Within a block, a kernel that never
// calls __syncthreads runs its threads as a plain loop. A kernel that does runs each CUDA thread as
// a fiber: __syncthreads parks the fiber and returns to the block's scheduler, which resumes every
// fiber in turn, so all threads reach a barrier before any passes it. The order of that turn (and
// of the plain loop, and of the blocks) is the launch's schedule: ascending, descending, or a
// seeded permutation per barrier interval, so that a missing barrier shows as different bits.
// Threads that stop at different barriers, or return while others wait, are reported (state.h). Fibers and their stacks
// are made once per OS thread and reused; a fiber is entered with setcontext the first time only,
// and switched with _setjmp/_longjmp afterwards, which (unlike swapcontext) make no system call.
#include <ucontext.h>

#include <algorithm>
#include <condition_variable>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <thread>

#include "warp.h"

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace emu_rt {
thread_local Launch* t_launch;
thread_local unsigned t_tid;
thread_local unsigned long long t_block;
thread_local unsigned t_epoch;
thread_local bool t_check;
thread_local const unsigned* t_warp_syncs;
}  // namespace emu_rt

using namespace emu_rt;

namespace {

constexpr std::size_t kStackBytes = 64 * 1024;
// CUDA's limits, enforced here so that a launch the GPU would refuse fails on the emulator too.
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxGridYZ = 65535;
// What the shared-memory arena (checks.cpp) holds: no emulated device may allow more per block.
constexpr unsigned kMaxSharedArena = 227 * 1024;

enum FiberState { kNew, kRunning, kIdle };

constexpr int kMaxCopies = 64;
struct AsyncCopy {
    void* dst;
    const void* src;
    int bytes;
    int group;
};

struct Fiber {
    jmp_buf ctx;
    ucontext_t uc;
    char* stack;
    FiberState state;
    bool done;
    uint3 idx;
    // Parked: at the warp collective `op`, or (op null) at the __syncthreads at at_file:at_line.
    bool blocked;
    emu::WarpOp* op;
    const char* at_file;
    int at_line;
    // cp.async copies not yet done, and the number of committed groups.
    AsyncCopy copies[kMaxCopies];
    int ncopies;
    int committed;
};

struct Worker {
    std::vector<Fiber*> fibers;
    std::vector<unsigned> order;
    std::vector<unsigned> warp_syncs;
    ~Worker() {
        for (Fiber* f : fibers) {
            std::free(f->stack);
            std::free(f);
        }
    }
};

thread_local Worker t_worker;
thread_local Fiber* t_cur;
// The running thread's cp.async state in plain-loop mode.
thread_local Fiber t_loop_fiber;
thread_local jmp_buf t_sched;
thread_local bool t_fiber_mode;
thread_local jmp_buf t_loop_escape;

// Each fiber runs blocks forever: after a block it parks at the loop top (kIdle), and the next
// block resumes it there.
void unwaited_copies() {
    if (t_cur->ncopies > 0) {
        t_launch->fail(kCheckFailed, std::string("kernel ") + t_launch->kernel->name + ", " +
                                         where(t_block, t_tid) +
                                         ": returns with cp.async copies never waited for "
                                         "(cp_async_wait)");
    }
}

void fiber_main() {
    for (;;) {
        t_launch->entry(t_launch->args);
        unwaited_copies();
        t_cur->state = kIdle;
        if (!_setjmp(t_cur->ctx)) {
            _longjmp(t_sched, 1);
        }
    }
}

// (Re)makes a fiber that starts at fiber_main: new ones, and those of a block abandoned at a
// divergent barrier, whose stacks hold a kernel half-way.
void start_fiber(Fiber* f) {
    if (getcontext(&f->uc) != 0) {
        std::fprintf(stderr, "revseg emulator: getcontext failed\n");
        std::abort();
    }
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = kStackBytes;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, fiber_main, 0);
    f->state = kNew;
}

void ensure_fibers(unsigned n) {
    auto& fs = t_worker.fibers;
    while (fs.size() < n) {
        // Plain C allocation: Fiber is trivially copyable and holds jmp_buf/ucontext_t.
        Fiber* f = static_cast<Fiber*>(std::calloc(1, sizeof(Fiber)));
        if (f == nullptr || (f->stack = static_cast<char*>(std::malloc(kStackBytes))) == nullptr) {
            std::fprintf(stderr, "revseg emulator: cannot allocate a fiber stack\n");
            std::abort();
        }
        start_fiber(f);
        fs.push_back(f);
    }
}

uint3 thread_index(const dim3& b, unsigned t) {
    return uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
}

unsigned long long splitmix(unsigned long long x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// The order in which the block's threads run until their next barrier, in barrier interval
// `round`: the launch's schedule. A random schedule draws a fresh permutation per interval.
const std::vector<unsigned>& thread_order(const Launch& l, unsigned round) {
    auto& o = t_worker.order;
    o.resize(l.threads);
    std::iota(o.begin(), o.end(), 0u);
    if (l.schedule == kDescending) {
        std::reverse(o.begin(), o.end());
    } else if (l.schedule == kRandom) {
        unsigned long long r = splitmix(l.seed ^ splitmix(t_block * 1000003ull + round));
        for (unsigned i = l.threads; i > 1; --i) {
            r = splitmix(r);
            std::swap(o[i - 1], o[r % i]);
        }
    }
    return o;
}

void divergent(const Launch& l, const Fiber* waiting, unsigned waiting_tid, const Fiber* other,
               unsigned other_tid) {
    char buf[768];
    if (other == nullptr) {
        std::snprintf(buf, sizeof buf,
                      "kernel %s: divergent __syncthreads: %s waits at %s:%d but thread %u of the "
                      "block has already returned (every thread of a block must reach the same "
                      "barrier)",
                      l.kernel->name, where(t_block, waiting_tid).c_str(), waiting->at_file,
                      waiting->at_line, other_tid);
    } else {
        std::snprintf(buf, sizeof buf,
                      "kernel %s: divergent __syncthreads: %s waits at %s:%d, thread %u at %s:%d",
                      l.kernel->name, where(t_block, waiting_tid).c_str(), waiting->at_file,
                      waiting->at_line, other_tid, other->at_file, other->at_line);
    }
    const_cast<Launch&>(l).fail(kCheckFailed, buf);
}

void abandon_block(const Launch& l) {
    // Threads parked at a barrier that will never open: start them afresh next block.
    for (unsigned i = 0; i < l.threads; ++i) {
        if (!t_worker.fibers[i]->done) {
            start_fiber(t_worker.fibers[i]);
        }
    }
}

// Gives every warp collective whose lanes have all arrived its results; false on a collective
// that can never complete (reported).
bool resolve_warps(const Launch& l, bool& any) {
    auto& fs = t_worker.fibers;
    any = false;
    for (unsigned w = 0; w * 32 < l.threads; ++w) {
        emu::WarpOp* ops[32] = {};
        const unsigned lanes = std::min(32u, l.threads - 32 * w);
        bool waiting = false;
        for (unsigned j = 0; j < lanes; ++j) {
            Fiber* f = fs[32 * w + j];
            if (!f->done && f->blocked && f->op != nullptr) {
                ops[j] = f->op;
                waiting = true;
            }
        }
        if (!waiting) {
            continue;
        }
        unsigned released = 0, syncs = 0;
        std::string err;
        const unsigned saved = t_tid;
        auto read = [](unsigned tid, const void* p, unsigned n) {
            t_tid = tid;
            check_access(reinterpret_cast<std::uintptr_t>(p), n, false, nullptr);
        };
        if (!resolve_warp(w, lanes, ops, released, syncs, read, err)) {
            const_cast<Launch&>(l).fail(kCheckFailed, std::string("kernel ") + l.kernel->name +
                                                          ", block: " + where(t_block, 32 * w) +
                                                          " (first lane of the warp): " + err);
            return false;
        }
        t_tid = saved;
        t_worker.warp_syncs[w] += syncs;
        for (unsigned j = 0; j < lanes; ++j) {
            if (released >> j & 1) {
                fs[32 * w + j]->blocked = false;
                fs[32 * w + j]->op = nullptr;
                any = true;
            }
        }
    }
    return true;
}

void run_block_fibers(const Launch& l) {
    ensure_fibers(l.threads);
    t_fiber_mode = true;
    auto& fs = t_worker.fibers;
    for (unsigned i = 0; i < l.threads; ++i) {
        fs[i]->done = false;
        fs[i]->blocked = false;
        fs[i]->op = nullptr;
        fs[i]->ncopies = 0;
        fs[i]->committed = 0;
        fs[i]->idx = thread_index(l.block, i);
    }
    t_worker.warp_syncs.assign((l.threads + 31) / 32, 0);
    t_warp_syncs = t_worker.warp_syncs.data();
    unsigned left = l.threads;
    for (unsigned round = 0; left > 0; ++round) {
        t_epoch = round;
        const unsigned none = l.threads;
        unsigned first_parked = none, first_done = none;
        bool mismatch = false;
        // Passes until every thread still running waits at a barrier: in each, every runnable
        // thread runs until it parks; then the warp collectives complete, which makes more runnable.
        for (bool more = true; more;) {
            for (unsigned i : thread_order(l, round)) {
                Fiber* f = fs[i];
                if (f->done) {
                    first_done = first_done == none ? i : first_done;
                    continue;
                }
                if (f->blocked) {
                    continue;
                }
                t_cur = f;
                t_tid = i;
                threadIdx = f->idx;
                if (!_setjmp(t_sched)) {
                    FiberState was = f->state;
                    f->state = kRunning;
                    if (was == kNew) {
                        setcontext(&f->uc);
                    } else {
                        _longjmp(f->ctx, 1);
                    }
                }
                // Back here when the fiber parked (kRunning) or finished (kIdle).
                if (f->state == kIdle) {
                    f->done = true;
                    --left;
                    first_done = first_done == none ? i : first_done;
                    continue;
                }
                f->blocked = true;
                if (f->op != nullptr) {
                    continue;
                }
                if (first_parked == none) {
                    first_parked = i;
                } else if (!mismatch &&
                           (fs[first_parked]->at_line != f->at_line ||
                            std::strcmp(fs[first_parked]->at_file, f->at_file) != 0)) {
                    divergent(l, fs[first_parked], first_parked, f, i);
                    mismatch = true;
                }
            }
            if (mismatch || !resolve_warps(l, more)) {
                abandon_block(l);
                return;
            }
        }
        if (left > 0 && first_done != none) {
            divergent(l, fs[first_parked], first_parked, nullptr, first_done);
            abandon_block(l);
            return;
        }
        for (unsigned i = 0; i < l.threads; ++i) {
            fs[i]->blocked = false;
        }
    }
    t_warp_syncs = nullptr;
}

bool run_block_loop(const Launch& l) {
    t_fiber_mode = false;
    t_epoch = 0;
    if (setjmp(t_loop_escape)) {
        return false;
    }
    t_cur = &t_loop_fiber;
    for (unsigned i : thread_order(l, 0)) {
        t_tid = i;
        threadIdx = thread_index(l.block, i);
        t_loop_fiber.ncopies = 0;
        t_loop_fiber.committed = 0;
        l.entry(l.args);
        unwaited_copies();
    }
    return true;
}

void run_blocks(Launch& l) {
    t_launch = &l;
    t_check = l.check;
    blockDim = l.block;
    gridDim = l.grid;
    for (;;) {
        unsigned long long n = l.next.fetch_add(1);
        if (n >= l.blocks || l.status.load() != kOk) {
            break;
        }
        // Blocks are handed out in the schedule's order too (random: descending for odd seeds).
        const bool down = l.schedule == kDescending || (l.schedule == kRandom && (l.seed & 1));
        const unsigned long long b = down ? l.blocks - 1 - n : n;
        t_block = b;
        blockIdx = uint3{static_cast<unsigned>(b % l.grid.x),
                         static_cast<unsigned>((b / l.grid.x) % l.grid.y),
                         static_cast<unsigned>(b / (static_cast<unsigned long long>(l.grid.x) *
                                                    l.grid.y))};
        shared_block_start(l.shared_bytes);
        if (l.kernel->uses_sync) {
            run_block_fibers(l);
        } else if (!run_block_loop(l)) {
            l.fail(kSyncInLoopKernel, "");
        }
    }
    t_check = false;
}

// Persistent OS threads; one launch at a time (launches from several host threads queue here).
class Pool {
   public:
    explicit Pool(unsigned n) {
        for (unsigned i = 0; i < n; ++i) {
            std::thread([this] { loop(); }).detach();
        }
        size_ = n;
    }
    void run(Launch& l) {
        // A grid of a few blocks runs on the calling thread: handing it to the pool costs two
        // thread wake-ups, which on a loaded machine take longer than the blocks themselves.
        if (l.blocks <= 2) {
            run_blocks(l);
            return;
        }
        std::lock_guard<std::mutex> one_launch(launch_mu_);
        {
            std::lock_guard<std::mutex> g(mu_);
            job_ = &l;
            busy_ = size_;
            ++generation_;
        }
        work_.notify_all();
        std::unique_lock<std::mutex> g(mu_);
        done_.wait(g, [this] { return busy_ == 0; });
        job_ = nullptr;
    }

   private:
    void loop() {
        unsigned long long seen = 0;
        for (;;) {
            Launch* l;
            {
                std::unique_lock<std::mutex> g(mu_);
                work_.wait(g, [&] { return generation_ != seen; });
                seen = generation_;
                l = job_;
            }
            run_blocks(*l);
            std::lock_guard<std::mutex> g(mu_);
            if (--busy_ == 0) {
                done_.notify_all();
            }
        }
    }
    std::mutex launch_mu_, mu_;
    std::condition_variable work_, done_;
    Launch* job_ = nullptr;
    unsigned long long generation_ = 0;
    unsigned busy_ = 0, size_ = 0;
};

unsigned pool_size() {
    if (const char* s = std::getenv("REVSEG_EMU_THREADS")) {
        int n = std::atoi(s);
        if (n >= 1 && n <= 256) {
            return static_cast<unsigned>(n);
        }
    }
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : (n > 64 ? 64 : n);
}

Pool& pool() {
    // Never destroyed: its threads wait for work until the process exits.
    static Pool* p = new Pool(pool_size());
    return *p;
}

const EmuKernelEntry* find(const char* name) {
    for (std::size_t i = 0; i < emu_kernel_count; ++i) {
        if (std::strcmp(emu_kernels[i].name, name) == 0) {
            return &emu_kernels[i];
        }
    }
    return nullptr;
}

}  // namespace

void emu::syncthreads(const char* file, int line) {
    if (!t_fiber_mode) {
        _longjmp(t_loop_escape, 1);
    }
    t_cur->op = nullptr;
    t_cur->at_file = file;
    t_cur->at_line = line;
    if (!_setjmp(t_cur->ctx)) {
        _longjmp(t_sched, 1);
    }
}

void emu::warp_collective(WarpOp& op) {
    if (!t_fiber_mode) {
        _longjmp(t_loop_escape, 1);
    }
    t_cur->op = &op;
    if (!_setjmp(t_cur->ctx)) {
        _longjmp(t_sched, 1);
    }
}

void emu::cp_async(void* dst, const void* src, int bytes) {
    Fiber& f = *t_cur;
    if (f.ncopies == kMaxCopies) {
        t_launch->fail(kCheckFailed, std::string("kernel ") + t_launch->kernel->name + ", " +
                                         where(t_block, t_tid) +
                                         ": more than 64 cp.async copies in flight");
        return;
    }
    f.copies[f.ncopies++] = AsyncCopy{dst, src, bytes, f.committed};
}

void emu::cp_async_commit() {
    ++t_cur->committed;
}

// Completes the copies of every committed group but the newest `pending`.
void emu::cp_async_wait(int pending) {
    Fiber& f = *t_cur;
    int kept = 0;
    for (int i = 0; i < f.ncopies; ++i) {
        const AsyncCopy c = f.copies[i];
        if (c.group < f.committed - pending) {
            check_access(reinterpret_cast<std::uintptr_t>(c.src), c.bytes, false, nullptr);
            check_access(reinterpret_cast<std::uintptr_t>(c.dst), c.bytes, true, nullptr);
            std::memcpy(c.dst, c.src, c.bytes);
        } else {
            f.copies[kept++] = c;
        }
    }
    f.ncopies = kept;
}

// How to run a launch (src/backend/gpu/emu.rs mirrors it): the schedule, whether to check, and the
// regions the kernel was given as (address, bytes) pairs.
struct EmuOptions {
    int schedule;
    int check;
    unsigned long long seed;
    const unsigned long long* regions;
    std::size_t region_count;
    // The emulated device's opt-in shared memory per block, bytes (DeviceLimits in Rust).
    unsigned max_shared;
};

// Runs one kernel over its grid and returns when every block has finished (a launch followed by a
// synchronize). Returns a Status; for kCheckFailed (and a few others) `msg` holds the report.
extern "C" int emu_launch(const char* name, const unsigned grid[3], const unsigned block[3],
                          unsigned shared_bytes, const void* args, std::size_t args_size,
                          const EmuOptions* opt, char* msg, std::size_t msg_cap) {
    const EmuKernelEntry* k = find(name);
    if (k == nullptr) {
        return kUnknownKernel;
    }
    if (args_size != k->args_size) {
        return kArgsSize;
    }
    unsigned long long threads = 1ull * block[0] * block[1] * block[2];
    if (threads == 0 || threads > kMaxThreadsPerBlock || grid[0] == 0 || grid[1] == 0 ||
        grid[2] == 0 || grid[1] > kMaxGridYZ || grid[2] > kMaxGridYZ || block[2] > 64) {
        return kBadConfig;
    }
    if (shared_bytes > opt->max_shared || opt->max_shared > kMaxSharedArena) {
        return kSharedTooLarge;
    }
    Launch l;
    l.kernel = k;
    l.grid = dim3{grid[0], grid[1], grid[2]};
    l.block = dim3{block[0], block[1], block[2]};
    l.threads = static_cast<unsigned>(threads);
    l.shared_bytes = shared_bytes;
    l.max_shared = opt->max_shared;
    l.args = args;
    l.blocks = 1ull * grid[0] * grid[1] * grid[2];
    l.schedule = opt->schedule;
    l.seed = opt->seed;
    l.check = opt->check != 0;
    l.entry = l.check ? k->entry : k->fast;
    std::vector<std::atomic<unsigned long long>*> shadows;
    if (l.check) {
        l.buffers = buffers_snapshot();
        for (std::size_t i = 0; i < opt->region_count; ++i) {
            const std::uintptr_t b = opt->regions[2 * i];
            const std::size_t bytes = opt->regions[2 * i + 1];
            if (bytes == 0) {
                continue;
            }
            // calloc: all-zero (no writer yet) without touching pages a launch never writes.
            auto* w = static_cast<std::atomic<unsigned long long>*>(
                std::calloc((bytes + 3) / 4, sizeof(unsigned long long)));
            if (w == nullptr) {
                return kBadConfig;
            }
            shadows.push_back(w);
            l.regions.push_back(Region{b, b + bytes, w});
        }
    }
    pool().run(l);
    for (auto* w : shadows) {
        std::free(w);
    }
    if (msg_cap > 0) {
        std::snprintf(msg, msg_cap, "%s", l.report.c_str());
    }
    return l.status.load();
}

// The argument-struct size a kernel expects (0: no such kernel), for the Rust side's layout checks.
extern "C" std::size_t emu_kernel_args_size(const char* name) {
    const EmuKernelEntry* k = find(name);
    return k ? k->args_size : 0;
}

extern "C" unsigned emu_threads() {
    return pool_size();
}
