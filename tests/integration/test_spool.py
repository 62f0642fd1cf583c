"""The durable queue: what a 250 promises, crashes, a full disk, damage."""
import os
import re
import subprocess
import time

import pytest

from relaydtest.env import HOSTNAME
from relaydtest.spool import list_dir, make_record, parse_segment
from relaydtest.wait import wait_for


def test_250_means_queued_with_envelope(relayd):
    body = (b"From: s@a.test\r\nSubject: envelope\r\n\r\n"
            b"line one\r\n"
            b"..x stuffed\r\n"
            b"..\r\n"
            b"...\r\n"
            b". space\r\n"
            b"last\r\n")
    stored = (b"From: s@a.test\r\nSubject: envelope\r\n\r\n"
              b"line one\r\n"
              b".x stuffed\r\n"
              b".\r\n"
              b"..\r\n"
              b" space\r\n"
              b"last\r\n")
    t0 = time.time()
    with relayd.connect() as c:
        assert c.cmd("EHLO client.example").code == 250
        assert c.cmd("MAIL FROM:<s@a.test> BODY=8BITMIME").code == 250
        for r in ("r1@b.test", "r2@c.test", "r3@b.test"):
            assert c.cmd("RCPT TO:<%s>" % r).code == 250
        assert c.cmd("DATA").code == 354
        c.send(body + b".\r\n")
        r = c.reply()
        qid = r.qid
        assert qid, r
        # At the moment of the 250, the record is already in queue/.
        assert relayd.queued() == [qid]
        assert relayd.segments() == [qid]
        assert relayd.tmp_files() == []
        port = relayd.port
    f = relayd.spool_file(qid)
    assert f.raw.startswith(b"RELAYD-SPOOL 2\n")
    # one record alone in its segment, which is named by its id
    assert (f.segment.name, f.offset) == (qid, 0)
    data = (relayd.queue_dir / qid).read_bytes()
    assert data[:len(f.raw)] == f.raw
    assert data[len(f.raw):].strip(b"\0") == b""    # allocated ahead
    # a fixed-size state line: queued, no attempt yet, no error
    assert f.raw[15:215] == (b"state: Q attempts=00000 next=0000000000000 "
                             b"error=" + b" " * 150 + b"\n")
    assert (f.state, f.attempts, f.next_ms, f.error) == ("Q", 0, 0, "")
    assert f.raw[215:242] == b"size: %020d\n" % len(f.message)
    keys = [k for k, _ in f.fields]
    assert keys == ["mailbox", "id", "arrival", "client", "listener", "helo",
                    "user", "mail-from", "mail-params", "rcpt", "rcpt",
                    "rcpt"]
    # the sending mailbox, decided at commit, in a fixed-size field
    assert f.raw[242:251] == b"mailbox: " and f.raw[571:572] == b"\n"
    assert f.mailbox == "s@a.test"          # [graph] mailbox = envelope
    assert f.id == qid
    assert abs(float(f.get("arrival")) - t0) < 60
    assert f.get("client") == "127.0.0.1"
    assert f.get("listener") == "127.0.0.1:%d" % port
    assert f.get("helo") == "client.example"
    assert f.get("user") == ""
    assert f.mail_from == "s@a.test"
    assert f.get("mail-params") == "BODY=8BITMIME"
    assert f.rcpts == ["r1@b.test", "r2@c.test", "r3@b.test"]
    # trailer: the byte count of what lies between envelope and trailer
    assert f.raw.endswith(b"RELAYD-END %020d\n" % len(f.message))
    assert f.size == len(f.message)
    # our Received: header first, then the data exactly, unstuffed
    assert f.message.startswith(b"Received: from client.example "
                                b"([127.0.0.1])\r\n")
    hdr = f.received_header
    assert b"by %s (relayd)" % HOSTNAME.encode() in hdr
    assert qid.encode() in hdr
    assert f.body == stored
    # size: as spooled, our Received: line included (as sent and failed
    # lines and history say)
    relayd.wait_log(r"%s smtp queued .* from=<s@a\.test> nrcpt=3 size=%d "
                    r"message_id=- rcpts=r1@b\.test,r2@c\.test,r3@b\.test$"
                    % (qid, f.size))


def test_queue_ids_unique_and_files_whole(relayd):
    qids = []
    with relayd.connect() as c:
        c.ehlo()
        for i in range(20):
            r = c.send_mail(body=b"message %d\r\n" % i)
            assert r.qid, r
            qids.append(r.qid)
    assert len(set(qids)) == 20
    assert sorted(relayd.queued()) == sorted(qids)
    for i, q in enumerate(qids):
        assert relayd.spool_file(q).body == b"message %d\r\n" % i
    # Each segment is named by its first record and holds its records in
    # the order they arrived; together they hold each message once.
    seen = []
    for name in relayd.segments():
        records = parse_segment(relayd.queue_dir / name)
        assert records[0].id == name
        order = [qids.index(r.id) for r in records]
        assert order == sorted(order), (name, records)
        seen += [r.id for r in records]
    assert sorted(seen) == sorted(qids)


def test_large_message_stored_exactly(relayd):
    lines = [b"%06d " % i + b"abcdefghij" * 7 + b"\r\n" for i in range(20000)]
    body = b"Subject: big\r\n\r\n" + b"".join(lines)
    with relayd.connect() as c:
        c.ehlo()
        r = c.send_mail(body=body)
        assert r.qid, r
    f = relayd.spool_file(r.qid)
    assert f.body == body
    assert f.size == len(f.message)


def test_kill_during_data(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: half\r\n\r\n" + (b"h" * 998 + b"\r\n") * 200)
        # wait until the daemon has written some of it to disk
        wait_for(lambda: any(n > 64 * 1024 for n in relayd.partial_sizes()),
                 5, "the partial message on disk")
        leftover = len(relayd.tmp_files())
        relayd.kill()
    assert relayd.queued() == []
    relayd.start()
    assert relayd.tmp_files() == []
    assert relayd.queued() == []
    log = relayd.current_log()
    if leftover:        # written in tmp/: removed at start
        assert "spool: removed 1 unfinished message(s) from tmp/" in log
    assert "spool: 0 queued message(s) found" in log
    relayd.assert_serves()


def test_kill_right_after_250(relayd):
    body = b"Subject: durable\r\n\r\nsurvives kill -9\r\n"
    with relayd.connect() as c:
        c.ehlo()
        r = c.send_mail(body=body)
        relayd.kill()
    assert r.qid, r
    relayd.start()
    assert relayd.queued() == [r.qid]
    assert list_dir(relayd.corrupt_dir) == []
    assert relayd.spool_file(r.qid).body == body
    assert "spool: 1 queued message(s) found" in relayd.current_log()
    assert "unfinished" not in relayd.current_log()
    qid2 = relayd.assert_serves()
    assert sorted(relayd.queued()) == sorted([r.qid, qid2])


def test_restart_counts_queue(relayd):
    for _ in range(3):
        relayd.send_one()
    assert relayd.stop() == 0
    assert "relayd stopped" in relayd.current_log()
    relayd.start()
    assert re.search(r"spool: 3 queued message\(s\) found dir=%s$"
                     % re.escape(str(relayd.spool)), relayd.current_log(),
                     re.M)


# ---- damage found at start
#
# A segment is damaged when it does not parse as whole records back to
# back. With no whole queued record before the damage it is moved to
# corrupt/; otherwise the records before it stay queued and a copy of the
# segment goes to corrupt/.

def planted_qid(n):
    return "00000000000000%02X" % n


def plant(d, *records):
    """Writes a segment of these records (bytes) into queue/, named by the
    first one's id; given one (name, bytes) pair instead, those bytes
    under that name. Returns its path."""
    if isinstance(records[0], tuple):
        name, data = records[0]
    else:
        data = b"".join(records)
        name = re.search(rb"\nid: ([0-9A-F]{16})\n", data).group(1).decode()
    path = d.queue_dir / name
    path.write_bytes(data)
    return path


def test_corrupt_segment_moved_aside(relayd):
    """The daemon's own segment, its last record cut short: what comes
    before it stays queued, the rest is moved or copied to corrupt/."""
    good = relayd.send_one(body=b"good\r\n")
    bad = relayd.send_one(body=b"will be truncated\r\n")
    relayd.stop()
    f = relayd.spool_file(bad)
    path = f.segment
    data = path.read_bytes()
    assert f.offset + len(f.raw) == len(data)      # the last one
    path.write_bytes(data[:-10])            # a cut-off trailer
    relayd.start()
    log = relayd.current_log()
    assert relayd.queued() == [good]
    assert list_dir(relayd.corrupt_dir) == [path.name]
    assert (relayd.corrupt_dir / path.name).read_bytes() == data[:-10]
    if f.offset == 0:                       # a segment of its own
        assert relayd.segments() == [good]
        assert re.search(r"spool: queue/%s is damaged \(.*\); moved to "
                         r"corrupt/$" % bad, log, re.M), log
    else:                                   # after the good one
        assert path.name == good and relayd.segments() == [good]
        assert re.search(r"spool: queue/%s is damaged at byte %d \(.*\); 1 "
                         r"message\(s\) before it stay queued, a copy is in "
                         r"corrupt/$" % (good, f.offset), log, re.M), log
        assert relayd.spool_file(good).body == b"good\r\n"
    assert "spool: 1 queued message(s) found" in log
    relayd.assert_serves()


def test_good_segments_kept_beside_a_damaged_one(relayd):
    """Planted: a good segment of three records, a single-record one with
    NUL bytes after it (space allocated ahead) and a truncated one. The
    good ones stay queued, whole; only the truncated one is moved."""
    relayd.stop()
    a, b, c, e, t = (planted_qid(n) for n in (1, 2, 3, 4, 5))
    plant(relayd, make_record(a, "a@a.test", ["r1@b.test"],
                              b"Subject: a\r\n\r\nfirst\r\n"),
          make_record(b, "b@a.test", ["r2@b.test", "r3@b.test"],
                      b"Subject: b\r\n\r\nsecond\r\n"),
          make_record(c, "", ["r4@b.test"], b"Subject: c\r\n\r\nthird\r\n"))
    # as a crash leaves the segment being appended to: allocated ahead
    plant(relayd, make_record(e, message=b"x" * 70000) + b"\0" * 100000)
    cut = make_record(t)[:-40]
    plant(relayd, (t, cut))
    relayd.start()
    log = relayd.current_log()
    assert re.search(r"spool: queue/%s is damaged \(.*\); moved to corrupt/$"
                     % t, log, re.M), log
    assert "spool: 4 queued message(s) found" in log
    assert relayd.queued() == [a, b, c, e]
    assert relayd.segments() == [a, e]
    assert list_dir(relayd.corrupt_dir) == [t]
    assert (relayd.corrupt_dir / t).read_bytes() == cut
    fa, fb, fc = (relayd.spool_file(q) for q in (a, b, c))
    assert (fa.mail_from, fa.rcpts, fa.message) == (
        "a@a.test", ["r1@b.test"], b"Subject: a\r\n\r\nfirst\r\n")
    assert (fb.mail_from, fb.rcpts, fb.message) == (
        "b@a.test", ["r2@b.test", "r3@b.test"],
        b"Subject: b\r\n\r\nsecond\r\n")
    assert (fc.mail_from, fc.message) == ("", b"Subject: c\r\n\r\nthird\r\n")
    assert relayd.spool_file(e).message == b"x" * 70000
    relayd.assert_serves()


def test_record_states_kept_across_a_start(relayd):
    """Planted records in every state: Q and H count as queued, D and X do
    not; the retry state and unknown envelope keys are left as they are;
    a segment with nothing queued left is removed."""
    relayd.stop()
    q1, h1, d1, x1, q2, d2, d3 = (planted_qid(n) for n in range(0x10, 0x17))
    mixed = [make_record(q1, extra=[("x-future", "kept")]),
             make_record(h1, state="H", attempts=3, next_ms=4102444800000,
                         error="held by hand"),
             make_record(d1, state="D", attempts=1),
             make_record(x1, state="X", attempts=2,
                         error="403 ErrorSendAsDenied"),
             make_record(q2, state="Q", attempts=2, next_ms=1000,
                         error="503 ServiceUnavailable")]
    plant(relayd, *mixed)
    plant(relayd, make_record(d2, state="D"), make_record(d3, state="D"))
    relayd.start()
    assert "spool: 3 queued message(s) found" in relayd.current_log()
    assert relayd.queued() == sorted([q1, h1, q2])
    wait_for(lambda: relayd.segments() == [q1], 5,
             "the segment with nothing queued to be removed")
    records = parse_segment(relayd.queue_dir / q1)
    assert [(r.id, r.state, r.attempts, r.next_ms, r.error)
            for r in records] == [
        (q1, "Q", 0, 0, ""),
        (h1, "H", 3, 4102444800000, "held by hand"),
        (d1, "D", 1, 0, ""),
        (x1, "X", 2, 0, "403 ErrorSendAsDenied"),
        (q2, "Q", 2, 1000, "503 ServiceUnavailable")]
    assert records[0].get("x-future") == "kept"
    # no [graph]: nothing was tried, so nothing on disk changed
    assert [r.raw for r in records] == mixed
    relayd.assert_serves()


def one_record_damage(damage, data):
    """`data` (a segment of one queued record) damaged as named; returns
    (name, bytes), name None for the record's own id."""
    name = None
    if damage == "no-trailer":
        data = data[:-32]
    elif damage == "wrong-size":
        data = data[:-32] + b"RELAYD-END %020d\n" % (len(data) + 5)
    elif damage == "size-line":
        data = data[:215] + b"size: %020d\n" % 7 + data[242:]
    elif damage == "cut-in-message":
        data = data[:len(data) - 40]
    elif damage == "cut-in-envelope":
        data = data[:data.index(b"\nrcpt: ") + 3]
    elif damage == "cut-in-state":
        data = data[:100]
    elif damage == "short-state-line":         # one space less: 199 bytes
        assert data[213:215] == b" \n"
        data = data[:213] + data[214:]
    elif damage == "version-1":
        data = b"RELAYD-SPOOL 1\n" + data[15:]
    elif damage == "garbage":
        data = b"this is not a spool file\n" * 10
    elif damage == "empty":
        data = b""
    elif damage == "all-nul":
        data = b"\0" * len(data)
    elif damage == "name-mismatch":
        name = "0123456789ABCDEF"
    elif damage == "no-rcpt":
        data = re.sub(rb"rcpt: [^\n]*\n", b"", data)
    else:
        raise AssertionError(damage)
    return name, data


ONE_RECORD_DAMAGE = [
    "no-trailer", "wrong-size", "size-line", "cut-in-message",
    "cut-in-envelope", "cut-in-state", "short-state-line", "version-1",
    "garbage", "empty", "all-nul", "name-mismatch", "no-rcpt",
]


@pytest.mark.parametrize("damage", ONE_RECORD_DAMAGE)
def test_damaged_segments_moved_aside(relayd, damage):
    qid = relayd.send_one(body=b"original\r\n")
    relayd.stop()
    path = relayd.queue_dir / qid
    name, data = one_record_damage(damage, path.read_bytes())
    if name:
        path.unlink()
        path = relayd.queue_dir / name
    path.write_bytes(data)
    if damage not in ("name-mismatch", "no-rcpt"):
        with pytest.raises(ValueError):     # the harness sees it too
            parse_segment(path)
    name = path.name
    relayd.start()
    assert relayd.queued() == []
    assert relayd.segments() == []
    assert list_dir(relayd.corrupt_dir) == [name]
    assert (relayd.corrupt_dir / name).read_bytes() == data
    log = relayd.current_log()
    assert "spool: 0 queued message(s) found" in log
    assert re.search(r"spool: queue/%s is damaged \(.*\); moved to corrupt/$"
                     % name, log, re.M), log
    relayd.assert_serves()


def test_damage_after_done_records_moves_the_segment(relayd):
    """Whole records before the damage, but none of them queued: nothing
    to keep, the segment is moved."""
    relayd.stop()
    a, b, c = (planted_qid(n) for n in (0x21, 0x22, 0x23))
    data = (make_record(a, state="D") + make_record(b, state="X")
            + make_record(c)[:-5])
    plant(relayd, (a, data))
    relayd.start()
    log = relayd.current_log()
    assert re.search(r"spool: queue/%s is damaged \(.*\); moved to corrupt/$"
                     % a, log, re.M), log
    assert "spool: 0 queued message(s) found" in log
    assert relayd.segments() == [] and relayd.queued() == []
    assert list_dir(relayd.corrupt_dir) == [a]
    assert (relayd.corrupt_dir / a).read_bytes() == data
    relayd.assert_serves()


@pytest.mark.parametrize("damage", [
    "truncated", "wrong-trailer", "trailing-garbage", "cut-in-first-line",
    "done-between",
])
def test_damage_after_whole_records_keeps_them(relayd, damage):
    """Records before the damage stay queued (a copy of the segment goes to
    corrupt/); the damaged one and anything after it is not delivered."""
    relayd.stop()
    a, b, c, e = (planted_qid(n) for n in (0x31, 0x32, 0x33, 0x34))
    ra = make_record(a, "a@a.test", ["r@b.test"], b"Subject: a\r\n\r\nA\r\n")
    rb = make_record(b, "b@a.test", ["r@b.test"], b"Subject: b\r\n\r\nB\r\n",
                     state="D" if damage == "done-between" else "Q")
    rc = make_record(c, "c@a.test", ["r@b.test"], b"Subject: c\r\n\r\nC\r\n")
    re_ = make_record(e)
    if damage == "truncated":
        tail = rc[:-20]
    elif damage == "wrong-trailer":
        tail = rc[:-32] + b"RELAYD-END %020d\n" % 9999 + re_
    elif damage == "trailing-garbage":
        tail = b"\n\nnot a record\n"
    elif damage == "cut-in-first-line":
        tail = rc[:9]
    elif damage == "done-between":
        tail = rc[:300]
    data = ra + rb + tail
    at = len(ra) + len(rb)
    kept = [a] if damage == "done-between" else [a, b]
    plant(relayd, (a, data))
    relayd.start()
    log = relayd.current_log()
    assert re.search(r"spool: queue/%s is damaged at byte %d \(.*\); %d "
                     r"message\(s\) before it stay queued, a copy is in "
                     r"corrupt/$" % (a, at, len(kept)), log, re.M), log
    assert "spool: %d queued message(s) found" % len(kept) in log
    assert relayd.queued() == kept
    assert list_dir(relayd.corrupt_dir) == [a]
    assert (relayd.corrupt_dir / a).read_bytes() == data
    assert relayd.spool_file(a).message == b"Subject: a\r\n\r\nA\r\n"
    assert relayd.spool_file(b).message == b"Subject: b\r\n\r\nB\r\n"
    new = relayd.assert_serves()
    # Another start finds the same: nothing lost, nothing more queued.
    relayd.restart()
    assert relayd.queued() == sorted(kept + [new])
    assert ("spool: %d queued message(s) found" % (len(kept) + 1)
            in relayd.current_log())
    assert (relayd.corrupt_dir / a).read_bytes() == data
    relayd.assert_serves()


# ---- full disk

def statvfs_free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path, leave):
    """Creates a filler file leaving about `leave` bytes free."""
    filler = path / "filler"
    with open(filler, "wb") as f:
        free = statvfs_free(path)
        if free > leave:
            try:
                f.write(b"\0" * (free - leave))
            except OSError:
                pass
    return filler


def big_body(n):
    line = b"f" * 98 + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (n // len(line))


def test_full_spool(tmpfs_dir, relayd_factory):
    d = relayd_factory(spool_dir=tmpfs_dir / "spool")
    filler = fill(tmpfs_dir, 64 * 1024)
    assert statvfs_free(tmpfs_dir) < 100 * 1024
    with d.connect() as c:
        c.ehlo()
        # Over DATA, twice, then over BDAT.
        for _ in range(2):
            r = c.send_mail(body=big_body(200 * 1024))
            assert r.text.startswith("452 4.3.1"), r
            assert d.queued() == []
            assert d.tmp_files() == []
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").code == 250
        chunk = big_body(200 * 1024)
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        r = c.reply()
        assert r.text.startswith("452 4.3.1"), r
        assert d.queued() == [] and d.tmp_files() == []
        # The session goes on, and a message that fits is taken.
        r = c.send_mail(body=b"Subject: small\r\n\r\nfits\r\n")
        assert r.qid, r
        small = r.qid
    assert d.queued() == [small]
    d.assert_alive()
    # Another client is served too.
    assert d.assert_serves()
    # Room again: the big one goes through.
    filler.unlink()
    with d.connect() as c:
        c.ehlo()
        r = c.send_mail(body=big_body(200 * 1024))
        assert r.qid, r
    f = d.spool_file(r.qid)
    assert f.body == big_body(200 * 1024)
    assert d.tmp_files() == []


def test_full_spool_at_commit(tmpfs_dir, relayd_factory):
    """Space runs out with the last bytes (the trailer or the buffered
    tail): still a 452 and nothing half-written left behind."""
    d = relayd_factory(spool_dir=tmpfs_dir / "spool")
    results = []
    for leave in (4096, 8192, 12288):
        filler = fill(tmpfs_dir, leave)
        with d.connect() as c:
            c.ehlo()
            # sizes around the free space, the buffer size and the page size
            for n in (leave - 600, leave - 100, leave, leave + 3000):
                r = c.send_mail(body=b"x" * (n - 2) + b"\r\n")
                results.append((leave, n, r.text))
                assert r.code in (250, 452), r
                if r.code == 452:
                    assert r.text.startswith("452 4.3.1"), r
                assert d.tmp_files() == []
                for f in d.records():      # whole records only
                    assert f.size == len(f.message)
        filler.unlink()
    assert any(t.startswith("452") for _, _, t in results), results
    d.assert_alive()
    d.assert_serves()


def test_client_gone_during_data(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: gone\r\n\r\n" + b"g" * 100000)
        wait_for(lambda: relayd.partial_sizes(), 5, "a partial file")
    relayd.wait_log(r'reason="disconnected during data"')
    wait_for(lambda: relayd.partial_sizes() == [], 5, "the file to go")
    assert relayd.tmp_files() == []
    assert relayd.queued() == []
    relayd.assert_serves()


def test_sigterm_with_open_sessions(relayd):
    done = relayd.send_one(body=b"before the stop\r\n")
    idle = relayd.connect()
    in_tx = relayd.connect()
    in_data = relayd.connect()
    try:
        in_tx.ehlo()
        assert in_tx.cmd("MAIL FROM:<a@a.test>").code == 250
        in_data.ehlo()
        assert in_data.cmd("MAIL FROM:<a@a.test>").code == 250
        assert in_data.cmd("RCPT TO:<b@b.test>").code == 250
        assert in_data.cmd("DATA").code == 354
        # The 354 came: the daemon is in DATA with a message begun.
        in_data.send(b"Subject: unfinished\r\n\r\npart")
        # SIGTERM: the idle session hears 421 at once; the two in a
        # transaction may finish it for drain_timeout (5 s in tests),
        # and never do
        t0 = time.monotonic()
        assert relayd.stop() == 0
        assert 4.5 < time.monotonic() - t0 < 8
    finally:
        for c in (idle, in_tx, in_data):
            c.close()
    assert relayd.queued() == [done]
    relayd.start()
    assert relayd.queued() == [done]
    assert relayd.tmp_files() == []
    assert "spool: 1 queued message(s) found" in relayd.current_log()
    assert relayd.spool_file(done).body == b"before the stop\r\n"


@pytest.mark.parametrize("sync_method", ["fdatasync", "syncfs"])
def test_sync_methods_under_concurrency(relayd_factory, sync_method):
    """Both ways of flushing a batch: 200 messages from 16 parallel
    sessions, every 250 a whole record, found again after kill -9."""
    d = relayd_factory(sections={"queue": {"sync_method": sync_method}})
    src = "/usr/sbin/smtp-source"
    if not os.path.exists(src):
        pytest.skip("smtp-source (package postfix) is not installed")
    r = subprocess.run([src, "-s", "16", "-m", "200", "-l", "3000",
                        "127.0.0.1:%d" % d.port], capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(d.queued()) == 200
    assert 1 <= len(d.segments()) <= 200
    d.kill()
    d.start()
    assert "spool: 200 queued message(s) found" in d.current_log()
    assert list_dir(d.corrupt_dir) == []    # all committed: no damage
    assert len(d.queued()) == 200
    for f in d.queued_files():
        assert f.size == len(f.message)


def test_one_relayd_per_spool(relayd_factory):
    """A second relayd on the same spool_dir refuses to start (it would
    deliver every message twice) and says why."""
    d = relayd_factory()
    other = relayd_factory(name="other", spool_dir=d.spool, start=False)
    with pytest.raises(AssertionError, match="exited with"):
        other.start()
    assert "in use by another relayd (each instance needs a spool of " \
        "its own)" in other.log
    other.expect_dead = True
    d.assert_serves()
