#!/usr/bin/env bats
# echo-uring's own hard paths: the ones the conformance suite cannot reach
# from outside.  Each test starves the server of one resource on purpose
# (buffers, submission entries, completion entries, socket buffer space),
# checks that every byte still comes back, and then reads the counters the
# server prints at exit with -v to prove that the path was really taken:
# a test whose load never hit ENOBUFS proves nothing about ENOBUFS.

bats_require_minimum_version 1.5.0

setup_file() {
	export URING_SKIP=
	if [[ ${HAVE_LIBURING:-yes} != yes ]]; then
		URING_SKIP="built --without-liburing"
		return 0
	fi
	if [[ ! -x $top_builddir/asyncio/echo-uring ]]; then
		echo "asyncio/echo-uring is not built in $top_builddir" >&2
		return 1
	fi
	# Exit 69 before the readiness line: the kernel refuses io_uring
	# here (seccomp, a container, kernel.io_uring_disabled): a skip.
	local log=$BATS_FILE_TMPDIR/probe pid st=0 i
	"$top_builddir/asyncio/echo-uring" -p 0 </dev/null >/dev/null 2>"$log" 3>&- &
	pid=$!
	for ((i = 0; i < 500; i++)); do
		grep -q ': listening on ' "$log" && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.02
	done
	kill -TERM "$pid" 2>/dev/null || true
	wait "$pid" || st=$?
	((st != 69)) || URING_SKIP="io_uring unavailable here: $(head -n1 "$log")"
}

setup() {
	load helpers/common
	[[ -z ${URING_SKIP:-} ]] || skip "$URING_SKIP"
	SERVER_CMD=("$top_builddir/asyncio/echo-uring")
}

teardown() {
	cleanup_processes
}

# uring_stat NAME: counter NAME of worker 0, from the statistics line the
# server prints at exit with -v ("... 12 enobufs, 0 sq-full, ...").
uring_stat() {
	local line
	line=$(grep -m1 -E ': worker 0: [0-9]+ enters' "$SRV_LOG") ||
		fail "no statistics line in the server log:
$(cat "$SRV_LOG")"
	[[ $line =~ (^|[ ,])([0-9]+)\ $1(,|$) ]] || fail "no counter '$1' in: $line"
	echo "${BASH_REMATCH[2]}"
}

# assert_stat NAME OP VALUE: e.g. assert_stat enobufs -gt 0
assert_stat() {
	local v
	v=$(uring_stat "$1") || return 1
	# shellcheck disable=SC2086
	[ "$v" $2 "$3" ] || fail "counter $1 is $v, want $2 $3; log:
$(grep -E 'worker 0:' "$SRV_LOG")"
}

# Buffers lent to the kernel are all back, none was returned twice.
assert_buffers_clean() {
	assert_stat buffer-errors -eq 0
	assert_stat "buffers held" -eq 0
}

@test "-v names the rungs in use, and every switch turns its rung off" {
	local -a cases=(
		"|+multishot-accept -direct +bufring +multishot-recv +send-in-place +defer-taskrun -sqpoll"
		"--direct|+multishot-accept +direct +bufring +multishot-recv +send-in-place"
		"--direct --no-multishot|-multishot-accept +direct +bufring -multishot-recv +send-in-place"
		"--no-multishot-accept|-multishot-accept -direct +bufring +multishot-recv"
		"--direct --no-direct|+multishot-accept -direct +bufring +multishot-recv"
		"--no-multishot-recv|+multishot-accept -direct +bufring -multishot-recv"
		"--no-bufring|-bufring -multishot-recv -send-in-place"
		"--no-send-in-place|+bufring +multishot-recv -send-in-place"
		"--no-defer-taskrun|-defer-taskrun -sqpoll"
		"--sqpoll --sqpoll-idle 20|-defer-taskrun +sqpoll"
	)
	local c args rungs line
	for c in "${cases[@]}"; do
		args=${c%%|*}
		rungs=${c#*|}
		# shellcheck disable=SC2086
		start_server -v $args
		line=$(grep -m1 ': rungs: ' "$SRV_LOG") || fail "no rungs line for '$args': $(cat "$SRV_LOG")"
		[[ $line == *"$rungs"* ]] || fail "'$args': want '$rungs' in: $line"
		run iotest stream -s 2m "$SRV_ADDR"
		assert_success
		run iotest concurrent -n 40 -s 32k "$SRV_ADDR"
		assert_success
		stop_server
		assert_buffers_clean
	done
}

@test "direct descriptors: not with a service that names clients by address, saying why" {
	start_server -v --direct -s chat
	grep -q ': rungs: +multishot-accept -direct ' "$SRV_LOG" ||
	    fail "chat with direct descriptors: $(cat "$SRV_LOG")"
	grep -q 'direct descriptors: not with -s chat' "$SRV_LOG" ||
	    fail "no reason given: $(cat "$SRV_LOG")"
	stop_server
	start_server -v --direct
	grep -q 'files table: [0-9]* direct descriptors' "$SRV_LOG" ||
	    fail "no files table line: $(cat "$SRV_LOG")"
	run iotest churn -n 300 "$SRV_ADDR"
	assert_success
	stop_server
}

@test "a one-buffer ring: recv ends in ENOBUFS, is re-armed, every client is echoed" {
	start_server -v --buffers 1 -B 4k
	run iotest concurrent -n 50 -s 32k "$SRV_ADDR"
	assert_success
	run iotest pipeline -n 5000 "$SRV_ADDR"
	assert_success
	stop_server
	assert_stat enobufs -gt 0
	assert_buffers_clean
}

@test "a one-entry submission queue: io_uring_get_sqe() runs dry, work is not lost" {
	start_server -v --ring-entries 1
	run iotest concurrent -n 50 -s 32k "$SRV_ADDR"
	assert_success
	run iotest churn -n 300 "$SRV_ADDR"
	assert_success
	stop_server
	assert_stat sq-full -gt 0
	assert_buffers_clean
}

@test "a two-entry completion queue overflows: no completion lost, multishot re-armed" {
	start_server -v --ring-entries 2 --cq-entries 2
	run iotest concurrent -n 50 -s 32k "$SRV_ADDR"
	assert_success
	run iotest stream -s 4m "$SRV_ADDR"
	assert_success
	stop_server
	assert_stat cq-overflow -gt 0
	assert_stat rearms -gt 0
	assert_buffers_clean
}

@test "tiny socket buffers: short sends are resubmitted, 8 MiB intact" {
	local args
	for args in "" "--no-bufring" "--no-multishot --no-send-in-place"; do
		# shellcheck disable=SC2086
		start_server -v --sndbuf 4k --rcvbuf 4k $args
		run iotest stream -s 8m -r 4096 "$SRV_ADDR"
		assert_success
		run iotest concurrent -n 20 -s 256k -r 4096 "$SRV_ADDR"
		assert_success
		stop_server
		assert_stat short-sends -gt 0
		assert_buffers_clean
	done
}

@test "stalled peers do not starve the shared buffer ring" {
	local n=10 i out pids=() rss
	# 10 peers that send and never read, on a ring of 8 buffers: each
	# could pin buffers in sends that never complete.  (Under
	# AddressSanitizer, freed memory sits in a quarantine that would count
	# as resident: keep it small.  Ignored by a normal build.)
	export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=4
	start_server -v --buffers 8 -B 4k --highwater 64k
	for ((i = 0; i < n; i++)); do
		out=$BATS_TEST_TMPDIR/slow$i
		bg_iotest "$out" slowreader "$SRV_ADDR"
		pids+=("$BG_PID")
	done
	for ((i = 0; i < n; i++)); do
		wait_line "$BATS_TEST_TMPDIR/slow$i" '^blocked' 60 "${pids[i]}" >/dev/null
	done
	# Everyone else is still served, promptly.
	run iotest concurrent -T 20 -n 30 -s 64k "$SRV_ADDR"
	assert_success
	run iotest stream -T 20 -s 2m "$SRV_ADDR"
	assert_success
	rss=$(group_rss_kb "$SRV_PID")
	echo "# rss with $n stalled peers: $rss KiB" >&3
	((rss < 64 * 1024)) || fail "server RSS $rss KiB with $n stalled peers"
	for ((i = 0; i < n; i++)); do
		release_bg "${pids[i]}"
		((BG_STATUS == 0)) || fail "slow reader $i: $(cat "$BATS_TEST_TMPDIR/slow$i"*)"
		grep -q 'drained .* intact' "$BATS_TEST_TMPDIR/slow$i" ||
			fail "slow reader $i: $(cat "$BATS_TEST_TMPDIR/slow$i"*)"
	done
	stop_server
	assert_stat enobufs -gt 0
	assert_stat evictions -gt 0
	assert_buffers_clean
}

@test "idle connections hold no buffers: 2,000 idle cost little memory" {
	local out=$BATS_TEST_TMPDIR/idle pid line rss0 rss1 per
	start_server
	run iotest echo -d x "$SRV_ADDR"
	assert_success
	rss0=$(group_rss_kb "$SRV_PID")
	bg_iotest "$out" idle -n 2000 "$SRV_ADDR"
	pid=$BG_PID
	line=$(wait_line "$out" '^ready' 60 "$pid")
	[[ $line == *served=2000* ]] || fail "not all served: $line"
	rss1=$(group_rss_kb "$SRV_PID")
	per=$(((rss1 - rss0) * 1024 / 2000))
	echo "# rss $rss0 KiB -> $rss1 KiB: $per bytes per idle connection" >&3
	((per < 4096)) || fail "$per bytes of RSS per idle connection"
	release_bg "$pid"
	((BG_STATUS == 0)) || fail "idle clients: $(cat "$out" "$out.err")"
	stop_server
}

@test "-w 2: two rings stop together on SIGTERM with clients connected and output pending" {
	local out=$BATS_TEST_TMPDIR/slow idle=$BATS_TEST_TMPDIR/idle line
	start_server -w 2 --highwater 64k
	bg_iotest "$out" slowreader "$SRV_ADDR"
	wait_line "$out" '^blocked' 60 "$BG_PID" >/dev/null
	bg_iotest "$idle" idle -n 100 "$SRV_ADDR"
	line=$(wait_line "$idle" '^ready' 60 "$BG_PID")
	[[ $line == *served=100* ]] || fail "not all served: $line"
	stop_server
}

# worker_stat N NAME: counter NAME of worker N (see uring_stat).
worker_stat() {
	local line
	line=$(grep -m1 -E ": worker $1: [0-9]+ enters" "$SRV_LOG") ||
		fail "no statistics line for worker $1:
$(cat "$SRV_LOG")"
	[[ $line =~ (^|[ ,])([0-9]+)\ $2(,|$) ]] || fail "no counter '$2' in: $line"
	echo "${BASH_REMATCH[2]}"
}

log_count() { # PATTERN N: the server log has N lines with PATTERN
	(($(grep -c -- "$1" "$SRV_LOG") >= $2))
}

# With 50 clients, SO_REUSEPORT puts all on one ring once in 2^49 runs:
# both rings hold talkers and listeners, and every line crosses.
@test "-w 2 -s chat: one room across the rings (MSG_RING): every line to every client, in order, exactly once" {
	command -v python3 >/dev/null || skip "python3 is needed for the chat client"
	local i a p m
	start_server -w 2 -s chat -v
	grep -q 'room: one for all 2 rings' "$SRV_LOG" || fail "-v does not name the room: $(cat "$SRV_LOG")"
	run timeout -k 5 120 python3 -S "$top_srcdir/tests/helpers/svcclient.py" chat-many "$SRV_ADDR" 50 20
	((status == 0)) || fail "$output
$(tail -n 20 "$SRV_LOG")"
	stop_server
	for i in 0 1; do
		a=$(worker_stat $i accepts) && p=$(worker_stat $i posted) &&
		    m=$(worker_stat $i mail) || return 1
		((a > 0 && p > 0 && m > 0)) || fail "worker $i: $a accepts, $p posted, $m mail: $(grep ": worker $i:" "$SRV_LOG")"
	done
	# What one ring posts, the other takes from its mailbox, once.
	(($(worker_stat 0 posted) == $(worker_stat 1 mail))) &&
	    (($(worker_stat 1 posted) == $(worker_stat 0 mail))) ||
	    fail "posted and mail differ: $(grep ': worker' "$SRV_LOG")"
}

# Bytes the server's sockets on port $1 hold unsent: lines on their way.
server_sendq() { # PORT
	ss -tnH state established "( sport = :$1 )" |
	    awk '{ q += $2 } END { exit !(q > 0) }'
}

@test "-w 2 -s chat: SIGTERM with lines crossing the rings: exit 0 (the mailboxes are freed: ASan builds check it)" {
	command -v python3 >/dev/null || skip "python3 is needed for the chat client"
	command -v ss >/dev/null || skip "ss (iproute2) is needed"
	local out=$BATS_TEST_TMPDIR/burst p
	start_server -w 2 -s chat -vv
	# 20 MB to 8 readers: still crossing when the stop comes (whether
	# the readers keep up does not matter here).
	timeout -k 5 120 python3 -S "$top_srcdir/tests/helpers/svcclient.py" \
	    chat-burst "$SRV_ADDR" 20000 1000 8 0 >"$out" 2>&1 3>&- &
	BG_PIDS+=("$!")
	wait_until 60 log_count ": open " 9 ||
	    fail "the clients did not connect: $(cat "$SRV_LOG" "$out")"
	wait_until 60 server_sendq "${SRV_ADDR##*:}" ||
	    fail "no output on its way: $(cat "$out")"
	stop_server
	p=$(($(worker_stat 0 posted) + $(worker_stat 1 posted)))
	((p > 0)) || fail "nothing crossed the rings before the stop: $(grep ': worker' "$SRV_LOG")"
}

@test "-w 2 -s chat without IORING_OP_MSG_RING (--no-msg-ring): exit 64, saying why" {
	run --separate-stderr without_fd3 timeout 5 "${SERVER_CMD[@]}" -p 0 -w 2 -s chat --no-msg-ring
	((status == 64)) || fail "exit $status, want 64: $stderr"
	[[ $stderr == *"cannot broadcast to each other without IORING_OP_MSG_RING"* ]] ||
	    fail "the message does not say why: $stderr"
	# Without a room to share, the option changes nothing.
	start_server -w 2 --no-msg-ring
	stop_server
}

@test "io_uring refused by the kernel (seccomp): exit 69 with a message that says so" {
	command -v python3 >/dev/null || skip "python3 is needed for the seccomp helper"
	run --separate-stderr without_fd3 timeout 10 "$top_srcdir/tests/helpers/no-uring" \
		"${SERVER_CMD[@]}" -p 0
	((status != 77)) || skip "seccomp filter unavailable: $stderr"
	((status == 69)) || fail "exit $status, want 69; stderr: $stderr"
	[[ $stderr == "echo-uring: io_uring is not available"* ]] || fail "message: $stderr"
	[[ $stderr != *"listening on"* ]] || fail "it got ready anyway: $stderr"
}

@test "ring and buffer sizes are range-checked" {
	local args
	for args in "--ring-entries 0" "--ring-entries 99999" "--buffers 0" \
	    "--cq-entries 1" "--ring-entries 64 --cq-entries 8" "--batch-usec -1" \
	    "--sndbuf x" "--buffers 32768 -B 64m"; do
		# shellcheck disable=SC2086
		run --separate-stderr without_fd3 timeout 5 "${SERVER_CMD[@]}" -p 0 $args
		((status == 64)) || fail "'$args': exit $status, want 64; stderr: $stderr"
		[[ $stderr == "echo-uring: "* ]] || fail "'$args': $stderr"
	done
}
