#!/bin/sh
# Installs everything relayd needs to build, run its demo and run its tests
# on Debian 12 / Ubuntu 22.04+. Idempotent; needs root (or sudo).
set -eu
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# Postfix is only used as a test client (smtp-source) and as the benchmark's
# peer; it must not configure itself as this host's mail system.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
	build-essential autoconf automake libtool pkg-config \
	libevent-dev libcurl4-openssl-dev libjson-c-dev libgsasl-dev \
	libgmime-3.0-dev libssl-dev libsystemd-dev libcmocka-dev libcrypt-dev \
	libsqlite3-dev libseccomp-dev libhiredis-dev \
	python3 python3-pytest python3-jsonschema python3-cryptography \
	swaks libnet-ssleay-perl msmtp curl postfix haproxy procps iproute2 wrk \
	systemd groff-base man-db valgrind \
	python3-fusepy python3-pytest-xdist \
	clang \
	redis-server \
	>/dev/null
# libFuzzer and the sanitizer runtimes for `CC=clang ./configure
# --enable-fuzzing`, which clang only recommends on Debian 12.
if apt-cache show libclang-rt-dev >/dev/null 2>&1; then
	$SUDO apt-get install -y -qq --no-install-recommends libclang-rt-dev \
	    >/dev/null
fi
# redis-server: test_cluster.py starts its own on a free loopback port; the
# system's service is not needed (and must not be mistaken for it).
if command -v systemctl >/dev/null 2>&1; then
	$SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
