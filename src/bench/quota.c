/*
 * echo-bench: the server-saturated regime.  --server-quota PCT moves the
 * server's process tree into a cgroup of its own whose CPU quota is PCT%
 * of one core, so that one client core can always outrun it: what is then
 * measured is what the server does with the CPU it has, not how fast the
 * client can ask.
 *
 * cgroup v2 (cpu.max, in the unified hierarchy, if the cpu controller is
 * or can be enabled there) is tried first, then v1 (cpu.cfs_quota_us and
 * cpu.cfs_period_us under a hierarchy with the cpu controller).  Children
 * forked later (a process per connection) and threads created later are
 * born in the cgroup, so the quota covers the whole server.  At the end
 * the processes go back to the cgroup the group was made in, and the group
 * is removed.  The period is 10 ms: short enough that a throttled server
 * waits at most a few ms (latency figures stay about the work, not the
 * throttling), long enough that the scheduler's accounting is exact.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"

#define QUOTA_PERIOD_US	10000

static int
write_file(const char *dir, const char *name, const char *text)
{
	char path[PATH_MAX];
	FILE *f;
	int r = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((f = fopen(path, "w")) == NULL)
		return -errno;
	if (fputs(text, f) < 0)
		r = -errno;
	if (fclose(f) != 0 && r == 0)
		r = -errno;
	return r;
}

static int
read_line(const char *dir, const char *name, char *buf, size_t len)
{
	char path[PATH_MAX];
	FILE *f;
	int r = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((f = fopen(path, "r")) == NULL)
		return -errno;
	if (fgets(buf, (int)len, f) == NULL)
		r = -EIO;
	fclose(f);
	buf[strcspn(buf, "\n")] = '\0';
	return r;
}

/*
 * Where the hierarchy of type FSTYPE (cgroup or cgroup2) with controller
 * OPT (v1 only) is mounted, and our own group in it: DIR = mount + path.
 */
static int
own_group(int v2, char *dir, size_t len)
{
	char line[1024], mnt[512], fstype[64], opts[512], rel[512] = "";
	FILE *f;
	int found = 0;

	if ((f = fopen("/proc/self/mountinfo", "r")) == NULL)
		return -errno;
	while (!found && fgets(line, sizeof(line), f)) {
		char *sep = strstr(line, " - ");

		if (!sep || sscanf(line, "%*s %*s %*s %*s %511s", mnt) != 1 ||
		    sscanf(sep + 3, "%63s %*s %511s", fstype, opts) != 2)
			continue;
		if (v2 && strcmp(fstype, "cgroup2") == 0)
			found = 1;
		else if (!v2 && strcmp(fstype, "cgroup") == 0) {
			char *o, *save;

			for (o = strtok_r(opts, ",", &save); o;
			    o = strtok_r(NULL, ",", &save))
				if (strcmp(o, "cpu") == 0)
					found = 1;
		}
	}
	fclose(f);
	if (!found)
		return -ENOENT;
	/* Our path in it: "0::/x" (v2) or "N:...cpu...:/x" (v1). */
	if ((f = fopen("/proc/self/cgroup", "r")) == NULL)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		char ctl[256], *o, *save;
		int match = 0;

		if (!c2)
			continue;
		if (v2)
			match = strncmp(line, "0::", 3) == 0;
		else {
			snprintf(ctl, sizeof(ctl), "%.*s", (int)(c2 - c1 - 1), c1 + 1);
			for (o = strtok_r(ctl, ",", &save); o;
			    o = strtok_r(NULL, ",", &save))
				if (strcmp(o, "cpu") == 0)
					match = 1;
		}
		if (match) {
			snprintf(rel, sizeof(rel), "%s", c2 + 1);
			rel[strcspn(rel, "\n")] = '\0';
			break;
		}
	}
	fclose(f);
	if ((size_t)snprintf(dir, len, "%.200s%.190s", mnt,
	    strcmp(rel, "/") == 0 ? "" : rel) >= len)
		return -ENAMETOOLONG;
	return 0;
}

/* Make the group under PARENT and set its quota; 0 or -errno, WHY set. */
static int
make_group(struct quota *q, int v2, const char *parent, double pct)
{
	char text[64], ctl[256];
	long quota_us = (long)(pct / 100 * QUOTA_PERIOD_US);
	int r;

	snprintf(q->dir, sizeof(q->dir), "%s/echo-bench-%d", parent, (int)getpid());
	if (mkdir(q->dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	snprintf(q->parent, sizeof(q->parent), "%s", parent);
	if (v2) {
		/* The cpu controller must be enabled for the parent's children. */
		if (read_line(q->dir, "cgroup.controllers", ctl, sizeof(ctl)) < 0 ||
		    !strstr(ctl, "cpu")) {
			write_file(parent, "cgroup.subtree_control", "+cpu");
			if (read_line(q->dir, "cgroup.controllers", ctl,
			    sizeof(ctl)) < 0 || !strstr(ctl, "cpu")) {
				rmdir(q->dir);
				return -EOPNOTSUPP;
			}
		}
		snprintf(text, sizeof(text), "%ld %d", quota_us, QUOTA_PERIOD_US);
		r = write_file(q->dir, "cpu.max", text);
	} else {
		snprintf(text, sizeof(text), "%d", QUOTA_PERIOD_US);
		r = write_file(q->dir, "cpu.cfs_period_us", text);
		snprintf(text, sizeof(text), "%ld", quota_us);
		if (r == 0)
			r = write_file(q->dir, "cpu.cfs_quota_us", text);
	}
	if (r < 0) {
		rmdir(q->dir);
		return r;
	}
	q->v2 = v2;
	return 0;
}

/* cpu.stat's nr_periods and nr_throttled. */
static void
read_throttling(const struct quota *q, uint64_t *periods, uint64_t *throttled)
{
	char path[PATH_MAX], key[64];
	unsigned long long v;
	FILE *f;

	*periods = *throttled = 0;
	snprintf(path, sizeof(path), "%s/cpu.stat", q->dir);
	if ((f = fopen(path, "r")) == NULL)
		return;
	while (fscanf(f, "%63s %llu", key, &v) == 2) {
		if (strcmp(key, "nr_periods") == 0)
			*periods = v;
		else if (strcmp(key, "nr_throttled") == 0)
			*throttled = v;
	}
	fclose(f);
}

int
quota_apply(struct quota *q, pid_t root, double pct)
{
	char parent[400], text[32];
	pid_t *tree;
	int n, i, r = -ENOENT, v2;

	memset(q, 0, sizeof(*q));
	q->pct = pct;
	for (v2 = 1; v2 >= 0; v2--) {
		if (own_group(v2, parent, sizeof(parent)) < 0)
			continue;
		if ((r = make_group(q, v2, parent, pct)) == 0)
			break;
	}
	if (r < 0) {
		snprintf(q->why, sizeof(q->why), "no CPU quota: neither cgroup v2 "
		    "cpu.max nor v1 cpu.cfs_quota_us can be set here (%s)",
		    strerror(-r));
		return r;
	}
	if ((n = tree_pids(root, &tree)) < 0) {
		snprintf(q->why, sizeof(q->why), "no server process tree");
		rmdir(q->dir);
		return n;
	}
	for (i = 0; i < n; i++) {
		snprintf(text, sizeof(text), "%d", (int)tree[i]);
		if ((r = write_file(q->dir, "cgroup.procs", text)) < 0 && i == 0) {
			snprintf(q->why, sizeof(q->why), "cannot move the server "
			    "into %.120s: %s", q->dir, strerror(-r));
			free(tree);
			rmdir(q->dir);
			return r;
		}
	}
	free(tree);
	q->on = q->applied = 1;
	return 0;
}

void
quota_mark(struct quota *q, int end)
{
	if (!q->on)
		return;
	if (end)
		read_throttling(q, &q->periods1, &q->throttled1);
	else
		read_throttling(q, &q->periods0, &q->throttled0);
}

double
quota_throttled_pct(const struct quota *q)
{
	uint64_t p = q->periods1 - q->periods0;

	if (!q->applied || p == 0)
		return -1;
	return 100.0 * (double)(q->throttled1 - q->throttled0) / (double)p;
}

/* Every process back to the parent group, and the group removed. */
void
quota_release(struct quota *q)
{
	char path[PATH_MAX], line[32];
	FILE *f;
	int tries;

	if (!q->on)
		return;
	for (tries = 0; tries < 10 && rmdir(q->dir) < 0 && errno == EBUSY;
	    tries++) {
		snprintf(path, sizeof(path), "%s/cgroup.procs", q->dir);
		if ((f = fopen(path, "r")) == NULL)
			break;
		while (fgets(line, sizeof(line), f))
			write_file(q->parent, "cgroup.procs", line);
		fclose(f);
	}
	q->on = 0;
}
