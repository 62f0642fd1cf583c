"""The durable queue: what a 250 promises, crashes, a full disk, damage."""
import os
import re
import subprocess
import time

import pytest

from conftest import HOSTNAME, SpoolFile, list_dir, wait_for


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
        # At the moment of the 250, the file is already in queue/.
        assert relayd.queued() == [qid]
        assert relayd.tmp_files() == []
        port = relayd.port
    f = relayd.spool_file(qid)
    assert f.raw.startswith(b"RELAYD-SPOOL 1\n")
    keys = [k for k, _ in f.fields]
    assert keys == ["id", "arrival", "client", "listener", "helo", "user",
                    "mail-from", "mail-params", "rcpt", "rcpt", "rcpt"]
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
    relayd.wait_log(r"%s smtp queued .* from=<s@a\.test> nrcpt=3 size=%d$"
                    % (qid, len(stored)))


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


def test_corrupt_file_moved_aside(relayd):
    good = relayd.send_one(body=b"good\r\n")
    bad = relayd.send_one(body=b"will be truncated\r\n")
    relayd.stop()
    path = relayd.queue_dir / bad
    data = path.read_bytes()
    path.write_bytes(data[:-10])            # a cut-off trailer
    relayd.start()
    assert relayd.queued() == [good]
    assert list_dir(relayd.corrupt_dir) == [bad]
    assert (relayd.corrupt_dir / bad).read_bytes() == data[:-10]
    log = relayd.current_log()
    assert re.search(r"spool: queue/%s is damaged \(.*\); moved to corrupt/"
                     % bad, log), log
    assert "spool: 1 queued message(s) found" in log
    relayd.assert_serves()


@pytest.mark.parametrize("damage", [
    "no-trailer", "wrong-size", "garbage", "empty", "name-mismatch",
    "no-rcpt",
])
def test_damaged_files_moved_aside(relayd, damage):
    qid = relayd.send_one(body=b"original\r\n")
    relayd.stop()
    path = relayd.queue_dir / qid
    data = path.read_bytes()
    if damage == "no-trailer":
        data = data[:-32]
    elif damage == "wrong-size":
        data = data[:-32] + b"RELAYD-END %020d\n" % (len(data) + 5)
    elif damage == "garbage":
        data = b"this is not a spool file\n" * 10
    elif damage == "empty":
        data = b""
    elif damage == "name-mismatch":
        path.unlink()
        path = relayd.queue_dir / "0123456789ABCDEF"
    elif damage == "no-rcpt":
        data = re.sub(rb"rcpt: [^\n]*\n", b"", data)
    path.write_bytes(data)
    name = path.name
    relayd.start()
    assert relayd.queued() == []
    assert list_dir(relayd.corrupt_dir) == [name]
    assert "spool: 0 queued message(s) found" in relayd.current_log()
    assert "queue/%s is damaged" % name in relayd.current_log()
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
                for f in d.queued_files():     # whole files only
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
        t0 = time.monotonic()
        assert relayd.stop() == 0
        assert time.monotonic() - t0 < 5
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
    sessions, every 250 a whole file, found again after kill -9."""
    d = relayd_factory(sections={"queue": {"sync_method": sync_method}})
    src = "/usr/sbin/smtp-source"
    if not os.path.exists(src):
        pytest.skip("smtp-source (package postfix) is not installed")
    r = subprocess.run([src, "-s", "16", "-m", "200", "-l", "3000",
                        "127.0.0.1:%d" % d.port], capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(d.queued()) == 200
    d.kill()
    d.start()
    assert "spool: 200 queued message(s) found" in d.current_log()
    for f in d.queued_files():
        assert f.size == len(f.message)
