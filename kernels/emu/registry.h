// What the runtime (runtime.cpp) knows of a kernel: build.rs generates the table from the
// REVSEG_KERNEL / REVSEG_KERNEL_SYNC lines of kernels/*.cu.
#pragma once
#include <cstddef>

struct EmuKernelEntry {
    const char* name;
    // The kernel compiled with the checks' instrumentation (run when a launch is checked) and
    // without it (REVSEG_EMU_FAST: the same source, every access a plain load or store).
    void (*entry)(const void* args);
    void (*fast)(const void* args);
    // Whether the kernel calls __syncthreads: its threads then run as fibers, else as a plain loop.
    int uses_sync;
    std::size_t args_size;
};

extern const EmuKernelEntry emu_kernels[];
extern const std::size_t emu_kernel_count;
