#!/usr/bin/env bats
# What each IO model documents about itself, beyond the conformance suite:
# the fork server leaves no zombie, the thread and pool servers hold their
# caps, prefork's accept locks and per-child counts, the worker supervisor's
# back-off (echo-epoll -w, echo-prefork), echo-epoll's three listener
# shapes and their stop report, the busy-wait server's
# CPU, select's FD_SETSIZE ceiling, sigio's real-time queue overflow; and
# the source layout (no include cycle, no file over 1,000 lines).
#
# By hand, from the build directory: tests/run-bats $top_srcdir/tests/models.bats

bats_require_minimum_version 1.5.0

setup() {
	load helpers/common
}

teardown() {
	cleanup_processes
}

use() { # BINARY [ARGS...]
	SERVER_CMD=("$top_builddir/src/$1" "${@:2}")
	[[ -x ${SERVER_CMD[0]} ]] || fail "src/$1 is not built in $top_builddir"
}

# Tasks (threads) of a process, from /proc.
threads_of() { # PID
	awk '/^Threads:/ { print $2 }' "/proc/$1/status"
}

# The system call a task is blocked in (first field of /proc/PID/syscall).
syscall_of() { # PID
	local f
	read -r f _ <"/proc/$1/syscall" || return 1
	echo "$f"
}

# CPU ticks the server's group uses over a one-second window.
cpu_ticks_1s() { # PGID
	local t0 t1
	t0=$(group_cpu_ticks "$1")
	sleep 1
	t1=$(group_cpu_ticks "$1")
	echo $((t1 - t0))
}

# ---- processes die with their parent ---------------------------------------------

# The children of PID.
children_of() { # PID
	pgrep -P "$1" 2>/dev/null || true
}

all_dead() { # PID...
	local p
	for p in "$@"; do
		proc_dead "$p" || return 1
	done
}

@test "a SIGKILLed parent leaves no worker or child behind (epoll -w 2, prefork, fork)" {
	local cfg kids out=$BATS_TEST_TMPDIR/held pid
	for cfg in "echo-epoll -w 2" "echo-prefork -w 2" "echo-fork"; do
		# shellcheck disable=SC2086
		use $cfg
		start_server
		# Children that serve a client, too: echo-fork has no others.
		bg_iotest "$out" idle -n 2 "$SRV_ADDR"
		pid=$BG_PID
		wait_line "$out" '^ready' 30 "$pid" >/dev/null
		kids=$(children_of "$SRV_PID")
		[[ -n $kids ]] || fail "$cfg: no child processes"
		kill -KILL "$SRV_PID"
		wait "$SRV_PID" 2>/dev/null || true
		# shellcheck disable=SC2086
		wait_until 5 all_dead $kids ||
			fail "$cfg: children of the killed parent still running:
$(ps -o pid,ppid,stat,args -p "$(echo $kids | tr ' ' ,)")"
		release_bg "$pid"
		cleanup_processes
	done
}

# ---- echo-fork ------------------------------------------------------------------

@test "fork: 500 connections, then zero zombies and no child left" {
	use echo-fork
	start_server
	run iotest churn -n 500 "$SRV_ADDR"
	assert_success
	# Reaped as they exit (SIGCHLD), not at the next accept: bounded wait.
	wait_until 5 eval '(($(group_zombies "$SRV_PID") == 0))' ||
		fail "zombies after 500 connections: $(group_ps "$SRV_PID")"
	wait_until 5 eval '[[ $(group_pids "$SRV_PID") == "$SRV_PID" ]]' ||
		fail "children left after 500 closed connections: $(group_ps "$SRV_PID")"
	stop_server
}

@test "fork: -m 3 caps live children, the next client waits" {
	use echo-fork
	start_server -m 3
	local out=$BATS_TEST_TMPDIR/held pid line n
	bg_iotest "$out" idle -k -P 1500 -n 5 "$SRV_ADDR"
	pid=$BG_PID
	line=$(wait_line "$out" '^ready' 30 "$pid")
	[[ $line == "ready served=3 closed=0 pending=2" ]] || fail "with -m 3: $line"
	n=$(group_pids "$SRV_PID" | wc -l)
	((n == 4)) || fail "$n processes with -m 3 (want the parent and 3 children): $(group_ps "$SRV_PID")"
	release_bg "$pid"
	((BG_STATUS == 0)) || fail "held clients: $(cat "$out" "$out.err")"
	run iotest echo "$SRV_ADDR"
	assert_success
	stop_server
}

@test "fork: SIGTERM finishes children serving clients, reaps them all" {
	use echo-fork
	start_server
	local out=$BATS_TEST_TMPDIR/held pid
	bg_iotest "$out" idle -E -n 20 "$SRV_ADDR"
	pid=$BG_PID
	wait_line "$out" '^ready' 30 "$pid" >/dev/null
	(($(group_pids "$SRV_PID" | wc -l) == 21)) || fail "not one child per client: $(group_ps "$SRV_PID")"
	stop_server
	release_bg "$pid"
	((BG_STATUS == 0)) || fail "clients: $(cat "$out" "$out.err")"
}

# ---- echo-thread ------------------------------------------------------------------

@test "thread: -m 2 caps live threads; the next clients wait in the backlog" {
	use echo-thread
	start_server -m 2
	local out=$BATS_TEST_TMPDIR/held pid line
	bg_iotest "$out" idle -k -P 1500 -n 5 "$SRV_ADDR"
	pid=$BG_PID
	line=$(wait_line "$out" '^ready' 30 "$pid")
	# Documented: at the cap the main thread stops accepting; nobody is refused.
	[[ $line == "ready served=2 closed=0 pending=3" ]] || fail "with -m 2: $line"
	(($(threads_of "$SRV_PID") == 3)) ||
		fail "$(threads_of "$SRV_PID") threads with -m 2 (want main + 2)"
	run iotest echo -T 2 "$SRV_ADDR"
	assert_failure
	assert_output --partial "timed out"
	release_bg "$pid"
	((BG_STATUS == 0)) || fail "held clients: $(cat "$out" "$out.err")"
	# Threads exit with their clients.
	wait_until 5 eval '(($(threads_of "$SRV_PID") == 1))' ||
		fail "$(threads_of "$SRV_PID") threads after every client left"
	run iotest echo "$SRV_ADDR"
	assert_success
	stop_server
}

@test "thread: a thread per client, 300 at once, bounded stacks" {
	use echo-thread --stack 64k
	start_server
	local out=$BATS_TEST_TMPDIR/held pid
	bg_iotest "$out" idle -n 300 "$SRV_ADDR"
	pid=$BG_PID
	wait_line "$out" '^ready' 30 "$pid" >/dev/null
	(($(threads_of "$SRV_PID") == 301)) || fail "$(threads_of "$SRV_PID") threads for 300 clients"
	release_bg "$pid"
	((BG_STATUS == 0)) || fail "clients: $(cat "$out" "$out.err")"
	stop_server
	run without_fd3 "$top_builddir/src/echo-thread" -p 0 --stack 1
	((status == 64)) || fail "--stack 1: exit $status, want 64"
}

@test "thread: the smallest --stack accepted survives the deepest rpc request accepted" {
	# The rpc parser recurses (jansson): 64 levels of nesting are served,
	# and the thread that parses them must not overflow its stack.
	local min svcclient=$top_srcdir/tests/helpers/svcclient.py
	run --separate-stderr without_fd3 "$top_builddir/src/echo-thread" -p 0 --stack 1
	((status == 64)) || fail "--stack 1: exit $status, want 64"
	[[ $stderr =~ out\ of\ range\ \(([0-9]+)\ to ]] || fail "no range in: $stderr"
	min=${BASH_REMATCH[1]}
	use echo-thread --stack "$min"
	start_server -s rpc
	run timeout -k 5 60 python3 -S "$svcclient" rpc-deep "$SRV_ADDR"
	assert_success
	run timeout -k 5 60 python3 -S "$svcclient" rpc-values "$SRV_ADDR"
	assert_success
	proc_alive "$SRV_PID" || fail "echo-thread --stack $min died: $(cat "$SRV_LOG")"
	stop_server
	start_server -s chat
	run timeout -k 5 60 python3 -S "$svcclient" chat-long "$SRV_ADDR" 4096
	assert_success
	stop_server
}

# ---- echo-threadpool ------------------------------------------------------------------

@test "threadpool: -w 2 --queue 2: two served, two queued, the rest refused with a log line" {
	use echo-threadpool -w 2 --queue 2
	start_server
	local out=$BATS_TEST_TMPDIR/held pid line
	(($(threads_of "$SRV_PID") == 3)) || fail "$(threads_of "$SRV_PID") threads for a pool of 2"
	bg_iotest "$out" idle -k -P 1500 -n 6 "$SRV_ADDR"
	pid=$BG_PID
	line=$(wait_line "$out" '^ready' 30 "$pid")
	[[ $line == "ready served=2 closed=2 pending=2" ]] || fail "pool 2, queue 2, 6 clients: $line"
	(($(grep -c 'connections queued: refused' "$SRV_LOG") == 2)) ||
		fail "want two refusal lines; log: $(cat "$SRV_LOG")"
	# The pool does not grow under load.
	(($(threads_of "$SRV_PID") == 3)) || fail "$(threads_of "$SRV_PID") threads under load"
	release_bg "$pid"
	((BG_STATUS == 0)) || fail "held clients: $(cat "$out" "$out.err")"
	# As many at once as the pool and the queue hold: all served.
	run iotest concurrent -n 4 -s 16k "$SRV_ADDR"
	assert_success
	stop_server
}

@test "threadpool: queued clients are served in turn once a worker is free" {
	use echo-threadpool -w 1
	start_server
	# One worker, 10 clients at once: each waits for the previous one.
	run iotest roundtrip -n 10 -m 50 "$SRV_ADDR"
	assert_success
	stop_server
}

@test "threadpool: SIGTERM under connect/close churn exits 0, ten times out of ten" {
	# The stop may land just after accept() returned a connection: the
	# loop must still see it as a stop, not as a failed accept (exit 71).
	use echo-threadpool -v
	local i out=$BATS_TEST_TMPDIR/churn pid
	for ((i = 1; i <= 10; i++)); do
		start_server
		bg_iotest "$out" churn -n 1000000 -s 1 -T 30 "$SRV_ADDR"
		pid=$BG_PID
		wait_line "$SRV_LOG" ': open ' 30 "$pid" >/dev/null
		stop_server || fail "try $i of 10"
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
}

# ---- echo-prefork ------------------------------------------------------------------

# A per-worker report at exit: "N S", the count of LOG's lines that match
# RE (an extended regex whose first group is a number) and their sum.
report_sum() { # LOG RE
	local sum=0 k
	for k in $(sed -En "s/.*$2.*/\\1/p" "$1"); do
		sum=$((sum + k))
	done
	echo "$(grep -cE "$2" "$1") $sum"
}

# Start the server, then 330 connections: 300 one after another and 30 at
# once (16 KiB each); stop it.
serve_330() {
	start_server
	run iotest churn -n 300 "$SRV_ADDR"
	assert_success
	run iotest concurrent -n 30 -s 16k "$SRV_ADDR"
	assert_success
	stop_server
}

# The -v report at exit: "child N: K connections" per child, and the total.
prefork_report() { # LOG
	report_sum "$1" 'child [0-9]+: ([0-9]+) connections$'
}

@test "prefork: every --accept-lock mode serves, and -v counts every connection per child" {
	local mode report
	for mode in none fcntl mutex; do
		use echo-prefork -w 3 -v --accept-lock "$mode"
		serve_330
		report=$(prefork_report "$SRV_LOG")
		echo "# --accept-lock $mode: $(grep 'child [0-9]*:' "$SRV_LOG" | sed 's/.*: child/child/' | tr '\n' ' ')" >&3
		[[ $report == "3 330" ]] ||
			fail "--accept-lock $mode: want 3 children and 330 connections, got '$report'; log: $(grep -v 'open\|close' "$SRV_LOG")"
		grep -q "330 connections in all, --accept-lock $mode" "$SRV_LOG" ||
			fail "no total line for $mode: $(tail -n 5 "$SRV_LOG")"
	done
	run without_fd3 "$top_builddir/src/echo-prefork" -p 0 --accept-lock flock
	((status == 64)) || fail "--accept-lock flock: exit $status, want 64"
}

# The child holding the accept lock is the one in accept4(2) (288); the
# others wait in fcntl(2) (72) or futex(2) (202).
accepting_child() { # PGID
	local p
	for p in $(group_pids "$1"); do
		[[ $p == "$1" ]] && continue
		[[ $(syscall_of "$p") == 288 ]] && echo "$p"
	done
	return 0
}

@test "prefork: a child killed while holding the accept lock is replaced, the lock recovered" {
	local mode victim n
	for mode in fcntl mutex; do
		use echo-prefork -w 3 --accept-lock "$mode"
		start_server
		run iotest echo "$SRV_ADDR"
		assert_success
		wait_until 5 eval '[[ $(accepting_child "$SRV_PID" | wc -l) == 1 ]]' ||
			fail "$mode: want exactly one child in accept: $(group_ps "$SRV_PID")"
		victim=$(accepting_child "$SRV_PID")
		kill -KILL "$victim"
		# The parent reaps it and forks a successor (after a delay if the
		# child was young): three children again, the victim gone.
		wait_until 5 eval '(($(group_pids "$SRV_PID" | wc -l) == 4)) && ! group_pids "$SRV_PID" | grep -qx "$victim"' ||
			fail "$mode: no replacement for $victim: $(group_ps "$SRV_PID")"
		grep -q "died (signal 9)" "$SRV_LOG" || fail "$mode: no log line for the death: $(cat "$SRV_LOG")"
		# A lock held by a dead process must not block the survivors.
		run iotest concurrent -n 12 -s 8k -T 10 "$SRV_ADDR"
		assert_success
		n=$(group_zombies "$SRV_PID")
		((n == 0)) || fail "$mode: $n zombies"
		stop_server
	done
}

# ---- the worker supervisor (echo-epoll -w, echo-prefork) ------------------------------

# SIGKILL every child of PID every 20 ms for 2 s; print how many distinct
# children were seen, each of them a fork.  The children come from /proc,
# read by the shell itself: no command to fork per round, so the rounds
# keep their pace on a loaded machine.
crash_loop() { # PID
	local -A seen=()
	local -a kids
	local p end
	end=$((${EPOCHREALTIME/./} + 2000000))
	while ((${EPOCHREALTIME/./} < end)); do
		kids=()
		read -r -a kids <"/proc/$1/task/$1/children" || true
		for p in "${kids[@]}"; do
			seen[$p]=1
			kill -KILL "$p" 2>/dev/null || true
		done
		sleep 0.02
	done
	echo "${#seen[@]}"
}

@test "workers: children killed as soon as they run are replaced with a back-off, not in a fork loop" {
	local bin n
	for bin in echo-epoll echo-prefork; do
		use "$bin" -w 2
		start_server
		n=$(crash_loop "$SRV_PID")
		# Two at start, then each slot once after 1 s: the next delay
		# (2 s) falls after the experiment.  Without a back-off: ~140.
		((n >= 2 && n <= 8)) ||
			fail "$bin -w 2: $n workers forked in 2 s of SIGKILL every 20 ms; log: $(cat "$SRV_LOG")"
		grep -qE "died \(signal 9\).*restarting in [0-9]+ ms" "$SRV_LOG" ||
			fail "$bin: no back-off in the log: $(cat "$SRV_LOG")"
		# The back-off ends: both workers come back and serve.
		wait_until 10 eval '(($(group_pids "$SRV_PID" | wc -l) == 3))' ||
			fail "$bin: the workers were not replaced: $(group_ps "$SRV_PID")"
		run iotest echo "$SRV_ADDR"
		assert_success
		stop_server
	done
}

# ---- echo-epoll -w: the three listener shapes --------------------------------------

# The stop report of echo-epoll -w: "worker N: K accepts, ..." per worker.
epoll_report() { # LOG
	report_sum "$1" ': worker [0-9]+: ([0-9]+) accepts, [0-9]+ listener wake-ups, [0-9]+ empty$'
}

@test "epoll -w 2: each listener shape serves, and the stop report counts every connection per worker" {
	local opt name
	for opt in "" --shared-listener --shared-listener=herd; do
		case $opt in
		"") name=reuseport ;;
		--shared-listener) name=exclusive ;;
		*) name=herd ;;
		esac
		# shellcheck disable=SC2086
		use echo-epoll -w 2 $opt
		serve_330
		echo "# $name: $(grep -E 'worker [0-9]+:|listener [a-z]+:' "$SRV_LOG" | sed 's/^[^ ]* //' | tr '\n' ' ')" >&3
		[[ $(epoll_report "$SRV_LOG") == "2 330" ]] ||
			fail "$name: want 2 workers and 330 accepts, got '$(epoll_report "$SRV_LOG")'; log: $(cat "$SRV_LOG")"
		grep -qE ": listener $name: 330 accepts in [1-9][0-9]* wake-ups \([0-9.]+ per wake-up\), [0-9]+ empty$" "$SRV_LOG" ||
			fail "$name: no total line: $(tail -n 3 "$SRV_LOG")"
		# A listener of its own is never emptied by another worker.
		if [[ $name == reuseport ]] && ! grep -q ': listener reuseport: .*, 0 empty$' "$SRV_LOG"; then
			fail "reuseport: a wake-up found nothing: $(tail -n 3 "$SRV_LOG")"
		fi
	done
	use echo-epoll -w 2 -q --shared-listener
	start_server
	stop_server
	if grep -vE "$READY_RE" "$SRV_LOG" | grep -q .; then
		fail "-q: the stop report was written: $(cat "$SRV_LOG")"
	fi
}

@test "epoll --shared-listener: a bad mode exits 64 with a one-line reason; one process takes it as a no-op" {
	run --separate-stderr without_fd3 timeout -k 2 5 "$top_builddir/src/echo-epoll" -p 0 -w 2 --shared-listener=bogus
	assert_equal "$status" 64
	[[ ${stderr_lines[0]} == "echo-epoll: --shared-listener: 'bogus' is not exclusive or herd" ]] ||
		fail "first line: ${stderr_lines[0]}"
	run --separate-stderr without_fd3 timeout -k 2 5 "$top_builddir/src/echo-epoll" -p 0 --shared-listener herd
	assert_equal "$status" 64
	[[ ${stderr_lines[0]} == *"unexpected argument 'herd'"* ]] || fail "first line: ${stderr_lines[0]}"
	use echo-epoll --shared-listener=herd
	start_server
	run iotest echo "$SRV_ADDR"
	assert_success
	stop_server
}

@test "epoll -w 2 on a unix socket: one shared listener, kept by a worker's exit, removed once by the parent" {
	local path=$BATS_TEST_TMPDIR/e.sock w
	use echo-epoll -w 2 -v -l "unix:$path"
	start_server
	grep -q ': listener: exclusive$' "$SRV_LOG" ||
		fail "a unix socket cannot be SO_REUSEPORT: want one exclusive listener; log: $(cat "$SRV_LOG")"
	run iotest churn -n 50 "$SRV_ADDR"
	assert_success
	# A worker's graceful stop (_exit, no atexit) must not unlink the file.
	w=$(children_of "$SRV_PID" | head -n 1)
	[[ -n $w ]] || fail "no worker: $(group_ps "$SRV_PID")"
	kill -TERM "$w"
	wait_until 5 proc_dead "$w" || fail "worker $w did not stop"
	[[ -S $path ]] || fail "the socket file went with worker $w"
	run iotest echo "$SRV_ADDR"
	assert_success
	stop_server
	[[ ! -e $path ]] || fail "the socket file outlived the server"
	grep -q 'listener exclusive: [0-9]* accepts' "$SRV_LOG" || fail "no stop report: $(tail -n 3 "$SRV_LOG")"
}

# ---- echo-nonblock ------------------------------------------------------------------

@test "nonblock: burns CPU with no client at all; --sleep-us gives it back" {
	local hz spin nap
	hz=$(getconf CLK_TCK)
	use echo-nonblock
	start_server
	spin=$(cpu_ticks_1s "$SRV_PID")
	# Never asleep in the kernel: runnable at every look.
	[[ $(cut -d' ' -f3 "/proc/$SRV_PID/stat") == R ]] || fail "the busy-wait server is not running"
	stop_server
	use echo-nonblock --sleep-us 5000
	start_server
	run iotest echo "$SRV_ADDR"
	assert_success
	nap=$(cpu_ticks_1s "$SRV_PID")
	run iotest roundtrip -n 4 -m 50 "$SRV_ADDR"
	assert_success
	stop_server
	echo "# idle CPU in 1 s: spinning $spin, --sleep-us 5000 $nap (of $hz ticks)" >&3
	((spin > hz / 5)) || fail "spinning used only $spin of $hz ticks"
	((nap < hz / 10 && nap * 2 < spin)) || fail "--sleep-us 5000 used $nap ticks (spinning: $spin)"
}

# ---- echo-select ------------------------------------------------------------------

@test "select: past FD_SETSIZE connections are refused with a log line, the others keep being served" {
	ulimit -n 4096
	use echo-select
	start_server
	local out=$BATS_TEST_TMPDIR/held pid line served closed
	bg_iotest "$out" idle -k -P 5000 -n 1100 "$SRV_ADDR"
	pid=$BG_PID
	line=$(wait_line "$out" '^ready' 60 "$pid")
	echo "# $line" >&3
	[[ $line =~ served=([0-9]+)\ closed=([0-9]+)\ pending=0$ ]] || fail "unexpected: $line"
	served=${BASH_REMATCH[1]} closed=${BASH_REMATCH[2]}
	((served > 1000 && served < 1024 && closed == 1100 - served)) || fail "$line"
	(($(grep -c 'past this model.s limit (FD_SETSIZE 1024): refused' "$SRV_LOG") >= closed)) ||
		fail "not one log line per refusal: $(tail -n 3 "$SRV_LOG")"
	proc_alive "$SRV_PID" || fail "the server died"
	# The held connections are still served (release echoes one more byte
	# on each), and once they are gone, new clients are.
	release_bg "$pid"
	((BG_STATUS == 0)) || fail "held clients: $(cat "$out" "$out.err")"
	run iotest concurrent -n 100 -s 16k "$SRV_ADDR"
	assert_success
	stop_server
}

# ---- echo-sigio ------------------------------------------------------------------

@test "sigio: a real-time signal queue of 16 overflows; the SIGIO rescan serves everyone" {
	command -v prlimit >/dev/null || skip "prlimit is not installed (Debian: util-linux)"
	use echo-sigio -v
	start_server
	# RLIMIT_SIGPENDING, checked when a signal is queued: from now on the
	# server's queue holds 16 signals at most.
	prlimit --pid "$SRV_PID" --sigpending=16:16 || fail "prlimit failed"
	run iotest concurrent -n 200 -s 64k "$SRV_ADDR"
	assert_success
	run iotest roundtrip -n 100 -m 50 "$SRV_ADDR"
	assert_success
	grep -q 'real-time signal queue overflowed (SIGIO)' "$SRV_LOG" ||
		fail "no overflow with a 16-signal queue; log: $(grep -v 'open\|close' "$SRV_LOG" | tail)"
	echo "# $(grep -c 'queue overflowed' "$SRV_LOG") overflows" >&3
	stop_server
}

@test "sigio: 1,000 connections x 20 round trips with the default queue" {
	use echo-sigio
	start_server
	run iotest roundtrip -n 1000 -m 20 "$SRV_ADDR"
	assert_success
	stop_server
}

# ---- echo-coro ----------------------------------------------------------------------

@test "coro: 10,000 idle connections, a few KiB each, and a new client is served" {
	local n=10000 out=$BATS_TEST_TMPDIR/idle pid rss0 rss1 per
	# The clients' descriptors and the server's, each in its own process.
	ulimit -n $((n + 200)) 2>/dev/null ||
	    skip "cannot raise RLIMIT_NOFILE to $((n + 200)) (hard limit $(ulimit -Hn))"
	# A deep backlog: 10,000 connects in a burst overflow 511 (SYN cookies).
	use echo-coro -b 4096
	start_server
	rss0=$(group_rss_kb "$SRV_PID")
	bg_iotest "$out" idle -n "$n" -h 120 "$SRV_ADDR"
	pid=$BG_PID
	wait_line "$out" "^ready served=$n " 120 "$pid" >/dev/null ||
	    fail "not all $n held: $(cat "$out" "$out.err")"
	rss1=$(group_rss_kb "$SRV_PID")
	per=$(((rss1 - rss0) * 1024 / n))
	echo "# echo-coro: RSS $rss0 -> $rss1 KiB with $n parked coroutines: $per bytes each" >&3
	# One stack page and the struct, measured 4.4 KiB; a sanitizer build
	# adds its shadow and redzones, so the bound holds for a plain build.
	if ! sanitized; then
		((per < 8192)) || fail "$per bytes per parked coroutine (want < 8 KiB)"
	fi
	run iotest echo -d "still here" "$SRV_ADDR"
	assert_success
	release_bg "$pid"
	((BG_STATUS == 0)) || fail "idle clients: $(cat "$out" "$out.err")"
	stop_server
}

@test "coro: both context switches serve; a bad --switch or --stack exits 64" {
	local sw
	for sw in asm ucontext; do
		use echo-coro --switch "$sw" -v
		start_server
		run iotest roundtrip -n 20 -m 100 "$SRV_ADDR"
		assert_success
		run iotest stream -s 1m "$SRV_ADDR"
		assert_success
		stop_server
	done
	grep -q 'context switch: ucontext' "$SRV_LOG" || fail "-v does not say which switch: $(head -n 3 "$SRV_LOG")"
	run without_fd3 "$top_builddir/src/echo-coro" -p 0 --switch fibers
	((status == 64)) || fail "--switch fibers: exit $status, want 64"
	run without_fd3 "$top_builddir/src/echo-coro" -p 0 --stack 4k
	((status == 64)) || fail "--stack 4k: exit $status, want 64"
}

@test "coro: the smallest --stack (64k) serves the deepest rpc request; 32k is refused" {
	use echo-coro -s rpc --stack 64k
	start_server
	run timeout -k 5 120 python3 -S "$top_srcdir/tests/helpers/svcclient.py" rpc-deep "$SRV_ADDR"
	assert_success
	stop_server
	run without_fd3 "$top_builddir/src/echo-coro" -p 0 --stack 32k
	((status == 64)) || fail "--stack 32k: exit $status, want 64"
}

# ---- the source layout (src/README) ----------------------------------------------

@test "layout: the include graph of src/ has no cycle, and no layer includes a model" {
	local f h edges=() out
	for f in "$top_srcdir"/src/*.[ch] "$top_srcdir"/src/*/*.[ch]; do
		[[ -e $f ]] || continue
		while read -r h; do
			# A model is an echo-*.c, a client or the bench: none has a header.
			[[ $h == echo-* || $h == rpc-ping* || $h == iomodels-chat* ]] &&
				fail "${f#"$top_srcdir"/} includes a model: $h"
			edges+=("$h ${f##*/}")
		done < <(sed -n 's/^#include "\([a-z0-9_-]*\.h\)".*/\1/p' "$f" | grep -vx config.h)
	done
	((${#edges[@]} > 10)) || fail "no include found under $top_srcdir/src"
	out=$(printf '%s\n' "${edges[@]}" | tsort 2>&1 >/dev/null) || true
	[[ -z $out ]] || fail "an include cycle: $out"
}

@test "layout: no C file in src/ is over 1,000 lines" {
	local f n
	for f in "$top_srcdir"/src/*.c "$top_srcdir"/src/*/*.c; do
		[[ -e $f ]] || continue
		n=$(wc -l <"$f")
		((n <= 1000)) || fail "${f#"$top_srcdir"/} has $n lines"
	done
}
