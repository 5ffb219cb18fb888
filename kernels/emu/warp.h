// The warp collectives' resolver (warp.cpp), called by the block scheduler (runtime.cpp).
#pragma once
#include <functional>
#include <string>

#include "state.h"

namespace emu_rt {

// Lets the resolver's shared-memory reads (ldmatrix) be checked as reads by lane `tid`.
using CheckRead = std::function<void(unsigned tid, const void* p, unsigned bytes)>;

// ops[l]: the collective lane l of warp `warp` waits at, or null (returned, or at __syncthreads).
// Every lane still running is parked, so a lane of a mask that is not at the same collective
// never will be: an error (in `err`). On success `released` has the lanes given their results and
// `syncs` counts the __syncwarp barriers passed.
bool resolve_warp(unsigned warp, unsigned lanes, emu::WarpOp* const ops[32], unsigned& released,
                  unsigned& syncs, const CheckRead& read, std::string& err);

}  // namespace emu_rt
