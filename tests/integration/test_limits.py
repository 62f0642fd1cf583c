"""Every limit and its reply; after each breach the server still serves."""
import re
import socket
import time

import pytest

from relaydtest.smtp import SMTPConn
from relaydtest.wait import wait_for
from relaydtest.procs import cpu_seconds


def start_tx(c, rcpts=("rcpt@b.test",)):
    c.ehlo()
    assert c.cmd("MAIL FROM:<sender@a.test>").code == 250
    for r in rcpts:
        assert c.cmd("RCPT TO:<%s>" % r).code == 250


# ---- message size

def test_size_parameter_over_limit(relayd_factory):
    d = relayd_factory(smtp={"max_message_size": "1k"})
    with d.connect() as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@a.test> SIZE=1025")
        assert r.text.startswith("552 5.3.4"), r
        # no transaction was started
        assert c.cmd("RCPT TO:<b@b.test>").code == 503
        assert c.cmd("MAIL FROM:<a@a.test> SIZE=1024").code == 250
    d.assert_serves()


def test_message_over_limit_refused_after_the_end(relayd_factory):
    d = relayd_factory(smtp={"max_message_size": "1k"})
    with d.connect() as c:
        start_tx(c)
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n")
        c.send((b"y" * 78 + b"\r\n") * 30)
        # Nothing is said before the end of the data.
        assert c.quiet(0.2)
        c.send(b".\r\n")
        r = c.reply()
        assert r.text.startswith("552 5.3.4"), r
        assert d.queued() == []
        wait_for(lambda: d.tmp_files() == [], 2, "tmp/ to be empty")
        # The same session can go on with a message that fits.
        r = c.send_mail(body=b"small\r\n")
        assert r.qid, r
    assert d.queued() == [r.qid]
    d.assert_serves()


def test_message_far_over_limit_is_read_to_the_end(relayd_factory):
    d = relayd_factory(smtp={"max_message_size": "1k"})
    with d.connect() as c:
        start_tx(c)
        assert c.cmd("DATA").code == 354
        c.send((b"z" * 998 + b"\r\n") * 1000 + b".\r\nNOOP\r\n")
        rs = c.replies(2, timeout=10)
        assert rs[0].text.startswith("552 5.3.4"), rs
        assert rs[1].code == 250, rs
    assert d.queued() == []
    d.assert_serves()


def test_message_at_limit_accepted(relayd_factory):
    d = relayd_factory(smtp={"max_message_size": "1k"})
    body = b"Subject: exact\r\n\r\n"
    body += b"a" * (1024 - len(body) - 2) + b"\r\n"
    assert len(body) == 1024
    with d.connect() as c:
        start_tx(c)
        assert c.cmd("DATA").code == 354
        c.send(body + b".\r\n")
        r = c.reply()
        assert r.qid, r
    assert d.spool_file(r.qid).body == body


def test_bdat_over_limit(relayd_factory):
    d = relayd_factory(smtp={"max_message_size": "1k"})
    with d.connect() as c:
        start_tx(c)
        c.send(b"BDAT 2000 LAST\r\n" + b"b" * 2000)
        r = c.reply()
        assert r.text.startswith("552 5.3.4"), r
        assert c.cmd("NOOP").code == 250
    assert d.queued() == []
    d.assert_serves()


# ---- recipients

def test_max_recipients(relayd_factory):
    d = relayd_factory(smtp={"max_recipients": 3})
    with d.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        rs = [c.cmd("RCPT TO:<r%d@b.test>" % i) for i in range(5)]
        assert [r.code for r in rs] == [250, 250, 250, 452, 452], rs
        assert rs[3].text.startswith("452 4.5.3"), rs
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: many\r\n\r\nhi\r\n.\r\n")
        r = c.reply()
        assert r.qid, r
    f = d.spool_file(r.qid)
    assert f.rcpts == ["r0@b.test", "r1@b.test", "r2@b.test"]
    d.wait_log(r"%s smtp queued .* nrcpt=3 " % r.qid)
    d.assert_serves()


def test_max_recipients_500(relayd):
    """The default (and the ceiling) is 500, pipelined in one write."""
    with relayd.connect() as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@a.test>\r\n" +
               b"".join(b"RCPT TO:<r%d@b.test>\r\n" % i for i in range(501)))
        rs = c.replies(502)
        assert [r.code for r in rs[:501]] == [250] * 501
        assert rs[501].text.startswith("452 4.5.3"), rs[501]
        assert c.cmd("DATA").code == 354
        c.send(b"hi\r\n.\r\n")
        r = c.reply()
        assert r.qid, r
    assert len(relayd.spool_file(r.qid).rcpts) == 500


# ---- command line length

def test_line_too_long(relayd_factory):
    d = relayd_factory(smtp={"max_line_length": 512})
    with d.connect() as c:
        c.ehlo()
        r = c.cmd("NOOP " + "x" * 600)
        assert r.text.startswith("500 5.5.2 Line too long"), r
        assert c.cmd("NOOP").code == 250
        # A line well within the limit is fine.
        assert c.cmd("NOOP " + "y" * 500).code == 250
        # An over-long MAIL is not half executed.
        r = c.cmd("MAIL FROM:<%s@a.test>" % ("m" * 600))
        assert r.text.startswith("500 5.5.2"), r
        assert c.cmd("RCPT TO:<b@b.test>").code == 503
        r = c.send_mail(body=b"after long lines\r\n")
        assert r.qid, r
    d.assert_serves()


def test_line_too_long_in_pieces(relayd_factory):
    """A long line arriving in several writes gets exactly one 500."""
    d = relayd_factory(smtp={"max_line_length": 512})
    with d.connect() as c:
        c.ehlo()
        c.send(b"NOOP ")
        for _ in range(10):
            c.send(b"z" * 300)
            time.sleep(0.01)
        c.send(b"\r\nRSET\r\n")
        rs = c.replies(2)
        assert rs[0].text.startswith("500 5.5.2 Line too long"), rs
        assert rs[1].code == 250, rs
        assert c.quiet(0.2), c.buf
        assert c.cmd("NOOP").code == 250
    d.assert_serves()


# ---- timeouts

def test_command_timeout(relayd_factory):
    d = relayd_factory(smtp={"command_timeout": "1s"})
    with d.connect() as c:
        c.ehlo()
        t0 = time.monotonic()
        r = c.reply(timeout=5)
        elapsed = time.monotonic() - t0
        assert r.text.startswith("421 4.4.2") and "Timeout" in r.text, r
        assert 0.8 <= elapsed < 3, elapsed
        assert c.wait_closed()
    d.wait_log(r'disconnect client=127\.0\.0\.1 msgs=0 reason="timeout"')
    d.assert_serves()


def test_command_timeout_with_partial_line(relayd_factory):
    d = relayd_factory(smtp={"command_timeout": "1s"})
    with d.connect() as c:
        c.send(b"EHLO half-a-li")
        r = c.reply(timeout=5)
        assert r.text.startswith("421 4.4.2"), r
        assert c.wait_closed()
    d.assert_serves()


def test_data_timeout(relayd_factory):
    d = relayd_factory(smtp={"command_timeout": "30s",
                             "data_timeout": "1s"})
    with d.connect() as c:
        start_tx(c)
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: slow\r\n\r\nhalf a mess")
        t0 = time.monotonic()
        r = c.reply(timeout=5)
        elapsed = time.monotonic() - t0
        assert r.text.startswith("421 4.4.2") and "Timeout" in r.text, r
        assert 0.8 <= elapsed < 3, elapsed
        assert c.wait_closed()
    d.wait_log(r'reason="timeout"')
    assert d.queued() == []
    wait_for(lambda: d.tmp_files() == [], 2, "tmp/ to be emptied")
    d.assert_serves()


def timed_out_in_data(relayd_factory, data):
    """A relayd with data_timeout 1s; sends data after DATA and waits for
    the 421 that ends the session."""
    d = relayd_factory(smtp={"command_timeout": "30s",
                             "data_timeout": "1s"})
    with d.connect() as c:
        start_tx(c)
        assert c.cmd("DATA").code == 354
        c.send(data)
        r = c.reply(timeout=5)
        assert r.text.startswith("421 4.4.2"), r
    return d


@pytest.mark.parametrize("end", [b"\n.\n", b"\r\n.\n"])
def test_data_timeout_after_bare_lf_end_says_why(relayd_factory, end):
    """A client that ends DATA with LF.LF waits for nothing: relayd rightly
    takes no end there. When the session times out, the log says why."""
    d = timed_out_in_data(relayd_factory, b"Subject: unix\r\n\r\nbody" + end)
    d.wait_log(r'reason="timeout: the client ended DATA with a bare LF .*'
               r'RFC 5321 requires CRLF\.CRLF')
    assert d.queued() == []


def test_data_timeout_plain_says_only_timeout(relayd_factory):
    d = timed_out_in_data(relayd_factory,
                          b"Subject: slow\r\n\r\nline\n.\nmore")
    d.wait_log(r'reason="timeout"')
    assert "bare LF" not in d.log


def test_data_uses_data_timeout_not_command_timeout(relayd_factory):
    d = relayd_factory(smtp={"command_timeout": "1s",
                             "data_timeout": "30s"})
    with d.connect() as c:
        start_tx(c)
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: slow\r\n\r\n")
        assert c.quiet(1.6), "closed during DATA after command_timeout"
        c.send(b"finally\r\n.\r\n")
        r = c.reply()
        assert r.qid, r
    assert d.spool_file(r.qid).body == b"Subject: slow\r\n\r\nfinally\r\n"


def test_idle_during_data_is_reset_by_input(relayd_factory):
    d = relayd_factory(smtp={"data_timeout": "1s"})
    with d.connect() as c:
        start_tx(c)
        assert c.cmd("DATA").code == 354
        # 2 s in all, never 1 s idle, and 2 KB/s: over the 256 B/s floor
        for i in range(4):
            c.send(b"line %d %s\r\n" % (i, b"x" * 1000))
            assert c.quiet(0.5)
        c.send(b".\r\n")
        r = c.reply()
        assert r.qid, r


# ---- connections

def test_max_connections(relayd_factory):
    """Full, and no session may be evicted (both are in a transaction, see
    test_stress.py): the next client is refused."""
    d = relayd_factory(smtp={"max_connections": 2})
    c1, c2 = d.connect(), d.connect()
    try:
        assert c1.greeting.code == 220 and c2.greeting.code == 220
        for c in (c1, c2):
            c.ehlo()
            assert c.cmd("MAIL FROM:<sender@a.test>").code == 250
        with d.connect() as c3:
            assert c3.greeting.text.startswith("421 4.7.0"), c3.greeting
            assert c3.wait_closed()
        d.wait_log(r"smtp refused client=127\.0\.0\.1 .*max_connections=2")
        # The two that got in still work.
        assert c1.cmd("RSET").code == 250
        assert c2.cmd("NOOP").code == 250
        assert c1.cmd("QUIT").code == 221
        c1.close()
        # c2 still holds a slot; the one c1 left is given to the next.
        d.assert_serves_soon()
    finally:
        c1.close()
        c2.close()
    d.assert_serves_soon()


def test_max_connections_per_client(relayd_factory):
    d = relayd_factory(smtp={"max_connections": 100,
                             "max_connections_per_client": 2})
    c1, c2 = d.connect(), d.connect()
    try:
        assert c1.greeting.code == 220 and c2.greeting.code == 220
        with d.connect() as c3:
            assert c3.greeting.text.startswith("421 4.7.0"), c3.greeting
            assert c3.wait_closed()
        d.wait_log(r"max_connections_per_client=2")
        # Another client address is not affected.
        with d.connect(source="127.0.0.2") as other:
            assert other.greeting.code == 220
        d.assert_serves(source="127.0.0.2")
    finally:
        c1.close()
        c2.close()
    d.assert_serves_soon()


# ---- errors

def test_max_errors(relayd_factory):
    d = relayd_factory(smtp={"max_errors": 3})
    with d.connect() as c:
        c.ehlo()
        assert c.cmd("FOO").code == 500
        assert c.cmd("RCPT TO:<b@b.test>").code == 503
        assert c.cmd("NOOP").code == 250        # good commands: no count
        c.send(b"MAIL FROM:<no-domain>\r\n")
        rs = c.read_all()
        assert [r.code for r in rs] == [501, 421], rs
        assert rs[1].text.startswith("421 4.7.0") and \
            "Too many errors" in rs[1].text, rs
    d.wait_log(r'reason="too many errors"')
    d.assert_serves()


def test_errors_below_limit_keep_session(relayd_factory):
    d = relayd_factory(smtp={"max_errors": 3})
    with d.connect() as c:
        c.ehlo()
        assert c.cmd("FOO").code == 500
        assert c.cmd("BAR").code == 500
        r = c.send_mail(body=b"two errors are fine\r\n")
        assert r.qid, r


# ---- clients that do not wait for us

def test_greeting_delay_talker_refused(relayd_factory):
    d = relayd_factory(smtp={"greeting_delay": "1s"})
    with d.connect(greeting=False) as c:
        c.send(b"EHLO eager.test\r\n")
        rs = c.read_all(timeout=5)
        assert len(rs) == 1, rs
        assert rs[0].text.startswith("554 5.5.1"), rs
    d.wait_log(r'reason="talked before greeting"')
    d.assert_serves()


def test_greeting_delay_polite_client_served(relayd_factory):
    d = relayd_factory(smtp={"greeting_delay": "1s"})
    t0 = time.monotonic()
    with d.connect() as c:
        assert c.greeting.code == 220
        assert time.monotonic() - t0 >= 0.9
        c.ehlo()
        r = c.send_mail(body=b"patient\r\n")
        assert r.qid, r


def test_input_waiting_at_accept_refused(relayd):
    """greeting_delay = 0: bytes already there at accept are refused."""
    relayd.freeze()
    try:
        c = SMTPConn(relayd.port, greeting=False)
        c.send(b"EHLO fast.test\r\nMAIL FROM:<a@a.test>\r\n")
    finally:
        relayd.thaw()
    with c:
        rs = c.read_all(timeout=5)
        assert len(rs) == 1, rs
        assert rs[0].text.startswith("554 5.5.1"), rs
    relayd.assert_serves()


@pytest.mark.parametrize("request_line", [
    b"GET / HTTP/1.1", b"POST /submit HTTP/1.1", b"CONNECT a.test:25 HTTP/1.1",
    b"get /lower HTTP/1.0",
])
def test_http_request_refused(relayd, request_line):
    with relayd.connect() as c:
        c.send(request_line + b"\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n")
        rs = c.read_all()
        assert len(rs) == 1, rs
        assert rs[0].text.startswith("554 5.7.0"), rs
    relayd.wait_log(r'reason="HTTP request on SMTP port"')
    relayd.assert_serves()


# ---- relaying

def test_relay_access_denied(relayd_factory):
    d = relayd_factory(smtp={"allow_networks": "10.0.0.0/8"})
    with d.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        r = c.cmd("RCPT TO:<b@b.test>")
        assert r.text.startswith("554 5.7.1") and \
            "Relay access denied" in r.text, r
        r = c.cmd("DATA")
        assert r.code in (503, 554), r
        assert c.cmd("QUIT").code == 221
    assert d.queued() == []
    d.wait_log(r"smtp connect client=127\.0\.0\.1 .*relay=no")


def test_relay_allowed_only_for_listed_networks(relayd_factory):
    d = relayd_factory(smtp={"allow_networks": "10.0.0.0/8, 127.0.0.2/32"})
    with d.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").text.startswith("554 5.7.1")
    qid = d.assert_serves(source="127.0.0.2")
    assert d.spool_file(qid).get("client") == "127.0.0.2"


# ---- long lines with a large max_line_length

def test_long_line_within_a_large_limit(relayd_factory):
    """max_line_length may be up to 1M: a 300k command line is within it
    and must be answered (here: NOOP's 250) rather than left hanging."""
    d = relayd_factory(smtp={"max_line_length": "1048576",
                             "command_timeout": "2s"})
    with d.connect() as c:
        c.ehlo()
        c.sock.settimeout(3)
        c.send(b"NOOP " + b"x" * 300000 + b"\r\n")
        try:
            r = c.reply(timeout=3)
        except socket.timeout:
            pytest.fail("no reply in 3s to a 300000-byte NOOP line "
                        "(max_line_length = 1M, command_timeout = 2s)")
        assert r.code == 250, r
        assert c.cmd("NOOP").code == 250
    d.assert_serves()


def test_line_over_a_large_limit(relayd_factory):
    """A line over max_line_length = 1M gets 500 and the session goes on."""
    d = relayd_factory(smtp={"max_line_length": "1048576",
                             "command_timeout": "2s"})
    with d.connect() as c:
        c.ehlo()
        c.sock.settimeout(3)
        try:
            c.send(b"NOOP " + b"x" * (1100 * 1024) + b"\r\n")
            r = c.reply(timeout=3)
        except socket.timeout:
            pytest.fail("a 1.1M command line (max_line_length = 1M) got no "
                        "reply in 3s; the server stopped reading it")
        assert r.text.startswith("500 5.5.2 Line too long"), r
        assert c.cmd("NOOP").code == 250
    d.assert_serves()


def test_stalled_long_line_still_times_out(relayd_factory):
    """A client that sends 300k of a command line and then stops must be
    timed out like any idle client, and costs no CPU meanwhile."""
    d = relayd_factory(smtp={"max_line_length": "1048576",
                             "command_timeout": "1s"})
    with d.connect() as c:
        c.ehlo()
        c.sock.settimeout(3)
        c.send(b"NOOP " + b"x" * 300000)
        cpu0 = cpu_seconds(d.pid)
        try:
            rs = c.read_all(timeout=3)
        except socket.timeout:
            rs = None
        cpu = cpu_seconds(d.pid) - cpu0
    problems = []
    if not rs or not rs[-1].text.startswith("421 4.4.2"):
        problems.append("no 421 within 3s (command_timeout = 1s) for a "
                        "client stalled in a 300000-byte command line; "
                        "replies: %r" % (rs,))
    if cpu > 1.0:
        problems.append("relayd used %.1fs of CPU meanwhile" % cpu)
    assert not problems, "; ".join(problems)
    d.assert_serves()


def test_greeting_delay_talker_that_stays_connected(relayd_factory):
    """After the 554 the session is over: when greeting_delay passes it
    must not be greeted or come back to life."""
    d = relayd_factory(smtp={"greeting_delay": "1s"})
    with d.connect(greeting=False) as c:
        c.send(b"EHLO eager.test\r\n")
        r = c.reply(timeout=5)
        assert r.text.startswith("554 5.5.1"), r
        # Stay connected past the greeting delay.
        time.sleep(1.3)
        c.send(b"EHLO again.test\r\nMAIL FROM:<a@a.test>\r\n")
        rs = c.read_all(timeout=5)
        assert rs == [], rs
    d.wait_log(r"smtp disconnect client=127\.0\.0\.1 msgs=0 reason=")
    log = d.current_log()
    assert 'reason="talked before greeting"' in log, log
    assert not re.search(r"state CLOSING -> (?!CLOSING)", log), \
        "a closing session went back to work:\n" + log
    d.assert_serves()


def test_data_trickle_is_cut(relayd_factory):
    """data_timeout counts idle time, which each byte resets; past it the
    message must also average 256 bytes a second, or 421 and close."""
    d = relayd_factory(smtp={"data_timeout": "1s"})
    c = d.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@b.test>").code == 250
    assert c.cmd("RCPT TO:<c@d.test>").code == 250
    assert c.cmd("DATA").code == 354
    t0 = time.monotonic()
    r = None
    while time.monotonic() - t0 < 10:
        try:
            c.send(b"x")
        except OSError:
            break
        try:
            r = c.reply(timeout=0.3)
            break
        except Exception:       # noqa: BLE001 - no reply yet: go on
            continue
    assert r is not None and r.code == 421 \
        and "under 256 bytes a second" in r.text, r
    assert 1.0 <= time.monotonic() - t0 < 5
    d.wait_log(r'reason="message data too slow"')
    assert d.queued() == []
