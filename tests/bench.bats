#!/usr/bin/env bats
# echo-bench and the comparison report.
#
# echo-bench itself: usage errors, verification that catches a wrong echo,
# the three modes, the machine-readable outputs.  The report: one
# `tests/bench/run --quick` (under a minute) whose CSV, plots and summary
# are checked for being there and sane, not for any figure's value: this
# is a smoke test, the figures belong to `make bench`.
#
# By hand, from the build directory: tests/run-bats $top_srcdir/tests/bench.bats

bats_require_minimum_version 1.5.0

setup_file() {
	export BENCH_OUT=$BATS_FILE_TMPDIR/report
}

setup() {
	load helpers/common
	BENCH=$top_builddir/src/echo-bench
	SERVER_CMD=("$top_builddir/src/echo-epoll")
	[[ -x $BENCH ]] || fail "$BENCH is not built"
}

teardown() {
	cleanup_processes
}

# A CSV field of echo-bench's output (header line + one row) by name.
csv_field() { # CSV-TEXT NAME
	awk -F, -v name="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i; next }
	    NR == 2 { print $c }' <<<"$1"
}

@test "echo-bench: a bad command line exits 64 with a reason" {
	run without_fd3 "$BENCH" -c -1
	assert_equal "$status" 64
	assert_output --partial "-c"
	run without_fd3 "$BENCH" --syscalls 127.0.0.1:1
	assert_equal "$status" 64
	assert_output --partial "--server-pid"
	run without_fd3 "$BENCH" -S nosuch
	assert_equal "$status" 64
	run without_fd3 "$BENCH" 'not an address'
	assert_equal "$status" 64
}

@test "echo-bench: --help and --version on stdout, exit 0" {
	run without_fd3 "$BENCH" --help
	assert_success
	assert_output --partial "--server-pid"
	run without_fd3 "$BENCH" --version
	assert_success
	assert_output --partial "echo-bench"
}

@test "echo-bench: nobody listening is an error, not a crash" {
	start_server
	local addr=$SRV_ADDR
	stop_server
	run without_fd3 "$BENCH" -q -c 3 -D 0.2 -W 0 --connect-timeout 5 "$addr"
	assert_equal "$status" 69
	assert_output --partial "3 connection (3 connect)"
}

@test "echo-bench: closed loop against echo-epoll, every byte checked, server measured" {
	start_server
	run without_fd3 "$BENCH" -q --csv -c 20 -d 2 -s 1000 -i 50 -D 0.4 -W 0.1 \
	    --server-pid "$SRV_PID" "$SRV_ADDR"
	assert_success
	assert_equal "$(csv_field "$output" mismatches)" 0
	assert_equal "$(csv_field "$output" errors)" 0
	assert_equal "$(csv_field "$output" stalled)" 0
	(($(csv_field "$output" msgs) > 100)) || fail "too few messages: $output"
	# The server did the work: some CPU time, per message, and memory.
	awk -v v="$(csv_field "$output" server_cpu_us_per_msg)" 'BEGIN { exit !(v > 0 && v < 10000) }' ||
	    fail "server CPU per message not sane: $output"
	(($(csv_field "$output" server_mem_kb) > 0)) || fail "no server memory: $output"
	stop_server
}

@test "echo-bench: both engines carry big pipelined messages intact (short reads and writes)" {
	start_server
	local e
	for e in epoll uring; do
		if [[ $e == uring ]] && ! "$BENCH" --help | grep -q -- '--engine'; then
			continue
		fi
		run without_fd3 "$BENCH" -q --csv -E "$e" -c 8 -d 4 -s 48k -D 0.3 -W 0.1 "$SRV_ADDR"
		if [[ $e == uring && $status == 69 ]]; then
			continue	# io_uring not allowed here: said so, exit 69
		fi
		assert_success
		assert_equal "$(csv_field "$output" mismatches)" 0
		assert_equal "$(csv_field "$output" errors)" 0
		(($(csv_field "$output" msgs) > 8)) || fail "-E $e: too few messages: $output"
	done
	stop_server
}

@test "echo-bench: a wrong echo is counted as a mismatch, exit 1" {
	start_server -s upper
	# Letters come back upper-cased: checked as echo, that is a mismatch.
	run without_fd3 "$BENCH" -q --csv -c 4 -D 0.2 -W 0 "$SRV_ADDR"
	assert_equal "$status" 1
	(($(csv_field "$output" mismatches) >= 1)) || fail "no mismatch counted: $output"
	# Checked as upper, it is right.
	run without_fd3 "$BENCH" -q --csv -S upper -c 4 -D 0.2 -W 0 "$SRV_ADDR"
	assert_success
	assert_equal "$(csv_field "$output" mismatches)" 0
	stop_server
}

@test "echo-bench: --service rpc checks every byte of the pong frames (echo-epoll, echo-thread)" {
	local srv e
	for srv in echo-epoll echo-thread; do
		SERVER_CMD=("$top_builddir/src/$srv")
		start_server -s rpc
		for e in epoll uring; do
			run without_fd3 "$BENCH" -q --csv -S rpc -E "$e" -c 10 -d 2 -s 300 -i 5 \
			    -D 0.5 -W 0.1 "$SRV_ADDR"
			if [[ $e == uring && $status == 69 ]]; then
				continue	# io_uring not allowed here: said so, exit 69
			fi
			assert_success
			assert_equal "$(csv_field "$output" mismatches)" 0
			assert_equal "$(csv_field "$output" errors)" 0
			assert_equal "$(csv_field "$output" size)" 300
			(($(csv_field "$output" msgs) > 0)) || fail "$srv -E $e: no messages: $output"
		done
		stop_server
	done
}

@test "echo-bench: --service rpc-le, little-endian frames, every pong byte checked (echo-epoll)" {
	SERVER_CMD=("$top_builddir/src/echo-epoll")
	start_server -s rpc
	run without_fd3 "$BENCH" -q --csv -S rpc-le -E epoll -c 10 -d 2 -s 300 -i 5 \
	    -D 0.5 -W 0.1 "$SRV_ADDR"
	assert_success
	assert_equal "$(csv_field "$output" mismatches)" 0
	assert_equal "$(csv_field "$output" errors)" 0
	(($(csv_field "$output" msgs) > 0)) || fail "rpc-le: no messages: $output"
	# A body of 256 bytes (-s 260) is the auto rule's blind spot: refused.
	run --separate-stderr without_fd3 "$BENCH" -q -S rpc-le -s 260 -c 1 -D 0.2 "$SRV_ADDR"
	assert_equal "$status" 64
	[[ $stderr == *"multiple of 256"* ]] || fail "no reason given: $stderr"
	stop_server
}

@test "echo-bench: --service rpc against an echo server is a mismatch, exit 1" {
	start_server -s echo
	# The echo of a request frame is not the pong frame: its length differs.
	run without_fd3 "$BENCH" -q --csv --service rpc -c 4 -D 0.2 -W 0 "$SRV_ADDR"
	assert_equal "$status" 1
	(($(csv_field "$output" mismatches) >= 1)) || fail "no mismatch counted: $output"
	assert_equal "$(csv_field "$output" msgs)" 0
	stop_server
}

@test "echo-bench: open loop keeps its rate, churn counts connections" {
	start_server
	run without_fd3 "$BENCH" -q --csv -c 10 -r 5000 -D 0.5 -W 0.1 "$SRV_ADDR"
	assert_success
	awk -v v="$(csv_field "$output" msgs_per_s)" 'BEGIN { exit !(v > 4500 && v < 5500) }' ||
	    fail "open loop at 5000/s gave: $output"
	run without_fd3 "$BENCH" -q --csv --churn -c 4 -D 0.3 -W 0.1 "$SRV_ADDR"
	assert_success
	awk -v v="$(csv_field "$output" conns_per_s)" 'BEGIN { exit !(v > 10) }' ||
	    fail "churn gave: $output"
	stop_server
}

@test "echo-bench: --fanout counts every chat line delivered, checks each, and knows an echo server" {
	local srv
	for srv in echo-epoll echo-thread; do
		SERVER_CMD=("$top_builddir/src/$srv")
		start_server -s chat
		run without_fd3 "$BENCH" -q --csv --fanout -c 12 -d 2 -D 0.5 -W 0.1 --server-pid "$SRV_PID" "$SRV_ADDR"
		assert_success
		assert_equal "$(csv_field "$output" mode)" fanout
		assert_equal "$(csv_field "$output" service)" chat
		assert_equal "$(csv_field "$output" mismatches)" 0
		assert_equal "$(csv_field "$output" errors)" 0
		# Lines reach the 11 listeners: delivered lines outnumber sent.
		(($(csv_field "$output" msgs) > 11)) || fail "$srv: too few lines: $output"
		stop_server
	done
	SERVER_CMD=("$top_builddir/src/echo-epoll")
	start_server -s echo
	run without_fd3 "$BENCH" -q --csv --fanout -c 3 -D 0.3 -W 0.1 --connect-timeout 1 "$SRV_ADDR"
	assert_equal "$status" 1
	output=$(grep -v '^echo-bench: warning' <<<"$output")	# no welcome: set-up times out
	(($(csv_field "$output" mismatches) >= 1)) || fail "an echo server passed as chat: $output"
	stop_server
	run without_fd3 "$BENCH" --fanout -c 1 127.0.0.1:1
	assert_equal "$status" 64
	run without_fd3 "$BENCH" -S chat 127.0.0.1:1
	assert_equal "$status" 64
}

@test "echo-bench: --json is one object with the CSV's figures" {
	start_server
	run without_fd3 "$BENCH" -q --json -c 2 -D 0.2 -W 0 "$SRV_ADDR"
	assert_success
	assert_equal "${#lines[@]}" 1
	assert_output --regexp '^\{"label":"","mode":"closed",.*"p99_us":[0-9.]+,.*"mismatches":0,.*\}$'
	stop_server
}

@test "echo-bench: --syscalls counts the server's system calls, or says why not" {
	start_server
	run without_fd3 "$BENCH" -q -c 5 -D 0.3 -W 0.1 --server-pid "$SRV_PID" --syscalls "$SRV_ADDR"
	assert_success
	if [[ $output == *"syscalls/msg not counted"* ]]; then
		skip "perf cannot count here: $(grep 'not counted' <<<"$output")"
	fi
	# An epoll loop makes two to three system calls per echoed message.
	local v
	v=$(sed -n 's/^ *\([0-9.]*\) syscalls\/msg$/\1/p' <<<"$output")
	awk -v v="$v" 'BEGIN { exit !(v >= 1 && v <= 4) }' || fail "syscalls/msg not sane: $output"
	stop_server
}

@test "echo-bench: --server-quota caps the server in a cgroup for the window, then lets it go" {
	run without_fd3 "$BENCH" --server-quota 30 127.0.0.1:1
	assert_equal "$status" 64
	assert_output --partial "--server-pid"
	run without_fd3 "$BENCH" --server-quota 0 --server-pid 1 127.0.0.1:1
	assert_equal "$status" 64
	start_server
	local before out
	before=$(grep -E '^[0-9]+:(.*[:,])?cpu([:,]|$)|^0::' "/proc/$SRV_PID/cgroup")
	# While it runs the server is in a group of its own (or a warning
	# says why it cannot be); the CSV says which.
	without_fd3 "$BENCH" -q --csv -c 20 -D 3 -W 0.2 --server-pid "$SRV_PID" --server-quota 30 \
	    "$SRV_ADDR" >"$BATS_TEST_TMPDIR/out" 2>"$BATS_TEST_TMPDIR/err" &
	local bp=$!
	local grp=
	wait_until 30 grep -q echo-bench- "/proc/$SRV_PID/cgroup" &&
	    grp=$(grep -o 'echo-bench-[0-9]*' "/proc/$SRV_PID/cgroup" | head -n 1)
	wait "$bp" || fail "echo-bench failed: $(cat "$BATS_TEST_TMPDIR/err")"
	# The warning is read once echo-bench is done: it may come late.
	[[ -n $grp ]] || grep -q 'no CPU quota' "$BATS_TEST_TMPDIR/err" ||
	    fail "not capped, no warning: $(cat "$BATS_TEST_TMPDIR/err")"
	out=$(cat "$BATS_TEST_TMPDIR/out")
	assert_equal "$(csv_field "$out" mismatches)" 0
	if grep -q 'no CPU quota' "$BATS_TEST_TMPDIR/err"; then
		assert_equal "$(csv_field "$out" server_quota_pct)" ""
	else
		assert_equal "$(csv_field "$out" server_quota_pct)" 30
		awk -v v="$(csv_field "$out" server_throttled_pct)" 'BEGIN { exit !(v >= 0 && v <= 100) }' ||
		    fail "throttled share not sane: $out"
	fi
	[[ $(csv_field "$out" regime) =~ ^(server-saturated|client-bound|neither)$ ]] || fail "no regime: $out"
	# Afterwards it is back where it was, and the group is gone.
	assert_equal "$(grep -E '^[0-9]+:(.*[:,])?cpu([:,]|$)|^0::' "/proc/$SRV_PID/cgroup")" "$before"
	if [[ -n $grp ]]; then
		run find /sys/fs/cgroup -maxdepth 4 -name "$grp"
		assert_output ""
	fi
	stop_server
}

# ---- the report ------------------------------------------------------------

# --quick takes about two minutes on an idle two-core machine (ten or
# more on a busy one); the timeout is only there for a hang, since
# `make check -j` and anyone else on the machine share its cores.
run_report() {
	[[ -f $BENCH_OUT/summary.md ]] && return 0
	without_fd3 timeout 2400 bash "$top_srcdir/tests/bench/run" --quick --out "$BENCH_OUT" \
	    >"$BATS_FILE_TMPDIR/report.log" 2>&1
}

@test "report: tests/bench/run --quick finishes and writes its files" {
	run_report || fail "tests/bench/run --quick failed: $(tail -n 20 "$BATS_FILE_TMPDIR/report.log")"
	local f
	for f in raw.csv summary.csv summary.md; do
		[[ -s $BENCH_OUT/$f ]] || fail "$f missing or empty"
	done
	# How long it took, and the load around it, for whoever reads the log
	# (a time limit is the benchmark's claim, not a test's: see echo-bench(1)).
	grep -h '^Generated by\|^- load' "$BENCH_OUT/summary.md" | sed 's/^/# /' >&3
}

@test "report: raw.csv has one sane row per run, no mismatch anywhere" {
	run_report || skip "the report did not run"
	run awk -F, 'NR == 1 { n = NF; for (i = 1; i <= NF; i++) c[$i] = i; next }
	    NF != n { print "line " NR ": " NF " fields, header has " n; bad = 1 }
	    $c["mismatches"] != 0 { print "line " NR ": mismatches"; bad = 1 }
	    $c["msgs_per_s"] <= 0 { print "line " NR ": no throughput"; bad = 1 }
	    END { exit bad || NR < 2 }' "$BENCH_OUT/raw.csv"
	assert_success
	# Every model built is in the summary, echo-epoll at least.
	run grep -c '^echo-epoll,' "$BENCH_OUT/summary.csv"
	assert_success
	((output >= 3)) || fail "echo-epoll has $output points in summary.csv"
}

# check_plot DIR NAME: NAME.png is a PNG with something drawn, NAME.svg an SVG.
check_plot() {
	[[ $(head -c 8 "$1/$2.png" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]] ||
	    fail "$2.png is not a PNG"
	(($(stat -c %s "$1/$2.png") > 2000)) || fail "$2.png is nearly empty"
	grep -q '<svg' "$1/$2.svg" || fail "$2.svg is not an SVG"
}

# check_plots DIR: every plot of the report; the system calls, which need
# perf, are either plotted or a plot that says why they were not measured
# (and then the summary says so too).
check_plots() {
	local p
	for p in throughput cpu-conns cpu-idle latency syscalls memory; do
		check_plot "$1" "$p"
	done
	if grep -q '^System calls per message: not measured: ' "$1/summary.md"; then
		grep -q 'not measured: ' "$1/syscalls.svg" || fail "syscalls.svg does not say why it is empty"
	else
		grep -q 'not measured' "$1/syscalls.svg" && fail "syscalls.svg says not measured, summary.md does not"
		awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "server_syscalls_per_msg") c = i; next }
		    $c > 0 { ok = 1 } END { exit !ok }' "$1/summary.csv" ||
		    fail "summary.md does not say the system calls were not measured, summary.csv has none"
	fi
}

@test "report: the plots are real PNG and SVG files" {
	run_report || skip "the report did not run"
	command -v gnuplot >/dev/null || skip "gnuplot is not installed"
	check_plots "$BENCH_OUT"
}

# A directory of links to every command in $PATH but NAME: a machine
# without it, as the README's install leaves one without linux-perf.
path_without() { # NAME DIR
	local d f IFS=:
	mkdir -p "$2"
	for d in $PATH; do
		[[ -d $d ]] || continue
		for f in "$d"/*; do
			[[ ${f##*/} == "$1" || -e $2/${f##*/} || ! -x $f ]] && continue
			ln -s "$f" "$2/${f##*/}"
		done
	done
}

@test "report without perf (hidden from PATH): everything else measured, and it says why not" {
	command -v gnuplot >/dev/null || skip "gnuplot is not installed"
	local shadow=$BATS_TEST_TMPDIR/bin out=$BATS_TEST_TMPDIR/noperf
	path_without perf "$shadow"
	PATH=$shadow command -v perf && fail "perf still found"
	# echo-bench itself says so, promptly.
	start_server
	run without_fd3 env PATH="$shadow" "$BENCH" -q -c 2 -D 0.2 -W 0.1 --server-pid "$SRV_PID" \
	    --syscalls "$SRV_ADDR"
	assert_success
	assert_output --partial "syscalls/msg not counted: perf not installed"
	stop_server
	run without_fd3 env PATH="$shadow" timeout 600 bash "$top_srcdir/tests/bench/run" --quick \
	    --servers "echo-epoll echo-poll" --points "c1 c10 i100" --out "$out"
	assert_success
	run cat "$out/summary.md"
	assert_line "System calls per message: not measured: perf not installed."
	assert_output --partial "| echo-epoll |"
	check_plots "$out"
	# Every run measured the rest: throughput, no mismatch, and the server
	# CPU (which echo-bench leaves empty when a loaded machine woke it too
	# late to time the window: most runs must have it).
	run awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
	    $c["server_syscalls_per_msg"] != "" { print "line " NR ": syscalls counted"; bad = 1 }
	    $c["server_cpu_us_per_msg"] > 0 { cpu++ }
	    !($c["msgs_per_s"] > 0) || $c["mismatches"] != 0 { print "line " NR ": bad run"; bad = 1 }
	    END { if (cpu < (NR - 1) / 2) print cpu " of " NR - 1 " runs with server CPU"; exit bad || NR < 4 || cpu < (NR - 1) / 2 }' "$out/raw.csv"
	assert_success
}

@test "report: the server-saturated set is run, and every run says its regime" {
	run_report || skip "the report did not run"
	run grep -c '^## The two regimes$' "$BENCH_OUT/summary.md"
	assert_output 1
	# Each capped point of each model: a regime, and a quota unless the
	# summary says none could be set.
	local noquota=0
	grep -q 'could not be run as such' "$BENCH_OUT/summary.md" && noquota=1
	run awk -F, -v noquota="$noquota" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
	    $c["point"] ~ /\/q[0-9]+$/ { n++
		if ($c["regime"] !~ /^(server-saturated|client-bound|neither|mixed:.*)$/) { print NR ": regime " $c["regime"]; bad = 1 }
		if (!noquota && $c["quota"] == "") { print NR ": no quota"; bad = 1 }
		if (!($c["msgs_per_s"] > 0)) { print NR ": no throughput"; bad = 1 }
		if ($c["server_cpu_us_per_msg"] > 0) cpu++
		if ($c["server_cpu_us_per_msg"] != "" && !($c["cpu_us_min"] <= $c["server_cpu_us_per_msg"] && $c["server_cpu_us_per_msg"] <= $c["cpu_us_max"])) { print NR ": spread"; bad = 1 } }
	    END { if (cpu < n / 2) print cpu " of " n " with server CPU"; exit bad || n < 3 || cpu < n / 2 }' "$BENCH_OUT/summary.csv"
	assert_success
	command -v gnuplot >/dev/null || return 0
	check_plot "$BENCH_OUT" saturated-throughput
	check_plot "$BENCH_OUT" saturated-cpu
}

@test "report: the documents' workloads: each figure present, positive, no mismatch" {
	run_report || skip "the report did not run"
	# Churn (kN), big messages (sS), pipelined (dD), rpc, open loop (oP):
	# every model that ran one has its figures, and its plot is there.
	local w f n=0
	for w in k s d :rpc o f; do
		run awk -F, -v w="$w" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
		    function is(p) { sub(/\/q[0-9]+$/, "", p); return w == "k" ? p ~ /^k[0-9]+$/ : w == "f" ? p ~ /^f[0-9]+$/ : w == ":rpc" ? p ~ /:rpc$/ : p ~ ("^c[0-9]+.*" w "[0-9]+k?$") }
		    $c["model"] !~ /^echo-uring-/ && is($c["point"]) { n++; p = $c["point"]
			r = w == "k" ? $c["conns_per_s"] : $c["msgs_per_s"]
			if (!(r > 0)) { print $c["model"] " " p ": no rate"; bad = 1 }
			if ($c["server_cpu_us_per_msg"] > 0) cpu++
			if ($c["mismatches"] != 0) { print $c["model"] " " p ": mismatches"; bad = 1 }
			if (w == "o" && !($c["p99_us"] > 0 && $c["p999_us"] >= $c["p99_us"] && $c["p99_us"] >= $c["p50_us"])) { print $c["model"] " " p ": percentiles"; bad = 1 } }
		    END { if (!n) print "none"; if (cpu < n / 2) print cpu " of " n " with server CPU"; exit bad || !n || cpu < n / 2 }' "$BENCH_OUT/summary.csv"
		assert_success
	done
	for f in "$BENCH_OUT"/data/workload-*.dat; do
		n=$((n + 1))
		command -v gnuplot >/dev/null || continue
		w=${f##*/}
		check_plot "$BENCH_OUT" "${w%.dat}"
	done
	((n >= 5)) || fail "only $n workload plots"
	run grep -c '^### ' "$BENCH_OUT/summary.md"
	((output >= 5)) || fail "only $output workload tables in summary.md"
}

@test "report: echo-epoll's listener shapes: each shape and worker count present, positive, counted per worker" {
	run_report || skip "the report did not run"
	local f=$BENCH_OUT/data/listeners.csv
	[[ -s $f ]] || fail "data/listeners.csv missing or empty"
	# shape,workers,rep,conns_per_s,sched_per_conn,cpu_us_per_conn,regime,errors,accepts,wakeups,empty,busiest_share
	run awk -F, 'NR == 1 { next }
	    { k = $1 " -w " $2; if (!(k in seen)) { seen[k] = 1; nk++ }
	      if (!($4 > 0)) { print k ": no connections per second"; bad = 1 }
	      if (!($9 > 0 && $10 > 0)) { print k ": no accepts or no wake-ups in the stop report"; bad = 1 }
	      if (!($12 > 0 && $12 <= 1)) { print k ": busiest worker share " $12; bad = 1 }
	      if ($8 != 0) { print k ": " $8 " errors"; bad = 1 }
	      # A listener of its own is never emptied by another worker.
	      if ($1 == "reuseport" && $11 != 0) { print k ": " $11 " empty wake-ups"; bad = 1 } }
	    END { if (nk != 6) print nk " shape and worker configurations, want 6"; exit bad || nk != 6 }' "$f"
	assert_success
	run sed -n '/^## echo-epoll -w: sharing the port$/,/^## /p' "$BENCH_OUT/summary.md"
	assert_success
	(($(grep -cE '^\| [24] \| (reuseport|exclusive|herd) \| [0-9.]+ \|' <<<"$output") == 6)) ||
		fail "summary.md: no table of the six configurations: $output"
	command -v gnuplot >/dev/null && check_plot "$BENCH_OUT" listeners
	true
}

@test "report: where the time goes: network path and own share, or why not" {
	run_report || skip "the report did not run"
	run sed -n '/^## Where the time goes$/,/^## /p' "$BENCH_OUT/summary.md"
	assert_output --partial "## Where the time goes"
	command -v gnuplot >/dev/null && check_plot "$BENCH_OUT" decomposition
	[[ $output == *"Not measured: "* ]] && return 0
	# Measured for some model (the busy-waiting echo-nonblock at least is
	# always on the CPU to be sampled): both shares positive, and they add
	# up to no more than the CPU of a run.
	run awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
	    $c["net_us_per_msg"] != "" { n++
		if (!($c["net_us_per_msg"] > 0 && $c["own_us_per_msg"] > 0)) { print $1 ": shares"; bad = 1 } }
	    END { exit bad || !n }' "$BENCH_OUT/summary.csv"
	assert_success
}

@test "report: costs.csv has every model's costs, and costs-mdoc renders them" {
	run_report || skip "the report did not run"
	run awk -F, 'NR == 1 { n = NF; next } NF != n { bad = 1 } $1 == "echo-epoll" && $4 > 0 { ok = 1 } END { exit bad || !ok }' \
	    "$BENCH_OUT/costs.csv"
	assert_success
	run sh "$top_srcdir/tests/bench/costs-mdoc" "$BENCH_OUT/costs.csv"
	assert_success
	assert_line --regexp '^\.It echo-epoll Ta [0-9.]+\*? Ta '
	assert_line ".El"
	command -v mandoc >/dev/null || return 0
	run bash -c "{ printf '.Dd May 1, 2026\n.Dt T 7\n.Os\n.Sh NAME\n.Nm t\n.Nd t\n.Sh COSTS, MEASURED\n'; cat; } | mandoc -T lint -W warning" <<<"$output"
	assert_success
}

@test "report: summary.md ranks the models and describes the machine" {
	run_report || skip "the report did not run"
	run cat "$BENCH_OUT/summary.md"
	assert_output --partial "## Machine"
	assert_output --partial "## Ranking"
	assert_output --regexp '\| 1 \| [a-z-]+ \| [0-9.]+ \|'
	assert_output --partial "| echo-epoll |"
	assert_output --partial "## Targets"
	# ranking.txt: the tiers, one line each, every ranked model once.
	run cat "$BENCH_OUT/ranking.txt"
	assert_line --regexp '^1: [a-z]'
	assert_line --regexp '^[0-9]+: .*\<echo-epoll\>'
	run awk '{ for (i = 2; i <= NF; i++) if (seen[$i]++) { print "twice: " $i; bad = 1 } } END { exit bad }' "$BENCH_OUT/ranking.txt"
	assert_success
}
