/*
 * echo-bench: the command line, set-up, and the run: the load threads go
 * at GO, the server is looked at (/proc, perf) at the edges of the
 * measured window, and the figures are printed.  What the program is and
 * how it works: bench.h.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>

#include "bench.h"
#include "tool.h"

struct bench_opts opt;
struct bench_run bench_run;
volatile sig_atomic_t bench_interrupted;
static struct quota bench_quota;

/* The server leaves the group whatever way we exit. */
static void
quota_atexit(void)
{
	quota_release(&bench_quota);
}

static void
usage(FILE *f)
{
	fprintf(f,
"usage: %s [-c CONNS] [-d DEPTH] [-s SIZE] [-D SECONDS] [-W SECONDS]\n"
"                  [-r RATE] [-i IDLE] [-T THREADS] [-E ENGINE] [--churn]\n"
"                  [-S SERVICE]\n"
"                  [--server-pid PID [--syscalls] [--server-quota PCT]]\n"
"                  [--csv [--no-header] | --json]\n"
"                  [--label TEXT] [-p PORT] [ADDR]\n"
"Load an echo server and measure it.  ADDR: HOST[:PORT], [V6][:PORT] or\n"
"unix:PATH (default 127.0.0.1:7007).\n"
"  -c, --conns N          active connections (default 50)\n"
"  -d, --depth N          messages in flight per connection, closed loop (1)\n"
"  -s, --size BYTES       message size (128; k/m suffixes)\n"
"  -D, --duration SECS    measured time (5)\n"
"  -W, --warmup SECS      unmeasured time before it (1)\n"
"  -r, --rate MSGS        open loop: total messages per second\n"
"  -i, --idle N           idle connections (echo one byte, then silent)\n"
"      --churn            connect, echo one message, close: connections/s\n"
"      --fanout           a -s chat server: connection 1 talks, the others\n"
"                         listen; lines delivered/s (depth: lines ahead)\n"
"  -T, --threads N        load threads (1)\n"
"  -E, --engine NAME      auto (io_uring if it can, else epoll), epoll, uring\n"
"  -S, --service NAME     echo, upper, rpc or rpc-le (what is sent, how replies are checked)\n"
"      --server-pid PID   report the CPU time, scheduling and memory of PID\n"
"                         and all its descendants\n"
"      --syscalls         also count its system calls with perf(1)\n"
"      --server-quota PCT  cap the server at PCT%% of one core (a cgroup CPU\n"
"                         quota): the server-saturated regime\n"
"      --connect-timeout SECS  give up setting up connections (30)\n"
"      --csv, --json      machine-readable output\n"
"      --no-header        --csv: the row only, no header line\n"
"      --label TEXT       first column of the CSV / JSON \"label\"\n"
"  -p, --port PORT        port, when ADDR has none (7007)\n"
"  -q, --quiet            no progress messages on stderr\n"
"  -h, --help, --version\n", BENCH_PROG);
}

static double
parse_double(const char *name, const char *arg, double min, double max)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(arg, &end);
	if (errno || end == arg || *end || !(v >= min && v <= max))
		tool_usage_error("%s: '%s' is not a number in [%g, %g]", name, arg,
		    min, max);
	return v;
}

static long long
parse_int(const char *name, const char *arg, long long min, long long max,
    int sizes)
{
	long long v;
	char *end;

	errno = 0;
	v = strtoll(arg, &end, 10);
	if (sizes && end != arg && (*end == 'k' || *end == 'K')) {
		v *= 1024;
		end++;
	} else if (sizes && end != arg && (*end == 'm' || *end == 'M')) {
		v *= 1024 * 1024;
		end++;
	}
	if (errno || end == arg || *end || v < min || v > max)
		tool_usage_error("%s: '%s' is not a number in [%lld, %lld]", name, arg,
		    min, max);
	return v;
}

/*
 * io_uring when it is built in and the kernel lets us make a ring (it may
 * be disabled: kernel.io_uring_disabled, seccomp); epoll otherwise.
 * Churn stays on epoll: a connection there lives for one message.
 */
static void
engine_choose(void)
{
	int r = -ENOSYS;

	if (opt.engine == ENGINE_URING && !bench_engine_uring)
		tool_usage_error("-E uring: built without liburing");
	if (opt.engine == ENGINE_URING && opt.mode == MODE_CHURN)
		tool_usage_error("-E uring: churn mode runs on epoll");
	if (bench_engine_uring && opt.engine != ENGINE_EPOLL &&
	    opt.mode != MODE_CHURN)
		r = bench_engine_uring->probe();
	if (r == 0) {
		opt.engine = ENGINE_URING;
		return;
	}
	if (opt.engine == ENGINE_URING) {
		fprintf(stderr, "%s: io_uring is not available: %s\n", BENCH_PROG,
		    strerror(-r));
		exit(BENCH_EX_UNAVAILABLE);
	}
	opt.engine = ENGINE_EPOLL;
}

enum {
	OPT_CHURN = 256, OPT_SERVER_PID, OPT_SYSCALLS, OPT_CSV, OPT_JSON,
	OPT_NO_HEADER, OPT_LABEL, OPT_CONNECT_TIMEOUT, OPT_VERSION,
	OPT_SERVER_QUOTA, OPT_FANOUT
};

static void
parse_args(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "conns", 1, NULL, 'c' }, { "depth", 1, NULL, 'd' },
		{ "size", 1, NULL, 's' }, { "duration", 1, NULL, 'D' },
		{ "warmup", 1, NULL, 'W' }, { "rate", 1, NULL, 'r' },
		{ "idle", 1, NULL, 'i' }, { "threads", 1, NULL, 'T' },
		{ "service", 1, NULL, 'S' }, { "port", 1, NULL, 'p' },
		{ "quiet", 0, NULL, 'q' }, { "help", 0, NULL, 'h' },
		{ "churn", 0, NULL, OPT_CHURN },
		{ "fanout", 0, NULL, OPT_FANOUT },
		{ "server-pid", 1, NULL, OPT_SERVER_PID },
		{ "syscalls", 0, NULL, OPT_SYSCALLS },
		{ "server-quota", 1, NULL, OPT_SERVER_QUOTA },
		{ "csv", 0, NULL, OPT_CSV }, { "json", 0, NULL, OPT_JSON },
		{ "no-header", 0, NULL, OPT_NO_HEADER },
		{ "label", 1, NULL, OPT_LABEL },
		{ "connect-timeout", 1, NULL, OPT_CONNECT_TIMEOUT },
		{ "version", 0, NULL, OPT_VERSION },
		{ "engine", 1, NULL, 'E' },
		{ NULL, 0, NULL, 0 }
	};
	const char *target = "127.0.0.1", *svc = "echo";
	int ch, port = BENCH_PORT, churn = 0, fanout = 0;

	opt.conns = 50;
	opt.depth = 1;
	opt.threads = 1;
	opt.size = 128;
	opt.duration = 5 * NS;
	opt.warmup = 1 * NS;
	opt.connect_timeout = 30 * NS;
	opt.header = 1;
	while ((ch = getopt_long(argc, argv, "c:d:s:D:W:r:i:T:S:p:E:qh", lo,
	    NULL)) != -1) {
		switch (ch) {
		case 'c':
			opt.conns = parse_int("-c", optarg, 0, 1000000, 0);
			break;
		case 'd':
			opt.depth = parse_int("-d", optarg, 1, 4096, 0);
			break;
		case 's':
			opt.size = parse_int("-s", optarg, 1, BENCH_WINDOW, 1);
			break;
		case 'D':
			opt.duration = parse_double("-D", optarg, 0.01, 86400) * NS;
			break;
		case 'W':
			opt.warmup = parse_double("-W", optarg, 0, 3600) * NS;
			break;
		case 'r':
			opt.rate = parse_double("-r", optarg, 1, 1e8);
			break;
		case 'i':
			opt.idle = parse_int("-i", optarg, 0, 1000000, 0);
			break;
		case 'T':
			opt.threads = parse_int("-T", optarg, 1, 256, 0);
			break;
		case 'S':
			svc = optarg;
			break;
		case 'E':
			if (strcmp(optarg, "auto") == 0)
				opt.engine = ENGINE_AUTO;
			else if (strcmp(optarg, "epoll") == 0)
				opt.engine = ENGINE_EPOLL;
			else if (strcmp(optarg, "uring") == 0)
				opt.engine = ENGINE_URING;
			else
				tool_usage_error("-E: '%s' is not auto, epoll or uring",
				    optarg);
			break;
		case 'p':
			port = parse_int("-p", optarg, 1, 65535, 0);
			break;
		case 'q':
			opt.quiet = 1;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case OPT_VERSION:
			printf("%s (%s) %s\n", BENCH_PROG, PACKAGE_NAME,
			    PACKAGE_VERSION);
			exit(0);
		case OPT_CHURN:
			churn = 1;
			break;
		case OPT_FANOUT:
			fanout = 1;
			break;
		case OPT_SERVER_PID:
			opt.server_pid = parse_int("--server-pid", optarg, 1,
			    INT_MAX, 0);
			break;
		case OPT_SERVER_QUOTA:
			opt.quota = parse_double("--server-quota", optarg, 1, 100);
			break;
		case OPT_SYSCALLS:
			opt.syscalls = 1;
			break;
		case OPT_CSV:
			opt.out = OUT_CSV;
			break;
		case OPT_JSON:
			opt.out = OUT_JSON;
			break;
		case OPT_NO_HEADER:
			opt.header = 0;
			break;
		case OPT_LABEL:
			opt.label = optarg;
			break;
		case OPT_CONNECT_TIMEOUT:
			opt.connect_timeout = parse_double("--connect-timeout",
			    optarg, 0.1, 3600) * NS;
			break;
		default:
			usage(stderr);
			exit(BENCH_EX_USAGE);
		}
	}
	if (optind < argc)
		target = argv[optind++];
	if (optind < argc)
		tool_usage_error("unexpected argument '%s'", argv[optind]);
	if (net_parse_addr(target, port, &opt.addr) < 0)
		tool_usage_error("bad address '%s'", target);
	net_addr_str(&opt.addr, opt.addrstr, sizeof(opt.addrstr));
	if ((opt.proto = wire_proto(svc)) == NULL)
		tool_usage_error("unknown service '%s' (echo, upper, rpc, rpc-le)", svc);
	if (strcmp(opt.proto->name, "chat") == 0 && !fanout)
		tool_usage_error("-S chat: only with --fanout");
	if (churn && opt.rate > 0)
		tool_usage_error("--churn and --rate do not mix");
	opt.mode = churn ? MODE_CHURN : opt.rate > 0 ? MODE_OPEN : MODE_CLOSED;
	if (fanout) {
		if (churn || opt.rate > 0 || opt.idle)
			tool_usage_error("--fanout does not mix with --churn, --rate or --idle");
		if (opt.conns < 2)
			tool_usage_error("--fanout needs a talker and a listener: -c 2 or more");
		if (opt.engine == ENGINE_URING)
			tool_usage_error("-E uring: the fan-out runs on epoll");
		opt.mode = MODE_FANOUT;
		opt.proto = wire_proto("chat");
		opt.engine = ENGINE_EPOLL;
		opt.threads = 1;
	}
	if (opt.conns == 0 && opt.idle == 0)
		tool_usage_error("nothing to do: -c 0 and no idle connections");
	if (opt.mode == MODE_OPEN && opt.conns == 0)
		tool_usage_error("--rate needs active connections");
	if (opt.syscalls && !opt.server_pid)
		tool_usage_error("--syscalls needs --server-pid");
	if (opt.quota > 0 && !opt.server_pid)
		tool_usage_error("--server-quota needs --server-pid");
	if (opt.threads > opt.conns + opt.idle)
		opt.threads = opt.conns + opt.idle;
	engine_choose();
}

/* ---- set-up and the run ------------------------------------------------- */

static void
on_sigint(int sig)
{
	(void)sig;
	bench_interrupted = 1;
	atomic_store(&bench_run.stop, 1);
}


/* CONNS sockets, plus a few descriptors per thread and for stdio. */
static void
raise_nofile(long long conns)
{
	long long want = conns + 16 + 3LL * opt.threads;
	long long have = net_raise_nofile();

	if (have < want)
		fprintf(stderr, "%s: warning: %lld connections need %lld "
		    "descriptors, RLIMIT_NOFILE is %lld\n", BENCH_PROG,
		    conns, want, have < 0 ? 0 : have);
}

static struct bthread *
threads_make(void)
{
	struct bthread *th, *t;
	uint64_t u;
	int i, k, a, id;

	if ((th = calloc(opt.threads, sizeof(*th))) == NULL)
		abort();
	for (i = 0; i < opt.threads; i++) {
		t = &th[i];
		t->id = i;
		t->nactive = opt.conns / opt.threads + (i < opt.conns % opt.threads);
		t->nconns = t->nactive + opt.idle / opt.threads +
		    (i < opt.idle % opt.threads);
		t->conns = calloc(t->nconns ? t->nconns : 1, sizeof(*t->conns));
		t->stamps = calloc((size_t)(t->nactive ? t->nactive : 1) *
		    opt.depth, sizeof(*t->stamps));
		t->rbuf = malloc(BENCH_RBUF);
		t->restart = calloc(t->nactive + 1, sizeof(*t->restart));
		t->restart2 = calloc(t->nactive + 1, sizeof(*t->restart));
		if (!t->conns || !t->stamps || !t->rbuf || !t->restart ||
		    !t->restart2)
			abort();
		if (opt.mode == MODE_OPEN && opt.conns)
			t->rate = opt.rate * t->nactive / opt.conns;
		t->engine = opt.engine == ENGINE_URING ? bench_engine_uring :
		    &bench_engine_epoll;
		if ((t->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
			perror(BENCH_PROG ": epoll_create1");
			exit(BENCH_EX_OSERR);
		}
		for (k = 0; k < t->nconns; k++) {
			struct bench_conn *c = &t->conns[k];

			a = k < t->nactive;
			id = a ? k * opt.threads + i :
			    opt.conns + (k - t->nactive) * opt.threads + i;
			c->fd = -1;
			c->idle = !a;
			c->idx = k;
			u = ((uint64_t)id * 7919 + 1) % bench_wire.units;
			c->seed = (uint32_t)(u * bench_wire.unit_tx);
			c->rseed = (uint32_t)(u * bench_wire.unit_rx);
			if (a)
				c->stamp = t->stamps + (size_t)k * opt.depth;
		}
	}
	return th;
}

static void
threads_free(struct bthread *th)
{
	int i;

	for (i = 0; i < opt.threads; i++) {
		free(th[i].conns);
		free(th[i].stamps);
		free(th[i].rbuf);
		free(th[i].restart);
		free(th[i].restart2);
	}
	free(th);
}

/*
 * Wait until every connection is set up (or failed), or the timeout.  In
 * churn mode only the idle ones are set up beforehand.
 */
static int
wait_setup(void)
{
	long want = opt.mode == MODE_CHURN ? opt.idle : opt.conns + opt.idle;
	int64_t deadline = now_ns() + opt.connect_timeout;

	while (atomic_load(&bench_run.setup_done) < want) {
		if (bench_interrupted || now_ns() > deadline)
			return -1;
		usleep(2000);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct result r = { .syscalls = -1 };
	struct bthread *th;
	struct hist *all;
	struct perf perf = { .pid = -1 };
	int64_t t_setup, t_a;
	struct probe_stat smem;
	int i, k, perf_on = 0, rc;
	struct sigaction sa;

	tool_init(BENCH_PROG, usage);
	parse_args(argc, argv);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigint;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile((long long)opt.conns + opt.idle);
	wire_pattern_init();
	opt.proto->init(&bench_wire, bench_pat);
	if (opt.server_pid) {
		if (probe_snapshot(opt.server_pid, &r.s0, 1) < 0) {
			fprintf(stderr, "%s: server pid %d: no such process\n",
			    BENCH_PROG, (int)opt.server_pid);
			return BENCH_EX_USAGE;
		}
		r.pss_base_kb = r.s0.pss_kb;
		r.have_srv = 1;
	}
	/*
	 * Before any connection: what the server forks or spawns for them
	 * is born in the group.  Without a quota the run goes on in the
	 * other regime, and the output says why.
	 */
	if (opt.quota > 0) {
		if (quota_apply(&bench_quota, opt.server_pid, opt.quota) < 0)
			fprintf(stderr, "%s: warning: %s\n", BENCH_PROG,
			    bench_quota.why);
		atexit(quota_atexit);
		r.quota = &bench_quota;
	}
	th = threads_make();
	for (i = 0; i < opt.threads; i++)
		if ((rc = pthread_create(&th[i].tid, NULL, opt.mode == MODE_FANOUT ?
		    fanout_main : thread_main, &th[i]))) {
			fprintf(stderr, "%s: pthread_create: %s\n", BENCH_PROG,
			    strerror(rc));
			return BENCH_EX_OSERR;
		}

	t_setup = now_ns();
	if (wait_setup() < 0 && !bench_interrupted)
		fprintf(stderr, "%s: warning: only %ld of %d connections set up "
		    "after %.1f s\n", BENCH_PROG, atomic_load(&bench_run.setup_done),
		    opt.mode == MODE_CHURN ? opt.idle : opt.conns + opt.idle,
		    opt.connect_timeout / 1e9);
	if (!opt.quiet && opt.out == OUT_TABLE)
		fprintf(stderr, "%s: %d connections set up in %.2f s\n",
		    BENCH_PROG, opt.conns + opt.idle, (now_ns() - t_setup) / 1e9);
	/*
	 * perf takes a while to attach to a large tree; "ping" is answered
	 * once its control loop runs, so the window's "enable" is prompt.
	 */
	if (opt.syscalls && perf_start(&perf, opt.server_pid) < 0)
		r.syscalls_why = perf.why;
	else if (opt.syscalls && perf_cmd(&perf, "ping\n", 10000) < 0)
		snprintf(perf.why, sizeof(perf.why), "perf did not start in 10 s");

	bench_run.t_go = now_ns();
	bench_run.t_start = bench_run.t_go + opt.warmup;
	bench_run.t_end = bench_run.t_start + opt.duration;
	atomic_store_explicit(&bench_run.go, 1, memory_order_release);

	/*
	 * A snapshot of a big process tree takes a while, and on a loaded
	 * machine this thread may wake late: every figure taken here is a
	 * rate over the interval it really covered (its midpoints), scaled
	 * by the message rate of the window.
	 */
	sleep_until(bench_run.t_start);
	if (r.have_srv) {
		t_a = now_ns();
		probe_snapshot(opt.server_pid, &r.s0, 0);
		quota_mark(&bench_quota, 0);
		r.ts0 = (t_a + now_ns()) / 2;
	}
	if (perf.pid > 0) {
		t_a = now_ns();
		perf_on = perf_cmd(&perf, "enable\n", 2000) == 0;
		r.tp0 = (t_a + now_ns()) / 2;
	}

	while (!bench_interrupted && now_ns() < bench_run.t_end)
		sleep_until(bench_run.t_end < now_ns() + 50000000 ? bench_run.t_end :
		    now_ns() + 50000000);
	if (bench_interrupted)
		bench_run.t_end = now_ns();	/* threads read it on their next pass */
	if (perf_on) {
		t_a = now_ns();
		perf_cmd(&perf, "disable\n", 2000);
		r.tp1 = (t_a + now_ns()) / 2;
	}
	if (r.have_srv) {
		t_a = now_ns();
		if (probe_snapshot(opt.server_pid, &r.s1, 0) < 0)
			r.have_srv = 0;		/* it died under us */
		quota_mark(&bench_quota, 1);
		r.ts1 = (t_a + now_ns()) / 2;
		/* Memory last: smaps_rollup of a thousand processes is slow. */
		if (r.have_srv && probe_snapshot(opt.server_pid, &smem, 1) == 0)
			r.s1.pss_kb = smem.pss_kb;
	}
	/* Measured: the server drains and stops at full speed. */
	quota_release(&bench_quota);
	atomic_store(&bench_run.stop, 1);
	atomic_store(&bench_run.measured, 1);
	if (perf.pid > 0) {
		r.syscalls = perf_finish(&perf, perf_on);
		if (r.syscalls < 0)
			r.syscalls_why = perf.why;
	}
	r.secs = (bench_run.t_end - bench_run.t_start) / 1e9;
	if (r.secs <= 0)
		r.secs = 1e-9;

	if ((all = calloc(1, sizeof(*all))) == NULL)
		abort();
	for (i = 0; i < opt.threads; i++) {
		struct bthread *t = &th[i];

		pthread_join(t->tid, NULL);
		hist_merge(all, &t->hist);
		r.msgs += t->msgs;
		r.cycles += t->cycles;
		r.errors += t->errors;
		r.connect_fail += t->connect_fail;
		r.mismatches += t->mismatches;
		r.unfinished += t->unfinished;
		r.idle_lost += t->idle_lost;
		r.client_cpu += (t->cpu1 - t->cpu0) / 1e9 / r.secs;
		if (t->last_err)
			r.last_err = t->last_err;
		r.ring_threads += t->used_ring;
		if (opt.mode != MODE_CHURN && opt.mode != MODE_FANOUT)
			for (k = 0; k < t->nactive; k++)
				r.stalled += t->conns[k].state != BC_DEAD &&
				    t->conns[k].done_win == 0;
		close(t->epfd);
	}
	r.hist = all;
	if (opt.out == OUT_CSV)
		print_csv(&r);
	else if (opt.out == OUT_JSON)
		print_json(&r);
	else
		print_table(&r);
	fflush(stdout);
	/* Freed so that LeakSanitizer runs in the test suite stay quiet. */
	threads_free(th);
	free(all);
	if (r.msgs == 0 && r.errors > 0)
		return BENCH_EX_UNAVAILABLE;
	return r.errors || r.mismatches ? 1 : 0;
}
