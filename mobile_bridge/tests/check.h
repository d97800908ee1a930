/* Assertions shared by the C test's files: count failures, keep going, print the library's error. */
#ifndef MCV_TEST_CHECK_H
#define MCV_TEST_CHECK_H
#include <stdio.h>

#include "minicpmv_edge.h"

extern int failures;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
                    mcv_last_error());                                           \
            failures++;                                                          \
        }                                                                        \
    } while (0)
#define CHECK_RC(expr, want)                                                     \
    do {                                                                         \
        int rc_ = (expr);                                                        \
        if (rc_ != (want)) {                                                     \
            fprintf(stderr, "FAIL %s:%d: %s = %d (%s), want %d; error: %s\n", __FILE__, __LINE__, \
                    #expr, rc_, mcv_status_string(rc_), (want), mcv_last_error()); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

/* prefill_test.c; quick: only what the arm64 run under qemu compares (see bridge_test.c) */
void test_prefill(mcv_model *m, const char *image, const char *family, int quick);
#endif
