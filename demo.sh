#!/bin/sh
# Installs what relayd needs, builds it, starts it on 127.0.0.1:2525 with a
# spool in ./demo-run, sends a test message through it and shows where the
# message was stored. relayd keeps running in the foreground; Ctrl-C stops it.
set -eu
cd "$(dirname "$0")"
sh tests/deps.sh
[ -x configure ] || autoreconf -fi >/dev/null
[ -f Makefile ] || ./configure >/dev/null
make -j2 >/dev/null

run="$PWD/demo-run"
mkdir -p "$run"
sed "s|@SPOOL@|$run/spool|" conf/demo.conf > "$run/relayd.conf"
./relayd/relayd -n -c "$run/relayd.conf"
./relayd/relayd -c "$run/relayd.conf" 2>"$run/relayd.log" &
pid=$!
trap 'kill $pid 2>/dev/null' INT TERM EXIT
# Wait for this relayd (not some other program on the port) to be ready.
i=0
until grep -q "relayd started" "$run/relayd.log"; do
	if ! kill -0 $pid 2>/dev/null; then
		cat "$run/relayd.log" >&2
		echo "demo: relayd did not start (see above)" >&2
		exit 1
	fi
	i=$((i + 1)); [ $i -lt 100 ] || { echo "demo: relayd did not start" >&2; exit 1; }
	sleep 0.1
done

echo
echo "== Sending a test message to relayd on 127.0.0.1:2525"
swaks --server 127.0.0.1:2525 --from printer@demo.example \
	--to someone@demo.example --header "Subject: relayd demo" \
	--body "Scanned document attached (demo)." 2>&1 | grep -E '^(<-|->)  (MAIL|RCPT|250 2.0.0)'
echo
echo "== relayd's log:"
cat "$run/relayd.log"
echo
echo "== The message is durable in the spool:"
ls -l "$run/spool/queue"
echo
echo "relayd is running (pid $pid); point an SMTP client at 127.0.0.1:2525."
echo "Its log follows; Ctrl-C stops it. Delivery to Microsoft Graph arrives"
echo "in a later version."
tail -n 0 -f "$run/relayd.log" &
tail=$!
trap 'kill $pid $tail 2>/dev/null' INT TERM EXIT
wait $pid
