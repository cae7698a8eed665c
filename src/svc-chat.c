/*
 * chat — a chat room (-s chat), for line clients and the documents' JSON
 * clients in the same room.
 *
 * Every complete line a client sends goes to every other client as
 * "[NAME] line"; "/nick NAME" renames, and joins, renames and leaves are
 * announced as "* ..." lines.
 *
 * The documents' client (003, ChatClient) sends each message as a JSON
 * object, {"user": NAME, "text": TEXT}, with no newline or length after
 * it: the object delimits itself.  Its server sends "[user] text" to every
 * client, the sender included; so here a JSON message goes to everyone as
 * "[user] text\n", its sender included (the newline keeps line clients
 * whole), while a line goes to the others only, as before.  A message
 * whose first byte is "{" and whose next non-blank byte is '"' or "}" is a
 * JSON object; anything else is a line ("{hello" is a line).  The object
 * ends at the brace that closes it (brackets counted outside strings, so
 * the end is found at the same byte whatever the cuts; jansson then
 * decodes the whole object once); a raw newline inside one ends it as an
 * error, since json.dumps never writes one and an interactive user who
 * typed a stray "{" must not wait for a brace.  Blanks and newlines right
 * after an object are skipped: a client may end its objects with "\n".  Answers meant for the sender alone (the
 * welcome, errors) come back to it: "* ..." for notices, "! ..." for
 * errors.  Names hold no blank, so "[NAME] " is never ambiguous and no
 * client can forge a notice.  A name is a label, not an identity: a name
 * another client holds is not refused, since each JSON message names its
 * own user and the room could not stop a JSON client from taking it (a
 * uniqueness check would also need a room-wide table shared by threads
 * and rings, which this service, knowing only its own connection, lacks).
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

#include <jansson.h>

#include "service.h"

#define CHAT_NAME_MAX	64	/* with the NUL; a default name is an address */
#define CHAT_NICK_MAX	32	/* what /nick accepts */
#define CHAT_MSG_STACK	4352	/* messages up to this are built on the stack */
#define CHAT_LINE_MIN	256	/* first allocation of the partial-line buffer */
/*
 * jansson parses recursively: a thread's or a coroutine's small stack
 * must not meet 100,000 nested brackets.  Counted before jansson sees them.
 */
#define CHAT_JSON_DEPTH	32

/* What the message being received is. */
#define MSG_START	0	/* nothing of it yet */
#define MSG_SNIFF	1	/* "{" and blanks: JSON if '"' or '}' is next */
#define MSG_LINE	2	/* a line, up to its newline */
#define MSG_JSON	3	/* a JSON object, up to its closing brace */

struct chat {
	char	 name[CHAT_NAME_MAX];
	uint8_t	*line;		/* a partial message, or NULL */
	size_t	 len, cap;
	unsigned discard : 1;	/* inside a message past the limit or refused */
	unsigned joined : 1;	/* the room heard we came: announce leaving */
	unsigned mode : 2;	/* MSG_* */
	unsigned after_json : 1; /* skip blanks and newlines after an object */
	unsigned instr : 1;	/* JSON: inside a string */
	unsigned esc : 1;	/* JSON: after a backslash in a string */
	uint32_t depth;		/* JSON: open brackets (saturates) */
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
/*
 * The length of the UTF-8 sequence at S (of N bytes) if it is valid and
 * printable, else 0: no overlong form, no surrogate, nothing past
 * U+10FFFF, no C1 control (U+0080..U+009F, which terminals obey: "\xc2\x9b"
 * is the 8-bit CSI), no U+FEFF.  Blanks beyond ASCII are let through.
 */
static size_t
utf8_printable(const uint8_t *s, size_t n)
{
	uint32_t cp;
	size_t len, i;

	if (s[0] < 0x80)
		return s[0] > ' ' && s[0] != 0x7f;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
	    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ||
	    (cp >= 0x80 && cp <= 0x9f) || cp == 0xfeff)
		return 0;
	return len;
}

static int
valid_nick(const uint8_t *s, size_t n)
{
	size_t i, k;

	if (n == 0 || n > CHAT_NICK_MAX || s[0] == '*' || s[0] == '!')
		return 0;
	for (i = 0; i < n; i += k)
		if ((k = utf8_printable(s + i, n - i)) == 0)
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

/*
 * A line: its bytes up to the newline.  *USED is what was consumed; the
 * message ends (MSG_START) at its newline.
 */
static int
line_input(const struct svc_config *cfg, struct chat *st, const uint8_t *buf,
    size_t len, size_t *used, struct svc_sink *sink)
{
	const uint8_t *nl = memchr(buf, '\n', len);
	size_t n = nl ? (size_t)(nl - buf) : len;
	int r = 0, cr;

	*used = nl ? n + 1 : n;
	if (nl)
		st->mode = MSG_START;
	/*
	 * A CR that ends the line so far is not counted: it may be the CR
	 * of a CRLF (on_line() drops it).  If more than the LF follows, it
	 * counts then, so the limit still falls on the same byte whatever
	 * the cuts; the line buffer holds at most max_line + 1 bytes.
	 */
	cr = n > 0 ? buf[n - 1] == '\r' : st->len > 0 && st->line[st->len - 1] == '\r';
	if (st->discard)
		st->discard = nl == NULL;	/* a refused line goes on */
	else if (st->len + n - (size_t)cr > cfg->max_line) {
		/* Refused the moment it passes the limit, whatever the cut. */
		r = too_long(cfg, st, sink);
		st->discard = nl == NULL;
	} else if (nl == NULL)
		r = append(st, buf, n, cfg->max_line + 1);
	else if (st->len == 0)
		r = on_line(st, buf, n, sink);	/* whole in this read */
	else if ((r = append(st, buf, n, cfg->max_line + 1)) == 0) {
		r = on_line(st, st->line, st->len, sink);
		drop_line(st);
	}
	return r;
}

/* An error about a JSON message, to its sender. */
static int
json_refuse(const char *why, const char *detail, struct svc_sink *sink)
{
	char d[160];
	char *p;

	/* jansson quotes the input: keep the line printable. */
	snprintf(d, sizeof(d), "%s", detail ? detail : "");
	for (p = d; *p; p++)
		if ((unsigned char)*p < ' ' || (unsigned char)*p > '~')
			*p = '?';
	return SAY(sink, TO_SELF, LIT("! "), STR(why), STR(d));
}

/*
 * A whole object: {"user": NAME, "text": TEXT}, said as "[NAME] TEXT" to
 * everyone, the sender included (the documents' server does so).  NAME
 * follows the /nick rules and TEXT holds no control character, so that no
 * JSON client can forge a notice or break a line.
 */
static int
json_message(const uint8_t *p, size_t n, struct svc_sink *sink)
{
	json_error_t e;
	json_t *j, *user, *text;
	const char *t;
	size_t i, tn;
	int r;

	if ((j = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES,
	    &e)) == NULL)
		return json_refuse("invalid JSON message: ", e.text, sink);
	user = json_object_get(j, "user");
	text = json_object_get(j, "text");
	if (!json_is_string(user) || !json_is_string(text)) {
		json_decref(j);
		return json_refuse("a JSON message is {\"user\": NAME, "
		    "\"text\": TEXT}, both strings", NULL, sink);
	}
	if (!valid_nick((const uint8_t *)json_string_value(user),
	    json_string_length(user))) {
		json_decref(j);
		return json_refuse("bad \"user\" in a JSON message (1 to 32 "
		    "printable characters, no blank, not starting with * or !)",
		    NULL, sink);
	}
	t = json_string_value(text);
	tn = json_string_length(text);
	for (i = 0; i < tn; i++)
		if ((unsigned char)t[i] < ' ' || t[i] == 0x7f)
			break;
	if (i < tn) {
		json_decref(j);
		return json_refuse("the \"text\" of a JSON message holds a "
		    "control character", NULL, sink);
	}
	r = SAY(sink, TO_SELF, LIT("["), STR(json_string_value(user)),
	    LIT("] "), PART(t, tn));
	if (r == 0)
		r = SAY(sink, TO_ALL, LIT("["), STR(json_string_value(user)),
		    LIT("] "), PART(t, tn));
	json_decref(j);
	return r;
}

static int
json_too_long(const struct svc_config *cfg, struct chat *st,
    struct svc_sink *sink)
{
	char lim[32];

	drop_line(st);
	st->discard = 1;
	snprintf(lim, sizeof(lim), "%zu", cfg->max_line);
	return SAY(sink, TO_SELF, LIT("! JSON message too long (more than "),
	    STR(lim), LIT(" bytes): discarded"));
}

/*
 * A JSON object, byte by byte: brackets counted outside strings, so that
 * its end, the limit and the nesting guard fall on the same byte whatever
 * the cuts.  Only a whole object reaches jansson.
 */
static int
json_input(const struct svc_config *cfg, struct chat *st, const uint8_t *buf,
    size_t len, size_t *used, struct svc_sink *sink)
{
	size_t i;
	uint8_t c;
	int r = 0, end = 0;

	for (i = 0; i < len && r == 0 && !end; i++) {
		c = buf[i];
		if (c == '\n') {
			/* Never inside a compact object: the message ends. */
			if (!st->discard)
				r = json_refuse("invalid JSON message: a newline "
				    "before its closing brace", NULL, sink);
			st->mode = MSG_START;
			drop_line(st);
			st->discard = 0;
			*used = i + 1;
			return r;
		}
		/* Past the limit: refused, and its end still looked for. */
		if (!st->discard && st->len + i + 1 > cfg->max_line)
			r = json_too_long(cfg, st, sink);
		if (st->instr) {
			if (st->esc)
				st->esc = 0;
			else if (c == '\\')
				st->esc = 1;
			else if (c == '"')
				st->instr = 0;
		} else if (c == '"')
			st->instr = 1;
		else if (c == '{' || c == '[') {
			if (st->depth < UINT32_MAX)
				st->depth++;
			if (st->depth > CHAT_JSON_DEPTH && !st->discard) {
				drop_line(st);
				st->discard = 1;
				r = json_refuse("JSON message nested too deep",
				    NULL, sink);
			}
		} else if ((c == '}' || c == ']') && --st->depth == 0)
			end = 1;
	}
	*used = i;
	if (r < 0)
		return r;
	if (!end) {
		/* The object goes on in the next read. */
		return st->discard ? 0 : append(st, buf, i, cfg->max_line);
	}
	st->mode = MSG_START;
	st->after_json = 1;
	if (st->discard)
		st->discard = 0;
	else if (st->len == 0)
		r = json_message(buf, i, sink);	/* whole in this read */
	else if ((r = append(st, buf, i, cfg->max_line)) == 0)
		r = json_message(st->line, st->len, sink);
	drop_line(st);
	return r;
}

static int
chat_input(const struct svc_config *cfg, void *state, const uint8_t *buf,
    size_t len, struct svc_sink *sink)
{
	struct chat *st = state;
	size_t used;
	uint8_t c;
	int r = 0;

	while (len > 0 && r == 0) {
		c = *buf;
		used = 1;
		switch (st->mode) {
		case MSG_START:
			if (st->after_json && (c == ' ' || c == '\t' ||
			    c == '\r' || c == '\n'))
				break;
			st->after_json = 0;
			if (c != '{') {
				st->mode = MSG_LINE;
				used = 0;
				break;
			}
			st->mode = MSG_SNIFF;
			r = append(st, buf, 1, cfg->max_line);
			break;
		case MSG_SNIFF:
			if (c == '"' || c == '}') {
				st->mode = MSG_JSON;
				st->depth = 1;
				st->instr = st->esc = 0;
				used = 0;
			} else if ((c == ' ' || c == '\t') &&
			    st->len < cfg->max_line)
				r = append(st, buf, 1, cfg->max_line);
			else {
				/* Not an object: a line that starts with "{". */
				st->mode = MSG_LINE;
				used = 0;
			}
			break;
		case MSG_LINE:
			r = line_input(cfg, st, buf, len, &used, sink);
			break;
		case MSG_JSON:
			r = json_input(cfg, st, buf, len, &used, sink);
			break;
		}
		buf += used;
		len -= used;
	}
	return r;
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
