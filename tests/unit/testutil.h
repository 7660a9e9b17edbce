/* testutil.h - shared helpers of the unit tests: where the test models are. */
#ifndef IC_TESTUTIL_H
#define IC_TESTUTIL_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* The real trained stories260K when ../shared/models has it, else NULL. */
static inline const char *test_stories_path(void)
{
    const char *p = getenv("IC_STORIES");
    return p && access(p, R_OK) == 0 ? p : NULL;
}

/* A generated tiny model of weight type t ("f32", "q4_0", ...). */
static inline const char *test_tiny_path(const char *t)
{
    static char buf[8][512];
    static int next;
    const char *dir = getenv("IC_TEST_MODELS");
    char *b = buf[next++ % 8];
    snprintf(b, 512, "%s/tiny-%s.gguf", dir ? dir : "test-models", t);
    return b;
}

/* The model for text tests: stories260K, else the tiny f32 model. */
static inline const char *test_model_path(void)
{
    const char *p = test_stories_path();
    return p ? p : test_tiny_path("f32");
}

#endif
