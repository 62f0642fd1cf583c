"""Where the tree and the binaries are, and how long to wait.

RELAYD_BUILDDIR  where relayd/relayd was built (default: the repo root)
RELAYD_SRCDIR    the source tree (default: the repo root)
RELAYD_VALGRIND=1 (tests/valgrind-run): every daemon runs under valgrind
                 memcheck, about ten times slower: the waits stretch.
"""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILDDIR = Path(os.environ.get("RELAYD_BUILDDIR") or REPO_ROOT)
SRCDIR = Path(os.environ.get("RELAYD_SRCDIR") or REPO_ROOT)
RELAYD_BIN = BUILDDIR / "relayd" / "relayd"
RELAYCTL_BIN = BUILDDIR / "relayd" / "relayctl"
SENDMAIL_BIN = BUILDDIR / "relayd" / "relayd-sendmail"

HOSTNAME = "relayd.test"         # the test daemons' [smtp] hostname
EX_CONFIG = 78                  # sysexits.h: relayd's exit for a bad config

# RELAYD_VALGRIND=1 (tests/valgrind-run): every daemon runs under
# valgrind memcheck, which is about ten times slower: the waits stretch.
VALGRIND = os.environ.get("RELAYD_VALGRIND", "") not in ("", "0")
SLOW = 4.0 if VALGRIND else 1.0


def _sanitized():
    try:
        text = (BUILDDIR / "Makefile").read_text(errors="replace")
    except OSError:
        return False
    return any(l.startswith("SAN_CFLAGS =") and "-fsanitize" in l
               for l in text.splitlines())


# Built with --enable-sanitizers: ASan keeps freed memory in quarantine,
# so a process's RSS says nothing about what it holds.
SANITIZED = _sanitized()

POLL = 0.01            # seconds between polls
START_TIMEOUT = 10.0 * SLOW     # daemon start-up
STOP_TIMEOUT = 10.0 * SLOW      # daemon shutdown after SIGTERM
IO_TIMEOUT = 5.0 * SLOW         # default wait for a reply
