// What the emulator's runtime (runtime.cpp: pool, blocks, fibers, schedules) and its checks
// (checks.cpp: shared-memory arena, shadow state, bounds, reports) share. Not seen by kernels.
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_emu.h"
#include "registry.h"

namespace emu_rt {

enum Status : int {
    kOk = 0,
    kUnknownKernel = 1,
    kArgsSize = 2,
    kSyncInLoopKernel = 3,
    kBadConfig = 4,
    kSharedTooLarge = 5,
    // A check failed (race, bounds, divergent barrier, uninitialised shared read): see the report.
    kCheckFailed = 6,
};

enum Schedule : int { kAscending = 0, kDescending = 1, kRandom = 2 };

// One region a launch was given, in bytes, with the launch's record of which thread last wrote
// each 4-byte word (0: none; else 1 + the thread's index in the grid). Records only with checks on.
struct Region {
    std::uintptr_t begin, end;
    std::atomic<unsigned long long>* writers;
};

struct Launch {
    const EmuKernelEntry* kernel;
    // kernel->entry when the launch is checked, else kernel->fast.
    void (*entry)(const void* args);
    dim3 grid, block;
    unsigned threads;
    unsigned shared_bytes;
    // Shared memory (static and dynamic) one block may use: the emulated device's opt-in limit.
    unsigned max_shared;
    const void* args;
    unsigned long long blocks;
    int schedule;
    unsigned long long seed;
    bool check;
    std::vector<Region> regions;
    // Every live emulator buffer (guards included), [begin, end) in bytes: an access inside one of
    // them but outside every region of the launch is out of bounds.
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> buffers;
    std::atomic<unsigned long long> next{0};
    std::atomic<int> status{kOk};
    std::mutex report_mu;
    std::string report;

    // Records the first failure; later ones are dropped (the first is the one to fix).
    void fail(int why, const std::string& msg) {
        std::lock_guard<std::mutex> g(report_mu);
        int expected = kOk;
        if (status.compare_exchange_strong(expected, why)) {
            report = msg;
        }
    }
};

// The running CUDA thread, as seen by the checks: set by the block scheduler.
extern thread_local Launch* t_launch;
extern thread_local unsigned t_tid;
extern thread_local unsigned long long t_block;
// Barrier intervals passed by the running block (the shadow state's epoch).
extern thread_local unsigned t_epoch;
extern thread_local bool t_check;
// __syncwarp barriers passed per warp of the running block (null outside fiber mode): a lane may
// read what another lane of its warp wrote before a __syncwarp they both passed.
extern thread_local const unsigned* t_warp_syncs;

// The checks' view of one access by the running thread (also for the runtime's own copies:
// cp.async, ldmatrix).
void check_access(std::uintptr_t a, unsigned size, bool write, void* pc);

// Called by the scheduler at each block start: resets the block's shared memory to poison.
void shared_block_start(unsigned dynamic_bytes);
// "block (x,y,z) thread (x,y,z)" for a linear block and thread index of the running launch.
std::string where(unsigned long long block, unsigned tid);
// Live emulator buffers, for Launch::buffers.
std::vector<std::pair<std::uintptr_t, std::uintptr_t>> buffers_snapshot();

}  // namespace emu_rt
