# tests/bench/rank.awk — the ranking score of each model, from raw.csv.
#
#	awk -F, -v rp=c100 -f tests/bench/rank.awk raw.csv
#
# prints "MODEL SCORE REPS" for every model run at point RP: its server
# CPU per message divided by the geometric mean of all models' in the
# same repetition, the median of that over the repetitions.
#
# Why relative to the repetition: the machines this runs on are shared,
# and their slow spells (a neighbour's job, a lower clock) last longer
# than one repetition, which runs every server back to back in about
# 15 seconds.  A slow spell then slows every model of that repetition
# alike, and the ratio cancels it, where a median or a minimum of the raw
# figures keeps it (seen: one model's two repetitions 4.36 and 6.77
# us/msg, its median moved by 25%).  The repetition with perf counting
# system calls is left out when two others remain: the tracepoint slows
# the models that make system calls more than those that do not.

function isort(a, n,   i, j, t) {
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j - 1] > a[j]; j--) {
			t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
		}
}

NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
$col["point"] == rp && $col["server_cpu_us_per_msg"] != "" &&
    $col["server_cpu_us_per_msg"] + 0 > 0 && $col["label"] !~ /^echo-uring-/ {
	m = $col["label"]; r = $col["rep"]
	cost[m, r] = $col["server_cpu_us_per_msg"] + 0
	if (!(m in seen)) { seen[m] = 1; models[++nm] = m }
	if (!(r in rseen)) { rseen[r] = 1; reps[++nr] = r }
	if ($col["perf"] == 1) perf[r] = 1
}
END {
	for (k = 1; k <= nr; k++)
		if (!(reps[k] in perf)) nclean++
	nu = 0
	for (k = 1; k <= nr; k++)
		if (nclean < 2 || !(reps[k] in perf)) used[++nu] = reps[k]
	# The geometric mean of each repetition over the models that ran
	# in every used repetition, so that each is divided by the same set.
	for (i = 1; i <= nm; i++) {
		common[models[i]] = 1
		for (k = 1; k <= nu; k++)
			if (!((models[i], used[k]) in cost)) delete common[models[i]]
	}
	for (k = 1; k <= nu; k++) {
		s = 0; n = 0
		for (m in common) { s += log(cost[m, used[k]]); n++ }
		g[used[k]] = n ? exp(s / n) : 0
	}
	for (i = 1; i <= nm; i++) {
		m = models[i]; n = 0
		for (k = 1; k <= nu; k++)
			if ((m, used[k]) in cost && g[used[k]] > 0)
				a[++n] = cost[m, used[k]] / g[used[k]]
		if (n == 0) continue
		isort(a, n)
		printf "%s %.4f %d\n", m, n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2, n
	}
}
