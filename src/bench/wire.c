/*
 * echo-bench: the wire patterns, what is sent and how each reply is
 * checked, per service (echo, upper, rpc).  A new protocol (or a second
 * byte order for rpc) is one more entry in bench_protos[].
 */
#include "config.h"

#include "bench.h"

/*
 * What the bench speaks.  Each direction is a tape: a byte string that
 * repeats every PERIOD bytes, followed by a copy of its first BENCH_WINDOW
 * bytes so that any window of up to that many bytes is contiguous.  A
 * connection sends its request tape from an offset of its own and checks
 * what comes back against its reply tape from the matching offset, so
 * neither sending nor checking copies or parses anything.  echo and upper
 * are byte streams: both tapes are the pattern, a unit is one byte, the
 * hello is one byte and the reply is as long as the request.  rpc is
 * framed: a unit is one whole frame, on each tape, and the frames on the
 * two tapes differ in length.  The loops below only count bytes.
 */
struct bench_wire bench_wire;
uint8_t *bench_pat;


static void
proto_stream_init(struct bench_wire *w, const uint8_t *pat)
{
	w->tx = w->rx = pat;
	w->unit_tx = w->unit_rx = 1;
	w->units = BENCH_PATLEN;
	w->msg_tx = w->msg_rx = opt.size;
	w->hello_tx = w->hello_rx = 1;
}

static int
proto_echo_check(const uint8_t *want, const uint8_t *buf, size_t len)
{
	return memcmp(want, buf, len) == 0;
}

static int
proto_upper_check(const uint8_t *want, const uint8_t *buf, size_t len)
{
	size_t i;
	uint8_t c;

	for (i = 0; i < len; i++) {
		c = want[i];
		if (c >= 'a' && c <= 'z')
			c -= 'a' - 'A';
		if (buf[i] != c)
			return 0;
	}
	return 1;
}

/*
 * rpc (svc-rpc.c): a frame is a 4-byte length and compact JSON; rpc-le
 * sends the length little-endian, as the documents' client.py does, and
 * the server answers in the order of the first frame.
 * The payload is a JSON string of letters and digits taken from the
 * pattern, so it needs no escaping and the server prints it back as is;
 * the envelopes are the exact text svc-rpc.c prints (keys in this order,
 * no spaces).  BENCH_RPC_FRAMES different frames, a prime number, so
 * neighbouring messages differ and a swapped or repeated answer shows.
 */
#define BENCH_RPC_FRAMES 31
#define BENCH_RPC_REQ_HEAD	"{\"in\":\"ping\",\"params\":\""
#define BENCH_RPC_REP_HEAD	"{\"out\":\"pong\",\"result\":\""
#define BENCH_RPC_TAIL		"\"}"

static uint8_t *
rpc_tape(const uint8_t *pat, size_t plen, const char *head, size_t *unit,
    int le)
{
	static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "abcdefghijklmnopqrstuvwxyz0123456789";
	size_t hlen = strlen(head), tlen = strlen(BENCH_RPC_TAIL);
	size_t body = hlen + plen + tlen, period, i, k;
	uint8_t *tape, *f;

	*unit = 4 + body;
	period = BENCH_RPC_FRAMES * *unit;
	if ((tape = malloc(period + BENCH_WINDOW)) == NULL)
		abort();
	for (k = 0; k < BENCH_RPC_FRAMES; k++) {
		f = tape + k * *unit;
		for (i = 0; i < 4; i++)
			f[le ? i : 3 - i] = (uint8_t)(body >> (8 * i));
		memcpy(f + 4, head, hlen);
		for (i = 0; i < plen; i++)
			f[4 + hlen + i] = alnum[pat[(k * plen + i) %
			    BENCH_PATLEN] % (sizeof(alnum) - 1)];
		memcpy(f + 4 + hlen + plen, BENCH_RPC_TAIL, tlen);
	}
	for (i = period; i < period + BENCH_WINDOW; i++)
		tape[i] = tape[i - period];
	return tape;
}

/* The request frame is opt.size bytes, or as small as one payload byte. */
static void
proto_rpc_order_init(struct bench_wire *w, const uint8_t *pat, int le)
{
	size_t over = 4 + strlen(BENCH_RPC_REQ_HEAD) + strlen(BENCH_RPC_TAIL);
	size_t plen = opt.size > over ? opt.size - over : 1;

	/*
	 * The auto rule's blind spot (svc-rpc.c): a little-endian length
	 * that fits when read big-endian too is taken as big-endian.
	 */
	if (le && (over - 4 + plen) % 256 == 0) {
		fprintf(stderr, "echo-bench: -S rpc-le -s %zu: a body of %zu "
		    "bytes, a multiple of 256, reads big-endian to a server "
		    "that tells the orders apart; take another size, or run "
		    "the server with --rpc-order le\n", opt.size, over - 4 + plen);
		exit(BENCH_EX_USAGE);
	}
	w->tx = rpc_tape(pat, plen, BENCH_RPC_REQ_HEAD, &w->unit_tx, le);
	w->rx = rpc_tape(pat, plen, BENCH_RPC_REP_HEAD, &w->unit_rx, le);
	w->units = BENCH_RPC_FRAMES;
	w->msg_tx = w->hello_tx = w->unit_tx;
	w->msg_rx = w->hello_rx = w->unit_rx;
}

static void
proto_rpc_init(struct bench_wire *w, const uint8_t *pat)
{
	proto_rpc_order_init(w, pat, 0);
}

static void
proto_rpc_le_init(struct bench_wire *w, const uint8_t *pat)
{
	proto_rpc_order_init(w, pat, 1);
}

static const struct bench_proto bench_protos[] = {
	{ "echo", proto_stream_init, proto_echo_check },
	{ "upper", proto_stream_init, proto_upper_check },
	{ "rpc", proto_rpc_init, proto_echo_check },
	{ "rpc-le", proto_rpc_le_init, proto_echo_check },
	/* --fanout checks its chat lines itself (fanout.c). */
	{ "chat", proto_stream_init, proto_echo_check },
	{ NULL, NULL, NULL }
};


void
wire_pattern_init(void)
{
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	size_t i;

	if ((bench_pat = malloc(BENCH_PATLEN + BENCH_WINDOW)) == NULL)
		abort();
	for (i = 0; i < BENCH_PATLEN; i++) {
		x ^= x << 13;		/* xorshift64: cheap, and not periodic */
		x ^= x >> 7;		/* at any length we care about */
		x ^= x << 17;
		bench_pat[i] = (uint8_t)(x >> 24);
	}
	/* The window is longer than the pattern: copy forwards, byte by byte. */
	for (i = BENCH_PATLEN; i < BENCH_PATLEN + BENCH_WINDOW; i++)
		bench_pat[i] = bench_pat[i - BENCH_PATLEN];
}


const struct bench_proto *
wire_proto(const char *name)
{
	int i;

	for (i = 0; bench_protos[i].name; i++)
		if (strcmp(bench_protos[i].name, name) == 0)
			return &bench_protos[i];
	return NULL;
}
