"""bench/benchlib.py - what bench/deliver and bench/soak share: settings
from the environment, loopback ports, the processes a run starts (stopped
again by cleanup() on every exit), work directories, and the fake Graph
(tests/fakegraph.py) with a client for its control API; for bench/soak-all
also a throw-away CA (openssl) and users_file lines (relayctl passwd).

Standard library only. The scripts put this directory on sys.path.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.realpath(__file__))
ROOT = os.path.dirname(HERE)
FAKEGRAPH = os.path.join(ROOT, "tests", "fakegraph.py")
PYTHON = "/usr/bin/python3"

TENANT = "contoso-tenant"       # tests/fakegraph.py's defaults
CLIENT_ID = "relayd-client"
CLIENT_SECRET = "s3cret"


class BenchError(Exception):
    """A measurement that cannot be trusted: report it and exit 1."""


def say(*args):
    print(*args, flush=True)


def usage_error(msg):
    print(f"bench/{os.path.basename(sys.argv[0])}: {msg}", file=sys.stderr)
    sys.exit(2)


def env_int(name, default, minimum, maximum=None):
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        usage_error(f"{name}={raw!r} is not a number")
    if v < minimum or (maximum is not None and v > maximum):
        usage_error(f"{name} must be >= {minimum}"
                    + (f" and <= {maximum}" if maximum is not None else ""))
    return v


def env_float(name, default, minimum=0.0):
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        usage_error(f"{name}={raw!r} is not a number")
    if v < minimum:
        usage_error(f"{name} must be >= {minimum:g}")
    return v


# ---------------------------------------------------------------- helpers

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """True once something listens on 127.0.0.1:port (no connection made)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def tail_of(path, n=15):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()[-n:]
    if not lines:
        return ""
    return "\n  last lines of " + path + ":\n    " + "\n    ".join(lines)


def wait_listening(port, proc, what, log=None, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} "
                             f"before listening{tail_of(log)}")
        time.sleep(0.05)
    raise BenchError(f"{what} is not listening on 127.0.0.1:{port} after "
                     f"{timeout:.0f} s{tail_of(log)}")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def tree_pids(pid):
    """pid and its descendants (relayd is a parent with children: relayd:
    token, relayd: relay, ...), parents first; gone ones left out."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except (OSError, ValueError):
            continue
        out.append(p)
        todo += kids
    return out


def cpu_seconds(pid):
    """utime + stime of a process and its descendants, all threads."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf(
            "SC_CLK_TCK")
    return total


def vm_kib(pid, field="VmRSS"):
    """VmRSS (or VmHWM ...) in KiB from /proc/PID/status, summed over the
    process and its descendants."""
    total, seen = 0, False
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
                        seen = True
                        break
        except OSError:
            continue
    if not seen:
        raise BenchError(f"no {field} for pid {pid}")
    return total


def stop_proc(proc, timeout=30.0):
    """SIGTERM the process we started, SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return proc.returncode


# ---------------------------------------------------------------- processes

STARTED = []        # stop functions, newest last


def cleanup(workdir, keep):
    """Stops every process still started, newest first, and removes the
    work directory unless keep."""
    while STARTED:
        stop = STARTED.pop()
        try:
            stop()
        except Exception as e:      # already reported or irrelevant now
            say(f"  (while stopping: {e})")
    if workdir and os.path.isdir(workdir) and keep:
        say(f"keeping {workdir} (BENCH_KEEP)")
    elif workdir and os.path.isdir(workdir):
        say(f"removing {workdir}")
        shutil.rmtree(workdir, ignore_errors=True)


def unstart(stop):
    """Runs a stop function now and forgets it."""
    if stop in STARTED:
        STARTED.remove(stop)
    stop()


def on_signal(sig, _frame):
    raise KeyboardInterrupt(f"signal {sig}")


def remove_stale_workdirs(bench_dir, prefix):
    """Removes bench_dir/PREFIX* whose owner.pid is no longer running."""
    for name in os.listdir(bench_dir):
        if not name.startswith(prefix):
            continue
        path = os.path.join(bench_dir, name)
        try:
            with open(os.path.join(path, "owner.pid")) as f:
                owner = int(f.read())
        except (OSError, ValueError):
            owner = None
        if owner is not None and pid_alive(owner):
            continue            # another run of the script is going on
        say(f"removing stale {path}")
        shutil.rmtree(path, ignore_errors=True)


class Fake:
    """tests/fakegraph.py on a free loopback port, with extra arguments
    (e.g. --no-record, --latency-ms N)."""

    def __init__(self, workdir, name, args=()):
        self.name = name
        self.args = list(args)
        self.log = os.path.join(workdir, f"{name}.log")
        self.port_file = os.path.join(workdir, f"{name}.port")
        self.proc = None
        self.port = None

    def start(self):
        logf = open(self.log, "w")
        try:
            self.proc = subprocess.Popen(
                [PYTHON, FAKEGRAPH, "--listen", "127.0.0.1:0",
                 "--port-file", self.port_file] + self.args,
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                start_new_session=True)
        finally:
            logf.close()
        STARTED.append(self.stop)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None:
                raise BenchError(f"fakegraph exited with status "
                                 f"{self.proc.returncode} at start"
                                 f"{tail_of(self.log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"fakegraph wrote no port file in 30 s"
                                 f"{tail_of(self.log)}")
            time.sleep(0.05)
        with open(self.port_file) as f:
            self.port = int(f.read())
        wait_listening(self.port, self.proc, "fakegraph", self.log)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self):
        return self.proc.pid

    def call(self, method, path, body=None, ctype="application/json"):
        """A control (or token) request; the answer's JSON. body: bytes,
        or a list/dict sent as JSON."""
        if isinstance(body, (list, dict)):
            body = json.dumps(body).encode()
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            headers = {"Content-Type": ctype} if body is not None else {}
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
        except OSError as e:
            raise BenchError(f"fakegraph {method} {path}: {e}"
                             f"{tail_of(self.log)}")
        finally:
            c.close()
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if r.status != 200:
            raise BenchError(f"fakegraph {method} {path}: HTTP {r.status} "
                             f"{data[:300]!r}")
        return doc

    def stats(self):
        return self.call("GET", "/_fake/stats")

    def reset(self):
        self.call("POST", "/_fake/reset", b"{}")

    def token(self):
        form = urllib.parse.urlencode({
            "grant_type": "client_credentials", "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": self.url + "/.default"}).encode()
        doc = self.call("POST", f"/{TENANT}/oauth2/v2.0/token", form,
                        "application/x-www-form-urlencoded")
        return doc["access_token"]

    def check_alive(self):
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"fakegraph died during the run"
                             f"{tail_of(self.log)}")

    def problems(self):
        """Tracebacks or unexpected errors the fake logged."""
        with open(self.log, errors="replace") as f:
            return [l for l in f.read().splitlines()
                    if "Traceback" in l or "unexpected error" in l]

    def stop(self):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        stop_proc(proc, timeout=10)


class Relayd:
    """relayd -c FILE in the foreground on a free port: [queue] holds
    spool_dir and the queue dict's keys, [graph] the graph dict's (none
    without it), [log] level."""

    def __init__(self, workdir, name, spool, graph=None, level="warning",
                 queue=None, relayd="relayd/relayd"):
        self.dir = workdir
        self.name = name
        self.spool = spool
        self.relayd = relayd
        self.conf = os.path.join(workdir, f"{name}.conf")
        self.log = os.path.join(workdir, f"{name}.log")
        self.port = free_port()
        self.proc = None
        text = f"""[smtp]
listen = 127.0.0.1:{self.port}
hostname = bench.test
allow_networks = 127.0.0.0/8
max_connections = 1000
max_connections_per_client = 1000

[queue]
spool_dir = {spool}
"""
        text += "".join(f"{k} = {v}\n" for k, v in (queue or {}).items())
        if graph:
            text += "\n[graph]\n" + "".join(f"{k} = {v}\n"
                                            for k, v in graph.items())
        text += f"\n[status]\nsocket = none\n\n[log]\nlevel = {level}\n"
        with open(self.conf, "w") as f:
            f.write(text)

    def start(self):
        logf = open(self.log, "w")
        try:
            self.proc = subprocess.Popen(
                [self.relayd, "-c", self.conf], stdin=subprocess.DEVNULL,
                stdout=logf, stderr=logf, start_new_session=True)
        finally:
            logf.close()
        STARTED.append(self.stop)
        wait_listening(self.port, self.proc, "relayd", self.log)

    @property
    def pid(self):
        return self.proc.pid

    def check_alive(self):
        if self.proc is None or self.proc.poll() is not None:
            st = self.proc.returncode if self.proc else "?"
            raise BenchError(f"relayd died during the run (status {st})"
                             f"{tail_of(self.log)}")

    def stop(self):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is not None:
            raise BenchError(f"relayd had exited with status "
                             f"{proc.returncode}{tail_of(self.log)}")
        status = stop_proc(proc)
        if status != 0:
            raise BenchError(f"relayd exited with status {status} on "
                             f"SIGTERM{tail_of(self.log)}")

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()


def write_secret(path, secret=CLIENT_SECRET):
    """The client secret in a 0600 file, for [graph] client_secret_file."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
              "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)
    return path


def run(prefix, bench_dir, keep, body, errors=()):
    """A bench script's main: a fresh work directory bench_dir/PREFIX*
    (stale ones removed first), body(workdir), then cleanup() whatever
    happened. Returns the exit status: 0, 1 on BenchError (or one of
    errors), 130 when interrupted."""
    prog = f"bench/{os.path.basename(sys.argv[0])}"
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    status = 0
    workdir = None
    try:
        if not os.path.isdir(bench_dir):
            raise BenchError(f"BENCH_DIR {bench_dir} is not a directory")
        remove_stale_workdirs(bench_dir, prefix)
        workdir = tempfile.mkdtemp(prefix=prefix, dir=bench_dir)
        with open(os.path.join(workdir, "owner.pid"), "w") as f:
            f.write(str(os.getpid()))
        body(workdir)
    except (BenchError,) + tuple(errors) as e:
        say(f"\n{prog}: ERROR: {e}")
        status = 1
    except KeyboardInterrupt as e:
        say(f"\n{prog}: interrupted ({e})")
        status = 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        cleanup(workdir, keep)
    return status


# ---------------------------------------------------------------- TLS, AUTH

def openssl_ca(directory, cn="relayd bench CA"):
    """A throw-away CA and a server certificate it signs for localhost,
    127.0.0.1 and ::1, made with the openssl command (P-256 keys, valid
    for a day). Returns (ca_file, cert_file, key_file); the key is 0600."""
    def sh(*args):
        r = subprocess.run(["openssl"] + list(args), capture_output=True,
                           text=True, cwd=directory)
        if r.returncode != 0:
            raise BenchError(f"openssl {args[0]} failed: "
                             f"{r.stderr.strip()[-300:]}")
    ca_key, ca = (os.path.join(directory, n) for n in ("ca.key", "ca.pem"))
    key, csr, cert, ext = (os.path.join(directory, n) for n in (
        "server.key", "server.csr", "server.pem", "server.ext"))
    sh("req", "-x509", "-newkey", "ec", "-pkeyopt",
       "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", ca_key,
       "-out", ca, "-days", "2", "-subj", f"/CN={cn}",
       "-addext", "basicConstraints=critical,CA:TRUE",
       "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    sh("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
       "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    with open(ext, "w") as f:
        f.write("subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1\n"
                "basicConstraints = CA:FALSE\n"
                "keyUsage = critical, digitalSignature\n"
                "extendedKeyUsage = serverAuth\n")
    sh("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
       "-CAcreateserial", "-out", cert, "-days", "1", "-extfile", ext)
    os.chmod(key, 0o600)
    os.chmod(ca_key, 0o600)
    return ca, cert, key


def relayctl_passwd(relayctl, user, password):
    """The users_file line `relayctl passwd USER` makes for password (read
    from its stdin)."""
    try:
        r = subprocess.run([relayctl, "passwd", user], input=password + "\n",
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"{relayctl} passwd {user}: {e}")
    line = r.stdout.strip()
    if r.returncode != 0 or not line.startswith(user + " "):
        raise BenchError(f"{relayctl} passwd {user} exited with status "
                         f"{r.returncode}: {r.stderr.strip()[-300:]}")
    return line
