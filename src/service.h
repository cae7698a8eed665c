/*
 * service — the protocols, as code that consumes bytes and produces bytes.
 *
 * A service knows nothing of sockets or loops.  The model owns each
 * connection, hands the service whatever bytes arrived (split at any byte
 * boundary: the output must not depend on how the input was cut), and
 * gives it a sink through which the service emits bytes to this connection
 * or to every other one.
 *
 *	echo	bytes back unchanged
 *	upper	bytes back, ASCII letters upper-cased
 *	chat	broadcast room of lines and of the documents' unframed JSON
 *		messages (needs SRV_CAP_BROADCAST)
 *	rpc	4-byte length (either byte order, per connection) + JSON
 *		{"in":"ping","params":P} -> {"out":"pong","result":P}
 */
#ifndef IOMODELS_SERVICE_H
#define IOMODELS_SERVICE_H

#include <stddef.h>
#include <stdint.h>

/* Limits a service may enforce, from the command line. */
struct svc_config {
	size_t	max_frame;	/* rpc: largest frame body accepted */
	size_t	max_line;	/* chat: longest line accepted */
	size_t	max_pending;	/* chat: output a slow client may queue */
	int	rpc_order;	/* rpc: SVC_ORDER_*, --rpc-order */
};

/* The byte order of rpc's length fields (svc-rpc.c says how auto decides). */
#define SVC_ORDER_AUTO	0	/* per connection, from its first frame */
#define SVC_ORDER_BE	1	/* network order only */
#define SVC_ORDER_LE	2	/* little-endian only (struct.pack("<I")) */

#define SVC_DEFAULT_MAX_FRAME	(1024 * 1024)
#define SVC_DEFAULT_MAX_LINE	4096
#define SVC_DEFAULT_MAX_PENDING	(1024 * 1024)

/*
 * What the model gives the service for one connection.
 *
 * reply: queue LEN bytes to this connection, in order.  The bytes are
 *	copied or written before reply returns: BUF may be reused.
 * broadcast: queue LEN bytes to every other connection (NULL when the
 *	model cannot; services that need it say SVC_NEEDS_BROADCAST).
 * Both return 0 or -errno (-ENOMEM: the model could not queue).
 */
struct svc_sink {
	int	(*reply)(struct svc_sink *, const void *buf, size_t len);
	int	(*broadcast)(struct svc_sink *, const void *buf, size_t len);
	void	*conn;		/* the model's connection */
	void	*ctx;		/* the model's loop (or whatever it needs) */
	const char *peer;	/* peer address, for names and logs */
};

/* Service flags. */
#define SVC_INPLACE		0x1	/* output = transform(input), same length */
#define SVC_NEEDS_BROADCAST	0x2

struct svc {
	const char	*name;
	unsigned	 flags;
	size_t		 state_size;	/* per-connection state, 0 = none */

	/*
	 * SVC_INPLACE services: the model may skip input() and instead
	 * transform its own receive buffer in place and send it: this is
	 * how io_uring sends straight from the buffer it received into.
	 */
	void	(*transform)(uint8_t *buf, size_t len);

	/* STATE is state_size zeroed bytes (or NULL).  Returns 0 or -errno. */
	int	(*open)(const struct svc_config *, void *state, struct svc_sink *);

	/*
	 * Consume LEN bytes.  Returns 0 to go on, or < 0 to close the
	 * connection once what was queued has been sent (a protocol error
	 * the service has already answered, -EMSGSIZE, ...).
	 */
	int	(*input)(const struct svc_config *, void *state,
		    const uint8_t *buf, size_t len, struct svc_sink *);

	/* Peer gone (EOF, error, or shutdown).  May broadcast a goodbye. */
	void	(*close)(const struct svc_config *, void *state, struct svc_sink *);
};

/* The service named NAME, or NULL. */
const struct svc *svc_find(const char *name);

/* "echo, upper, chat, rpc": the names, for --help. */
const char *svc_names(void);

void	svc_config_default(struct svc_config *);

/* Convenience wrappers that tolerate NULL hooks. */
int	svc_open(const struct svc *, const struct svc_config *, void *state,
	    struct svc_sink *);
int	svc_input(const struct svc *, const struct svc_config *, void *state,
	    const uint8_t *buf, size_t len, struct svc_sink *);
void	svc_close(const struct svc *, const struct svc_config *, void *state,
	    struct svc_sink *);

#endif
