/*
 * echo-bench: the figures, derived from the raw counts, printed as a
 * table, CSV or JSON.
 */
#include "config.h"

#include "bench.h"

static void
out_num(FILE *f, double v, int prec)
{
	if (isnan(v) || v < 0)
		return;
	fprintf(f, "%.*f", prec, v);
}

static const char *
engine_name(const struct result *r)
{
	if (r->ring_threads == 0)
		return "epoll";
	return r->ring_threads == opt.threads ? "io_uring" : "mixed";
}

static const char *
mode_name(void)
{
	return opt.mode == MODE_OPEN ? "open" :
	    opt.mode == MODE_CHURN ? "churn" :
	    opt.mode == MODE_FANOUT ? "fanout" : "closed";
}

/*
 * The server's figures as rates: CPU time and scheduling over the interval
 * the snapshots really covered, system calls over perf's, each divided by
 * the window's message rate.  NAN when unknown, or when the interval
 * covered less than half the window (a machine so loaded that this thread
 * woke far too late) and the rate would mean little.
 */
struct derived {
	double	cpu_pct, cpu_us_msg, sched_msg, sc_msg;
};

static void
derive(const struct result *r, struct derived *d)
{
	double rate = r->msgs / r->secs, span;

	d->cpu_pct = d->cpu_us_msg = d->sched_msg = d->sc_msg = NAN;
	if (!r->have_srv)
		return;
	span = (r->ts1 - r->ts0) / 1e9;
	if (span >= r->secs / 2) {
		d->cpu_pct = 100.0 * (r->s1.cpu_ns - r->s0.cpu_ns) / 1e9 / span;
		if (rate > 0) {
			d->cpu_us_msg = d->cpu_pct / 100 * 1e6 / rate;
			d->sched_msg = (r->s1.sched - r->s0.sched) / span / rate;
		}
	}
	span = (r->tp1 - r->tp0) / 1e9;
	if (r->syscalls >= 0 && rate > 0 && span >= r->secs / 2)
		d->sc_msg = r->syscalls / span / rate;
}

/* The quota the server ran under, NAN for none. */
static double
quota_pct(const struct result *r)
{
	return r->quota && r->quota->applied ? r->quota->pct : NAN;
}

/*
 * Who set the pace.  The client is the limit when its thread(s) used 90%
 * of a core or more (the run script pins them to one).  The server is
 * saturated when it used 80% of its quota or more, or was throttled in
 * half its periods; without a quota, when it used 90% of a core.  Else
 * neither was at its limit: a closed loop with few connections is bound
 * by the round trip (each side waits for the other), not by a CPU.
 */
const char *
result_regime(const struct result *r)
{
	struct derived d;
	double cap = quota_pct(r);

	derive(r, &d);
	if (100 * r->client_cpu >= 90)
		return "client-bound";
	if (isnan(d.cpu_pct))
		return "unknown";
	if (!isnan(cap) && (d.cpu_pct >= 0.8 * cap ||
	    quota_throttled_pct(r->quota) >= 50))
		return "server-saturated";
	if (isnan(cap) && d.cpu_pct >= 90)
		return "server-saturated";
	return "neither";
}

/* All figures, in one order, for CSV and JSON alike. */
struct field {
	const char	*name;
	double		 v;		/* NAN: empty */
	int		 prec;
};

static int
result_fields(const struct result *r, struct field *f)
{
	double msgs = r->msgs, pss = NAN, pss0 = NAN, tasks = NAN;
	const struct hist *h = r->hist;
	struct derived d;
	int n = 0;

	derive(r, &d);
	if (r->have_srv) {
		pss = r->s1.pss_kb;
		pss0 = r->pss_base_kb;
		tasks = r->s1.ntask;
	}
#define F(nm, val, p) do { f[n].name = nm; f[n].v = (val); f[n].prec = p; n++; } while (0)
	F("conns", opt.conns, 0);
	F("idle", opt.idle, 0);
	F("depth", opt.mode == MODE_CLOSED ? opt.depth : NAN, 0);
	F("size", (double)bench_wire.msg_tx, 0);
	F("threads", opt.threads, 0);
	F("rate", opt.mode == MODE_OPEN ? opt.rate : NAN, 0);
	F("seconds", r->secs, 3);
	F("msgs", msgs, 0);
	F("msgs_per_s", msgs / r->secs, 1);
	F("mbytes_per_s", msgs * bench_wire.msg_tx / r->secs / 1e6, 3);
	F("conns_per_s", opt.mode == MODE_CHURN ? r->cycles / r->secs : NAN, 1);
	F("p50_us", hist_quantile(h, 0.50) / 1e3, 2);
	F("p90_us", hist_quantile(h, 0.90) / 1e3, 2);
	F("p99_us", hist_quantile(h, 0.99) / 1e3, 2);
	F("p999_us", hist_quantile(h, 0.999) / 1e3, 2);
	F("max_us", h->total ? h->max / 1e3 : NAN, 2);
	F("mean_us", h->total ? h->sum / h->total / 1e3 : NAN, 2);
	F("errors", r->errors, 0);
	F("connect_errors", r->connect_fail, 0);
	F("mismatches", r->mismatches, 0);
	F("stalled", r->stalled, 0);
	F("unfinished", r->unfinished, 0);
	F("idle_lost", r->idle_lost, 0);
	F("server_cpu_pct", d.cpu_pct, 1);
	F("server_cpu_us_per_msg", d.cpu_us_msg, 4);
	F("server_sched_per_msg", d.sched_msg, 4);
	F("server_syscalls_per_msg", d.sc_msg, 4);
	F("server_mem_base_kb", pss0, 0);
	F("server_mem_kb", pss, 0);
	F("server_tasks", tasks, 0);
	F("client_cpu_pct", 100.0 * r->client_cpu, 1);
#undef F
	return n;
}

void
print_csv(const struct result *r)
{
	struct field f[40];
	int i, n = result_fields(r, f);

	if (opt.header) {
		printf("label,mode,service,addr");
		for (i = 0; i < n; i++)
			printf(",%s", f[i].name);
		printf(",engine,server_quota_pct,server_throttled_pct,regime\n");
	}
	printf("%s,%s,%s,%s", opt.label ? opt.label : "", mode_name(),
	    opt.proto->name, opt.addrstr);
	for (i = 0; i < n; i++) {
		putchar(',');
		out_num(stdout, f[i].v, f[i].prec);
	}
	printf(",%s,", engine_name(r));
	out_num(stdout, quota_pct(r), 0);
	putchar(',');
	out_num(stdout, r->quota ? quota_throttled_pct(r->quota) : NAN, 1);
	printf(",%s\n", result_regime(r));
}

static void
json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

void
print_json(const struct result *r)
{
	struct field f[40];
	int i, n = result_fields(r, f);

	printf("{\"label\":");
	json_str(opt.label ? opt.label : "");
	printf(",\"mode\":\"%s\",\"service\":\"%s\",\"addr\":", mode_name(),
	    opt.proto->name);
	json_str(opt.addrstr);
	for (i = 0; i < n; i++) {
		printf(",\"%s\":", f[i].name);
		if (isnan(f[i].v) || f[i].v < 0)
			printf("null");
		else
			out_num(stdout, f[i].v, f[i].prec);
	}
	printf(",\"engine\":\"%s\",\"regime\":\"%s\",\"server_quota_pct\":",
	    engine_name(r), result_regime(r));
	if (isnan(quota_pct(r)))
		printf("null");
	else
		out_num(stdout, quota_pct(r), 0);
	printf(",\"syscalls_note\":");
	if (r->syscalls_why)
		json_str(r->syscalls_why);
	else
		printf("null");
	printf("}\n");
}

void
print_table(const struct result *r)
{
	const struct hist *h = r->hist;
	double msgs = r->msgs;
	struct derived d;

	printf("%s: %s %s, %s loop, %d conns (+%d idle)", BENCH_PROG,
	    opt.addrstr, opt.proto->name, mode_name(), opt.conns, opt.idle);
	if (opt.mode == MODE_CLOSED)
		printf(", depth %d", opt.depth);
	if (opt.mode == MODE_OPEN)
		printf(", %.0f msg/s offered", opt.rate);
	printf(", %zu B, %d %s thread%s, %.2f s\n", bench_wire.msg_tx,
	    opt.threads, engine_name(r), opt.threads > 1 ? "s" : "", r->secs);
	printf("  throughput  %.0f msg/s  %.2f MB/s", msgs / r->secs,
	    msgs * bench_wire.msg_tx / r->secs / 1e6);
	if (opt.mode == MODE_CHURN)
		printf("  %.0f conn/s", r->cycles / r->secs);
	printf("\n");
	if (h->total)
		printf("  latency     p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  "
		    "max %.1f  mean %.1f us\n",
		    hist_quantile(h, .5) / 1e3, hist_quantile(h, .9) / 1e3,
		    hist_quantile(h, .99) / 1e3, hist_quantile(h, .999) / 1e3,
		    h->max / 1e3, h->sum / h->total / 1e3);
	else
		printf("  latency     no message completed\n");
	printf("  errors      %" PRIu64 " connection (%" PRIu64 " connect), %"
	    PRIu64 " mismatches, %" PRIu64 " stalled, %" PRIu64 " unfinished, %"
	    PRIu64 " idle lost", r->errors, r->connect_fail, r->mismatches,
	    r->stalled, r->unfinished, r->idle_lost);
	if (r->last_err)
		printf(" (last: %s)", strerror(r->last_err));
	printf("\n");
	derive(r, &d);
	if (r->have_srv) {
		printf("  server      pid %d, %d process%s, %d task%s: ",
		    (int)opt.server_pid, r->s1.nproc,
		    r->s1.nproc == 1 ? "" : "es", r->s1.ntask,
		    r->s1.ntask == 1 ? "" : "s");
		if (isnan(d.cpu_pct))
			printf("cpu not measured (snapshots too late)");
		else
			printf("cpu %.1f%% of a core", d.cpu_pct);
		if (!isnan(d.cpu_us_msg))
			printf(", %.3f us/msg, %.3f sched/msg", d.cpu_us_msg,
			    d.sched_msg);
		printf("\n              anon memory %ld KiB (before connecting %ld KiB)\n",
		    r->s1.pss_kb, r->pss_base_kb);
		if (!isnan(d.sc_msg))
			printf("              %.3f syscalls/msg\n", d.sc_msg);
		else if (r->syscalls_why)
			printf("              syscalls/msg not counted: %s\n",
			    r->syscalls_why);
	}
	printf("  client      cpu %.1f%% of a core\n", 100 * r->client_cpu);
	printf("  regime      %s", result_regime(r));
	if (r->quota && r->quota->applied)
		printf(" (server capped at %.0f%% of a core, throttled in %.0f%% "
		    "of its periods)", r->quota->pct,
		    quota_throttled_pct(r->quota));
	else if (r->quota)
		printf(" (%s)", r->quota->why);
	printf("\n");
}

