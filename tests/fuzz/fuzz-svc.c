/*
 * fuzz-svc — drive a service (src/service.h) the way a model does, from
 * fuzzer input, and check that its output does not depend on how TCP cut
 * the input.
 *
 * An input is three bytes of settings, then the byte stream a client sends:
 *	byte 0		the limits: --max-frame and --max-line, small ones
 *			so that the fuzzer reaches them
 *	bytes 1-2	the seed of the cuts, and their size
 * The stream is fed whole, then cut at pseudo-random points, then one byte
 * at a time (when short); open and close run as in a model, and feeding
 * stops at the first negative return (the model closes there).  Each run's
 * output to the client (reply) and to the room (broadcast) must be the
 * same bytes, and the return the same; otherwise abort(), which libFuzzer
 * and AFL++ report as a crash.  ASan and LSan (libFuzzer's default) catch
 * the memory errors and the leaks.
 *
 * Built two ways (Makefile.am):
 *   - tests/fuzz/fuzz-rpc, fuzz-chat: libFuzzer harnesses, with
 *     ./configure --enable-fuzzing (clang); tests/fuzz/run runs them;
 *   - tests/fuzz/fuzz-rpc-replay, fuzz-chat-replay (FUZZ_STANDALONE): a
 *     main() that runs the files and directories given, or standard input,
 *     through the same checks.  `make check` replays the seed corpus with
 *     it (FUZZ_SVC_DUMP=1 in the environment prints the output); for
 *     AFL++, build it with afl-clang-fast and read stdin:
 *	CC=afl-clang-fast ./configure && make tests/fuzz/fuzz-rpc-replay
 *	afl-fuzz -i tests/fuzz/corpus-rpc -o out -- tests/fuzz/fuzz-rpc-replay
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"
#include "fuzz-svc.h"

#define BYTEWISE_MAX	4096	/* feed one byte at a time up to this size */

struct rec {
	uint8_t	*p;
	size_t	 len, cap;
};

struct run {
	struct rec	 reply, bcast;
	int		 rc;
};

static void
rec_add(struct rec *r, const void *buf, size_t len)
{
	size_t cap = r->cap ? r->cap : 256;

	while (cap < r->len + len)
		cap *= 2;
	if (cap != r->cap) {
		r->p = realloc(r->p, cap);
		if (r->p == NULL)
			abort();
		r->cap = cap;
	}
	if (len > 0)
		memcpy(r->p + r->len, buf, len);
	r->len += len;
}

static int
sink_reply(struct svc_sink *sink, const void *buf, size_t len)
{
	struct run *run = sink->conn;

	rec_add(&run->reply, buf, len);
	return 0;
}

static int
sink_broadcast(struct svc_sink *sink, const void *buf, size_t len)
{
	struct run *run = sink->conn;

	rec_add(&run->bcast, buf, len);
	return 0;
}

/* xorshift32: the cuts must be the same at every replay of an input. */
static uint32_t
next(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

/*
 * MODE 0: whole; 1: cut pseudo-randomly (SEED, pieces of 1 to MAXCUT
 * bytes); 2: byte by byte.  RUN gets the output and the first negative
 * return of open or input (0 if none).
 */
static void
drive(const struct svc *s, const struct svc_config *cfg, const uint8_t *data,
    size_t size, int mode, uint32_t seed, size_t maxcut, struct run *run)
{
	struct svc_sink sink = {
		.reply = sink_reply,
		.broadcast = sink_broadcast,
		.conn = run,
		.peer = "192.0.2.1:40000",
	};
	void *state = NULL;
	size_t off = 0, n;
	int rc;

	memset(run, 0, sizeof(*run));
	if (s->state_size > 0 && (state = calloc(1, s->state_size)) == NULL)
		abort();
	rc = svc_open(s, cfg, state, &sink);
	while (rc >= 0 && off < size) {
		if (mode == 0)
			n = size;
		else if (mode == 2)
			n = 1;
		else
			n = 1 + next(&seed) % maxcut;
		if (n > size - off)
			n = size - off;
		rc = svc_input(s, cfg, state, data + off, n, &sink);
		off += n;
	}
	svc_close(s, cfg, state, &sink);
	free(state);
	run->rc = rc < 0 ? rc : 0;
}

static void
run_free(struct run *r)
{
	free(r->reply.p);
	free(r->bcast.p);
}

static int
rec_eq(const struct rec *a, const struct rec *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

static void
same(const char *what, const struct run *a, const struct run *b)
{
	if (rec_eq(&a->reply, &b->reply) && rec_eq(&a->bcast, &b->bcast) &&
	    a->rc == b->rc)
		return;
	fprintf(stderr, "fuzz-svc: the %s run differs from the whole run: "
	    "reply %zu vs %zu bytes, broadcast %zu vs %zu bytes, return %d vs %d\n",
	    what, b->reply.len, a->reply.len, b->bcast.len, a->bcast.len,
	    b->rc, a->rc);
	abort();
}

int
fuzz_svc(const char *name, const uint8_t *data, size_t size,
    fuzz_check_fn *check)
{
	static const size_t frames[] = { 16, 64, 1024, SVC_DEFAULT_MAX_FRAME };
	static const size_t lines[] = { 1, 8, 64, SVC_DEFAULT_MAX_LINE };
	const struct svc *s = svc_find(name);
	struct svc_config cfg;
	struct run whole, cut;
	uint32_t seed;
	size_t maxcut;

	if (s == NULL)
		abort();
	if (size < 3)
		return 0;
	svc_config_default(&cfg);
	cfg.max_frame = frames[data[0] & 3];
	cfg.max_line = lines[(data[0] >> 2) & 3];
	maxcut = (data[0] & 0x10) ? 4096 : 16;
	seed = ((uint32_t)data[1] << 8 | data[2]) * 2654435761u | 1;
	data += 3;
	size -= 3;

	drive(s, &cfg, data, size, 0, 0, 0, &whole);
#ifdef FUZZ_STANDALONE
	if (getenv("FUZZ_SVC_DUMP")) {
		/* To read what a service said: the replies, then the room. */
		fwrite(whole.reply.p, 1, whole.reply.len, stdout);
		printf("\n-- broadcast --\n");
		fwrite(whole.bcast.p, 1, whole.bcast.len, stdout);
		printf("\n-- return %d --\n", whole.rc);
	}
#endif
	if (check)
		check(whole.reply.p, whole.reply.len, whole.bcast.p,
		    whole.bcast.len);
	drive(s, &cfg, data, size, 1, seed, maxcut, &cut);
	same("cut", &whole, &cut);
	run_free(&cut);
	if (size <= BYTEWISE_MAX) {
		drive(s, &cfg, data, size, 2, 0, 0, &cut);
		same("byte-by-byte", &whole, &cut);
		run_free(&cut);
	}
	run_free(&whole);
	return 0;
}

#ifdef FUZZ_STANDALONE
/*
 * Without libFuzzer: run each file (or each file of each directory) given,
 * or standard input, once.  A failing input aborts, as under the fuzzer.
 */
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>

static int
run_stream(FILE *f, const char *what)
{
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0, n;

	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 65536;
			if ((buf = realloc(buf, cap)) == NULL)
				abort();
		}
		n = fread(buf + len, 1, cap - len, f);
		if (n == 0)
			break;
		len += n;
	}
	if (ferror(f)) {
		fprintf(stderr, "%s: read error\n", what);
		free(buf);
		return 1;
	}
	LLVMFuzzerTestOneInput(buf, len);
	free(buf);
	return 0;
}

static int
run_path(const char *path, int *count)
{
	char sub[4096];
	struct dirent *d;
	struct stat st;
	FILE *f;
	DIR *dir;
	int bad = 0;

	if (stat(path, &st) < 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return 1;
	}
	if (S_ISDIR(st.st_mode)) {
		if ((dir = opendir(path)) == NULL) {
			fprintf(stderr, "%s: %s\n", path, strerror(errno));
			return 1;
		}
		while ((d = readdir(dir)) != NULL) {
			if (d->d_name[0] == '.')
				continue;
			snprintf(sub, sizeof(sub), "%s/%s", path, d->d_name);
			bad |= run_path(sub, count);
		}
		closedir(dir);
		return bad;
	}
	if ((f = fopen(path, "rb")) == NULL) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return 1;
	}
	bad = run_stream(f, path);
	fclose(f);
	(*count)++;
	return bad;
}

int
main(int argc, char **argv)
{
	int i, bad = 0, count = 0;

	if (argc < 2)
		return run_stream(stdin, "stdin");
	for (i = 1; i < argc; i++)
		bad |= run_path(argv[i], &count);
	fprintf(stderr, "%s: %d input%s replayed%s\n", argv[0], count,
	    count == 1 ? "" : "s", bad ? ", with errors" : "");
	return bad;
}
#endif
