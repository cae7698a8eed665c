# Helpers shared by the bats suites: start a server on port 0 and wait for
# its readiness line, stop it and check how it ended, measure it, and make
# sure nothing a test started outlives the test.
#
# Every server runs in its own session (setsid), so its pid is also its
# process group: every process it forks can be found (pgrep -g), measured
# and, if the test fails, killed.
#
# Environment: top_builddir, top_srcdir (set by `make check` and run-bats).
# Run by hand (`bats tests/models.bats`), they are found from the tree:
# the source tree is the parent of tests/, and the build is the current
# directory if it was configured there, else the source tree itself (an
# in-tree ./configure && make).  The test programs `make` leaves out
# (check_PROGRAMS, such as iotest) are then built on first use.

bats_load_library bats-support
bats_load_library bats-assert

find_build() {
	: "${top_srcdir:=$(cd "$BATS_TEST_DIRNAME/.." && pwd)}"
	if [[ -z ${top_builddir:-} ]]; then
		if [[ -f $PWD/config.status && -f $PWD/Makefile ]]; then
			top_builddir=$PWD
		elif [[ -f $top_srcdir/config.status && -f $top_srcdir/Makefile ]]; then
			top_builddir=$top_srcdir
		else
			echo "no build found: run ./configure && make in $top_srcdir" \
			    "(or bats from a build directory, or set top_builddir)" >&2
			return 1
		fi
	fi
	export top_srcdir top_builddir
	# Without make check's environment: liburing is there if its server is.
	if [[ -z ${HAVE_LIBURING:-} ]]; then
		HAVE_LIBURING=no
		[[ -x $top_builddir/asyncio/echo-uring ]] && HAVE_LIBURING=yes
		export HAVE_LIBURING
	fi
	if [[ ! -x $top_builddir/tests/helpers/iotest ]]; then
		env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
		    make -s -C "$top_builddir" tests/helpers/iotest >&2 || {
			echo "cannot build tests/helpers/iotest in $top_builddir" >&2
			return 1
		}
	fi
}
find_build || return 1

IOTEST=$top_builddir/tests/helpers/iotest
READY_TIMEOUT=${READY_TIMEOUT:-15}	# seconds to wait for the readiness line
STOP_TIMEOUT=${STOP_TIMEOUT:-10}	# seconds a server may take to stop

SRV_PIDS=()	# every server this test started
BG_PIDS=()	# every background client this test started
_srv_count=0

# ---- small utilities ----------------------------------------------------

# Poll CONDITION (a command) every 20 ms for up to SECONDS: bounded waits
# for something to happen, never a sleep standing in for synchronisation.
wait_until() { # SECONDS COMMAND...
	local secs=$1 end
	shift
	end=$((SECONDS + secs + 1))
	until "$@"; do
		((SECONDS < end)) || return 1
		sleep 0.02
	done
}

# A pid that is running: not gone, and not a zombie waiting for wait(2).
proc_alive() { # PID
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z ]]
}

proc_dead() { ! proc_alive "$1"; }

# sanitized: true when the build under test has AddressSanitizer (configure
# --enable-sanitizers).  Its runtime costs each process memory up front and
# a leak scan at exit: bounds on memory and on the time to exit allow it.
sanitized() { grep -q '^SAN_CFLAGS = .*sanitize' "$top_builddir/Makefile" 2>/dev/null; }

# Processes in process group PGID (the server and everything it forked).
group_pids() { # PGID
	pgrep -g "$1" 2>/dev/null || true
}

group_empty() { [[ -z $(group_pids "$1") ]]; }

group_ps() { # PGID
	ps -o pid,ppid,stat,etime,args -g "$1" 2>/dev/null || true
}

# Zombies in the group: children exited and not yet reaped.
group_zombies() { # PGID
	local p stat n=0
	for p in $(group_pids "$1"); do
		stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
		stat=${stat##*) }
		[[ ${stat:0:1} == Z ]] && n=$((n + 1))
	done
	echo "$n"
}

# CPU time (user + system, in clock ticks) of every process in the group.
group_cpu_ticks() { # PGID
	local p stat total=0 f
	for p in $(group_pids "$1"); do
		stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
		# Fields after "(comm) ": state is the 1st, utime the 12th, stime the 13th.
		read -ra f <<<"${stat##*) }"
		total=$((total + f[11] + f[12]))
	done
	echo "$total"
}

# Resident memory of every process in the group, in KiB.
group_rss_kb() { # PGID
	local p kb total=0
	for p in $(group_pids "$1"); do
		kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || continue
		total=$((total + ${kb:-0}))
	done
	echo "$total"
}

# Run a command with fd 3 (bats' own) closed and stdin from /dev/null.
# For use under `run`: redirecting `run` itself would close bats' fd 3.
without_fd3() {
	"$@" </dev/null 3>&-
}

# ---- servers -------------------------------------------------------------

# SERVER_CMD: the server under test, as an array (set by the suite).
# start_server [ARGS...]: run "${SERVER_CMD[@]}" -p 0 ARGS in the
# background, in its own session, stdin from /dev/null, fd 3 closed (or
# bats waits for it), stderr to a log; wait for its readiness line.
# SRV_NOFILE=N in the environment runs it under `ulimit -n N`.
# Sets SRV_PID, SRV_ADDR, SRV_SERVICE, SRV_LOG.
start_server() {
	local log
	_srv_count=$((_srv_count + 1))
	log=$BATS_TEST_TMPDIR/server$_srv_count.log
	(
		if [[ -n ${SRV_NOFILE:-} ]]; then
			ulimit -n "$SRV_NOFILE" || exit 99
		fi
		exec setsid "${SERVER_CMD[@]}" -p 0 "$@"
	) </dev/null >"$log.stdout" 2>"$log" 3>&- &
	SRV_PID=$!
	SRV_PIDS+=("$SRV_PID")
	SRV_LOG=$log
	wait_ready "$SRV_PID" "$log"
}

# The readiness line: "NAME: listening on ADDR (service SVC)", NAME maybe
# followed by "[pid]".
READY_RE='^([^ :[]+)(\[[0-9]+\])?: listening on ([^ ]+) \(service ([^)]+)\)$'

wait_ready() { # PID LOG
	local pid=$1 log=$2 end line st
	end=$((SECONDS + READY_TIMEOUT))
	while :; do
		if line=$(grep -m1 -E "$READY_RE" "$log" 2>/dev/null); then
			break
		fi
		if proc_dead "$pid"; then
			st=0
			wait "$pid" || st=$?
			fail "server exited with status $st before it was ready; log:
$(cat "$log")"
			return 1
		fi
		if ((SECONDS >= end)); then
			fail "no readiness line after ${READY_TIMEOUT}s; log:
$(cat "$log")"
			return 1
		fi
		sleep 0.02
	done
	[[ $line =~ $READY_RE ]]
	SRV_NAME=${BASH_REMATCH[1]}
	SRV_ADDR=${BASH_REMATCH[3]}
	SRV_SERVICE=${BASH_REMATCH[4]}
	if [[ $SRV_NAME != "${SERVER_CMD[0]##*/}" ]]; then
		fail "readiness line names '$SRV_NAME', not ${SERVER_CMD[0]##*/}: $line"
		return 1
	fi
	# setsid must not have forked: the pid we hold is the server itself.
	if [[ $(ps -o pgid= -p "$pid" | tr -d ' ') != "$pid" ]]; then
		fail "server $pid is not its own process group leader"
		return 1
	fi
}

# stop_server [PID [SIGNAL]]: signal the server (TERM by default), wait
# for it within STOP_TIMEOUT, and fail unless it exited 0 and left no
# process behind in its group.
stop_server() {
	local pid=${1:-$SRV_PID} sig=${2:-TERM} st=0 left
	kill -s "$sig" "$pid" 2>/dev/null || true
	if ! wait_until "$STOP_TIMEOUT" proc_dead "$pid"; then
		left=$(group_ps "$pid")
		kill -KILL -- "-$pid" 2>/dev/null || true
		fail "server $pid still running ${STOP_TIMEOUT}s after SIG$sig:
$left
log:
$(cat "$SRV_LOG")"
		return 1
	fi
	wait "$pid" || st=$?
	if ((st != 0)); then
		fail "server exited with status $st after SIG$sig (want 0); log:
$(cat "$SRV_LOG")"
		return 1
	fi
	# A child still running after its parent is gone is a leak; give the
	# kernel a moment to finish tearing down what is exiting.
	if ! wait_until 1 group_empty "$pid"; then
		left=$(group_ps "$pid")
		kill -KILL -- "-$pid" 2>/dev/null || true
		fail "processes left behind after the server exited:
$left"
		return 1
	fi
}

# Kill whatever a test left running: servers (their whole group) and
# background clients.  Called from teardown; never fails.
cleanup_processes() {
	local pid
	for pid in "${BG_PIDS[@]}"; do
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	for pid in "${SRV_PIDS[@]}"; do
		kill -KILL -- "-$pid" 2>/dev/null || true
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	BG_PIDS=()
	SRV_PIDS=()
}

# ---- clients ---------------------------------------------------------------

# The test client, bounded even if its own deadlines failed.
iotest() {
	timeout -k 5 180 "$IOTEST" "$@"
}

# bg_iotest OUT ARGS...: iotest in the background, stdout to OUT, stderr
# to OUT.err.  Sets BG_PID.
bg_iotest() {
	local out=$1
	shift
	"$IOTEST" "$@" </dev/null >"$out" 2>"$out.err" 3>&- &
	BG_PID=$!
	BG_PIDS+=("$BG_PID")
}

# wait_line FILE REGEX [SECONDS] [PID]: until a line of FILE matches;
# fail early if PID (the writer) died first.  Prints the line.  Often run
# as line=$(wait_line ...), where errexit does not apply: every failure
# path returns explicitly.
wait_line() {
	local file=$1 re=$2 secs=${3:-30} pid=${4:-} end line
	end=$((SECONDS + secs))
	while :; do
		if line=$(grep -m1 -E "$re" "$file" 2>/dev/null); then
			printf '%s\n' "$line"
			return 0
		fi
		if [[ -n $pid ]] && proc_dead "$pid"; then
			fail "process $pid ended before printing /$re/:
$(cat "$file" "$file.err" 2>/dev/null)"
			return 1
		fi
		if ((SECONDS >= end)); then
			fail "no line /$re/ in $file after ${secs}s:
$(cat "$file" "$file.err" 2>/dev/null)"
			return 1
		fi
		sleep 0.02
	done
}

# release_bg PID: ask a holding iotest to finish (SIGTERM) and wait for it
# (bounded).  Sets BG_STATUS.
release_bg() {
	local pid=$1
	BG_STATUS=0
	kill -TERM "$pid" 2>/dev/null || true
	if ! wait_until 60 proc_dead "$pid"; then
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" || BG_STATUS=$?
}
