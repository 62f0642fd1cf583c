"""
Self-tests of tests/powercutfs.py, the FUSE file system that models what a
power cut leaves (see its top comment): what is synced survives a cut,
what is not is gone, and the faults fire where asked and nowhere else.
"""
import errno
import mmap
import os

import pytest


def sync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path, data, sync=True):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def after_cut(powercut, fs):
    """Cuts, and returns what the backing directory holds: {path: bytes}
    for files, None for directories."""
    fs.cut()
    out = {}
    for top, dirs, files in os.walk(powercut.backing):
        rel = os.path.relpath(top, powercut.backing)
        for d in dirs:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in files:
            with open(os.path.join(top, f), "rb") as fh:
                out[os.path.normpath(os.path.join(rel, f))] = fh.read()
    return out


def durable_file(powercut, data):
    """Mounts; f holds data, synced with its name; returns fs, f and f
    opened for writing."""
    fs = powercut()
    f = powercut.mountpoint / "f"
    write_file(f, data)
    sync_dir(powercut.mountpoint)
    return fs, f, os.open(f, os.O_WRONLY)


def test_write_without_fsync_is_gone(powercut):
    fs, f, fd = durable_file(powercut, b"first version")
    os.pwrite(fd, b"SECOND", 0)
    os.pwrite(fd, b" and a longer tail", 13)
    os.close(fd)
    assert f.read_bytes() == b"SECONDversion and a longer tail"
    assert after_cut(powercut, fs) == {"f": b"first version"}


def test_new_file_synced_but_not_its_directory_is_gone(powercut):
    fs = powercut()
    (powercut.mountpoint / "d").mkdir()
    sync_dir(powercut.mountpoint)
    write_file(powercut.mountpoint / "d" / "f", b"data")
    assert after_cut(powercut, fs) == {"d": None}


def test_file_and_directory_synced_survive(powercut):
    fs = powercut()
    (powercut.mountpoint / "d").mkdir()
    sync_dir(powercut.mountpoint)
    write_file(powercut.mountpoint / "d" / "f", b"data")
    sync_dir(powercut.mountpoint / "d")
    assert after_cut(powercut, fs) == {"d": None, "d/f": b"data"}
    # Power back: the survivor is mounted again and is durable as it is.
    fs = powercut()
    assert (powercut.mountpoint / "d" / "f").read_bytes() == b"data"
    assert after_cut(powercut, fs) == {"d": None, "d/f": b"data"}


def test_truncate_then_extend_survives_as_zeros(powercut):
    fs, _, fd = durable_file(powercut, b"abcdef")
    os.ftruncate(fd, 2)
    os.ftruncate(fd, 6)
    os.fsync(fd)
    os.close(fd)
    assert after_cut(powercut, fs) == {"f": b"ab\0\0\0\0"}


def test_a_name_without_synced_contents_is_an_empty_file(powercut):
    fs = powercut()
    write_file(powercut.mountpoint / "f", b"never synced", sync=False)
    sync_dir(powercut.mountpoint)
    assert after_cut(powercut, fs) == {"f": b""}


def test_a_new_directory_needs_its_parent_synced(powercut):
    fs = powercut()
    d = powercut.mountpoint / "d"
    d.mkdir()
    write_file(d / "f", b"data")
    sync_dir(d)
    assert after_cut(powercut, fs) == {}


def test_unlink_without_directory_sync_comes_back(powercut):
    fs = powercut()
    write_file(powercut.mountpoint / "a", b"A")
    write_file(powercut.mountpoint / "b", b"B")
    sync_dir(powercut.mountpoint)
    os.unlink(powercut.mountpoint / "a")
    os.unlink(powercut.mountpoint / "b")
    sync_dir(powercut.mountpoint)
    write_file(powercut.mountpoint / "c", b"C")     # may reuse an inode
    os.unlink(powercut.mountpoint / "c")
    assert after_cut(powercut, fs) == {}
    fs = powercut()
    write_file(powercut.mountpoint / "a", b"A")
    sync_dir(powercut.mountpoint)
    os.unlink(powercut.mountpoint / "a")
    assert after_cut(powercut, fs) == {"a": b"A"}


def renamed_to_queue(m):
    """tmp/x written and synced, renamed to queue/x, queue/ synced."""
    (m / "tmp").mkdir()
    (m / "queue").mkdir()
    sync_dir(m)
    write_file(m / "tmp" / "x", b"record")
    sync_dir(m / "tmp")
    os.rename(m / "tmp" / "x", m / "queue" / "x")
    sync_dir(m / "queue")


def test_rename_needs_both_directories(powercut):
    fs = powercut()
    m = powercut.mountpoint
    renamed_to_queue(m)
    assert "queue/x" not in fs.surviving()
    assert after_cut(powercut, fs) == {"tmp": None, "queue": None,
                                       "tmp/x": b"record"}
    fs = powercut()
    os.rename(m / "tmp" / "x", m / "queue" / "x")
    sync_dir(m / "queue")
    sync_dir(m / "tmp")
    assert after_cut(powercut, fs) == {"tmp": None, "queue": None,
                                       "queue/x": b"record"}


def test_rename_rule_each_lets_each_side_survive(powercut):
    fs = powercut(rename_rule="each")
    m = powercut.mountpoint
    renamed_to_queue(m)
    # The old name was not synced away: the file has both names.
    assert after_cut(powercut, fs) == {"tmp": None, "queue": None,
                                       "tmp/x": b"record",
                                       "queue/x": b"record"}
    assert os.stat(powercut.backing / "tmp" / "x").st_ino == \
        os.stat(powercut.backing / "queue" / "x").st_ino


def test_hard_link_shares_the_inode_contents(powercut):
    fs = powercut()
    m = powercut.mountpoint
    fd = os.open(m / "anon", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"synced")
    os.fsync(fd)
    os.link(m / "anon", m / "named")
    os.unlink(m / "anon")
    sync_dir(m)
    os.write(fd, b" then not")
    os.close(fd)
    assert after_cut(powercut, fs) == {"named": b"synced"}


def test_an_inode_without_a_surviving_name_is_gone(powercut):
    fs = powercut()
    m = powercut.mountpoint
    write_file(m / "a", b"A")
    sync_dir(m)
    os.link(m / "a", m / "b")
    os.unlink(m / "a")
    sync_dir(m)
    os.unlink(m / "b")
    write_file(m / "c", b"C")
    sync_dir(m)
    assert after_cut(powercut, fs) == {"c": b"C"}


def test_fallocate_truncate_and_mmap(powercut):
    fs = powercut()
    m = powercut.mountpoint
    fd = os.open(m / "seg", os.O_RDWR | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, 65536)
    os.pwritev(fd, [b"rec1", b"rec2"], 0)
    os.fdatasync(fd)
    sync_dir(m)
    os.pwritev(fd, [b"rec3"], 8)
    with mmap.mmap(fd, 0, mmap.MAP_PRIVATE, mmap.PROT_READ) as mp:
        assert mp[:12] == b"rec1rec2rec3"
        assert len(mp) == 65536
    os.ftruncate(fd, 12)
    os.close(fd)
    # The trim was never synced: the allocated size and NUL tail survive.
    got = after_cut(powercut, fs)
    assert got["seg"] == b"rec1rec2" + bytes(65536 - 8)


def test_copy_file_range_is_modelled(powercut):
    """relayd copies records into dead/ and corrupt/ with copy_file_range
    (or read and write where that fails): the copy is new, unsynced data."""
    fs = powercut()
    m = powercut.mountpoint
    write_file(m / "a", b"0123456789")
    for name, sync in (("b", True), ("c", False)):
        src = os.open(m / "a", os.O_RDONLY)
        dst = os.open(m / name, os.O_WRONLY | os.O_CREAT, 0o600)
        assert os.copy_file_range(src, dst, 6, 2) == 6
        if sync:
            os.fdatasync(dst)
        os.close(src)
        os.close(dst)
    sync_dir(m)
    assert after_cut(powercut, fs) == {"a": b"0123456789", "b": b"234567",
                                       "c": b""}


def test_o_tmpfile_is_refused_like_a_file_system_without_it(powercut):
    powercut()
    with pytest.raises(OSError) as e:
        os.open(powercut.mountpoint, os.O_TMPFILE | os.O_WRONLY, 0o600)
    assert e.value.errno == errno.EOPNOTSUPP


def test_fault_fsync_eio_and_nothing_becomes_durable(powercut):
    fs, _, fd = durable_file(powercut, b"old")
    m = powercut.mountpoint
    fs.fault("fsync", path="f", count=1)
    os.pwrite(fd, b"new", 0)
    with pytest.raises(OSError) as e:
        os.fdatasync(fd)
    assert e.value.errno == errno.EIO
    write_file(m / "g", b"other file")          # not matched: syncs
    os.close(fd)
    fs.fault("fsync", path="", dirs="only", count=1)
    with pytest.raises(OSError) as e:
        sync_dir(m)
    assert e.value.errno == errno.EIO
    assert after_cut(powercut, fs) == {"f": b"old"}


def test_fault_enospc_after_n_bytes(powercut):
    fs = powercut()
    m = powercut.mountpoint
    fs.fault("write", after=10)
    fd = os.open(m / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert os.write(fd, b"123456") == 6
        assert os.write(fd, b"abcdef") == 4        # a short write
        with pytest.raises(OSError) as e:
            os.write(fd, b"x")
        assert e.value.errno == errno.ENOSPC
        fs.clear_faults()
        assert os.write(fd, b"!") == 1
    finally:
        os.close(fd)
    assert (m / "f").read_bytes() == b"123456abcd!"


def test_fault_read_eio_of_one_file(powercut):
    fs = powercut()
    m = powercut.mountpoint
    write_file(m / "bad", b"x" * 100)
    write_file(m / "good", b"y" * 100)
    fs.fault("read", path="bad")
    # A FUSE open without keep_cache drops the file's cached pages: the
    # read reaches the file system.
    with pytest.raises(OSError) as e:
        (m / "bad").read_bytes()
    assert e.value.errno == errno.EIO
    assert (m / "good").read_bytes() == b"y" * 100
