"""`make install`: what goes where, and that the installed pieces hold up.

`make install DESTDIR=<tmp>` from the build tree, with the directories
configure chose (read back from the Makefile): the three programs, the
four man pages, the unit, the sysusers.d file and the example config, and
nothing else; a relayd.conf already there is left alone; `make uninstall`
takes it all away again. The installed man pages render without a warning,
relayd.conf(5) names every key and default `relayd -D` prints (both come
from the parser's table), and the installed unit verifies with its
Documentation= pages found among the installed ones.
"""
import os
import re
import shutil
import stat
import subprocess

import pytest

from relaydtest.daemon import need
from relaydtest.env import BUILDDIR, RELAYD_BIN, SRCDIR

DIRS = ("sbindir", "bindir", "mandir", "sysconfdir", "systemdsystemunitdir",
        "sysusersdir")
MAN_PAGES = ("man8/relayd.8", "man8/relayctl.8", "man8/relayd-sendmail.8",
             "man5/relayd.conf.5")
PROGRAMS = ("sbindir/relayd", "sbindir/relayd-sendmail", "bindir/relayctl")


def programs(dirs):
    return {dirs[p.split("/")[0]] + "/" + p.split("/")[1] for p in PROGRAMS}
MINE = "# the admin's own relayd.conf\n"


def make(*args, stdin=None):
    """make in the build tree; a make running the test suite must not hand
    its job server or flags down."""
    need("make")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "-s", "--no-print-directory", *args],
                          cwd=BUILDDIR, env=env, input=stdin,
                          capture_output=True, text=True, timeout=600)


def configured_dirs():
    """The install directories as make expands them."""
    rule = "print-dirs:\n" + "".join(
        "\t@echo '%s=$(%s)'\n" % (d, d) for d in DIRS)
    r = make("-f", "Makefile", "-f", "-", "print-dirs", stdin=rule)
    assert r.returncode == 0, r.stderr
    dirs = dict(l.split("=", 1) for l in r.stdout.splitlines())
    assert set(dirs) == set(DIRS), r.stdout
    for d, path in dirs.items():
        assert path.startswith("/"), (d, path)
    return dirs


def expected_files(dirs):
    return {
        *programs(dirs),
        *(dirs["mandir"] + "/" + p for p in MAN_PAGES),
        dirs["sysconfdir"] + "/relayd/relayd.conf.example",
        dirs["systemdsystemunitdir"] + "/relayd.service",
        dirs["systemdsystemunitdir"] + "/relayd.socket",
        dirs["sysusersdir"] + "/relayd.conf",
    }


def files_under(root):
    found = set()
    for top, _, names in os.walk(root):
        for n in names:
            found.add("/" + os.path.relpath(os.path.join(top, n), root))
    return found


def install_into(root, dirs):
    """Installs into root, over an admin's relayd.conf placed there first."""
    conf = root / dirs["sysconfdir"].lstrip("/") / "relayd" / "relayd.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(MINE)
    r = make("install", "DESTDIR=%s" % root)
    assert r.returncode == 0, r.stdout + r.stderr
    return conf


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    dirs = configured_dirs()
    root = tmp_path_factory.mktemp("destdir")
    install_into(root, dirs)
    return root, dirs


def test_install_puts_each_file_in_place(installed):
    root, dirs = installed
    conf = dirs["sysconfdir"] + "/relayd/relayd.conf"
    assert files_under(root) == expected_files(dirs) | {conf}
    for prog in programs(dirs):
        assert os.access(str(root) + prog, os.X_OK), prog
    for f in expected_files(dirs) - programs(dirs):
        mode = stat.S_IMODE(os.stat(str(root) + f).st_mode)
        assert mode == 0o644, (f, oct(mode))


def test_install_leaves_an_existing_relayd_conf_alone(installed):
    root, dirs = installed
    etc = root / dirs["sysconfdir"].lstrip("/") / "relayd"
    assert (etc / "relayd.conf").read_text() == MINE
    # the example is conf/relayd.conf (test_conf_file keeps it current)
    assert (etc / "relayd.conf.example").read_bytes() == \
        (SRCDIR / "conf" / "relayd.conf").read_bytes()


def test_uninstall_removes_what_install_added(tmp_path):
    dirs = configured_dirs()
    install_into(tmp_path, dirs)
    r = make("uninstall", "DESTDIR=%s" % tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert files_under(tmp_path) == {
        dirs["sysconfdir"] + "/relayd/relayd.conf"}


@pytest.mark.parametrize("page", MAN_PAGES)
def test_man_page_renders_without_warnings(installed, page):
    root, dirs = installed
    path = str(root) + dirs["mandir"] + "/" + page
    need("groff")
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    if shutil.which("mandoc"):
        r = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", path],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def roff_lit(s):
    """A literal as relayd -M writes it."""
    return "\\%" + s.replace("\\", "\\e").replace("-", "\\-")


def test_conf_man_page_names_every_key_and_default(installed):
    """relayd.conf(5) and relayd -D come from one table: every key -D
    prints is in the page, in its section, with the same default."""
    root, dirs = installed
    page = (root / dirs["mandir"].lstrip("/") / "man5" /
            "relayd.conf.5").read_text()
    sections = {}
    for block in re.split(r"(?m)^\.SS ", page)[1:]:
        name, _, body = block.partition("\n")
        sections[name] = body
    dump = subprocess.run([str(RELAYD_BIN), "-D"], check=True,
                          capture_output=True, text=True).stdout
    section = None
    keys = 0
    for line in dump.splitlines():
        m = re.match(r"^\[(\w+)\]$", line)
        if m:
            section = "[%s]" % m.group(1)
            assert section in sections, "%s: no subsection" % section
            continue
        m = re.match(r"^#(\w+) =(?: (.*))?$", line)
        if not m or section == "[senders]":
            continue
        key, default = m.groups()
        body = sections[section]
        entry = re.search(r"(?ms)^\.TP\n\\fB\\%%%s\\fR = .*?(?=^\.TP|\Z)"
                          % re.escape(key), body)
        assert entry, "%s %s is not in relayd.conf(5)" % (section, key)
        if default is not None:
            assert "Default: \\fB%s\\fR." % roff_lit(default) in \
                entry.group(0), (section, key, default)
        keys += 1
    assert keys >= 40, keys
    # the [senders] examples too
    for line in dump[dump.index("\n[senders]\n"):].splitlines():
        if line.startswith("#") and not line.startswith("# "):
            assert roff_lit(line[1:]) in sections["[senders]"], line


def test_installed_sendmail_reads_the_installed_config(installed):
    """relayd-sendmail's default config is the one relayd reads."""
    root, dirs = installed
    conf = dirs["sysconfdir"] + "/relayd/relayd.conf"
    if os.path.exists(conf):
        pytest.skip("%s exists on this machine" % conf)
    r = subprocess.run([str(root) + dirs["sbindir"] + "/relayd-sendmail",
                        "root"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78
    assert r.stderr == "relayd-sendmail: %s: cannot open: No such file or " \
        "directory\n" % conf


def test_installed_unit_names_the_installed_paths(installed):
    root, dirs = installed
    unit = (root / dirs["systemdsystemunitdir"].lstrip("/") /
            "relayd.service").read_text()
    conf = dirs["sysconfdir"] + "/relayd/relayd.conf"
    relayd = dirs["sbindir"] + "/relayd"
    assert "\nExecStart=%s -c %s\n" % (relayd, conf) in unit
    assert "\nExecStartPre=%s -n -c %s\n" % (relayd, conf) in unit
    assert "\nLoadCredential=client_secret:%s/relayd/client_secret\n" % \
        dirs["sysconfdir"] in unit


def test_installed_unit_verifies_with_its_man_pages(installed, tmp_path):
    """systemd-analyze verify checks that the programs exist and, with
    MANPATH at the installed pages, that each Documentation= page does."""
    root, dirs = installed
    need("systemd-analyze")
    need("man")
    relayd = dirs["sbindir"] + "/relayd"
    unit = (root / dirs["systemdsystemunitdir"].lstrip("/") /
            "relayd.service").read_text()
    copy = tmp_path / "relayd.service"
    copy.write_text(unit.replace(relayd, str(root) + relayd))
    env = dict(os.environ, MANPATH=str(root) + dirs["mandir"])
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.strip() == "", r.stderr
