#!/bin/sh
# Installs what relayd needs, builds it, and starts it on 127.0.0.1:2525
# together with the test suite's fake Microsoft Graph (tests/fakegraph.py)
# on a loopback port. Sends a test message with an attachment through it and
# shows the Graph sendMail request the message became. relayd keeps running
# in the foreground; Ctrl-C stops both.
set -eu
cd "$(dirname "$0")"
sh tests/deps.sh
[ -x configure ] || autoreconf -fi >/dev/null
[ -f Makefile ] || ./configure >/dev/null
make -j2 >/dev/null

run="$PWD/demo-run"
mkdir -p "$run"
rm -f "$run/graph.port"

# wait_for WHAT PID LOG TEST...: polls TEST for 10 s while PID lives.
wait_for() {
	what=$1 p=$2 log=$3
	shift 3
	i=0
	until "$@"; do
		if ! kill -0 "$p" 2>/dev/null || [ $i -ge 100 ]; then
			cat "$log" >&2
			echo "demo: $what (see above)" >&2
			exit 1
		fi
		i=$((i + 1))
		sleep 0.1
	done
}

# The fake Graph: Entra's token endpoint and Graph's sendMail on one port.
/usr/bin/python3 tests/fakegraph.py --listen 127.0.0.1:0 \
	--port-file "$run/graph.port" 2>"$run/fakegraph.log" &
graph=$!
trap 'kill $graph 2>/dev/null' INT TERM EXIT
wait_for "the fake Graph did not start" $graph "$run/fakegraph.log" \
    test -s "$run/graph.port"
url="http://127.0.0.1:$(cat "$run/graph.port")"

# The app registration's secret, readable by its owner only.
(umask 077; printf 's3cret\n' > "$run/client_secret")
sed -e "s|@SPOOL@|$run/spool|" -e "s|@SECRET@|$run/client_secret|" \
    -e "s|@GRAPH@|$url|" -e "s|@STATUS@|$run/relayd.sock|" \
    conf/demo.conf > "$run/relayd.conf"
./relayd/relayd -n -c "$run/relayd.conf"
: > "$run/relayd.log"
./relayd/relayd -c "$run/relayd.conf" 2>>"$run/relayd.log" &
pid=$!
trap 'kill $pid $graph 2>/dev/null' INT TERM EXIT
# Wait for this relayd (not some other program on the port) to be ready.
wait_for "relayd did not start" $pid "$run/relayd.log" \
    grep -q "relayd started" "$run/relayd.log"

echo
echo "== Sending a test message with an attachment to relayd on 127.0.0.1:2525"
printf 'Pretend this is a scanned PDF.\n' > "$run/scan.txt"
swaks --server 127.0.0.1:2525 --from printer@demo.example \
	--to someone@demo.example --header "Subject: relayd demo" \
	--body "Scanned document attached (demo)." \
	--attach-type text/plain --attach-name scan.txt --attach "@$run/scan.txt" \
	2>&1 | grep -E '^(<-|->)  (MAIL|RCPT|250 2.0.0)'

wait_for "the message was not delivered" $pid "$run/relayd.log" \
    grep -q "graph sent" "$run/relayd.log"
echo
echo "== relayd's log:"
cat "$run/relayd.log"
echo
echo "== What the (fake) Graph received: POST /v1.0/users/printer@demo.example/sendMail"
curl -s "$url/_fake/sent" | /usr/bin/python3 -c '
import json, sys
for m in json.load(sys.stdin):
    print(json.dumps(m["body"], indent=2, ensure_ascii=False))'
echo
echo "== relayctl -s demo-run/relayd.sock status"
./relayd/relayctl -s "$run/relayd.sock" status
echo
echo "relayd is running (pid $pid) and delivers to the fake Graph at $url."
echo "Ask it how it is: relayctl -s demo-run/relayd.sock status (or queue,"
echo "metrics)."
echo "Point an SMTP client at 127.0.0.1:2525; relayd's log follows. Ctrl-C"
echo "stops relayd and the fake Graph."
tail -n 0 -f "$run/relayd.log" &
tail=$!
trap 'kill $pid $graph $tail 2>/dev/null' INT TERM EXIT
wait $pid
