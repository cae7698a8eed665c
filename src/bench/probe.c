/*
 * echo-bench: the server under test, seen from outside: its process tree's
 * CPU time, scheduling and memory through /proc, its system calls through
 * perf(1).
 */
#include "config.h"

#include "bench.h"

/* ---- the server, seen through /proc ------------------------------------- */

/* Parse /proc/PID/stat past the command name (which may hold spaces). */
static int
proc_stat(pid_t pid, pid_t *ppid, uint64_t *cticks)
{
	char path[64], buf[1024], *p;
	unsigned long long cut = 0, cst = 0;
	int fd, ppid_i = 0;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -EIO;
	buf[n] = '\0';
	if ((p = strrchr(buf, ')')) == NULL)
		return -EIO;
	/* state ppid pgrp session tty tpgid flags minflt cminflt majflt
	 * cmajflt utime stime cutime cstime */
	if (sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %llu %llu",
	    &ppid_i, &cut, &cst) != 3)
		return -EIO;
	*ppid = ppid_i;
	if (cticks)
		*cticks = cut + cst;
	return 0;
}

/*
 * The server's process tree: ROOT and every descendant (prefork workers,
 * a child per connection).  Found by walking every /proc/N/stat parent
 * link, a few passes for grandchildren.
 */
int
tree_pids(pid_t root, pid_t **out)
{
	pid_t *pid = NULL, *ppid = NULL, *tree = NULL, p;
	size_t n = 0, cap = 0, nt = 1, i, j, before;
	struct dirent *de;
	DIR *d;

	if ((d = opendir("/proc")) == NULL)
		return -errno;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 1024;
			pid = realloc(pid, cap * sizeof(*pid));
			ppid = realloc(ppid, cap * sizeof(*ppid));
			if (!pid || !ppid)
				abort();
		}
		pid[n] = atoi(de->d_name);
		if (proc_stat(pid[n], &p, NULL) == 0 && pid[n] != root) {
			ppid[n] = p;
			n++;
		}
	}
	closedir(d);
	if ((tree = malloc((n + 1) * sizeof(*tree))) == NULL)
		abort();
	tree[0] = root;
	do {
		before = nt;
		for (i = 0; i < n; i++) {
			if (pid[i] == 0)
				continue;
			for (j = 0; j < nt; j++)
				if (ppid[i] == tree[j])
					break;
			if (j < nt) {
				tree[nt++] = pid[i];
				pid[i] = 0;
			}
		}
	} while (nt != before);
	free(pid);
	free(ppid);
	*out = tree;
	return (int)nt;
}

/*
 * schedstat is the scheduler's own nanosecond account of time on the CPU
 * (and how many times the task ran); /proc/PID/stat's utime/stime come
 * in 10 ms clock ticks, too coarse for a one-second window summed over a
 * thousand processes.  Time of reaped children only exists in ticks
 * (cutime/cstime), which is good enough for the processes a fork-per-
 * connection server loses during a bench_run.
 */
static void
proc_sched(pid_t pid, struct probe_stat *st)
{
	char path[96], buf[128];
	unsigned long long run_ns, wait_ns, slices;
	struct dirent *de;
	int fd;
	ssize_t n;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	if ((d = opendir(path)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%.16s/schedstat",
		    (int)pid, de->d_name);
		if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
			continue;
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n <= 0)
			continue;
		buf[n] = '\0';
		if (sscanf(buf, "%llu %llu %llu", &run_ns, &wait_ns, &slices) != 3)
			continue;
		st->cpu_ns += run_ns;
		st->sched += slices;
		st->ntask++;
	}
	closedir(d);
}

static long
proc_pss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	if ((f = fopen(path, "re")) == NULL)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Pss_Anon: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

int
probe_snapshot(pid_t root, struct probe_stat *st, int with_mem)
{
	long tick = sysconf(_SC_CLK_TCK);
	uint64_t cticks;
	pid_t *tree, pp;
	int i, n;

	memset(st, 0, sizeof(*st));
	if ((n = tree_pids(root, &tree)) < 0)
		return n;
	for (i = 0; i < n; i++) {
		if (proc_stat(tree[i], &pp, &cticks) < 0)
			continue;
		st->nproc++;
		st->cpu_ns += (int64_t)cticks * (NS / tick);
		proc_sched(tree[i], st);
		if (with_mem)
			st->pss_kb += proc_pss_kb(tree[i]);
	}
	free(tree);
	return st->nproc ? 0 : -ESRCH;
}

/* ---- perf, for system calls --------------------------------------------- */

/*
 * perf stat counting raw_syscalls:sys_enter on the server's tree, started
 * disabled (-D -1) and switched on and off through its control pipe at the
 * window's edges, so attaching to a thousand tasks costs nothing measured.
 * Enabling a syscall tracepoint slows every system call a little (the
 * kernel takes the traced entry path), which is why it is opt-in.
 */

static size_t
proc_ntasks(pid_t pid)
{
	char path[64];
	struct dirent *de;
	size_t n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	if ((d = opendir(path)) == NULL)
		return 0;
	while ((de = readdir(d)) != NULL)
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/*
 * Whether NAME is an executable in $PATH.  Debian's README install has no
 * linux-perf: without this, the failed exec would only show as perf never
 * answering, and the reader would not learn that it simply is not there.
 */
static int
in_path(const char *name)
{
	const char *path = getenv("PATH"), *p, *end;
	char file[PATH_MAX];

	for (p = path ? path : ""; *p; p = *end ? end + 1 : end) {
		end = strchrnul(p, ':');
		if (end == p)
			continue;
		if (snprintf(file, sizeof(file), "%.*s/%s", (int)(end - p), p,
		    name) < (int)sizeof(file) && access(file, X_OK) == 0)
			return 1;
	}
	return 0;
}

int
perf_start(struct perf *p, pid_t root)
{
	int ctl[2], ack[2], out[2], nt, i;
	char ctlarg[64], *pids;
	pid_t *tree;
	size_t len;

	memset(p, 0, sizeof(*p));
	p->pid = -1;
	if (!in_path("perf")) {
		snprintf(p->why, sizeof(p->why), "perf not installed");
		return -1;
	}
	if ((nt = tree_pids(root, &tree)) < 0) {
		snprintf(p->why, sizeof(p->why), "no server process tree");
		return -1;
	}
	/*
	 * perf opens one counter per task, and attaching to thousands (a
	 * thread or a process per connection) takes longer than a bench_run.
	 */
	for (len = 0, i = 0; i < nt; i++)
		len += proc_ntasks(tree[i]);
	if (len > BENCH_PERF_MAX_TASKS) {
		snprintf(p->why, sizeof(p->why), "the server has %zu tasks, "
		    "more than perf attaches to in time (%d)", len,
		    BENCH_PERF_MAX_TASKS);
		free(tree);
		return -1;
	}
	if ((pids = malloc((size_t)nt * 12 + 1)) == NULL)
		abort();
	for (len = 0, i = 0; i < nt; i++)
		len += sprintf(pids + len, "%s%d", i ? "," : "", (int)tree[i]);
	free(tree);
	if (pipe2(ctl, O_CLOEXEC) < 0 || pipe2(ack, O_CLOEXEC) < 0 ||
	    pipe2(out, O_CLOEXEC) < 0) {
		snprintf(p->why, sizeof(p->why), "pipe: %s", strerror(errno));
		free(pids);
		return -1;
	}
	p->pid = fork();
	if (p->pid == 0) {
		/* Descriptors perf will know by number: 3 control, 4 ack. */
		if (dup2(ctl[0], 3) < 0 || dup2(ack[1], 4) < 0 ||
		    dup2(out[1], 2) < 0)
			_exit(127);
		snprintf(ctlarg, sizeof(ctlarg), "fd:3,4");
		execlp("perf", "perf", "stat", "-x", ",", "--no-big-num",
		    "-e", "raw_syscalls:sys_enter", "-D", "-1",
		    "--control", ctlarg, "-p", pids, (char *)NULL);
		dprintf(2, "cannot run perf: %s\n", strerror(errno));
		_exit(127);
	}
	free(pids);
	close(ctl[0]);
	close(ack[1]);
	close(out[1]);
	p->ctl = ctl[1];
	p->ack = ack[0];
	p->out = out[0];
	if (p->pid < 0) {
		snprintf(p->why, sizeof(p->why), "fork: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* Send CMD and wait up to MS for perf's ack. */
int
perf_cmd(struct perf *p, const char *cmd, int ms)
{
	struct pollfd pfd = { .fd = p->ack, .events = POLLIN };
	char buf[64];

	if (p->pid < 0 || write(p->ctl, cmd, strlen(cmd)) < 0)
		return -1;
	if (poll(&pfd, 1, ms) != 1 || read(p->ack, buf, sizeof(buf)) <= 0)
		return -1;
	return 0;
}

/* Stop perf; the count, or -1 with P->why set. */
double
perf_finish(struct perf *p, int enabled)
{
	char buf[4096], *line, *save;
	size_t len = 0;
	double count = -1;
	ssize_t n;
	int status;

	if (p->pid < 0)
		return -1;
	kill(p->pid, SIGINT);
	while (len < sizeof(buf) - 1 &&
	    (n = read(p->out, buf + len, sizeof(buf) - 1 - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		len += n;
	}
	buf[len] = '\0';
	waitpid(p->pid, &status, 0);
	close(p->ctl);
	close(p->ack);
	close(p->out);
	for (line = strtok_r(buf, "\n", &save); line;
	    line = strtok_r(NULL, "\n", &save)) {
		if (strstr(line, "raw_syscalls:sys_enter") && line[0] != '<' &&
		    strchr("0123456789", line[0]) && count < 0)
			count = strtod(line, NULL);
		else if (strstr(line, "raw_syscalls:sys_enter") &&
		    strncmp(line, "<not counted>", 13) == 0 && enabled)
			count = 0;	/* no task ran while enabled */
		else if (!p->why[0] && count < 0 && line[0] &&
		    !strstr(line, "Events"))
			snprintf(p->why, sizeof(p->why), "perf: %.140s", line);
	}
	if (count < 0 && !p->why[0])
		snprintf(p->why, sizeof(p->why), "perf exited %d without a count",
		    WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	if (!enabled && count < 0 && !p->why[0])
		snprintf(p->why, sizeof(p->why), "perf did not start in time");
	return count;
}

