// Deliberately broken kernels, compiled into the emulator only (build.rs), so that tests/emu_checks.rs
// can prove each check fails when it should. One block of RED_THREADS threads; a = input, out = output.
#include "common.cuh"

// Thread t reads what thread t - 1 wrote, with no __syncthreads between: right under the ascending
// schedule (t - 1 ran first), poison under the descending one.
REVSEG_KERNEL(faulty_missing_sync, EwArgs) {
    REVSEG_SHARED(float, sh, [RED_THREADS]);
    const int t = static_cast<int>(threadIdx.x);
    sh[t] = a.a[t];
    a.out[t] = t > 0 ? sh[t - 1] : 0.0f;
}

// The same exchange with the barrier: no report under any schedule.
REVSEG_KERNEL_SYNC(faulty_fixed_sync, EwArgs) {
    REVSEG_SHARED(float, sh, [RED_THREADS]);
    const int t = static_cast<int>(threadIdx.x);
    sh[t] = a.a[t];
    __syncthreads();
    a.out[t] = t > 0 ? sh[t - 1] : 0.0f;
}

// A tree reduction whose last barrier is missing: thread 0 reads the word thread 1 writes in the
// same interval, and the next round's writes race with the reads.
REVSEG_KERNEL_SYNC(faulty_tree_no_sync, EwArgs) {
    REVSEG_SHARED(float, sh, [RED_THREADS]);
    const int t = static_cast<int>(threadIdx.x);
    sh[t] = a.a[t];
    __syncthreads();
    for (int s = RED_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) {
            sh[t] += sh[t + s];
        }
    }
    if (t == 0) {
        a.out[0] = sh[0];
    }
}

// Reads shared memory that no thread wrote.
REVSEG_KERNEL(faulty_uninit_shared, EwArgs) {
    REVSEG_SHARED(float, sh, [RED_THREADS]);
    const int t = static_cast<int>(threadIdx.x);
    a.out[t] = sh[t];
}

// Every thread writes out[0].
REVSEG_KERNEL(faulty_global_race, EwArgs) {
    a.out[0] = static_cast<float>(threadIdx.x);
}

// Reads one element past the end of its input (a.n elements).
REVSEG_KERNEL(faulty_out_of_bounds, EwArgs) {
    const int t = static_cast<int>(threadIdx.x);
    if (t < a.n) {
        a.out[t] = a.a[t + 1];
    }
}

// Only the first warp reaches the barrier.
REVSEG_KERNEL_SYNC(faulty_divergent_sync, EwArgs) {
    const int t = static_cast<int>(threadIdx.x);
    if (t < 32) {
        __syncthreads();
    }
    a.out[t] = a.a[t];
}
