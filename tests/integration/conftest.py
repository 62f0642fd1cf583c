"""
pytest's side of relayd's integration tests: fixtures and hooks only. The
helpers they and the tests use are in the relaydtest package beside this
file (see relaydtest/__init__.py); tests import them from there.

Every test gets its own daemon (or several) through the `relayd` factory
fixture: a config file in the test's tmp dir, a free loopback port, a private
spool_dir, stderr captured to a log file. Nothing here sleeps for a fixed
time longer than a polling step; waits poll with deadlines.

The fake Microsoft Graph (tests/fakegraph.py) runs as its own process per
test through `fake_graph` / `fake_graph_tls` (or `fake_graph_factory`), or
per module through `shared_fake_graph`; `graph_sections(fake)` gives the
[graph] config that points relayd at it.

Environment: RELAYD_BUILDDIR, RELAYD_SRCDIR (relaydtest/env.py),
RELAYD_VALGRIND (relaydtest/valgrind.py), RELAYD_GRAPH_SCHEMA
(relaydtest/graph.py).
"""
import os
import subprocess
import sys

import pytest

from relaydtest.certs import CertAuthority
from relaydtest.daemon import Relayd
from relaydtest.env import SRCDIR, VALGRIND
from relaydtest.graph import (FakeGraph, assert_sendmail_valid,
                              graph_schema_path, sendmail_validator)
from relaydtest.valgrind import record_valgrind

# The names tests imported from conftest before relaydtest existed, still
# importable from here for tests written against that (import them from
# relaydtest in new tests).
from relaydtest.env import (BUILDDIR, HOSTNAME, IO_TIMEOUT, POLL,
                            RELAYCTL_BIN, RELAYD_BIN, REPO_ROOT, SLOW,
                            START_TIMEOUT, STOP_TIMEOUT)
from relaydtest.daemon import TOOL_TIMEOUT, need, run, run_relayd
from relaydtest.graph import (DISCONNECT_EXC_RE, FAKE_CLIENT_ID, FAKE_SECRET,
                              FAKE_TENANT, FAKEGRAPH, graph_relayd,
                              graph_sections)
from relaydtest.ports import free_port, ipv6_available
from relaydtest.smtp import QID_RE, QUEUED_RE, Reply, SMTPClosed, SMTPConn
from relaydtest.spool import (LIVE_STATES, SPOOL_MAGIC, SPOOL_SIZE_LEN,
                              SPOOL_SIZE_RE, SPOOL_STATE_LEN, SPOOL_STATE_RE,
                              SPOOL_TRAILER_LEN, SPOOL_TRAILER_RE, SpoolFile,
                              SpoolRecord, list_dir, make_record,
                              parse_records, parse_segment, parse_spool_file)
from relaydtest.valgrind import VALGRIND_CMD
from relaydtest.wait import wait_for

__all__ = ["BUILDDIR", "DISCONNECT_EXC_RE", "FAKEGRAPH", "FAKE_CLIENT_ID",
           "FAKE_SECRET", "FAKE_TENANT", "HOSTNAME", "IO_TIMEOUT",
           "LIVE_STATES", "POLL", "QID_RE", "QUEUED_RE", "RELAYCTL_BIN",
           "RELAYD_BIN", "REPO_ROOT", "Reply", "SLOW", "SMTPClosed",
           "SMTPConn", "SPOOL_MAGIC", "SPOOL_SIZE_LEN", "SPOOL_SIZE_RE",
           "SPOOL_STATE_LEN", "SPOOL_STATE_RE", "SPOOL_TRAILER_LEN",
           "SPOOL_TRAILER_RE", "START_TIMEOUT", "STOP_TIMEOUT", "SpoolFile",
           "SpoolRecord", "TOOL_TIMEOUT", "VALGRIND_CMD", "free_port",
           "graph_relayd", "graph_sections", "ipv6_available", "list_dir",
           "make_record", "need", "parse_records", "parse_segment",
           "parse_spool_file", "run", "run_relayd", "wait_for"]


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item._relayd_call_failed = rep.failed
    if rep.failed:
        for d in getattr(item, "_relayd_daemons", []):
            rep.sections.append(("relayd log: %s (%s)" % (d.name, d.log_path),
                                 d.log or "(empty)"))
        for f in getattr(item, "_fake_graphs", []):
            rep.sections.append(("fake graph log: %s (%s)"
                                 % (f.name, f.log_path), f.log or "(empty)"))


@pytest.fixture
def relayd_factory(request, tmp_path):
    """relayd_factory(smtp={...}, sections={...}, listen=[...],
    spool_dir=..., ipv6=False, start=True) -> Relayd"""
    daemons = []
    request.node._relayd_daemons = daemons

    def make(start=True, **kw):
        kw.setdefault("name", "relayd%d" % len(daemons) if daemons
                      else "relayd")
        d = Relayd(tmp_path / kw["name"], **kw)
        daemons.append(d)
        if start:
            d.start()
        return d

    yield make

    problems = []
    for d in daemons:
        if d.proc is None:
            d.close()
            continue
        if not d.running() and not d.expect_dead:
            problems.append("relayd %s died unexpectedly with status %s"
                            % (d.name, d.proc.returncode))
        if d.running():
            try:
                rc = d.stop()
                if rc != 0:
                    problems.append("relayd %s exited with %s after SIGTERM"
                                    % (d.name, rc))
            except AssertionError as e:
                problems.append(str(e))
        d.close()
    for d in daemons:
        reports = d.valgrind_reports() if VALGRIND else []
        if reports:
            record_valgrind(request.node.nodeid, reports)
            problems.append("valgrind memcheck (relayd %s):\n%s"
                            % (d.name, "\n".join(reports)[:20000]))
    if problems and not getattr(request.node, "_relayd_call_failed", False):
        pytest.fail("; ".join(problems) + "\n\n" +
                    "\n".join("== %s ==\n%s" % (d.name, d.log)
                              for d in daemons))


@pytest.fixture
def relayd(relayd_factory):
    """A daemon with the default test config."""
    return relayd_factory()


@pytest.fixture
def tmpfs_dir(tmp_path):
    """A 512k tmpfs, unmounted at teardown. Request it BEFORE relayd_factory
    so that the daemon is stopped before the unmount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700",
                        "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.strip())
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            # Still busy (a process left behind?): detach it anyway.
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            pytest.fail("umount %s failed: %s" % (mnt, r.stderr.strip()))


@pytest.fixture
def powercut(tmp_path):
    """powercut() -> a tests/powercutfs.py file system mounted on
    tmp_path/pc-mnt over tmp_path/pc-backing (its .cut() is a power cut;
    call powercut() again to mount the survivor). Request it BEFORE
    relayd_factory so that daemons stop before the unmount. Skips without
    root, /dev/fuse or python3-fusepy."""
    sys.path.insert(0, str(SRCDIR / "tests"))
    import powercutfs
    why = powercutfs.available()
    if why:
        pytest.skip(why)
    backing, mnt = tmp_path / "pc-backing", tmp_path / "pc-mnt"
    backing.mkdir()
    mnt.mkdir()
    mounts = []

    def make(**kw):
        fs = powercutfs.mount(backing, mnt, **kw)
        mounts.append(fs)
        return fs
    make.backing, make.mountpoint = backing, mnt
    try:
        yield make
    finally:
        for fs in mounts:
            fs.unmount()


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory):
    """A test CA and a server certificate (localhost, 127.0.0.1, ::1) it
    signed, made once per session: .ca_file, .cert_file, .key_file,
    .issue(name, ...) for more."""
    return CertAuthority(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture
def fake_graph_factory(request, tmp_path):
    """fake_graph_factory(tls=None|CertAuthority, args=[...], name=...,
    start=True) -> FakeGraph. Every fake is stopped at teardown; the test
    fails if one died or logged a Python traceback."""
    fakes = []
    request.node._fake_graphs = fakes

    def make(tls=None, args=(), name=None, start=True):
        name = name or ("fakegraph%d" % len(fakes) if fakes else "fakegraph")
        f = FakeGraph(tmp_path / name, tls=tls, args=args, name=name)
        fakes.append(f)
        if start:
            f.start()
        return f

    yield make

    problems = []
    for f in fakes:
        if f.proc is None:
            f.close()
            continue
        if not f.running() and not f.expect_dead:
            problems.append("fake graph %s died with status %s"
                            % (f.name, f.proc.returncode))
        try:
            f.stop()
        except AssertionError as e:
            problems.append(str(e))
        tbs = f.tracebacks()
        if tbs:
            problems.append("fake graph %s logged a traceback:\n%s"
                            % (f.name, "\n\n".join(tbs)))
        f.close()
    if problems and not getattr(request.node, "_relayd_call_failed", False):
        pytest.fail("; ".join(problems))


@pytest.fixture
def fake_graph(fake_graph_factory):
    """A fake Graph + token server over plain HTTP."""
    return fake_graph_factory()


@pytest.fixture
def fake_graph_tls(fake_graph_factory, tls_ca):
    """A fake Graph + token server over HTTPS with a certificate from
    tls_ca; graph_sections() adds ca_file."""
    return fake_graph_factory(tls=tls_ca)


@pytest.fixture(scope="session")
def sendmail_schema():
    """check(doc, ...): validates sendMail bodies against
    graph.sendMailRequest, independently of the fake. Without the shared
    schema it skips the test, saying so: call it after the test's other
    assertions."""
    def check(*docs):
        validator = sendmail_validator()
        if validator is None:
            pytest.skip("schema check skipped: %s not found (../shared is "
                        "absent); the test's other assertions passed"
                        % graph_schema_path())
        for doc in docs:
            assert_sendmail_valid(validator, doc)
    return check


@pytest.fixture(scope="module")
def _module_fake_graph(tmp_path_factory):
    f = FakeGraph(tmp_path_factory.mktemp("fake"), name="fakegraph-module")
    f.start()
    yield f
    f.stop()
    f.close()


@pytest.fixture
def shared_fake_graph(_module_fake_graph, request):
    """One fake Graph process per test module (starting one costs ~0.2 s),
    reset for each test: no records, faults or tokens, start-up config.
    Its log is shown when the test fails; a traceback in it fails the
    test, and so does a body it accepted that graph.sendMailRequest does
    not (when the shared schema is there). Use fake_graph for a test that
    stops or breaks its fake."""
    f = _module_fake_graph
    assert f.running(), "the module's fake graph died:\n" + f.log
    f.reset(tokens=True)
    start = len(f.log)
    request.node._fake_graphs = [f]
    yield f
    tbs = f.tracebacks(since=start)
    assert not tbs, "the fake logged a traceback:\n" + "\n\n".join(tbs)
    validator = sendmail_validator()
    if validator is not None and f.running():
        for rec in f.sent():
            if rec["format"] == "json":
                assert_sendmail_valid(validator, rec["body"])
