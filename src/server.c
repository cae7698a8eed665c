/*
 * server — the command line, signals, logging and listeners every server
 * binary shares.  See server.h.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

/*
 * Set from a signal handler, read by the loops of blocking models.  The one
 * piece of global mutable state the shared layer has: a signal handler
 * can reach nothing else.
 */
volatile sig_atomic_t srv_stop;

/* Long-only options of the shared command line. */
enum {
	OPT_HELP = 1000, OPT_VERSION, OPT_HIGHWATER, OPT_MAX_FRAME, OPT_MAX_LINE,
	OPT_MAX_PENDING, OPT_SNDBUF, OPT_RCVBUF, OPT_RPC_ORDER,
	OPT_MODEL_BASE = 2000,
};

static const struct {
	const char	*name;
	int		 has_arg;
	int		 key;
	const char	*argname;
	const char	*help;
} common_opts[] = {
	{ "listen",	1, 'l', "ADDR",	"address: 127.0.0.1 (default), [::1], 0.0.0.0, unix:/path; HOST:PORT also" },
	{ "port",	1, 'p', "PORT",	"TCP port, 0 for an ephemeral one (default 7007)" },
	{ "service",	1, 's', "NAME",	NULL },
	{ "workers",	1, 'w', "N",	NULL },
	{ "backlog",	1, 'b', "N",	"listen backlog (default 511)" },
	{ "max-conns",	1, 'm', "N",	"at most N connections at once (per worker with -w), 0 = no limit (default 0)" },
	{ "bufsize",	1, 'B', "BYTES","read buffer size (default 64k)" },
	{ "idle-timeout", 1, 't', "SECONDS", "close connections idle this long, 0 = never (default 0)" },
	{ "highwater",	1, OPT_HIGHWATER, "BYTES", "stop reading a connection with this much output pending (default 256k)" },
	{ "max-frame",	1, OPT_MAX_FRAME, "BYTES", "rpc: largest frame accepted (default 1m)" },
	{ "rpc-order",	1, OPT_RPC_ORDER, "ORDER", "rpc: length byte order, auto (per connection, default), be or le" },
	{ "max-line",	1, OPT_MAX_LINE, "BYTES", "chat: longest line accepted (default 4k)" },
	{ "max-pending", 1, OPT_MAX_PENDING, "BYTES", "chat: output a slow client may queue before it is dropped (default 1m)" },
	{ "sndbuf",	1, OPT_SNDBUF, "BYTES", "SO_SNDBUF of every connection (default: the kernel's)" },
	{ "rcvbuf",	1, OPT_RCVBUF, "BYTES", "SO_RCVBUF of every connection (default: the kernel's)" },
	{ "quiet",	0, 'q', NULL,	"log only errors" },
	{ "verbose",	0, 'v', NULL,	"log connections and internals" },
	{ "help",	0, OPT_HELP, NULL, "show this help and exit" },
	{ "version",	0, OPT_VERSION, NULL, "show the version and exit" },
};
#define NCOMMON	(sizeof(common_opts) / sizeof(common_opts[0]))

/*
 * -w above 1 on a model whose workers are processes or threads with
 * listeners and clients of their own (epoll, io_uring), not a pool.
 */
static int
separate_workers(const struct srv *s)
{
	return s->workers > 1 && !(s->model->caps & SRV_CAP_POOL);
}

static void
print_opt(FILE *f, int shortkey, const char *name, const char *argname,
    const char *help)
{
	char left[64];

	if (shortkey > 0 && shortkey < 256)
		snprintf(left, sizeof(left), "-%c, --%s%s%s", shortkey, name,
		    argname ? " " : "", argname ? argname : "");
	else
		snprintf(left, sizeof(left), "    --%s%s%s", name,
		    argname ? " " : "", argname ? argname : "");
	if (shortkey == 's')
		fprintf(f, "  %-28s service: %s (default echo)\n", left,
		    svc_names());
	else
		fprintf(f, "  %-28s %s\n", left, help ? help : "");
}

static void
usage(const struct srv *s, FILE *f)
{
	const struct srv_model *m = s->model;
	const struct srv_option *o;
	size_t i;

	/* -w only where the model has workers: the others refuse it (64). */
	fprintf(f, "usage: %s [-l ADDR] [-p PORT] [-s SERVICE]%s [-b BACKLOG]\n"
	    "       %*s [-m MAX_CONNS] [-B BUFSIZE] [-t IDLE_SECONDS] [-q | -v] [OPTIONS]\n",
	    s->prog, (m->caps & SRV_CAP_WORKERS) ? " [-w N]" : "",
	    (int)strlen(s->prog), "");
	if (f != stdout)
		return;
	fprintf(f, "%s\n\n", m->summary);
	for (i = 0; i < NCOMMON; i++) {
		const char *help = common_opts[i].help;
		if (common_opts[i].key == 'w') {
			if (!(m->caps & SRV_CAP_WORKERS))
				continue;
			help = m->workers_help;
		}
		print_opt(f, common_opts[i].key, common_opts[i].name,
		    common_opts[i].argname, help);
	}
	for (o = m->options; o && o->name; o++)
		print_opt(f, o->key, o->name, o->argname, o->help);
	fprintf(f, "\nExit status: 0 after SIGINT/SIGTERM/SIGHUP, 64 bad usage, "
	    "69 %s, 71 other OS error.\n",
	    m->unavailable ? m->unavailable : "address unavailable");
}

void
srv_usage_error(const struct srv *s, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", s->prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	usage(s, stderr);
	fprintf(stderr, "Try '%s --help' for more information.\n", s->prog);
	exit(SRV_EX_USAGE);
}

long long
srv_parse_num(const struct srv *s, const char *name, const char *arg,
    long long min, long long max, int sizes)
{
	long long v, mul = 1;
	char *end;

	if (arg == NULL || *arg == '\0' || *arg == '-' || *arg == '+' ||
	    *arg == ' ')
		goto bad;
	errno = 0;
	v = strtoll(arg, &end, 10);
	if (end == arg || (errno && errno != ERANGE))
		goto bad;
	/* All digits, but more than a long long holds: a number, too big. */
	if (errno == ERANGE && (*end == '\0' || (sizes &&
	    strchr("kKmMgG", *end) != NULL && end[1] == '\0')))
		goto range;
	if (errno == ERANGE)
		goto bad;
	if (sizes && *end != '\0') {
		switch (*end++) {
		case 'k': case 'K': mul = 1024LL; break;
		case 'm': case 'M': mul = 1024LL * 1024; break;
		case 'g': case 'G': mul = 1024LL * 1024 * 1024; break;
		default: goto bad;
		}
	}
	if (*end != '\0')
		goto bad;
	if (v > LLONG_MAX / mul)
		goto range;
	v *= mul;
	if (v < min || v > max)
		goto range;
	return v;
bad:
	srv_usage_error(s, "%s: not a number: '%s'", name, arg ? arg : "");
range:
	srv_usage_error(s, "%s: '%s' out of range (%lld to %lld)", name, arg,
	    min, max);
}

static void
build_longopts(const struct srv_model *m, struct option *lo, char *so,
    size_t sosize)
{
	const struct srv_option *o;
	size_t i, n = 0, k = 0;

	so[k++] = ':';		/* report a missing argument as ':' */
	for (i = 0; i < NCOMMON; i++) {
		lo[n].name = common_opts[i].name;
		lo[n].has_arg = common_opts[i].has_arg;
		lo[n].flag = NULL;
		lo[n].val = common_opts[i].key;
		n++;
		if (common_opts[i].key < 256 && k + 3 < sosize) {
			so[k++] = (char)common_opts[i].key;
			if (common_opts[i].has_arg)
				so[k++] = ':';
		}
	}
	for (o = m->options; o && o->name; o++) {
		lo[n].name = o->name;
		lo[n].has_arg = o->has_arg;
		lo[n].flag = NULL;
		lo[n].val = o->key;
		n++;
		if (o->key > 0 && o->key < 256 && k + 3 < sosize) {
			so[k++] = (char)o->key;
			if (o->has_arg)
				so[k++] = ':';
		}
	}
	memset(&lo[n], 0, sizeof(lo[n]));
	so[k] = '\0';
}

static size_t
count_model_opts(const struct srv_model *m)
{
	const struct srv_option *o;
	size_t n = 0;

	for (o = m->options; o && o->name; o++)
		n++;
	return n;
}

static void
parse_common(struct srv *s, int c, const char *arg)
{
	switch (c) {
	case 'l':
		s->listen = arg;
		break;
	case 'p':
		s->port = (int)srv_parse_num(s, "-p", arg, 0, 65535, 0);
		break;
	case 's':
		s->svc = svc_find(arg);
		if (s->svc == NULL)
			srv_usage_error(s, "-s: unknown service '%s' (one of: %s)",
			    arg, svc_names());
		break;
	case 'w':
		if (!(s->model->caps & SRV_CAP_WORKERS))
			srv_usage_error(s, "-w: this model has no workers");
		s->workers = (int)srv_parse_num(s, "-w", arg, 1, 1024, 0);
		break;
	case 'b':
		s->backlog = (int)srv_parse_num(s, "-b", arg, 1, 65535, 0);
		break;
	case 'm':
		s->max_conns = (int)srv_parse_num(s, "-m", arg, 0, 10000000, 0);
		break;
	case 'B':
		s->bufsize = (size_t)srv_parse_num(s, "-B", arg, 16,
		    64LL * 1024 * 1024, 1);
		break;
	case 't':
		s->idle_timeout = (int)srv_parse_num(s, "-t", arg, 0, 86400 * 365, 0);
		break;
	case OPT_HIGHWATER:
		s->highwater = (size_t)srv_parse_num(s, "--highwater", arg, 1,
		    1LL << 30, 1);
		break;
	case OPT_MAX_FRAME:
		s->svc_cfg.max_frame = (size_t)srv_parse_num(s, "--max-frame",
		    arg, 1, 1LL << 30, 1);
		break;
	case OPT_RPC_ORDER:
		if (strcmp(arg, "auto") == 0)
			s->svc_cfg.rpc_order = SVC_ORDER_AUTO;
		else if (strcmp(arg, "be") == 0)
			s->svc_cfg.rpc_order = SVC_ORDER_BE;
		else if (strcmp(arg, "le") == 0)
			s->svc_cfg.rpc_order = SVC_ORDER_LE;
		else
			srv_usage_error(s, "--rpc-order: '%s' is not auto, be "
			    "or le", arg);
		break;
	case OPT_MAX_LINE:
		s->svc_cfg.max_line = (size_t)srv_parse_num(s, "--max-line",
		    arg, 1, 1LL << 30, 1);
		break;
	case OPT_MAX_PENDING:
		s->svc_cfg.max_pending = (size_t)srv_parse_num(s,
		    "--max-pending", arg, 1, 1LL << 30, 1);
		break;
	case OPT_SNDBUF:
		s->sndbuf = (int)srv_parse_num(s, "--sndbuf", arg, 1,
		    1LL << 30, 1);
		break;
	case OPT_RCVBUF:
		s->rcvbuf = (int)srv_parse_num(s, "--rcvbuf", arg, 1,
		    1LL << 30, 1);
		break;
	case 'q':
		s->verbose = -1;
		break;
	case 'v':
		s->verbose = s->verbose < 0 ? 1 : s->verbose + 1;
		break;
	}
}

void
srv_init(struct srv *s, const struct srv_model *m, int argc, char **argv,
    void *model_data)
{
	size_t nlo = NCOMMON + count_model_opts(m) + 1;
	struct option *lo = calloc(nlo, sizeof(*lo));
	char so[128];
	int c, r, help = 0, version = 0;

	memset(s, 0, sizeof(*s));
	s->model = m;
	s->prog = m->name;
	s->listen = "127.0.0.1";
	s->port = SRV_DEFAULT_PORT;
	s->svc = svc_find("echo");
	s->workers = m->default_workers > 0 ? m->default_workers : 1;
	s->backlog = 511;
	s->bufsize = SRV_DEFAULT_BUFSIZE;
	s->highwater = SRV_DEFAULT_HIGHWATER;
	s->model_data = model_data;
	svc_config_default(&s->svc_cfg);

	if (lo == NULL) {
		fprintf(stderr, "%s: out of memory\n", s->prog);
		exit(SRV_EX_OSERR);
	}
	build_longopts(m, lo, so, sizeof(so));
	opterr = 0;
	while ((c = getopt_long(argc, argv, so, lo, NULL)) != -1) {
		switch (c) {
		case '?':
			if (optopt && optopt < 256)
				srv_usage_error(s, "unknown option '-%c'", optopt);
			srv_usage_error(s, "unknown option '%s'", argv[optind - 1]);
			break;
		case ':':
			srv_usage_error(s, "option '%s' needs an argument",
			    argv[optind - 1]);
			break;
		case OPT_HELP:
			help = 1;
			break;
		case OPT_VERSION:
			version = 1;
			break;
		default:
			if (c >= 'A' && c < 256 && strchr("lpswbmBtqv", c))
				parse_common(s, c, optarg);
			else if (c >= OPT_HIGHWATER && c < OPT_MODEL_BASE)
				parse_common(s, c, optarg);
			else if (m->on_option == NULL ||
			    m->on_option(s, c, optarg) < 0)
				srv_usage_error(s, "bad option");
		}
	}
	free(lo);
	/* After the loop: "--version x" is a bad command line too. */
	if (optind < argc)
		srv_usage_error(s, "unexpected argument '%s'", argv[optind]);
	if (help) {
		usage(s, stdout);
		exit(0);
	}
	if (version) {
		printf("%s (%s) %s\n", s->prog, PACKAGE_NAME, PACKAGE_VERSION);
		exit(0);
	}
	r = net_parse_addr(s->listen, s->port, &s->addr);
	if (r < 0)
		srv_usage_error(s, "-l: not an address: '%s' (want 127.0.0.1, "
		    "[::1], 0.0.0.0, HOST:PORT or unix:/path)", s->listen);
	if ((s->svc->flags & SVC_NEEDS_BROADCAST) &&
	    (!(m->caps & SRV_CAP_BROADCAST) ||
	    (separate_workers(s) && !(m->caps & SRV_CAP_ROOM))))
		srv_usage_error(s, "-s %s: this model (or -w above 1) keeps "
		    "clients in separate workers that cannot broadcast to each other",
		    s->svc->name);
}

/*
 * Options set once on the listener instead of on every accepted socket:
 * Linux copies the listener's socket options into each connection it
 * accepts (the child socket is a clone of the listener), so a new
 * connection costs no setsockopt of its own.
 *
 * TCP_NODELAY: Nagle would hold back a small echo until the previous one
 * is acknowledged (up to 40 ms with the client's delayed ACKs).
 *
 * --sndbuf/--rcvbuf: accepted sockets inherit the buffer sizes (and the
 * lock that stops the kernel from auto-tuning them), and the receive
 * window advertised in the SYN-ACK follows.  Small buffers make every
 * model queue output in user space early: the tests use them to make
 * short writes and half-close races certain.
 */
static int
listener_opts(const struct srv *s, int fd)
{
	int r;

	if (fd >= 0 && s->addr.ss.ss_family != AF_UNIX &&
	    (r = net_set_nodelay(fd)) < 0)
		srv_warn(s, "TCP_NODELAY: %s", strerror(-r));
	if (fd >= 0 && (s->sndbuf || s->rcvbuf) &&
	    (r = net_set_bufsizes(fd, s->sndbuf, s->rcvbuf)) < 0)
		srv_warn(s, "--sndbuf/--rcvbuf: %s", strerror(-r));
	return fd;
}

/*
 * A unix socket is a file, and it outlives its listener: left behind, it
 * makes the next start fail with EADDRINUSE.  So the process that made it
 * removes it when it exits (from main() or through exit(), after a stop
 * or a failure; workers end with _exit() and leave it alone), and only if
 * the file at the path is still the one it made: another server may have
 * taken the path over since.  Process-wide state, because atexit()
 * handlers take no argument.
 */
static struct {
	char	path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	dev_t	dev;
	ino_t	ino;
	pid_t	pid;
} unix_made;

static void
unix_remove(void)
{
	struct stat st;

	if (unix_made.pid == getpid() && lstat(unix_made.path, &st) == 0 &&
	    st.st_dev == unix_made.dev && st.st_ino == unix_made.ino)
		(void)unlink(unix_made.path);
}

static void
unix_remove_at_exit(const struct srv *s)
{
	const struct sockaddr_un *sun = (const struct sockaddr_un *)&s->addr.ss;
	struct stat st;

	if (unix_made.pid != 0 || lstat(sun->sun_path, &st) < 0)
		return;
	memcpy(unix_made.path, sun->sun_path, sizeof(unix_made.path));
	unix_made.dev = st.st_dev;
	unix_made.ino = st.st_ino;
	unix_made.pid = getpid();
	(void)atexit(unix_remove);
}

/*
 * The unix path is taken: by a dead server's socket file (remove it and
 * bind again), or by a live server (refuse, saying so).
 */
static int
unix_stale(struct srv *s, int flags)
{
	char buf[NET_ADDRSTRLEN];
	int r = net_unix_reclaim(&s->addr);

	if (r == 0) {
		srv_log(s, "%s: removed a stale socket file", net_addr_str(&s->addr,
		    buf, sizeof(buf)));
		return net_listen(&s->addr, s->backlog, flags);
	}
	if (r == -EADDRINUSE)
		fprintf(stderr, "%s: a server is already listening on %s\n",
		    s->prog, net_addr_str(&s->addr, buf, sizeof(buf)));
	else if (r == -ENOTSOCK)
		fprintf(stderr, "%s: %s: the path exists and is not a socket\n",
		    s->prog, net_addr_str(&s->addr, buf, sizeof(buf)));
	return -EADDRINUSE;
}

int
srv_listen(struct srv *s, int flags)
{
	char buf[NET_ADDRSTRLEN];
	int fd = 0, n;

	n = net_activated_fds();
	if (n > 0) {
		/* Socket activation: the socket is systemd's; take the first. */
		fd = 3;
		s->activated = 1;
		if ((flags & NET_NONBLOCK) && net_set_nonblock(fd, 1) < 0)
			goto oserr;
		if (net_local_addr(fd, &s->addr) < 0)
			goto oserr;
		return listener_opts(s, fd);
	}
	if (separate_workers(s) && s->addr.ss.ss_family != AF_UNIX) {
		/*
		 * SO_REUSEPORT lets any process of the same user bind the
		 * port too: a second server started by mistake would quietly
		 * take half of the connections instead of failing.  So bind
		 * once without it first: that fails with EADDRINUSE if anyone
		 * listens there (and, for -p 0, picks the port the workers'
		 * listeners then share).
		 */
		fd = net_listen(&s->addr, 1, flags);
		if (fd >= 0) {
			if (net_local_addr(fd, &s->addr) < 0)
				goto oserr;
			close(fd);
			flags |= NET_REUSEPORT;
		}
	}
	if (fd >= 0 || !separate_workers(s))
		fd = net_listen(&s->addr, s->backlog, flags);
	if (fd == -EADDRINUSE && s->addr.ss.ss_family == AF_UNIX)
		fd = unix_stale(s, flags);
	if (fd < 0) {
		fprintf(stderr, "%s: cannot listen on %s: %s\n", s->prog,
		    net_addr_str(&s->addr, buf, sizeof(buf)), strerror(-fd));
		switch (-fd) {
		case EADDRINUSE: case EADDRNOTAVAIL: case EACCES: case EPERM:
		case EAFNOSUPPORT:
		/* A unix path whose directory is missing or read-only. */
		case ENOENT: case ENOTDIR: case EROFS:
			exit(SRV_EX_UNAVAILABLE);
		default:
			exit(SRV_EX_OSERR);
		}
	}
	if (s->addr.ss.ss_family == AF_UNIX)
		unix_remove_at_exit(s);
	/* -p 0: learn the port the kernel chose, for the readiness line and
	 * for the workers' listeners, which must bind that same port. */
	if (s->addr.ss.ss_family != AF_UNIX && net_local_addr(fd, &s->addr) < 0)
		goto oserr;
	return listener_opts(s, fd);
oserr:
	fprintf(stderr, "%s: listening socket: %s\n", s->prog, strerror(errno));
	exit(SRV_EX_OSERR);
}

int
srv_listen_again(struct srv *s, int first, int flags)
{
	int fd;

	if (s->activated || s->addr.ss.ss_family == AF_UNIX) {
		fd = fcntl(first, F_DUPFD_CLOEXEC, 0);
		return fd < 0 ? -errno : fd;
	}
	return listener_opts(s,
	    net_listen(&s->addr, s->backlog, flags | NET_REUSEPORT));
}

void
srv_ready(const struct srv *s)
{
	char buf[NET_ADDRSTRLEN];

	fprintf(stderr, "%s: listening on %s (service %s)\n", s->prog,
	    net_addr_str(&s->addr, buf, sizeof(buf)), s->svc->name);
	fflush(stderr);
}

void
srv_signals_ignore_pipe(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
}

void
srv_sigset_stop(sigset_t *set)
{
	sigaddset(set, SIGINT);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGHUP);
}

int
srv_wait_signal(const sigset_t *set, siginfo_t *si, int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000,
	    .tv_nsec = (long)(ms % 1000) * 1000000L };
	int sig;

	do
		sig = ms < 0 ? sigwaitinfo(set, si) : sigtimedwait(set, si, &ts);
	while (sig < 0 && errno == EINTR);
	return sig < 0 ? 0 : sig;
}

int
srv_signals_block(void)
{
	sigset_t set;
	int fd;

	srv_signals_ignore_pipe();
	sigemptyset(&set);
	srv_sigset_stop(&set);
	/*
	 * A signalfd only sees signals that are blocked: otherwise the
	 * default action (terminate) runs first.  Threads created after
	 * this inherit the mask, so no thread is picked to die instead.
	 */
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
		return -EINVAL;
	fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

static void
vlog(const struct srv *s, const char *fmt, va_list ap)
{
	char buf[1024];
	int n;

	/* One write per line, so lines from workers do not interleave. */
	if (separate_workers(s))
		n = snprintf(buf, sizeof(buf), "%s[%ld]: ", s->prog, (long)getpid());
	else
		n = snprintf(buf, sizeof(buf), "%s: ", s->prog);
	if (n < 0 || (size_t)n >= sizeof(buf) - 2)
		return;
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	if ((size_t)n > sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	(void)!write(STDERR_FILENO, buf, (size_t)n);
}

void
srv_log(const struct srv *s, const char *fmt, ...)
{
	va_list ap;

	if (s->verbose < 0)
		return;
	va_start(ap, fmt);
	vlog(s, fmt, ap);
	va_end(ap);
}

void
srv_debug(const struct srv *s, const char *fmt, ...)
{
	va_list ap;

	if (s->verbose < 1)
		return;
	va_start(ap, fmt);
	vlog(s, fmt, ap);
	va_end(ap);
}

void
srv_warn(const struct srv *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(s, fmt, ap);
	va_end(ap);
}

int64_t
srv_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
srv_raise_nofile(const struct srv *s)
{
	long long r = net_raise_nofile();

	if (r < 0)
		srv_debug(s, "cannot raise RLIMIT_NOFILE: %s", strerror((int)-r));
}

int
srv_cond_init(pthread_cond_t *cv)
{
	pthread_condattr_t ca;
	int r;

	if (pthread_condattr_init(&ca) != 0)
		return -ENOMEM;
	r = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
	    pthread_cond_init(cv, &ca) == 0 ? 0 : -ENOMEM;
	pthread_condattr_destroy(&ca);
	return r;
}

void
srv_deadline(struct timespec *ts, int ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

int
srv_too_pending(const struct srv *s, size_t pending, size_t len)
{
	return pending + len > s->svc_cfg.max_pending;
}

void
srv_log_not_reading(const struct srv *s, const char *peer, size_t pending)
{
	srv_log(s, "%s: %zu bytes of output pending, not reading: "
	    "disconnected", peer ? peer : "client", pending);
}
