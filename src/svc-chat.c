/*
 * chat — a line-based chat room (-s chat).
 *
 * Every complete line a client sends goes to every other client as
 * "[NAME] line"; "/nick NAME" renames, and joins, renames and leaves are
 * announced as "* ..." lines.  Answers meant for the sender alone (the
 * welcome, errors) come back to it: "* ..." for notices, "! ..." for
 * errors.  Names hold no blank, so "[NAME] " is never ambiguous and no
 * client can forge a notice.
 *
 * Cost: a broadcast writes one line to every connection, O(clients) per
 * line, which is why only a model that holds every connection in one
 * process can serve it (SVC_NEEDS_BROADCAST); the model, not the service,
 * drops a recipient whose queued output passes --max-pending.
 *
 * Pitfalls:
 *   - a client may send a line without end: a line longer than --max-line
 *     is answered with an error the moment it passes the limit, and the
 *     rest of it is discarded as it arrives; nothing is buffered beyond
 *     the limit;
 *   - a line may be cut anywhere by TCP: only the tail of a read that holds
 *     no newline is buffered, in a buffer allocated when needed and freed
 *     when the line completes, so an idle client costs its name and nothing
 *     more;
 *   - the output must not depend on how the input was cut: the limit is
 *     checked at the same byte whatever the cut (tests/fuzz/fuzz-chat.c
 *     checks this).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

#define CHAT_NAME_MAX	64	/* with the NUL; a default name is an address */
#define CHAT_NICK_MAX	32	/* what /nick accepts */
#define CHAT_MSG_STACK	4352	/* messages up to this are built on the stack */
#define CHAT_LINE_MIN	256	/* first allocation of the partial-line buffer */

struct chat {
	char	 name[CHAT_NAME_MAX];
	uint8_t	*line;		/* a partial line, or NULL */
	size_t	 len, cap;
	unsigned discard : 1;	/* inside a line past the limit */
	unsigned joined : 1;	/* the room heard we came: announce leaving */
};


#define TO_SELF	0
#define TO_ALL	1

/* A message is built from parts: one copy, one reply or broadcast call. */
struct part {
	const void	*p;
	size_t		 n;
};

#define PART(p, n)	((struct part){ (p), (n) })
#define LIT(s)		PART((s), sizeof(s) - 1)
#define STR(s)		PART((s), strlen(s))
#define SAY(sink, to, ...)						\
	say((sink), (to), (const struct part[]){ __VA_ARGS__ },	\
	    sizeof((const struct part[]){ __VA_ARGS__ }) / sizeof(struct part))

/*
 * The parts and a newline as one message, so that each recipient gets the
 * line in one write (or one queue entry), never interleaved with another.
 */
static int
say(struct svc_sink *sink, int to, const struct part *v, size_t nv)
{
	uint8_t stack[CHAT_MSG_STACK], *p = stack, *q;
	size_t i, n = 1;
	int r;

	for (i = 0; i < nv; i++)
		n += v[i].n;
	if (n > sizeof(stack) && (p = malloc(n)) == NULL)
		return -ENOMEM;
	for (q = p, i = 0; i < nv; i++) {
		if (v[i].n > 0)
			memcpy(q, v[i].p, v[i].n);
		q += v[i].n;
	}
	*q = '\n';
	r = to == TO_ALL ? sink->broadcast(sink, p, n) : sink->reply(sink, p, n);
	if (p != stack)
		free(p);
	return r;
}

/*
 * No blank or control character, so "[NAME] text" splits at the first
 * "] "; not starting like a notice or an error line.
 */
static int
valid_nick(const uint8_t *s, size_t n)
{
	size_t i;

	if (n == 0 || n > CHAT_NICK_MAX || s[0] == '*' || s[0] == '!')
		return 0;
	for (i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] == 0x7f)
			return 0;
	return 1;
}

static int
cmd_nick(struct chat *st, const uint8_t *arg, size_t n, struct svc_sink *sink)
{
	char old[CHAT_NAME_MAX];
	int r;

	while (n > 0 && *arg == ' ') {
		arg++;
		n--;
	}
	if (!valid_nick(arg, n))
		return SAY(sink, TO_SELF, LIT("! usage: /nick NAME (1 to 32 "
		    "printable characters, no blank, not starting with * or !)"));
	memcpy(old, st->name, sizeof(old));
	memcpy(st->name, arg, n);
	st->name[n] = '\0';
	if ((r = SAY(sink, TO_SELF, LIT("* you are now "), STR(st->name))) < 0)
		return r;
	return SAY(sink, TO_ALL, LIT("* "), STR(old), LIT(" is now known as "),
	    STR(st->name));
}

static int
command(struct chat *st, const uint8_t *s, size_t n, struct svc_sink *sink)
{
	size_t w;
	int r;

	for (w = 1; w < n && s[w] != ' '; w++)
		;
	if (w == 5 && memcmp(s, "/nick", 5) == 0)
		return cmd_nick(st, s + w, n - w, sink);
	if (w == 5 && memcmp(s, "/quit", 5) == 0) {
		if ((r = SAY(sink, TO_SELF, LIT("* bye"))) < 0)
			return r;
		return -ECONNRESET;	/* close once the goodbye is sent */
	}
	if (w == 5 && memcmp(s, "/help", 5) == 0)
		return SAY(sink, TO_SELF, LIT("* /nick NAME: change your name; "
		    "/quit: leave; //text: send a line that starts with /"));
	return SAY(sink, TO_SELF, LIT("! unknown command: "), PART(s, w),
	    LIT(" (try /help)"));
}

static int
on_line(struct chat *st, const uint8_t *s, size_t n, struct svc_sink *sink)
{
	if (n > 0 && s[n - 1] == '\r')
		n--;		/* telnet and nc -C end lines with CRLF */
	if (n > 0 && s[0] == '/') {
		if (n < 2 || s[1] != '/')
			return command(st, s, n, sink);
		s++;		/* "//text" says "/text" */
		n--;
	}
	return SAY(sink, TO_ALL, LIT("["), STR(st->name), LIT("] "), PART(s, n));
}

static void
drop_line(struct chat *st)
{
	free(st->line);
	st->line = NULL;
	st->len = st->cap = 0;
}

/* The caller made sure that the line stays within max_line. */
static int
append(struct chat *st, const uint8_t *s, size_t n, size_t max)
{
	size_t cap = st->cap ? st->cap : CHAT_LINE_MIN;
	uint8_t *p;

	while (cap < st->len + n)
		cap *= 2;
	if (cap > max)
		cap = max;
	if (cap > st->cap) {
		if ((p = realloc(st->line, cap)) == NULL)
			return -ENOMEM;
		st->line = p;
		st->cap = cap;
	}
	memcpy(st->line + st->len, s, n);
	st->len += n;
	return 0;
}

static int
too_long(const struct svc_config *cfg, struct chat *st, struct svc_sink *sink)
{
	char lim[32];

	drop_line(st);
	snprintf(lim, sizeof(lim), "%zu", cfg->max_line);
	return SAY(sink, TO_SELF, LIT("! line too long (more than "), STR(lim),
	    LIT(" bytes): discarded"));
}

static int
chat_input(const struct svc_config *cfg, void *state, const uint8_t *buf,
    size_t len, struct svc_sink *sink)
{
	struct chat *st = state;
	const uint8_t *nl;
	size_t n;
	int r = 0;

	while (len > 0) {
		nl = memchr(buf, '\n', len);
		n = nl ? (size_t)(nl - buf) : len;
		if (st->discard)
			st->discard = nl == NULL;	/* a refused line goes on */
		else if (st->len + n > cfg->max_line) {
			/* Refused the moment it passes the limit, whatever the cut. */
			r = too_long(cfg, st, sink);
			st->discard = nl == NULL;
		} else if (nl == NULL)
			r = append(st, buf, n, cfg->max_line);
		else if (st->len == 0)
			r = on_line(st, buf, n, sink);	/* whole in this read */
		else if ((r = append(st, buf, n, cfg->max_line)) == 0) {
			r = on_line(st, st->line, st->len, sink);
			drop_line(st);
		}
		if (r < 0 || nl == NULL)
			return r;
		buf += n + 1;
		len -= n + 1;
	}
	return 0;
}

static int
chat_open(const struct svc_config *cfg, void *state, struct svc_sink *sink)
{
	struct chat *st = state;
	const char *peer = sink->peer && *sink->peer ? sink->peer : "anonymous";
	char *p;
	int r;

	(void)cfg;
	if (sink->broadcast == NULL)
		return -EOPNOTSUPP;
	/* The default name is the peer address, made a valid name. */
	snprintf(st->name, sizeof(st->name), "%s", peer);
	for (p = st->name; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			*p = '_';
	if ((r = SAY(sink, TO_SELF, LIT("* welcome, "), STR(st->name),
	    LIT(": /nick NAME changes your name, /help says more"))) < 0)
		return r;
	st->joined = 1;
	return SAY(sink, TO_ALL, LIT("* "), STR(st->name), LIT(" joined"));
}

static void
chat_close(const struct svc_config *cfg, void *state, struct svc_sink *sink)
{
	struct chat *st = state;

	(void)cfg;
	/* An unfinished last line is dropped: only complete lines are said. */
	if (st->joined)
		(void)SAY(sink, TO_ALL, LIT("* "), STR(st->name), LIT(" left"));
	st->joined = 0;
	drop_line(st);
}

const struct svc svc_chat = {
	.name = "chat",
	.flags = SVC_NEEDS_BROADCAST,
	.state_size = sizeof(struct chat),
	.open = chat_open,
	.input = chat_input,
	.close = chat_close,
};
