// The emulator's runtime: runs a kernel of kernels/*.cu, compiled for the CPU, over its grid.
//
// Blocks are handed out to a pool of OS threads (one per core). Within a block, a kernel that never
// calls __syncthreads runs its threads as a plain loop. A kernel that does runs each CUDA thread as
// a fiber: __syncthreads parks the fiber and returns to the block's scheduler, which resumes every
// fiber round-robin, so all threads reach a barrier before any passes it. Fibers and their stacks
// are made once per OS thread and reused; a fiber is entered with setcontext the first time only,
// and switched with _setjmp/_longjmp afterwards, which (unlike swapcontext) make no system call.
#include <ucontext.h>

#include <atomic>
#include <condition_variable>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda_emu.h"
#include "registry.h"

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace {

constexpr std::size_t kStackBytes = 64 * 1024;
// CUDA's limits, enforced here so that a launch the GPU would refuse fails on the emulator too.
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxDynamicShared = 48 * 1024;
constexpr unsigned kMaxGridYZ = 65535;

enum Status : int {
    kOk = 0,
    kUnknownKernel = 1,
    kArgsSize = 2,
    kSyncInLoopKernel = 3,
    kBadConfig = 4,
    kSharedTooLarge = 5,
};

struct Launch {
    const EmuKernelEntry* kernel;
    dim3 grid, block;
    unsigned threads;
    unsigned shared_bytes;
    const void* args;
    unsigned long long blocks;
    std::atomic<unsigned long long> next{0};
    std::atomic<int> status{kOk};
};

enum FiberState { kNew, kRunning, kIdle };

struct Fiber {
    jmp_buf ctx;
    ucontext_t uc;
    char* stack;
    FiberState state;
    bool done;
    uint3 idx;
};

struct Worker {
    std::vector<Fiber*> fibers;
    void* dyn = nullptr;
    std::size_t dyn_bytes = 0;
    ~Worker() {
        for (Fiber* f : fibers) {
            std::free(f->stack);
            std::free(f);
        }
        std::free(dyn);
    }
};

thread_local Worker t_worker;
thread_local const Launch* t_launch;
thread_local Fiber* t_cur;
thread_local jmp_buf t_sched;
thread_local bool t_fiber_mode;
thread_local jmp_buf t_loop_escape;

// Each fiber runs blocks forever: after a block it parks at the loop top (kIdle), and the next
// block resumes it there.
void fiber_main() {
    for (;;) {
        t_launch->kernel->entry(t_launch->args);
        t_cur->state = kIdle;
        if (!_setjmp(t_cur->ctx)) {
            _longjmp(t_sched, 1);
        }
    }
}

void ensure_fibers(unsigned n) {
    auto& fs = t_worker.fibers;
    while (fs.size() < n) {
        // Plain C allocation: Fiber is trivially copyable and holds jmp_buf/ucontext_t.
        Fiber* f = static_cast<Fiber*>(std::calloc(1, sizeof(Fiber)));
        if (f == nullptr || (f->stack = static_cast<char*>(std::malloc(kStackBytes))) == nullptr ||
            getcontext(&f->uc) != 0) {
            std::fprintf(stderr, "revseg emulator: cannot allocate a fiber stack\n");
            std::abort();
        }
        f->uc.uc_stack.ss_sp = f->stack;
        f->uc.uc_stack.ss_size = kStackBytes;
        f->uc.uc_link = nullptr;
        makecontext(&f->uc, fiber_main, 0);
        f->state = kNew;
        fs.push_back(f);
    }
}

uint3 thread_index(const dim3& b, unsigned t) {
    return uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
}

void run_block_fibers(const Launch& l) {
    ensure_fibers(l.threads);
    t_fiber_mode = true;
    auto& fs = t_worker.fibers;
    for (unsigned i = 0; i < l.threads; ++i) {
        fs[i]->done = false;
        fs[i]->idx = thread_index(l.block, i);
    }
    unsigned left = l.threads;
    while (left > 0) {
        for (unsigned i = 0; i < l.threads; ++i) {
            Fiber* f = fs[i];
            if (f->done) {
                continue;
            }
            t_cur = f;
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
            // Back here when the fiber reached a barrier (kRunning) or finished (kIdle).
            if (f->state == kIdle) {
                f->done = true;
                --left;
            }
        }
    }
}

bool run_block_loop(const Launch& l) {
    t_fiber_mode = false;
    if (setjmp(t_loop_escape)) {
        return false;
    }
    for (unsigned i = 0; i < l.threads; ++i) {
        threadIdx = thread_index(l.block, i);
        l.kernel->entry(l.args);
    }
    return true;
}

void run_blocks(Launch& l) {
    t_launch = &l;
    blockDim = l.block;
    gridDim = l.grid;
    if (l.shared_bytes > t_worker.dyn_bytes) {
        std::free(t_worker.dyn);
        t_worker.dyn = std::aligned_alloc(64, (l.shared_bytes + 63) / 64 * 64);
        t_worker.dyn_bytes = t_worker.dyn ? l.shared_bytes : 0;
    }
    for (;;) {
        unsigned long long b = l.next.fetch_add(1);
        if (b >= l.blocks || l.status.load() != kOk) {
            break;
        }
        blockIdx = uint3{static_cast<unsigned>(b % l.grid.x),
                         static_cast<unsigned>((b / l.grid.x) % l.grid.y),
                         static_cast<unsigned>(b / (static_cast<unsigned long long>(l.grid.x) *
                                                    l.grid.y))};
        if (l.kernel->uses_sync) {
            run_block_fibers(l);
        } else if (!run_block_loop(l)) {
            int expected = kOk;
            l.status.compare_exchange_strong(expected, kSyncInLoopKernel);
        }
    }
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

void emu::syncthreads() {
    if (!t_fiber_mode) {
        _longjmp(t_loop_escape, 1);
    }
    if (!_setjmp(t_cur->ctx)) {
        _longjmp(t_sched, 1);
    }
}

void* emu::dynamic_shared() {
    return t_worker.dyn;
}

// Runs one kernel over its grid and returns when every block has finished (a launch followed by a
// synchronize). Returns a Status; the Rust side turns it into an error message.
extern "C" int emu_launch(const char* name, const unsigned grid[3], const unsigned block[3],
                          unsigned shared_bytes, const void* args, std::size_t args_size) {
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
    if (shared_bytes > kMaxDynamicShared) {
        return kSharedTooLarge;
    }
    Launch l;
    l.kernel = k;
    l.grid = dim3{grid[0], grid[1], grid[2]};
    l.block = dim3{block[0], block[1], block[2]};
    l.threads = static_cast<unsigned>(threads);
    l.shared_bytes = shared_bytes;
    l.args = args;
    l.blocks = 1ull * grid[0] * grid[1] * grid[2];
    pool().run(l);
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
