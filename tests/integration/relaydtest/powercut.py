"""relayd on a tests/powercutfs.py file system (the powercut fixture) and
the small messages the power-cut and disk-full tests send."""
from relaydtest.graph import graph_relayd


def relayd_on(powercut, relayd_factory, fake, rename_rule="both",
              make_spool=True, **kw):
    """A powercutfs mount and a relayd delivering to fake whose spool is on
    it. The spool directory is made durable first, as a package would,
    unless make_spool is false (then relayd makes it)."""
    if make_spool:
        (powercut.backing / "spool").mkdir(mode=0o700)
    fs = powercut(rename_rule=rename_rule)
    d = graph_relayd(relayd_factory, fake, start=False, **kw)
    d.spool = powercut.mountpoint / "spool"
    return fs, d.start()


def message(n, big=False):
    """A message of a few lines, or one too big for relayd's memory."""
    lines = 5000 if big else 3
    return ("Subject: fault %d\r\n\r\n" % n).encode() + \
        b"".join(b"line %05d of message %d\r\n" % (i, n)
                 for i in range(lines))


def delivered_text(rec):
    """Subject and body text of a delivery, line ends made LF."""
    msg = rec["body"]["message"]
    return msg["subject"], msg["body"]["content"].replace("\r\n", "\n")
