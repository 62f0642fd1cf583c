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
./relayd/relayd -c "$run/relayd.conf" &
pid=$!
trap 'kill $pid 2>/dev/null' INT TERM EXIT
i=0
until swaks --server 127.0.0.1:2525 --quit-after CONNECT >/dev/null 2>&1; do
	i=$((i + 1)); [ $i -lt 50 ] || { echo "relayd did not start" >&2; exit 1; }
	sleep 0.1
done

echo
echo "== Sending a test message to relayd on 127.0.0.1:2525"
swaks --server 127.0.0.1:2525 --from printer@demo.example \
	--to someone@demo.example --header "Subject: relayd demo" \
	--body "Scanned document attached (demo)." 2>&1 | grep -E '^(<-|->)  (MAIL|RCPT|250 2.0.0)'
echo
echo "== The message is durable in the spool:"
ls -l "$run/spool/queue"
echo
echo "relayd is running (pid $pid); point an SMTP client at 127.0.0.1:2525."
echo "Ctrl-C stops it. Delivery to Microsoft Graph arrives in a later version."
wait $pid
