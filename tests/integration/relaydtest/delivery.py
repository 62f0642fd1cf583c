"""Watching relayd deliver to the fake Graph: its log lines, the fake's
request records, the queue draining."""
import re

from relaydtest.smtp import RCPT, simple
from relaydtest.wait import wait_for

DELIVERY_TIMEOUT = 10
MAILBOX_A = "scanner-a@contoso.test"
MAILBOX_B = "scanner-b@contoso.test"


def started(rec):
    """When the fake began to handle a request (its records carry the end
    time and the duration)."""
    return rec["time"] - rec["ms"] / 1000.0


def max_overlap(records):
    """Most requests in flight at once, from the fake's records."""
    events = []
    for r in records:
        events += [(started(r), 1), (r["time"], -1)]
    events.sort(key=lambda e: (e[0], e[1]))     # an end before a start
    n = best = 0
    for _, step in events:
        n += step
        best = max(best, n)
    return best


def wait_queue_empty(d, timeout=DELIVERY_TIMEOUT):
    wait_for(lambda: d.queued() == [], timeout, "an empty queue/")


def reason_fields(path):
    out = {}
    for line in path.read_text().splitlines():
        k, sep, v = line.partition(": ")
        assert sep, "bad .reason line %r" % line
        out[k] = v
    return out


def log_lines(d, word, qid=None):
    """This daemon's 'graph <word>' log lines (after the timestamp)."""
    rx = re.compile(r"^\S+ relayd: (%s graph %s .*)$"
                    % (qid or "[0-9A-F]{16}", word), re.M)
    return rx.findall(d.log)


def kinds(fake):
    """The fake's requests as (kind, status) pairs, in order."""
    return [(r["kind"], r["status"]) for r in fake.requests()]


def token_lines(d):
    return re.findall(r"^\S+ relayd: (token: .*)$", d.log, re.M)


def graph_requests(fake, mailbox=None):
    """The fake's sendMail records (for one mailbox), in the order they
    began: a dropped request may be booked after the next one."""
    return sorted((r for r in fake.requests() if r["kind"] == "graph" and
                   (mailbox is None or r["mailbox"] == mailbox)),
                  key=started)


def send_many(d, mails):
    """[(envelope sender, subject, From: address)] over one connection;
    returns the queue ids."""
    qids = []
    with d.connect() as c:
        c.ehlo()
        for env, subject, frm in mails:
            r = c.send_mail(env, [RCPT], simple(subject, frm=frm))
            assert r.qid, r
            qids.append(r.qid)
    return qids
