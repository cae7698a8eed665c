#!/usr/bin/env bats
# The applications: the rpc and chat services on every model that serves
# them (issue 5).  The protocol checks are tests/helpers/svcclient.py; this
# file starts the servers, runs each check against each model, and looks at
# what only the outside can see (exit statuses, log lines, memory).
#
# The models are found, not listed: every src/echo-*.c and asyncio/echo-*.c
# that is built (echo-bench aside), so a new model is covered the day it
# lands.  A model serves chat when its source declares SRV_CAP_BROADCAST;
# the others must refuse -s chat with exit 64, and so must a broadcasting
# model run with -w 2, unless its workers are a pool of threads sharing
# one room (SRV_CAP_POOL) or relay broadcasts to each other (SRV_CAP_ROOM:
# the chat checks run such a model twice, as NAME and as NAME+w2, with
# -w 2).  By hand, from the build directory:
#	tests/run-bats $top_srcdir/tests/services.bats

bats_require_minimum_version 1.5.0

setup_file() {
	load helpers/common
	# A model the kernel refuses here (io_uring in a container: exit 69)
	# is left out, and said so.
	local m log st i
	: >"$BATS_FILE_TMPDIR/unavailable"
	for m in $(model_names); do
		log=$BATS_FILE_TMPDIR/probe-$m.log
		"$top_builddir/$(model_path "$m")" -p 0 </dev/null >/dev/null 2>"$log" 3>&- &
		for ((i = 0; i < 500; i++)); do
			grep -q ': listening on ' "$log" && break
			proc_alive $! || break
			sleep 0.02
		done
		kill -TERM $! 2>/dev/null || true
		st=0
		wait $! || st=$?
		((st == 69)) && echo "$m: $(head -n 1 "$log")" >>"$BATS_FILE_TMPDIR/unavailable"
	done
	return 0
}

setup() {
	load helpers/common
	command -v python3 >/dev/null ||
	    skip "python3 is not installed (Debian: apt-get install python3)"
	SVCCLIENT=$top_srcdir/tests/helpers/svcclient.py
}

teardown() {
	cleanup_processes
}

# ---- the models --------------------------------------------------------------

# Every server model built here, one name a line.
model_names() {
	local src name dir
	for src in "$top_srcdir"/src/echo-*.c "$top_srcdir"/asyncio/echo-*.c; do
		[[ -f $src ]] || continue
		name=${src##*/}
		name=${name%.c}
		[[ $name == echo-bench ]] && continue
		dir=${src%/*}
		dir=${dir##*/}
		[[ -x $top_builddir/$dir/$name ]] && echo "$name"
	done
}

model_path() { # NAME[+w2]: DIR/NAME, relative to the build and source trees
	local name=${1%%+*}
	if [[ -f $top_srcdir/asyncio/$name.c ]]; then
		echo "asyncio/$name"
	else
		echo "src/$name"
	fi
}

# Does the model's struct srv_model declare CAP (SRV_CAP_BROADCAST, ...)?
has_cap() { # NAME CAP
	grep -Eq "\\.caps[[:space:]]*=.*\\<$2\\>" "$top_srcdir/$(model_path "$1").c"
}

available() { # NAME[+w2]
	! grep -q "^${1%%+*}: " "$BATS_FILE_TMPDIR/unavailable"
}

# The models to run a check on: all available ones (rpc), or those that
# can broadcast (chat).  Fails when there is none: a check that runs on
# nothing must not pass.
rpc_models() {
	local m n=0
	for m in $(model_names); do
		available "$m" || continue
		echo "$m"
		n=$((n + 1))
	done
	((n > 0)) || { echo "no model built in $top_builddir" >&2; return 1; }
}

chat_models() {
	local m n=0
	for m in $(model_names); do
		available "$m" && has_cap "$m" SRV_CAP_BROADCAST || continue
		echo "$m"
		n=$((n + 1))
		# One room across its workers: the same checks with -w 2.
		if has_cap "$m" SRV_CAP_ROOM; then
			echo "$m+w2"
		fi
	done
	((n > 0)) || { echo "no model declares SRV_CAP_BROADCAST" >&2; return 1; }
}

# A pool model (SRV_CAP_POOL: -w threads sharing one room) serves at most
# -w clients at a time and leaves the rest queued, unserved: the chat
# checks, which hold 50 clients at once, give it a pool that fits them.
chat_args() { # NAME[+w2]
	if [[ $1 == *+w2 ]]; then
		echo "-w 2"
	elif has_cap "$1" SRV_CAP_POOL; then
		echo "-w 64"
	fi
}

# start_model NAME ARGS...: start_server for model NAME.
start_model() {
	local name=$1
	shift
	SERVER_CMD=("$top_builddir/$(model_path "$name")")
	start_server "$@"
}

# check NAME CHECK ARGS...: run one svcclient check against $SRV_ADDR;
# on failure say which model, and what the server logged.
check() {
	local name=$1 what=$2
	shift 2
	run timeout -k 5 120 python3 -S "$SVCCLIENT" "$what" "$SRV_ADDR" "$@"
	if ((status != 0)); then
		fail "$name: $output
server log:
$(tail -n 20 "$SRV_LOG")"
	fi
	echo "# $name: $output" >&3
}

# The peak virtual size of the server's processes, in KiB: a buffer
# malloc()ed for a length field shows here even if never touched.
group_vmpeak_kb() { # PGID
	local p kb total=0
	for p in $(group_pids "$1"); do
		kb=$(awk '/^VmPeak:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || continue
		total=$((total + ${kb:-0}))
	done
	echo "$total"
}

# ---- rpc ---------------------------------------------------------------------

@test "rpc: two frames cut at every byte boundary, and byte by byte" {
	local m
	for m in $(rpc_models); do
		start_model "$m" -s rpc
		check "$m" rpc-split
		stop_server
	done
}

@test "rpc: 1,000 frames in one write are answered in order" {
	local m
	for m in $(rpc_models); do
		start_model "$m" -s rpc
		check "$m" rpc-pipeline 1000
		stop_server
	done
}

@test "rpc: any JSON value comes back; what cannot is refused, not altered" {
	local m
	for m in $(rpc_models); do
		start_model "$m" -s rpc
		check "$m" rpc-values
		stop_server
	done
}

@test "rpc: malformed JSON gets an error and the connection stays usable" {
	local m
	for m in $(rpc_models); do
		start_model "$m" -s rpc
		check "$m" rpc-malformed
		stop_server
	done
}

@test "rpc: an unknown method gets {\"out\":\"error\",\"result\":\"unknown method: NAME\"}" {
	local m
	for m in $(rpc_models); do
		start_model "$m" -s rpc
		check "$m" rpc-unknown
		stop_server
	done
}

@test "rpc: a frame over --max-frame gets an error, then a close" {
	local m
	for m in $(rpc_models); do
		start_model "$m" -s rpc --max-frame 4096
		check "$m" rpc-oversize 4096
		stop_server
	done
}

@test "rpc: a 3 GB length prefix: an error and a close, no allocation" {
	local m rss0 rss1 vm0 vm1
	for m in $(rpc_models); do
		start_model "$m" -s rpc
		rss0=$(group_rss_kb "$SRV_PID")
		vm0=$(group_vmpeak_kb "$SRV_PID")
		check "$m" rpc-huge
		rss1=$(group_rss_kb "$SRV_PID")
		vm1=$(group_vmpeak_kb "$SRV_PID")
		echo "# $m: RSS ${rss0} -> ${rss1} KiB, VmPeak ${vm0} -> ${vm1} KiB" >&3
		((rss1 - rss0 < 16384)) ||
		    fail "$m: RSS grew from $rss0 to $rss1 KiB after a 3 GB length"
		# A thread or a worker may come and go (its stack counts);
		# 3 GB would not hide under 512 MiB.
		((vm1 - vm0 < 524288)) ||
		    fail "$m: VmPeak grew from $vm0 to $vm1 KiB after a 3 GB length"
		stop_server
	done
}

# amplify_limit MODEL: the memory bound of the amplification tests, KiB.
# Eight clients send 16 MB each: a server that fed it all to the service
# would hold gigabytes of answers (the bug this catches grew past 368 MB
# in 5 s).  A correct server holds its queues up to --highwater: 64 MiB
# is far above that.  echo-uring also holds its buffer ring (32 MiB,
# resident once the kernel has filled it) and the input a multishot
# receive delivered before its cancel landed, which a loaded machine
# stretches (65 MiB seen once at load 30; 14-63 MiB otherwise).
amplify_limit() {
	case $1 in
	echo-uring*) echo $((96 * 1024)) ;;
	*) echo $((64 * 1024)) ;;
	esac
}

@test "rpc: zero-length frames (4 bytes in, ~90 out), never read: memory stays bounded" {
	local m
	# Under AddressSanitizer freed memory waits in a quarantine (256 MiB by
	# default) that counts in RSS: keep it small, so RSS is what is held.
	export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=4
	# The bound is on the server's process group.  A sanitizer runtime
	# costs each process about 8 MiB before it holds anything, so fork's
	# eight children alone pass 64 MiB there: allow that, per process.
	local san=0
	if sanitized; then
		san=$((9 * 8192))
	fi
	for m in $(rpc_models); do
		start_model "$m" -s rpc
		check "$m" amplify rpc 8 "$SRV_PID" "$(($(amplify_limit "$m") + san))"
		stop_server
	done
}

@test "rpc: nesting deeper than 64 levels is refused, whatever the depth" {
	# Parsing recurses: 500 brackets overflow a 128 KiB thread stack
	# (echo-thread's default) unless the depth is bounded first.
	local m
	for m in $(rpc_models); do
		start_model "$m" -s rpc
		check "$m" rpc-deep
		stop_server
	done
}

@test "rpc: the documents' client (001 client.py, little-endian lengths) gets its ten pongs" {
	# The port keeps the document's wire behaviour: struct.pack("I") (the
	# machine's order), prefix and body in two sendall(), then one
	# recv(4) and one recv(length).
	local m i
	for m in $(rpc_models); do
		start_model "$m" -s rpc
		run timeout -k 5 60 python3 -S "$top_srcdir/tests/helpers/doc-rpc-client.py" \
		    "${SRV_ADDR%:*}" "${SRV_ADDR##*:}" 10 0
		((status == 0)) || fail "$m: the documents' client failed ($status): $output
server log:
$(tail -n 20 "$SRV_LOG")"
		for ((i = 0; i < 10; i++)); do
			assert_line --index "$i" "pong ireader $i"
		done
		echo "# $m: ${lines[9]}" >&3
		stop_server
	done
}

@test "rpc: big- and little-endian clients, each answered in the order of its first frame" {
	local m
	for m in $(rpc_models); do
		start_model "$m" -s rpc
		check "$m" rpc-order
		stop_server
	done
}

@test "rpc: --rpc-order le|be fixes the order (the auto rule's 256-byte blind spot)" {
	local m o
	m=$(rpc_models | head -n 1)
	for o in le be; do
		start_model "$m" -s rpc --rpc-order "$o"
		check "$m" rpc-forced "$o"
		stop_server
	done
	run --separate-stderr without_fd3 timeout -k 2 5 \
	    "$top_builddir/$(model_path "$m")" -p 0 -s rpc --rpc-order middle
	((status == 64)) || fail "--rpc-order middle: exit $status, want 64"
	[[ $stderr == *"--rpc-order"* ]] || fail "no reason given: $stderr"
}

@test "rpc-ping: ten pings, each answer and its time, exit 0" {
	local m
	m=$(rpc_models | head -n 1)
	start_model "$m" -s rpc
	run timeout 20 "$top_builddir/src/rpc-ping" -i 0 "$SRV_ADDR"
	assert_success
	assert_line --index 0 --regexp '^pong seq=0 result="ping 0" time=[0-9.]+ ms$'
	assert_line --index 9 --regexp '^pong seq=9 result="ping 9" time=[0-9.]+ ms$'
	assert_line --index 10 --regexp "^--- $SRV_ADDR: 10 sent, 10 pongs, 0 errors; rtt min/avg/max [0-9.]+/[0-9.]+/[0-9.]+ ms$"
	run timeout 20 "$top_builddir/src/rpc-ping" -q -c 3 -i 0 -P '{"a":[1,2.5,null,"\u00e9"]}' "$SRV_ADDR"
	assert_success
	assert_output --regexp "^--- $SRV_ADDR: 3 sent, 3 pongs, 0 errors"
	stop_server
}

@test "rpc-ping --le: little-endian lengths, as the documents' client" {
	local m
	m=$(rpc_models | head -n 1)
	start_model "$m" -s rpc
	run timeout 20 "$top_builddir/src/rpc-ping" --le -c 3 -i 0 "$SRV_ADDR"
	assert_success
	assert_line --index 2 --regexp '^pong seq=2 result="ping 2" time=[0-9.]+ ms$'
	stop_server
	# A server fixed to big-endian reads the little-endian length as a
	# huge one: an error rpc-ping cannot read in its order, exit 76.
	start_model "$m" -s rpc --rpc-order be
	run timeout 20 "$top_builddir/src/rpc-ping" --le -c 1 -i 0 "$SRV_ADDR"
	((status == 76)) || fail "--le against --rpc-order be: exit $status, want 76: $output"
	stop_server
}

@test "rpc-ping: an error answer, a dead server, a bad command line" {
	local m
	m=$(rpc_models | head -n 1)
	start_model "$m" -s rpc
	run timeout 20 "$top_builddir/src/rpc-ping" -c 2 -i 0 -M nosuch "$SRV_ADDR"
	((status == 76)) || fail "unknown method: exit $status, want 76: $output"
	assert_line --index 0 --partial 'error seq=0 result="unknown method: nosuch"'
	# A server that speaks another protocol: echo sends the request back,
	# which is not an answer.
	stop_server
	start_model "$m" -s echo
	run timeout 20 "$top_builddir/src/rpc-ping" -c 1 -i 0 "$SRV_ADDR"
	((status == 76)) || fail "echo server: exit $status, want 76: $output"
	stop_server
	run timeout 20 "$top_builddir/src/rpc-ping" -c 1 "$SRV_ADDR"
	((status == 69)) || fail "no server: exit $status, want 69: $output"
	run timeout 20 "$top_builddir/src/rpc-ping" -c 0
	((status == 64)) || fail "-c 0: exit $status, want 64: $output"
	run timeout 20 "$top_builddir/src/rpc-ping" -P '{bad'
	((status == 64)) || fail "-P {bad: exit $status, want 64: $output"
}

# ---- chat --------------------------------------------------------------------

@test "chat: 50 clients, every line to every other client, in order" {
	local m
	for m in $(chat_models); do
		start_model "$m" $(chat_args "$m") -s chat
		check "$m" chat-many 50 20
		stop_server
	done
}

@test "chat: a client that stops reading is dropped; the others still hear" {
	local m
	for m in $(chat_models); do
		start_model "$m" $(chat_args "$m") -s chat --max-pending 64k
		check "$m" chat-slow
		grep -q 'not reading: disconnected' "$SRV_LOG" ||
		    fail "$m: no log line about the dropped client:
$(cat "$SRV_LOG")"
		stop_server
	done
}

# Issue 9: a burst must not make the server drop a client that reads.  A
# completion model that takes megabytes from the talker in one round
# before any send to the listener completes sees the listener's queue pass
# --max-pending although it reads: it must pace the talker instead, as
# every model does (server.h, SRV_STALL_MS).
@test "chat: an 8 MB burst reaches a reader in full; only the one that never reads is dropped" {
	local m n
	for m in $(chat_models); do
		start_model "$m" $(chat_args "$m") -s chat
		check "$m" chat-burst 8000 1000 1 1
		n=$(grep -c 'not reading: disconnected' "$SRV_LOG" || true)
		((n == 1)) || fail "$m: $n clients dropped, want 1 (the slow one):
$(grep 'disconnected' "$SRV_LOG")"
		stop_server
	done
}

@test "chat: 1 MB of lines in one write reaches five readers in full" {
	local m n
	for m in $(chat_models); do
		start_model "$m" $(chat_args "$m") -s chat
		check "$m" chat-burst 10000 100 5 0
		n=$(grep -c 'not reading: disconnected' "$SRV_LOG" || true)
		((n == 0)) || fail "$m: $n readers dropped:
$(grep 'disconnected' "$SRV_LOG")"
		stop_server
	done
}

# Output larger than the input that caused it: the high-water mark must
# hold all the same (input that arrived after the mark was passed is kept,
# not fed to the service).
@test "chat: commands answered at 16x their size, never read: memory stays bounded" {
	local m
	# Under AddressSanitizer freed memory waits in a quarantine (256 MiB by
	# default) that counts in RSS: keep it small, so RSS is what is held.
	export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=4
	for m in $(chat_models); do
		start_model "$m" $(chat_args "$m") -s chat
		check "$m" amplify chat 8 "$SRV_PID" "$(amplify_limit "$m")"
		stop_server
	done
}

@test "chat: a line over --max-line gets an error and reaches no one" {
	local m
	for m in $(chat_models); do
		start_model "$m" $(chat_args "$m") -s chat --max-line 1000
		check "$m" chat-long 1000
		stop_server
	done
}

@test "chat: the documents' JSON clients (003 ChatClient) and a line client share one room" {
	# The port keeps the document's wire behaviour: one JSON object per
	# message, no delimiter, recv(1000).  A JSON message reaches everyone,
	# its sender included; a line, the others.
	local m
	for m in $(chat_models); do
		start_model "$m" $(chat_args "$m") -s chat
		check "$m" chat-doc "$top_srcdir/tests/helpers/doc-chat-client.py"
		stop_server
	done
}

@test "chat: a JSON message past --max-line, or invalid, gets a ! line; the next one is heard" {
	local m
	m=$(chat_models | head -n 1)
	start_model "$m" -s chat --max-line 100
	check "$m" chat-json-errors 100
	stop_server
}

@test "chat: models that cannot broadcast refuse -s chat (exit 64, saying why)" {
	local m bin refused=0
	for m in $(model_names); do
		bin=$top_builddir/$(model_path "$m")
		if ! has_cap "$m" SRV_CAP_BROADCAST; then
			run --separate-stderr without_fd3 timeout -k 2 5 "$bin" -p 0 -s chat
		elif has_cap "$m" SRV_CAP_WORKERS && ! has_cap "$m" SRV_CAP_POOL &&
		    ! has_cap "$m" SRV_CAP_ROOM; then
			run --separate-stderr without_fd3 timeout -k 2 5 "$bin" -p 0 -s chat -w 2
		else
			continue
		fi
		((status == 64)) || fail "$m: -s chat: exit $status, want 64: $stderr"
		[[ $stderr == *"cannot broadcast"* ]] ||
		    fail "$m: -s chat: the message does not say why: $stderr"
		echo "# $m: ${stderr%%$'\n'*}" >&3
		refused=$((refused + 1))
	done
	((refused > 0)) || fail "no configuration refuses chat: echo-epoll -w 2 should"
}

@test "iomodels-chat: two clients talk; EOF and the server's close end them" {
	local m out=$BATS_TEST_TMPDIR/bob.out
	m=$(chat_models | head -n 1)
	start_model "$m" -s chat
	# bob stays until the server closes: a fifo keeps his input open.
	mkfifo "$BATS_TEST_TMPDIR/bob.in"
	"$top_builddir/src/iomodels-chat" -n bob "$SRV_ADDR" \
	    <"$BATS_TEST_TMPDIR/bob.in" >"$out" 2>"$out.err" 3>&- &
	BG_PIDS+=("$!")
	local bob=$!
	exec 4>"$BATS_TEST_TMPDIR/bob.in"
	wait_line "$out" '^\* you are now bob$' 10 "$bob" >/dev/null
	# alice says two lines and leaves at the end of her input.
	run timeout 10 "$top_builddir/src/iomodels-chat" -n alice "$SRV_ADDR" \
	    < <(printf 'hello bob\nbye\n')
	assert_success
	wait_line "$out" '^\[alice\] bye$' 10 "$bob" >/dev/null
	wait_line "$out" '^\* alice left$' 10 "$bob" >/dev/null
	grep -q '^\[alice\] hello bob$' "$out" || fail "bob missed a line: $(cat "$out")"
	# The server stops: bob sees the close and exits 0 by himself.
	stop_server
	wait_until 10 proc_dead "$bob" || fail "iomodels-chat still running after the server closed"
	local st=0
	wait "$bob" || st=$?
	exec 4>&-
	((st == 0)) || fail "iomodels-chat exited $st after the server closed: $(cat "$out.err")"
	grep -q 'closed the connection' "$out.err" || fail "no word about the close: $(cat "$out.err")"
}

# ---- echo ------------------------------------------------------------------

@test "echo: a client streaming megabytes neither starves nor disconnects another" {
	local m
	for m in $(rpc_models); do
		# Documented: the iterative server serves one client at a time.
		[[ $m == echo-iterative ]] && continue
		start_model "$m" -s echo
		check "$m" echo-burst
		stop_server
	done
}

# ---- the fuzz corpus ---------------------------------------------------------

@test "the fuzz seed corpus replays clean (cut invariance, well-formed output)" {
	local h
	for h in rpc chat; do
		[[ -x $top_builddir/tests/fuzz/fuzz-$h-replay ]] ||
		    fail "tests/fuzz/fuzz-$h-replay is not built (make check builds it)"
		run timeout 60 "$top_builddir/tests/fuzz/fuzz-$h-replay" "$top_srcdir/tests/fuzz/corpus-$h"
		assert_success
	done
}
