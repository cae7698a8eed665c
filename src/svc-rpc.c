/*
 * rpc — the documents' ping RPC (-s rpc).
 *
 * A frame is a 4-byte length and that many bytes of JSON.  {"in":"ping","params":P} is answered {"out":"pong","result":P};
 * any other method with {"out":"error","result":"unknown method: NAME"}, a
 * request that is not JSON (or not a request) with an error whose result
 * says why, and the connection goes on.  A length above --max-frame is
 * answered with an error and the connection is closed: the rest of the
 * stream can no longer be trusted to be framed.
 *
 * Byte order.  Our clients send the length in network order (big-endian);
 * the documents' client packs it with struct.pack("I"), the machine's own
 * order: little-endian on x86-64 and aarch64.  So each connection's order
 * is decided by its first frame and kept for the rest of it, answers
 * included (--rpc-order auto, the default): the length is big-endian,
 * unless its big-endian reading exceeds --max-frame while its
 * little-endian reading fits, and then it is little-endian.  A real length
 * is small, so its high bytes are zero: read the wrong way round, it
 * becomes huge.  The one ambiguity: a length that fits both ways is taken
 * as big-endian, so a little-endian client whose first frame's length is
 * a multiple of 256 (0 included) whose byte-swapped value also fits (256
 * reads as 65,536) is misread; it gets no answer to that frame, or an
 * error and a close.  Its mirror: a big-endian first length past the
 * limit whose little-endian reading fits (0xC0000000, 3 GB, reads 192) is
 * taken as little-endian; nothing large is allocated either way, but that
 * client gets an answer it cannot read instead of "too large".
 * --rpc-order be or le fixes the order instead.  A first length too large
 * both ways is answered in big-endian.
 *
 * JSON is parsed and printed by jansson.  P comes back as the same JSON
 * value: strings (with \u0000 and any Unicode), integers that fit in 64
 * bits, reals as the same IEEE double (printed with 17 significant digits:
 * 0.1 comes back as 0.10000000000000001, which reads back as 0.1), objects
 * with their keys in order.  What cannot come back unchanged is refused
 * with an error, never altered: integers beyond 64 bits, reals beyond a
 * double's range (too large, or too small and not zero: 1e-400),
 * duplicate keys, invalid UTF-8 or lone surrogates.  One alteration is
 * kept, as it is no change of value: JSON integers are 64-bit integers,
 * which have no negative zero, so -0 comes back as 0 (the real -0.0
 * keeps its sign).
 *
 * Pitfalls:
 *   - a length field is a promise, not a fact: "3 GB follow" must not
 *     allocate 3 GB, so a frame's buffer grows only as its bytes arrive
 *     (and only for a frame cut by TCP: a frame whole in one read is
 *     parsed where it lies);
 *   - jansson parses and prints recursively: 500 nested brackets overflow
 *     a 128 KiB thread stack (echo-thread's default), so nesting deeper
 *     than RPC_MAX_DEPTH is refused before jansson sees it;
 *   - many frames in one read: the answers are gathered and sent with one
 *     reply call, not one write(2) per frame;
 *   - frames cut anywhere give the same output (tests/fuzz/fuzz-rpc.c).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "service.h"

#define RPC_MAX_DEPTH	64	/* nesting of [ and {, the request included */
#define RPC_OUT_STACK	8192	/* answers gathered on the stack per input */
#define RPC_BODY_MIN	256	/* first allocation for a frame cut by TCP */

/*
 * JSON_DECODE_ANY so that a request that is valid JSON but not an object
 * gets a precise error; JSON_ALLOW_NUL so that "\u0000" comes back;
 * JSON_REJECT_DUPLICATES because jansson would keep only the last of
 * duplicate keys, and a changed value must not come back as an echo.
 */
#define RPC_DECODE	(JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES)
#define RPC_ENCODE	(JSON_COMPACT | JSON_ENCODE_ANY)

struct rpc {
	uint8_t	 hdr[4];
	uint8_t	 nhdr;		/* header bytes received */
	uint8_t	 failed;	/* answered a fatal error: ignore the rest */
	uint8_t	 order;		/* SVC_ORDER_BE or _LE once decided */
	uint32_t need;		/* body length, once nhdr == 4 */
	uint8_t	*body;		/* a frame cut by TCP, or NULL */
	size_t	 got, cap;
};

/* Answers gathered during one input call. */
struct rpc_out {
	struct svc_sink	*sink;
	uint8_t		*buf;
	size_t		 len, cap;
	int		 err;
	int		 le;		/* lengths in little-endian */
};

static void
put_len(uint8_t *p, uint32_t v, int le)
{
	int i;

	for (i = 0; i < 4; i++)
		p[le ? i : 3 - i] = (uint8_t)(v >> (8 * i));
}

static void
out_flush(struct rpc_out *o)
{
	int r;

	if (o->len > 0 && o->err == 0 &&
	    (r = o->sink->reply(o->sink, o->buf, o->len)) < 0)
		o->err = r;
	o->len = 0;
}

/*
 * Print one answer, HEAD + RESULT + "}", after its length, at P (which has
 * ROOM bytes).  Returns the frame's size: larger than ROOM, nothing useful
 * was written and that much room is needed; 0, jansson failed.
 */
static size_t
frame_at(uint8_t *p, size_t room, const char *head, const json_t *result,
    int le)
{
	size_t hlen = strlen(head), n, body;

	if (room < 4 + hlen + 1) {
		n = json_dumpb(result, NULL, 0, RPC_ENCODE);
		return n == 0 ? 0 : 4 + hlen + n + 1;
	}
	n = json_dumpb(result, (char *)p + 4 + hlen, room - 4 - hlen - 1,
	    RPC_ENCODE);
	if (n == 0)
		return 0;
	body = hlen + n + 1;
	if (4 + body > room)
		return 4 + body;
	memcpy(p + 4, head, hlen);
	p[4 + body - 1] = '}';
	put_len(p, (uint32_t)body, le);
	return 4 + body;
}

static void out_error(struct rpc_out *, const char *);

/*
 * Append an answer.  The envelope is fixed text; only RESULT goes through
 * jansson, printed straight into the gathering buffer when it fits, or
 * into a buffer of its own when it is larger than that.
 */
static void
out_answer(struct rpc_out *o, const char *out, const json_t *result)
{
	char head[32];
	uint8_t *big;
	size_t n;

	if (o->err)
		return;
	snprintf(head, sizeof(head), "{\"out\":\"%s\",\"result\":", out);
	n = frame_at(o->buf + o->len, o->cap - o->len, head, result, o->le);
	if (n > 0 && n <= o->cap - o->len) {
		o->len += n;
		return;
	}
	if (n == 0 || n - 4 > UINT32_MAX) {
		/* jansson ran out of memory, or no length field can say it. */
		if (strcmp(out, "error") != 0)
			out_error(o, "cannot encode the answer");
		else
			o->err = -ENOMEM;
		return;
	}
	out_flush(o);
	if (n <= o->cap) {
		o->len = frame_at(o->buf, o->cap, head, result, o->le);
		return;
	}
	if ((big = malloc(n)) == NULL) {
		o->err = -ENOMEM;
		return;
	}
	if (frame_at(big, n, head, result, o->le) == n && o->err == 0)
		o->err = o->sink->reply(o->sink, big, n);
	free(big);
}

static void
out_error(struct rpc_out *o, const char *msg)
{
	json_t *s = json_string(msg);

	if (s == NULL) {
		o->err = -ENOMEM;
		return;
	}
	out_answer(o, "error", s);
	json_decref(s);
}

/*
 * jansson's messages quote the offending input ("invalid token near
 * '\xff...'"): keep them printable ASCII, so that the error is valid JSON.
 */
static void
out_parse_error(struct rpc_out *o, const json_error_t *e)
{
	char msg[256];
	char *p;

	snprintf(msg, sizeof(msg), "malformed JSON: %s at byte %d", e->text,
	    e->position);
	for (p = msg; *p; p++)
		if ((unsigned char)*p < ' ' || (unsigned char)*p > '~')
			*p = '?';
	out_error(o, msg);
}

/* "unknown method: NAME", NAME as sent (valid UTF-8, maybe with NULs). */
static void
out_unknown(struct rpc_out *o, const json_t *in)
{
	static const char pre[] = "unknown method: ";
	size_t n = json_string_length(in);
	json_t *s;
	char *msg;

	if ((msg = malloc(sizeof(pre) - 1 + n)) == NULL) {
		o->err = -ENOMEM;
		return;
	}
	memcpy(msg, pre, sizeof(pre) - 1);
	memcpy(msg + sizeof(pre) - 1, json_string_value(in), n);
	s = json_stringn(msg, sizeof(pre) - 1 + n);
	free(msg);
	if (s == NULL) {
		o->err = -ENOMEM;
		return;
	}
	out_answer(o, "error", s);
	json_decref(s);
}

/*
 * Nesting depth, counted outside strings.  Only a guard for the stack:
 * whatever it lets through (valid or not) is jansson's to judge.
 */
static int
too_deep(const uint8_t *p, size_t n)
{
	int depth = 0, instr = 0, esc = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		if (instr) {
			if (esc)
				esc = 0;
			else if (p[i] == '\\')
				esc = 1;
			else if (p[i] == '"')
				instr = 0;
		} else if (p[i] == '"')
			instr = 1;
		else if (p[i] == '[' || p[i] == '{') {
			if (++depth > RPC_MAX_DEPTH)
				return 1;
		} else if (p[i] == ']' || p[i] == '}')
			depth--;
	}
	return 0;
}

/*
 * A real whose digits are not all zero but which strtod() (and so
 * jansson) rounds to 0: 1e-400 would come back as 0.0, an altered value.
 * jansson refuses only overflow, so underflow is looked for here, in the
 * number tokens outside strings.
 */
static int
real_underflows(const uint8_t *p, size_t n)
{
	char small[64], *tok;
	size_t i = 0, j, k;
	int instr = 0, esc = 0, real, nonzero, under;
	double v;

	while (i < n) {
		if (instr) {
			if (esc)
				esc = 0;
			else if (p[i] == '\\')
				esc = 1;
			else if (p[i] == '"')
				instr = 0;
			i++;
			continue;
		}
		if (p[i] == '"') {
			instr = 1;
			i++;
			continue;
		}
		if (p[i] != '-' && (p[i] < '0' || p[i] > '9')) {
			i++;
			continue;
		}
		real = nonzero = 0;
		for (j = i; j < n && (strchr("0123456789+-.eE", p[j]) != NULL &&
		    p[j] != '\0'); j++) {
			if (p[j] == '.' || p[j] == 'e' || p[j] == 'E')
				real |= p[j] != '.' ? 2 : 1;
			else if (p[j] >= '1' && p[j] <= '9' && !(real & 2))
				nonzero = 1;
		}
		if (real && nonzero) {
			k = j - i;
			tok = k < sizeof(small) ? small : malloc(k + 1);
			if (tok == NULL)
				return 0;	/* jansson will say it */
			memcpy(tok, p + i, k);
			tok[k] = '\0';
			v = strtod(tok, NULL);
			under = v == 0.0;
			if (tok != small)
				free(tok);
			if (under)
				return 1;
		}
		i = j;
	}
	return 0;
}

static void
serve_frame(const uint8_t *body, size_t len, struct rpc_out *o)
{
	json_error_t e;
	json_t *req, *in, *params;
	char msg[64];

	if (too_deep(body, len)) {
		snprintf(msg, sizeof(msg), "request nested deeper than %d levels",
		    RPC_MAX_DEPTH);
		out_error(o, msg);
		return;
	}
	if (real_underflows(body, len)) {
		out_error(o, "real number too small for a double: it would "
		    "come back as 0");
		return;
	}
	if ((req = json_loadb((const char *)body, len, RPC_DECODE, &e)) == NULL) {
		out_parse_error(o, &e);
		return;
	}
	in = json_object_get(req, "in");
	if (!json_is_object(req))
		out_error(o, "bad request: not a JSON object");
	else if (!json_is_string(in))
		out_error(o, "bad request: no \"in\" string");
	else if (json_string_length(in) == 4 &&
	    memcmp(json_string_value(in), "ping", 4) == 0) {
		/* No params is a null one. */
		params = json_object_get(req, "params");
		if (params == NULL)
			params = json_null();
		out_answer(o, "pong", params);
	} else
		out_unknown(o, in);
	json_decref(req);
}

/* Room for N more bytes of a cut frame, never past the frame's length. */
static int
body_grow(struct rpc *st, size_t n)
{
	size_t cap = st->cap ? st->cap : RPC_BODY_MIN;
	uint8_t *p;

	while (cap < st->got + n)
		cap *= 2;
	if (cap > st->need)
		cap = st->need;
	if (cap <= st->cap)
		return 0;
	if ((p = realloc(st->body, cap)) == NULL)
		return -ENOMEM;
	st->body = p;
	st->cap = cap;
	return 0;
}

static void
body_free(struct rpc *st)
{
	free(st->body);
	st->body = NULL;
	st->got = st->cap = 0;
}

/* The header is complete: 0, or -EMSGSIZE after answering. */
static int
header_done(const struct svc_config *cfg, struct rpc *st, struct rpc_out *o)
{
	const uint8_t *h = st->hdr;
	uint32_t be = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 |
	    (uint32_t)h[2] << 8 | h[3];
	uint32_t le = (uint32_t)h[3] << 24 | (uint32_t)h[2] << 16 |
	    (uint32_t)h[1] << 8 | h[0];
	char msg[96];

	if (st->order == 0) {
		/* The first frame decides (see the top of the file). */
		if (cfg->rpc_order != SVC_ORDER_AUTO)
			st->order = (uint8_t)cfg->rpc_order;
		else if (be > cfg->max_frame && le <= cfg->max_frame)
			st->order = SVC_ORDER_LE;
		else
			st->order = SVC_ORDER_BE;
	}
	o->le = st->order == SVC_ORDER_LE;
	st->need = o->le ? le : be;
	st->got = 0;
	if (st->need <= cfg->max_frame)
		return 0;
	snprintf(msg, sizeof(msg), "frame too large: %lu bytes (max %zu)",
	    (unsigned long)st->need, cfg->max_frame);
	out_error(o, msg);
	st->failed = 1;
	return -EMSGSIZE;
}

static int
rpc_input(const struct svc_config *cfg, void *state, const uint8_t *buf,
    size_t len, struct svc_sink *sink)
{
	struct rpc *st = state;
	uint8_t stack[RPC_OUT_STACK];
	struct rpc_out o = { .sink = sink, .buf = stack, .cap = sizeof(stack),
	    .le = st->order == SVC_ORDER_LE };
	size_t n;
	int r = 0;

	if (st->failed)
		return -EMSGSIZE;
	while (len > 0 && o.err == 0 && r == 0) {
		if (st->nhdr < 4) {
			n = (size_t)(4 - st->nhdr);
			if (n > len)
				n = len;
			memcpy(st->hdr + st->nhdr, buf, n);
			st->nhdr += (uint8_t)n;
			buf += n;
			len -= n;
			if (st->nhdr < 4)
				break;
			if ((r = header_done(cfg, st, &o)) < 0)
				break;
			if (len == 0 && st->need > 0)
				break;	/* nothing allocated before a byte comes */
		}
		if (st->got == 0 && len >= st->need) {
			/* The whole body is here: parse it where it lies. */
			serve_frame(buf, st->need, &o);
			buf += st->need;
			len -= st->need;
			st->nhdr = 0;
			continue;
		}
		n = st->need - st->got < len ? st->need - st->got : len;
		if (body_grow(st, n) < 0) {
			o.err = -ENOMEM;
			break;
		}
		memcpy(st->body + st->got, buf, n);
		st->got += n;
		buf += n;
		len -= n;
		if (st->got == st->need) {
			serve_frame(st->body, st->need, &o);
			/* Idle connections hold no buffer. */
			body_free(st);
			st->nhdr = 0;
		}
	}
	out_flush(&o);
	return o.err ? o.err : r;
}

static void
rpc_close(const struct svc_config *cfg, void *state, struct svc_sink *sink)
{
	(void)cfg;
	(void)sink;
	body_free(state);
}

const struct svc svc_rpc = {
	.name = "rpc",
	.state_size = sizeof(struct rpc),
	.input = rpc_input,
	.close = rpc_close,
};
