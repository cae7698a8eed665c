/*
 * service — the protocols.  See service.h.
 *
 * echo and upper are stateless and byte-wise, so any split of the input
 * gives the same output for free; they are SVC_INPLACE, which lets a model
 * send the very buffer it received into.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "service.h"

static void
echo_transform(uint8_t *buf, size_t len)
{
	(void)buf;
	(void)len;
}

static int
echo_input(const struct svc_config *cfg, void *state, const uint8_t *buf,
    size_t len, struct svc_sink *sink)
{
	(void)cfg;
	(void)state;
	return sink->reply(sink, buf, len);
}

static const struct svc svc_echo = {
	.name = "echo",
	.flags = SVC_INPLACE,
	.transform = echo_transform,
	.input = echo_input,
};

static void
upper_transform(uint8_t *buf, size_t len)
{
	size_t i;

	/* ASCII only, not toupper(): the locale must not change the bytes. */
	for (i = 0; i < len; i++)
		if (buf[i] >= 'a' && buf[i] <= 'z')
			buf[i] -= 'a' - 'A';
}

static int
upper_input(const struct svc_config *cfg, void *state, const uint8_t *buf,
    size_t len, struct svc_sink *sink)
{
	uint8_t tmp[4096];
	size_t n;
	int r;

	(void)cfg;
	(void)state;
	while (len > 0) {
		n = len < sizeof(tmp) ? len : sizeof(tmp);
		memcpy(tmp, buf, n);
		upper_transform(tmp, n);
		if ((r = sink->reply(sink, tmp, n)) < 0)
			return r;
		buf += n;
		len -= n;
	}
	return 0;
}

static const struct svc svc_upper = {
	.name = "upper",
	.flags = SVC_INPLACE,
	.transform = upper_transform,
	.input = upper_input,
};

/* The applications live in files of their own (svc-chat.c, svc-rpc.c). */
extern const struct svc svc_chat, svc_rpc;

static const struct svc *const services[] = {
	&svc_echo,
	&svc_upper,
	&svc_chat,
	&svc_rpc,
};
#define NSERVICES	(sizeof(services) / sizeof(services[0]))

const struct svc *
svc_find(const char *name)
{
	size_t i;

	for (i = 0; i < NSERVICES; i++)
		if (strcmp(services[i]->name, name) == 0)
			return services[i];
	return NULL;
}

const char *
svc_names(void)
{
	static char buf[128];
	size_t i;

	if (buf[0] == '\0')
		for (i = 0; i < NSERVICES; i++) {
			if (i)
				strncat(buf, ", ", sizeof(buf) - strlen(buf) - 1);
			strncat(buf, services[i]->name, sizeof(buf) - strlen(buf) - 1);
		}
	return buf;
}

void
svc_config_default(struct svc_config *c)
{
	c->max_frame = SVC_DEFAULT_MAX_FRAME;
	c->max_line = SVC_DEFAULT_MAX_LINE;
	c->max_pending = SVC_DEFAULT_MAX_PENDING;
	c->rpc_order = SVC_ORDER_AUTO;
}

int
svc_open(const struct svc *s, const struct svc_config *c, void *state,
    struct svc_sink *sink)
{
	return s->open ? s->open(c, state, sink) : 0;
}

int
svc_input(const struct svc *s, const struct svc_config *c, void *state,
    const uint8_t *buf, size_t len, struct svc_sink *sink)
{
	return s->input(c, state, buf, len, sink);
}

void
svc_close(const struct svc *s, const struct svc_config *c, void *state,
    struct svc_sink *sink)
{
	if (s->close)
		s->close(c, state, sink);
}
