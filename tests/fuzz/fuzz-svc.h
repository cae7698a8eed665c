/*
 * The fuzzing driver shared by fuzz-rpc.c and fuzz-chat.c.  See fuzz-svc.c.
 */
#ifndef IOMODELS_FUZZ_SVC_H
#define IOMODELS_FUZZ_SVC_H

#include <stddef.h>
#include <stdint.h>

/* Check can be NULL: an extra look at the output of an unsplit run. */
typedef void fuzz_check_fn(const uint8_t *reply, size_t rlen,
    const uint8_t *bcast, size_t blen);

int	fuzz_svc(const char *service, const uint8_t *data, size_t size,
	    fuzz_check_fn *check);

int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
