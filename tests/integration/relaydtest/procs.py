"""What relayd costs, read from /proc: relayd is a parent and its children
(relayd: token, relayd: relay, ...), so each figure is the sum over the
process tree under the pid the test started."""
import os


def tree_pids(pid):
    """pid and its descendants, parents first (gone ones left out)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        try:
            with open("/proc/%d/task/%d/children" % (p, p)) as f:
                kids = [int(k) for k in f.read().split()]
        except (OSError, ValueError):
            continue
        out.append(p)
        todo += kids
    return out


def _status_kib(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid, field="VmRSS"):
    """VmRSS (or VmHWM ...) in KiB, summed over the tree."""
    return sum(_status_kib(p, field) for p in tree_pids(pid))


def open_fds(pid):
    """Open descriptors, summed over the tree."""
    n = 0
    for p in tree_pids(pid):
        try:
            n += len(os.listdir("/proc/%d/fd" % p))
        except OSError:
            pass
    return n


def cpu_seconds(pid):
    """utime + stime of every thread, summed over the tree."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf(
            "SC_CLK_TCK")
    return total
