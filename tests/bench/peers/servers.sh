# shellcheck shell=bash
# Starting, watching and stopping the three servers of the comparison, for
# tests/bench/compare and tests/bench/peers/check.sh (source this file).
#
# Each start_* function takes a fresh directory and a durability level
# (full or os), starts the server in the background on loopback, waits
# until it answers, and sets SRV_PID (the process to signal and measure)
# and SRV_ADDR (what bench_load's --addr takes). The caller sets ROOT (the
# source tree) and CHOREO (the binary).

# port_free PORT: nothing listens on PORT (TCP, any address).
port_free() {
	! ss -Htln "sport = :$1" 2>/dev/null | grep -q .
}

# pick_port BASE [COUNT]: the first BASE, BASE+10, ... whose COUNT
# consecutive ports are all free (the result is printed).
pick_port() {
	local base=$1 n=${2:-1} p k ok
	for ((p = base; p < base + 2000; p += 10)); do
		ok=1
		for ((k = 0; k < n; k++)); do
			port_free $((p + k)) || { ok=0; break; }
		done
		if [ $ok = 1 ]; then
			echo "$p"
			return 0
		fi
	done
	echo "no free port from $base" >&2
	return 1
}

# tcp_open PORT: something accepts connections on 127.0.0.1:PORT.
tcp_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_for TIMEOUT_S PID CMD...: runs CMD until it succeeds; fails when
# PID dies or TIMEOUT_S passes.
wait_for() {
	local timeout=$1 pid=$2 i
	shift 2
	for ((i = 0; i < timeout * 20; i++)); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "the server (pid $pid) exited while starting" >&2
			return 1
		fi
		sleep 0.05
	done
	echo "the server (pid $pid) did not answer in ${timeout}s" >&2
	return 1
}

redis_ping() {
	[ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
}

# start_redis DIR full|os
start_redis() {
	local dir=$1 fsync=always port
	[ "$2" = os ] && fsync="everysec"
	port=$(pick_port 26379) || return 1
	redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save "" \
		--appendonly yes --appendfsync "$fsync" --daemonize no \
		--logfile "$dir/redis.log" </dev/null >/dev/null 2>&1 &
	SRV_PID=$!
	SRV_ADDR=127.0.0.1:$port
	wait_for 30 "$SRV_PID" redis_ping "$port" || return 1
	# bench_load calls EVALSHA; loading them here too costs nothing
	redis-cli -p "$port" SCRIPT LOAD "$(cat "$ROOT/tests/bench/peers/redis_event.lua")" >/dev/null &&
		redis-cli -p "$port" SCRIPT LOAD "$(cat "$ROOT/tests/bench/peers/redis_populate.lua")" >/dev/null
}

# start_tarantool DIR full|os
start_tarantool() {
	local dir=$1 mode=fsync port
	[ "$2" = os ] && mode="write"
	port=$(pick_port 23301) || return 1
	BENCH_PORT=$port BENCH_DIR=$dir BENCH_WAL_MODE=$mode \
		tarantool "$ROOT/tests/bench/peers/tarantool.lua" \
		</dev/null >"$dir/stdout.log" 2>&1 &
	SRV_PID=$!
	SRV_ADDR=127.0.0.1:$port
	# the script opens its port only once its procedures exist
	wait_for 60 "$SRV_PID" tcp_open "$port"
}

# start_choreo DIR full|os
start_choreo() {
	local dir=$1 base
	base=$(pick_port 27450 4) || return 1
	"$CHOREO" serve --rules "$ROOT/tests/bench/reference/rules" \
		--data "$dir/data" \
		--rep "tcp://127.0.0.1:$base" \
		--pull "tcp://127.0.0.1:$((base + 1))" \
		--pub "tcp://127.0.0.1:$((base + 2))" \
		--http "http://127.0.0.1:$((base + 3))" \
		--sync "$2" </dev/null >"$dir/choreo.log" 2>&1 &
	SRV_PID=$!
	SRV_ADDR=tcp://127.0.0.1:$base
	wait_for 30 "$SRV_PID" "$CHOREO" ping --url "$SRV_ADDR"
}

# stop_server PID: TERM, then wait (KILL after 20 s).
stop_server() {
	local pid=$1 i
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 400; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "pid $pid ignored TERM for 20 s: KILL" >&2
		kill -KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null || true
}

# cpu_ticks PID: utime + stime of PID and of every descendant, live ones
# directly and reaped ones through cutime + cstime (choreo's engine is a
# child of the supervisor; Redis forks to rewrite its AOF). Clock ticks.
cpu_ticks() {
	local pid=$1 total=0 s kids k
	[ -r "/proc/$pid/stat" ] || { echo 0; return; }
	s=$(cat "/proc/$pid/stat" 2>/dev/null) || { echo 0; return; }
	s=${s##*) }
	# shellcheck disable=SC2086
	set -- $s
	# fields 14-17 of stat, counted from field 3 (state) as $1
	total=$((${12} + ${13} + ${14} + ${15}))
	kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null)
	for k in $kids; do
		total=$((total + $(cpu_ticks "$k")))
	done
	echo "$total"
}
