"""relayd under valgrind memcheck (RELAYD_VALGRIND=1, tests/valgrind-run):
the command that wraps it, what memcheck said, and the run's report."""
import json
import os

VALGRIND_CMD = ["valgrind", "-q", "--leak-check=full",
                "--show-leak-kinds=definite",
                "--errors-for-leak-kinds=definite", "--num-callers=30"]


def wrap(cmd, workdir):
    """cmd under memcheck, which logs to workdir/valgrind.PID.log."""
    return VALGRIND_CMD + ["--log-file=%s" % (
        workdir / "valgrind.%p.log")] + cmd


def reports(workdir):
    """What memcheck said about each process (empty logs: nothing)."""
    out = []
    for p in sorted(workdir.glob("valgrind.*.log")):
        text = p.read_text(errors="replace").strip()
        if text:
            out.append("%s:\n%s" % (p.name, text))
    return out


def record_valgrind(test, reports):
    """Appends memcheck's reports to $RELAYD_VALGRIND_REPORT (the run's
    summary reads it), whatever became of the test."""
    path = os.environ.get("RELAYD_VALGRIND_REPORT")
    if path:
        # One write(2) with O_APPEND: tests/valgrind-run runs two pytest
        # workers, whose lines must not interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps({"test": test, "reports": reports})
                          + "\n").encode())
        finally:
            os.close(fd)
