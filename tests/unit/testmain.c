/* testmain.c - the main of every Criterion unit test but the CUDA ones (which have
 * their own): Criterion's runner, except that an executable whose tests were all
 * skipped (their input is missing: no model, no AVX-512, no SIMDe) exits 77, which
 * CTest reports as "Skipped" (SKIP_RETURN_CODE 77), never as "Passed". An executable
 * with some tests passed and some skipped passes; Criterion's summary lists the skips. */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <stdio.h>

/* Filled by the report hook, which Criterion calls in this (the runner) process. */
static size_t tm_total, tm_skipped, tm_failed;

ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
    tm_total = stats->nb_tests;
    tm_skipped = stats->tests_skipped;
    tm_failed = stats->tests_failed + stats->tests_crashed;
}

int main(int argc, char *argv[]) {
    struct criterion_test_set *tests = criterion_initialize();
    int rc = 0;
    if (criterion_handle_args(argc, argv, true)) rc = !criterion_run_all_tests(tests);
    criterion_finalize(tests);
    if (rc == 0 && tm_failed == 0 && tm_total > 0 && tm_skipped == tm_total) {
        fprintf(stderr, "every test of this executable was skipped (its input is missing): exit 77\n");
        return 77;
    }
    return rc;
}
