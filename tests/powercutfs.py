#!/usr/bin/python3
"""
powercutfs: a FUSE file system that knows what a power cut would leave.

It passes every operation through to a backing directory and keeps a
model of what would survive a power failure under the strictest POSIX
reading:

  * a file's contents (bytes and size) survive only as of its last fsync
    or fdatasync; a file whose name survives but that was never synced is
    empty;
  * a name (create, link, rename, unlink, mkdir, rmdir) survives only once
    the directory holding it was fsynced after the change; a rename from
    one directory to another survives only once BOTH directories were
    fsynced after it (rename_rule "both", the default; rename_rule "each"
    lets each directory's side survive on its own fsync, as ext4 and xfs
    behave);
  * contents belong to the inode, names to directory entries: a surviving
    name points to its inode's last synced contents, a hard link shares
    them, an inode no surviving name reaches disappears.

"Cut" (the control command) freezes the file system (every operation
fails with EIO from then on), the mount is taken away, and the backing
directory is rebuilt to hold exactly the surviving state; mount it again
and start the program under test on it.

What the model does with the less common calls:
  fallocate   mode 0 (and KEEP_SIZE) is passed through and modelled like a
              write of zeros (its size change survives on the next sync);
              other modes: EOPNOTSUPP.
  O_TMPFILE   not offered: the kernel answers EOPNOTSUPP (FUSE through
              libfuse 2 has no tmpfile), so linkat(AT_EMPTY_PATH) of one
              never happens; a program must fall back to a named file.
  pwritev     reaches us as writes: modelled.
  mmap        reads go through read(); MAP_SHARED writes go through write.
  syncfs      NOT seen: the kernel sends FUSE_SYNCFS only to virtiofs, so
              syncfs(2) on this mount returns 0 and makes nothing durable
              here. Test programs with per-file fsync, not syncfs.
  sync_file_range  starts write-back only, makes nothing durable (so does
              the model: the kernel does not forward it).
  xattrs, symlinks, chown: passed through; symlinks are modelled as names.

Faults on demand (control command "fault"): EIO from fsync/fdatasync (of
files, directories or both, matching a glob), ENOSPC from writes after N
more bytes, EIO from reads of files matching a glob. A failed fsync makes
nothing durable.

Use from Python:

    import powercutfs
    fs = powercutfs.mount(backing, mountpoint)   # needs root and /dev/fuse
    ... run the program on mountpoint ...
    fs.fault("fsync", path="queue/*", count=1)
    fs.stats()
    fs.cut()          # power cut: unmount; backing = what survived
    fs = powercutfs.mount(backing, mountpoint)   # power back
    fs.unmount()      # clean unmount: no cut, backing stays as it is

The server runs as its own process:
    powercutfs.py serve BACKING MOUNTPOINT CONTROL_SOCKET [--rename-rule R]
and answers one JSON object per line on CONTROL_SOCKET.
"""
import errno
import fnmatch
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time

FALLOC_FL_KEEP_SIZE = 1
ALL = 1 << 62           # a dirty range to the end of the file


def available():
    """None when a power-cut file system can be mounted here, else why not."""
    if os.geteuid() != 0:
        return "powercutfs needs root (it mounts a FUSE file system)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return "powercutfs needs /dev/fuse: %s" % e.strerror
    try:
        _import_fusepy()
    except ImportError as e:
        return "powercutfs needs python3-fusepy (tests/deps.sh): %s" % e
    return None


def _import_fusepy():
    try:
        import fusepy               # Debian's python3-fusepy
    except ImportError:
        import fuse as fusepy       # pip's fusepy
    return fusepy


# --------------------------------------------------------------------------
# the model

class Model:
    """
    Inodes get our own numbers (the backing file system may reuse its own
    once a file is gone, while the model still needs the old one's synced
    contents). For each inode: its kind, and its durable contents: "base"
    (what the backing file held at mount, and it has not changed since), a
    copy in the state directory, or None (empty). For each directory: the
    durable entries {name: inode}.
    """

    def __init__(self, backing, state, rename_rule="both"):
        self.backing = backing
        self.state = state
        self.rename_rule = rename_rule
        self.lock = threading.RLock()
        self.next_id = 1
        self.by_ino = {}        # backing st_ino -> id
        self.kind = {}          # id -> "d" | "f" | "l"
        self.mode = {}          # id -> permission bits
        self.base_path = {}     # id -> backing path while contents are "base"
        self.durable = {}       # file id -> None | "base" | state file path
        self.dirty = {}         # file id -> [(off, len)] not yet synced
        self.dur_dirs = {}      # dir id -> {name: id}
        self.pending = []       # cross-directory renames waiting for a sync
        self.link_target = {}   # symlink id -> target
        self.root = self._scan("/")

    # -- identities
    def real(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def _new_id(self, ino, kind, mode):
        i = self.next_id
        self.next_id += 1
        self.by_ino[ino] = i
        self.kind[i] = kind
        self.mode[i] = stat.S_IMODE(mode)
        return i

    def _scan(self, path):
        """At mount everything in the backing directory is durable."""
        st = os.lstat(self.real(path))
        if stat.S_ISDIR(st.st_mode):
            i = self._new_id(st.st_ino, "d", st.st_mode)
            ents = {}
            for name in os.listdir(self.real(path)):
                ents[name] = self._scan_child(os.path.join(path, name))
            self.dur_dirs[i] = ents
            return i
        raise OSError(errno.ENOTDIR, "backing root is not a directory")

    def _scan_child(self, path):
        st = os.lstat(self.real(path))
        if st.st_ino in self.by_ino:            # a hard link seen before
            return self.by_ino[st.st_ino]
        if stat.S_ISDIR(st.st_mode):
            return self._scan(path)
        if stat.S_ISLNK(st.st_mode):
            i = self._new_id(st.st_ino, "l", st.st_mode)
            self.link_target[i] = os.readlink(self.real(path))
            return i
        i = self._new_id(st.st_ino, "f", st.st_mode)
        self.durable[i] = "base"
        self.base_path[i] = self.real(path)
        return i

    def id_of(self, path):
        """Our inode number for what path names now (None if nothing)."""
        try:
            st = os.lstat(self.real(path))
        except FileNotFoundError:
            return None
        i = self.by_ino.get(st.st_ino)
        if i is None:           # made behind our back: never durable
            i = self.created(path, st)
        return i

    def created(self, path, st=None):
        """A new inode at path (create, mknod, mkdir, symlink): nothing of
        it is durable yet."""
        st = st or os.lstat(self.real(path))
        kind = ("d" if stat.S_ISDIR(st.st_mode) else
                "l" if stat.S_ISLNK(st.st_mode) else "f")
        i = self._new_id(st.st_ino, kind, st.st_mode)
        if kind == "f":
            self.durable[i] = None
        elif kind == "d":
            self.dur_dirs[i] = {}
        else:
            self.link_target[i] = os.readlink(self.real(path))
        return i

    # -- contents
    def preserve(self, i):
        """Before the backing file of a "base" inode changes or goes away,
        keep a copy of what survives."""
        if i is None or self.durable.get(i) != "base":
            return
        dst = os.path.join(self.state, "ino-%d" % i)
        shutil.copyfile(self.base_path.pop(i), dst)
        self.durable[i] = dst

    def preserve_path(self, path):
        i = self.id_of(path)
        if i is not None and self.kind[i] == "f":
            self.preserve(i)
        return i

    def wrote(self, i, off, length):
        self.dirty.setdefault(i, []).append((off, length))

    def synced(self, i, fd):
        """fsync/fdatasync of inode i (open as fd) succeeded."""
        self.preserve(i)
        dst = self.durable.get(i)
        size = os.fstat(fd).st_size
        if dst is None:
            dst = os.path.join(self.state, "ino-%d" % i)
            with open(dst, "wb"):
                pass
            self.durable[i] = dst
            ranges = [(0, size)]
        else:
            ranges = self.dirty.get(i, [])
        self.dirty.pop(i, None)
        out = os.open(dst, os.O_WRONLY)
        try:
            for off, length in _merge(ranges):
                end = min(off + length, size)
                while off < end:
                    data = os.pread(fd, min(end - off, 1 << 20), off)
                    if not data:
                        break
                    os.pwrite(out, data, off)
                    off += len(data)
            os.ftruncate(out, size)
        finally:
            os.close(out)

    # -- names
    def listing(self, path):
        return {name: self.id_of(os.path.join(path, name))
                for name in os.listdir(self.real(path))}

    def renamed(self, old, new, i):
        """Before a cross-directory rename of inode i takes effect."""
        src, dst = os.path.dirname(old), os.path.dirname(new)
        if src == dst or self.rename_rule != "both":
            return
        self.pending.append({
            "src": self.id_of(src), "src_name": os.path.basename(old),
            "dst": self.id_of(dst), "dst_name": os.path.basename(new),
            "id": i, "synced": set()})

    def dir_synced(self, path):
        d = self.id_of(path)
        old = self.dur_dirs.get(d, {})
        snap = self.listing(path)
        still = []
        for r in self.pending:
            if d in (r["src"], r["dst"]):
                r["synced"].add(d)
            if len(r["synced"]) == 2 or r["src"] == r["dst"]:
                # Both sides synced: the side synced first comes true.
                other = r["src"] if d == r["dst"] else r["dst"]
                ents = self.dur_dirs.setdefault(other, {})
                if other == r["dst"]:
                    ents[r["dst_name"]] = r["id"]
                elif ents.get(r["src_name"]) == r["id"]:
                    del ents[r["src_name"]]
                continue
            still.append(r)
            if d == r["dst"] and snap.get(r["dst_name"]) == r["id"]:
                if r["dst_name"] in old:
                    snap[r["dst_name"]] = old[r["dst_name"]]
                else:
                    del snap[r["dst_name"]]
            if d == r["src"] and r["src_name"] not in snap and \
                    old.get(r["src_name"]) == r["id"]:
                snap[r["src_name"]] = r["id"]
        self.pending = still
        self.dur_dirs[d] = snap

    # -- the cut
    def surviving(self):
        """{path: ("d"|"f"|"l", id)} of what a power cut leaves."""
        out = {}

        def walk(d, path, seen):
            for name, i in sorted(self.dur_dirs.get(d, {}).items()):
                p = os.path.join(path, name)
                out[p] = (self.kind[i], i)
                if self.kind[i] == "d" and i not in seen:
                    walk(i, p, seen | {i})
        walk(self.root, "", {self.root})
        return out

    def materialize(self):
        """Rebuilds the backing directory as the cut leaves it."""
        tmp = self.backing.rstrip("/") + ".cut"
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, self.mode[self.root])
        made = {}
        for p, (kind, i) in sorted(self.surviving().items()):
            dst = os.path.join(tmp, p)
            if kind == "d":
                os.mkdir(dst, self.mode[i])
            elif kind == "l":
                os.symlink(self.link_target[i], dst)
            elif i in made:
                os.link(made[i], dst)
            else:
                src = self.durable.get(i)
                if src == "base":
                    src = self.base_path[i]
                if src is None:
                    open(dst, "wb").close()
                else:
                    shutil.copyfile(src, dst)
                os.chmod(dst, self.mode[i])
                made[i] = dst
        old = self.backing.rstrip("/") + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(self.backing, old)
        os.rename(tmp, self.backing)
        shutil.rmtree(old, ignore_errors=True)


def _merge(ranges):
    out = []
    for off, length in sorted(ranges):
        if out and off <= out[-1][0] + out[-1][1]:
            o, l = out[-1]
            out[-1] = (o, max(l, off + length - o))
        else:
            out.append((off, length))
    return out


# --------------------------------------------------------------------------
# the file system

class Faults:
    def __init__(self):
        self.rules = []

    def hit(self, op, path, want=1):
        """The errno a rule makes op on path fail with, or 0; for "write"
        the number of bytes still allowed when a limit is near."""
        for r in self.rules:
            if r["op"] != op or r.get("count") == 0:
                continue
            if not fnmatch.fnmatch(path.lstrip("/"), r.get("path", "*")):
                continue
            if op == "write":
                left = r["after"]
                if want <= left:
                    r["after"] -= want
                    return 0, want
                r["after"] = 0
                if left > 0:
                    return 0, left
            if op in ("fsync", "fsyncdir") and r.get("count") is not None:
                r["count"] -= 1
            r["fired"] = r.get("fired", 0) + 1
            return getattr(errno, r["errno"]), 0
        return 0, want


def make_ops(fusepy, model, faults, stats):
    FuseOSError = fusepy.FuseOSError

    class Ops(fusepy.Operations):
        use_ns = True
        # Calls on an open file whose names are all gone (unlinked, or an
        # inode reached through a hard link made later) come without a
        # path instead of failing with ENOENT.
        flag_nullpath_ok = True

        def __init__(self):
            self.frozen = False
            self.fds = {}       # fh -> inode id

        def __call__(self, op, *args):
            with model.lock:
                if self.frozen:
                    raise FuseOSError(errno.EIO)
                stats[op] = stats.get(op, 0) + 1
                return getattr(self, op)(*args)

        # -- metadata
        def getattr(self, path, fh=None):
            try:
                st = os.fstat(fh) if fh is not None else \
                    os.lstat(model.real(path))
            except OSError as e:
                raise FuseOSError(e.errno)
            return {k: getattr(st, k) for k in (
                "st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_blocks")} | {"st_atime": st.st_atime_ns,
                                 "st_mtime": st.st_mtime_ns,
                                 "st_ctime": st.st_ctime_ns}

        def access(self, path, amode):
            if not os.access(model.real(path), amode):
                raise FuseOSError(errno.EACCES)

        def chmod(self, path, mode):
            _os(os.chmod, model.real(path), mode)
            model.mode[model.id_of(path)] = stat.S_IMODE(mode)

        def chown(self, path, uid, gid):
            _os(os.chown, model.real(path), uid, gid)

        def utimens(self, path, times=None):
            _os(os.utime, model.real(path), ns=times) if times else \
                _os(os.utime, model.real(path))

        def statfs(self, path):
            st = os.statvfs(model.real(path))
            return {k: getattr(st, k) for k in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

        def readlink(self, path):
            return _os(os.readlink, model.real(path))

        # -- names
        def readdir(self, path, fh):
            return [".", ".."] + _os(os.listdir, model.real(path))

        def mkdir(self, path, mode):
            _os(os.mkdir, model.real(path), mode)
            model.created(path)

        def rmdir(self, path):
            _os(os.rmdir, model.real(path))

        def mknod(self, path, mode, dev):
            _os(os.mknod, model.real(path), mode, dev)
            model.created(path)

        def symlink(self, target, source):
            _os(os.symlink, source, model.real(target))
            model.created(target)

        def link(self, target, source):
            model.id_of(source)
            _os(os.link, model.real(source), model.real(target))

        def unlink(self, path):
            model.preserve_path(path)
            _os(os.unlink, model.real(path))

        def rename(self, old, new):
            i = model.preserve_path(old)
            model.preserve_path(new)
            model.renamed(old, new, i)
            _os(os.rename, model.real(old), model.real(new))

        # -- files
        def create(self, path, mode, fi=None):
            fd = _os(os.open, model.real(path),
                     os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
            self.fds[fd] = model.created(path)
            return fd

        def open(self, path, flags):
            i = model.id_of(path)
            if flags & os.O_TRUNC:
                model.preserve(i)
            # Read-write whatever was asked (a sync reads back what was
            # written), never O_APPEND (the kernel gives the offsets).
            fd = _os(os.open, model.real(path),
                     os.O_RDWR | (flags & os.O_TRUNC))
            if flags & os.O_TRUNC:
                model.wrote(i, 0, ALL)
            self.fds[fd] = i
            return fd

        def release(self, path, fh):
            self.fds.pop(fh, None)
            os.close(fh)

        def flush(self, path, fh):
            pass

        def read(self, path, size, offset, fh):
            e, _ = faults.hit("read", model_path(path, fh))
            if e:
                raise FuseOSError(e)
            return _os(os.pread, fh, size, offset)

        def write(self, path, data, offset, fh):
            e, n = faults.hit("write", model_path(path, fh), len(data))
            if e:
                raise FuseOSError(e)
            i = self.fds[fh]
            model.preserve(i)
            n = _os(os.pwrite, fh, data[:n], offset)
            model.wrote(i, offset, n)
            return n

        def truncate(self, path, length, fh=None):
            i = self.fds[fh] if fh is not None else model.id_of(path)
            model.preserve(i)
            if fh is not None:
                _os(os.ftruncate, fh, length)
            else:
                _os(os.truncate, model.real(path), length)
            model.wrote(i, length, ALL)     # gone, or zeros if extended

        def fallocate(self, path, mode, offset, length, fh):
            if mode & ~FALLOC_FL_KEEP_SIZE:
                raise FuseOSError(errno.EOPNOTSUPP)
            i = self.fds[fh]
            model.preserve(i)
            r = _libc_fallocate(fh, mode, offset, length)
            if r:
                raise FuseOSError(r)
            model.wrote(i, offset, length)

        def fsync(self, path, datasync, fh):
            e, _ = faults.hit("fsync", model_path(path, fh))
            if e:
                raise FuseOSError(e)
            model.synced(self.fds[fh], fh)

        def fsyncdir(self, path, datasync, fh):
            e, _ = faults.hit("fsyncdir", path)
            if e:
                raise FuseOSError(e)
            model.dir_synced(path)

        # -- xattrs: passed through
        def getxattr(self, path, name, position=0):
            try:
                return os.getxattr(model.real(path), name)
            except OSError as e:
                raise FuseOSError(errno.ENODATA if e.errno == errno.ENODATA
                                  else e.errno)

        def listxattr(self, path):
            return _os(os.listxattr, model.real(path))

    def model_path(path, fh):
        return path or ""

    return Ops()


def _os(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except OSError as e:
        raise _import_fusepy().FuseOSError(e.errno)


_libc = None


def _libc_fallocate(fd, mode, offset, length):
    global _libc
    import ctypes
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int,
                                    ctypes.c_int64, ctypes.c_int64]
    if _libc.fallocate(fd, mode, offset, length) == 0:
        return 0
    return ctypes.get_errno()


def _with_fallocate(fusepy):
    """fusepy 3.0 stops at ioctl in struct fuse_operations; libfuse 2.9
    goes on to poll, write_buf, read_buf, flock and fallocate. Adds them so
    that fallocate(2) reaches the model (else the kernel would answer
    EOPNOTSUPP, which the program under test also has to survive)."""
    import ctypes
    if any(f[0] == "fallocate" for f in fusepy.fuse_operations._fields_):
        return fusepy.FUSE
    fields = list(fusepy.fuse_operations._fields_) + [
        ("poll", ctypes.c_void_p),
        ("write_buf", ctypes.c_void_p),
        ("read_buf", ctypes.c_void_p),
        ("flock", ctypes.c_void_p),
        ("fallocate", ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.c_char_p, ctypes.c_int, fusepy.c_off_t,
            fusepy.c_off_t, ctypes.POINTER(fusepy.fuse_file_info))),
    ]
    fusepy.fuse_operations = type("fuse_operations", (ctypes.Structure,),
                                  {"_fields_": fields})

    class FUSE(fusepy.FUSE):
        def fallocate(self, path, mode, offset, length, fip):
            return self.operations("fallocate", self._decode_optional_path(
                                   path), mode, offset,
                                   length, fip.contents.fh)
    return FUSE


# --------------------------------------------------------------------------
# the server process

def serve(backing, mountpoint, control, rename_rule):
    fusepy = _import_fusepy()
    FUSE = _with_fallocate(fusepy)
    backing = os.path.abspath(backing)
    state = backing.rstrip("/") + ".state"
    shutil.rmtree(state, ignore_errors=True)
    os.mkdir(state, 0o700)
    model = Model(backing, state, rename_rule)
    faults = Faults()
    stats = {}
    ops = make_ops(fusepy, model, faults, stats)
    cut = threading.Event()

    def answer(req):
        cmd = req.get("cmd")
        with model.lock:
            if cmd == "ping":
                return {"ok": True}
            if cmd == "fault":
                rule = {k: v for k, v in req.items() if k != "cmd"}
                rule.setdefault("errno", "ENOSPC" if rule["op"] == "write"
                                else "EIO")
                if rule["op"] == "fsync" and rule.get("dirs"):
                    faults.rules.append(dict(rule, op="fsyncdir"))
                    if rule["dirs"] == "only":
                        return {"ok": True}
                faults.rules.append(rule)
                return {"ok": True}
            if cmd == "clear":
                faults.rules = []
                return {"ok": True}
            if cmd == "faults":
                return {"ok": True, "faults": faults.rules}
            if cmd == "stats":
                return {"ok": True, "stats": dict(stats)}
            if cmd == "surviving":
                return {"ok": True, "paths": {
                    p: k for p, (k, _) in model.surviving().items()}}
            if cmd == "cut":
                # The power goes: nothing more reaches the disk, the
                # disk is left as it survived, the device vanishes.
                ops.frozen = True
                model.materialize()
                cut.set()
                return {"ok": True}
        return {"ok": False, "error": "unknown command %r" % cmd}

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(control):
        os.unlink(control)
    srv.bind(control)
    srv.listen(4)

    def loop():
        while True:
            c, _ = srv.accept()
            with c, c.makefile("rwb") as f:
                for line in f:
                    try:
                        out = answer(json.loads(line))
                    except Exception as e:      # noqa: BLE001 - reported
                        out = {"ok": False, "error": repr(e)}
                    f.write(json.dumps(out).encode() + b"\n")
                    f.flush()
                    if cut.is_set():
                        shutil.rmtree(state, ignore_errors=True)
                        os.unlink(control)
                        os._exit(0)
    threading.Thread(target=loop, daemon=True).start()

    FUSE(ops, mountpoint, foreground=True, nothreads=False,
         fsname="powercutfs", subtype="powercutfs", big_writes=True,
         max_write=131072, hard_remove=True, use_ino=False,
         default_permissions=True, allow_other=True)
    shutil.rmtree(state, ignore_errors=True)
    os.unlink(control)


# --------------------------------------------------------------------------
# the client API

class PowerCutFS:
    def __init__(self, backing, mountpoint, rename_rule="both", log=None):
        self.backing = os.path.abspath(backing)
        self.mountpoint = os.path.abspath(mountpoint)
        self.control = self.backing.rstrip("/") + ".ctl"
        self.log = log or (self.backing.rstrip("/") + ".log")
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "serve",
                 self.backing, self.mountpoint, self.control,
                 "--rename-rule", rename_rule],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        deadline = time.monotonic() + 15
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._abandon()
                raise RuntimeError("powercutfs did not mount %s:\n%s" % (
                    self.mountpoint, open(self.log).read()[-3000:]))
            time.sleep(0.02)
        while True:
            try:
                self.call("ping")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def call(self, cmd, **kw):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(30)
            s.connect(self.control)
            s.sendall(json.dumps(dict(kw, cmd=cmd)).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                d = s.recv(65536)
                if not d:
                    raise OSError("powercutfs closed the control socket")
                buf += d
        finally:
            s.close()
        out = json.loads(buf)
        if not out.get("ok"):
            raise RuntimeError("powercutfs %s: %s" % (cmd, out.get("error")))
        return out

    def fault(self, op, path="*", errno="", count=None, after=None,
              dirs=False):
        """op "fsync" (files; dirs=True also directories, dirs="only" only
        them), "write" (ENOSPC once `after` more bytes were written) or
        "read" (EIO reading files matching path)."""
        kw = {"op": op, "path": path}
        if errno:
            kw["errno"] = errno
        if count is not None:
            kw["count"] = count
        if op == "write":
            kw["after"] = after or 0
        if dirs:
            kw["dirs"] = dirs
        self.call("fault", **kw)

    def clear_faults(self):
        self.call("clear")

    def stats(self):
        return self.call("stats")["stats"]

    def surviving(self):
        """{path: kind} of what a cut now would leave."""
        return self.call("surviving")["paths"]

    def cut(self):
        """Power cut: the mount goes away; the backing directory holds
        what survived. Whatever still runs on the mount gets EIO/ENOTCONN."""
        self.call("cut")
        rc = self.proc.wait(60)
        self._umount()
        if rc != 0:
            raise RuntimeError("powercutfs failed at the cut:\n%s"
                               % open(self.log).read()[-3000:])

    def unmount(self):
        """A clean unmount: nothing is cut."""
        if self.proc.poll() is None:
            self._umount()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                # Lazily unmounted and a file still open: the server
                # would wait for it; ending it aborts the connection.
                self.proc.kill()
                self.proc.wait()

    def _umount(self):
        r = subprocess.run(["umount", self.mountpoint], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", self.mountpoint],
                           capture_output=True)

    def _abandon(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if os.path.ismount(self.mountpoint):
            subprocess.run(["umount", "-l", self.mountpoint],
                           capture_output=True)


def mount(backing, mountpoint, **kw):
    return PowerCutFS(backing, mountpoint, **kw)


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "serve":
        rule = "both"
        if "--rename-rule" in sys.argv:
            rule = sys.argv[sys.argv.index("--rename-rule") + 1]
        serve(sys.argv[2], sys.argv[3], sys.argv[4], rule)
    else:
        sys.exit("usage: powercutfs.py serve BACKING MOUNTPOINT CONTROL "
                 "[--rename-rule both|each]")
