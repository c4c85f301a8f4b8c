#!/usr/bin/env bash
# Do choreo, Redis and Tarantool decide alike on the reference workload?
#
#   tests/bench/peers/check.sh [CHOREO_BINARY]   (default build-bench/choreo)
#
# Starts the three servers (durability os) in a temporary directory,
# populates 60 customers (c0..c59: every age threshold, segment and region)
# through each one's own client (choreo send, a RESP client, net.box), sends
# the same seeded 400 events in the README's mix to c0..c56, one event of
# an unknown customer (an error everywhere, nothing stored), then a script
# on c57..c59 that reaches stop_after_rejects where the cooldown does not
# hide it, and compares every reply's action names. Needs redis-server,
# redis-cli, tarantool and python3. Exit 0 when all agree.
#
# Not covered: max_impressions (a second impression needs the 1 h cooldown
# to pass, and the servers' clocks are real).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
CHOREO=${1:-$ROOT/build-bench/choreo}
CUSTOMERS=${CHECK_CUSTOMERS:-60}
EVENTS=${CHECK_EVENTS:-400}
SEED=${CHECK_SEED:-7}
# shellcheck source-path=SCRIPTDIR source=servers.sh
. "$ROOT/tests/bench/peers/servers.sh"

for tool in redis-server redis-cli tarantool python3; do
	command -v $tool >/dev/null || { echo "check: $tool is missing" >&2; exit 2; }
done
[ -x "$CHOREO" ] || { echo "check: no $CHOREO (build choreo first)" >&2; exit 2; }

TMP=$(mktemp -d /tmp/choreo-check.XXXXXX)
PIDS=()
SRV_PID=
cleanup() {
	local p
	# SRV_PID too: a server that failed to start is not in PIDS yet
	for p in "${PIDS[@]}" ${SRV_PID:+"$SRV_PID"}; do stop_server "$p"; done
	if [ -n "${CHECK_KEEP:-}" ]; then
		echo "check: kept $TMP"
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir "$TMP/choreo" "$TMP/redis" "$TMP/tarantool"
start_choreo "$TMP/choreo" os
PIDS+=("$SRV_PID")
CHOREO_ADDR=$SRV_ADDR
start_redis "$TMP/redis" os
PIDS+=("$SRV_PID")
REDIS_ADDR=$SRV_ADDR
start_tarantool "$TMP/tarantool" os
PIDS+=("$SRV_PID")
TARANTOOL_ADDR=$SRV_ADDR

# The workload as lines: "P i" populates customer i, "E c<k> type action
# outcome" is one event ("-" for no action or outcome).
python3 - "$CUSTOMERS" "$EVENTS" "$SEED" >"$TMP/workload" <<'EOF'
import sys
n, events, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    print("P", i)
state = (seed * 6364136223846793005 + 1442695040888963407) % 2**64
def rnd(m):
    global state
    state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
    return (state >> 33) % m
# the seeded stream goes to c0..c{n-4}; the last three are kept for a
# script that reaches a stop_after_rejects the cooldown does not hide
for k in range(events):
    c, r = rnd(n - 3), rnd(100)
    if r < 60:
        print("E", "c%d" % c, "page_view", "-", "-")
    elif r < 80:
        print("E", "c%d" % c, "add_to_cart", "-", "-")
    elif r < 85:
        print("E", "c%d" % c, "purchase", "-", "-")
    else:
        o = rnd(10)
        outcome = "accepted" if o < 3 else "rejected" if o < 7 else "ignored"
        print("E", "c%d" % c, "response", "a%02d" % (1 + rnd(20)), outcome)
    if k == events // 2:
        # a customer nobody populated: choreo's rule fails on its missing
        # age, and so must the peers, changing nothing
        print("E", "nobody", "page_view", "-", "-")
# x (gold or silver, so a20 is eligible) rejects a20 twice while the
# model ranks a20 low; then others accept it until it would rank first;
# x must still not be offered a20
x, z, w = [i for i in range(n - 3, n) if i % 3 != 2][0], n - 2, n - 1
z = n - 1 if z == x else z
w = n - 3 if w == x or w == z else w
for _ in range(4):
    print("E", "c%d" % z, "response", "a20", "rejected")
for _ in range(2):
    print("E", "c%d" % x, "response", "a20", "rejected")
for _ in range(15):
    print("E", "c%d" % w, "response", "a20", "accepted")
print("E", "c%d" % x, "page_view", "-", "-")
print("E", "c%d" % z, "page_view", "-", "-")
EOF

# choreo: JSON lines through `choreo send -`, one reply a line
python3 - "$TMP/workload" >"$TMP/choreo.req" <<'EOF'
import json, sys
SEG, REG, PLAN = ["gold", "silver", "bronze"], ["EU", "US", "APAC"], ["free", "basic", "pro", "team"]
CTRY, LANG, DEV = ["DE", "US", "SG"], ["de", "en", "en"], ["web", "app"]
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] == "P":
        i = int(f[1])
        data = dict(age=16 + i % 60, segment=SEG[i % 3], region=REG[(i // 3) % 3],
                    plan=PLAN[i % 4], tenure=i % 120, country=CTRY[(i // 3) % 3],
                    language=LANG[(i // 3) % 3], device=DEV[i % 2],
                    newsletter=i % 2 == 0, score=i % 1000)
        req = dict(business="bench", customer="c%d" % i, type="profile",
                   decide=False, data=data)
    else:
        req = dict(business="bench", customer=f[1], type=f[2], channel="web")
        if f[2] == "response":
            req["data"] = dict(action=f[3], outcome=f[4])
    print(json.dumps(req))
EOF
"$CHOREO" send --url "$CHOREO_ADDR" - <"$TMP/choreo.req" >"$TMP/choreo.rep" || true
python3 - "$TMP/choreo.rep" >"$TMP/choreo.out" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if not r.get("ok"):
        print("error")
    elif "actions" in r:
        print(" ".join(a["name"] for a in r["actions"]) or "(none)")
EOF

# Redis: EVALSHA over a plain RESP connection
python3 - "$TMP/workload" "$REDIS_ADDR" "$ROOT/tests/bench/peers" >"$TMP/redis.out" <<'EOF'
import socket, sys
SEG, REG, PLAN = ["gold", "silver", "bronze"], ["EU", "US", "APAC"], ["free", "basic", "pro", "team"]
CTRY, LANG, DEV = ["DE", "US", "SG"], ["de", "en", "en"], ["web", "app"]
host, port = sys.argv[2].rsplit(":", 1)
s = socket.create_connection((host, int(port)))
rf = s.makefile("rb")
def call(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out)
    return reply()
def reply():
    line = rf.readline().rstrip(b"\r\n")
    t, rest = line[:1], line[1:]
    if t == b"-":
        return RuntimeError(rest.decode())
    if t in (b"+", b":"):
        return rest.decode()
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = rf.read(n + 2)[:-2]
        return data.decode()
    if t == b"*":
        return [reply() for _ in range(int(rest))]
    raise SystemExit("redis: unexpected reply %r" % line)
sha_event = call("SCRIPT", "LOAD", open(sys.argv[3] + "/redis_event.lua", "rb").read())
sha_pop = call("SCRIPT", "LOAD", open(sys.argv[3] + "/redis_populate.lua", "rb").read())
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] == "P":
        i = int(f[1])
        r = call("EVALSHA", sha_pop, 1, "c%d" % i, 16 + i % 60, SEG[i % 3], REG[(i // 3) % 3],
                 PLAN[i % 4], i % 120, CTRY[(i // 3) % 3], LANG[(i // 3) % 3], DEV[i % 2],
                 1 if i % 2 == 0 else 0, i % 1000)
        if isinstance(r, Exception):
            raise SystemExit("redis populate: %s" % r)
        continue
    act = "" if f[3] == "-" else f[3]
    out = "" if f[4] == "-" else f[4]
    r = call("EVALSHA", sha_event, 1, f[1], f[2], act, out)
    print("error" if isinstance(r, Exception) else (" ".join(r) or "(none)"))
EOF

# Tarantool: net.box calls
cat >"$TMP/tclient.lua" <<'EOF'
local netbox = require('net.box')
local SEG, REG, PLAN = { 'gold', 'silver', 'bronze' }, { 'EU', 'US', 'APAC' }, { 'free', 'basic', 'pro', 'team' }
local CTRY, LANG, DEV = { 'DE', 'US', 'SG' }, { 'de', 'en', 'en' }, { 'web', 'app' }
local c = netbox.connect(arg[2])
assert(c:ping(), 'tarantool: cannot connect to ' .. arg[2])
for line in io.lines(arg[1]) do
  local f = {}
  for w in line:gmatch('%S+') do f[#f + 1] = w end
  if f[1] == 'P' then
    local i = tonumber(f[2])
    local g = math.floor(i / 3) % 3 + 1
    c:call('bench_populate', { 'c' .. i, 16 + i % 60, SEG[i % 3 + 1], REG[g], PLAN[i % 4 + 1],
                               i % 120, CTRY[g], LANG[g], DEV[i % 2 + 1], i % 2 == 0, i % 1000 })
  else
    local act = f[4] == '-' and '' or f[4]
    local out = f[5] == '-' and '' or f[5]
    local ok, r = pcall(c.call, c, 'bench_event', { f[2], f[3], act, out })
    if not ok then
      print('error')
    else
      local s = table.concat(r, ' ')
      print(s == '' and '(none)' or s)
    end
  end
end
os.exit(0)
EOF
tarantool "$TMP/tclient.lua" "$TMP/workload" "$TARANTOOL_ADDR" >"$TMP/tarantool.out"

python3 - "$TMP" "$EVENTS" <<'EOF'
import sys
d, expect = sys.argv[1], int(sys.argv[2]) + 1 + 23
out = {n: open("%s/%s.out" % (d, n)).read().splitlines() for n in ("choreo", "redis", "tarantool")}
bad = False
for n, lines in out.items():
    if len(lines) != expect:
        print("check: %s gave %d decisions, expected %d" % (n, len(lines), expect))
        bad = True
diff = [k for k in range(min(map(len, out.values())))
        if not out["choreo"][k] == out["redis"][k] == out["tarantool"][k]]
for k in diff[:10]:
    print("check: event %d differs: choreo [%s] redis [%s] tarantool [%s]"
          % (k + 1, out["choreo"][k], out["redis"][k], out["tarantool"][k]))
c = out["choreo"]
full = sum(1 for x in c if len(x.split()) == 3)
part = sum(1 for x in c if x not in ("error", "(none)") and len(x.split()) < 3)
none = c.count("(none)")
errs = c.count("error")
print("check: %d events: %d with 3 actions, %d with fewer, %d with none, %d errors"
      % (len(c), full, part, none, errs))
if bad or diff:
    print("check: FAILED (%d differ)" % len(diff))
    sys.exit(1)
print("check: choreo, redis and tarantool gave identical decisions")
EOF
