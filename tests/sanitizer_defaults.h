/* sanitizer_defaults.h - the sanitizer settings of an executable that starts Open MPI
 * (and possibly CUDA / NCCL). Include it in exactly one source file of the executable.
 *
 * Open MPI, the CUDA runtime and NCCL keep start-up allocations until exit; they are not
 * ours, so LeakSanitizer is told to ignore them. Their libraries have no frame pointers,
 * so LeakSanitizer needs the slow unwinder to see that they made them. */
#ifndef TPLLM_SANITIZER_DEFAULTS_H
#define TPLLM_SANITIZER_DEFAULTS_H

const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) {
    return "leak:libmpi.so\nleak:libopen-pal.so\nleak:libopen-rte.so\nleak:libpmix.so\nleak:libhwloc.so\n"
           "leak:libevent\nleak:mca_\nleak:libcuda.so\nleak:libnccl.so\nleak:libcudart.so\n";
}
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "fast_unwind_on_malloc=0"; }

#endif
