/*
 * echo-bench built without liburing: no io_uring engine (-E uring is a
 * usage error, -E auto means epoll).
 */
#include "config.h"

#include "bench.h"

const struct engine_ops *const bench_engine_uring = NULL;
