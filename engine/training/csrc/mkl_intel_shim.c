/*
 * Paddle's bundled MKL (libmklml_intel.so) asks mkl_serv_intel_cpu_true() whether it runs on an
 * Intel CPU and, when not, takes generic slow code paths even on CPUs with AVX2/AVX-512: on an
 * AMD EPYC its sgemm ran at 38-58 GFLOP/s instead of 169-195. Loaded first with LD_PRELOAD, this
 * definition wins the symbol lookup, so MKL picks its kernels from the CPU's feature flags
 * (which it still checks) instead of the vendor string. engine/training/cpu_speed.py builds it on non-Intel
 * CPUs only and logs the LD_PRELOAD=... command that runs the program with it (opt-in).
 */
int mkl_serv_intel_cpu_true(void) { return 1; }
