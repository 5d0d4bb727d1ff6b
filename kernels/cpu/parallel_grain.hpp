#pragma once
// Internal to the CPU backend. Below kParallelGrain elements of work an element- or row-parallel op runs on the
// calling thread: waking the other threads (a futex each under OMP_WAIT_POLICY=passive, or a wait for a busy
// core) costs more than such work, which the decoder's steps are full of (a few hundred rows of width D).
// PyTorch's CPU ops use the same grain (at::internal::GRAIN_SIZE). These ops compute each element or row the
// same way on any number of threads, so the grain changes speed only, never results.
namespace aiayn::kernels::cpu {

constexpr long kParallelGrain = 32768;

}  // namespace aiayn::kernels::cpu
