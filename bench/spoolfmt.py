"""bench/spoolfmt.py - reads relayd's spool (format 2) for the bench scripts.

queue/ holds segment files: one or more records back to back, each file
named by the queue id of its first record (see relayd/spool.c). A record:

    "RELAYD-SPOOL 2\\n"                                         15 bytes
    "state: S attempts=NNNNN next=NNNNNNNNNNNNN error=...\\n"   200 bytes
    "size: <20 digits>\\n"                                      27 bytes
    "mailbox: <320 bytes, space-padded>\\n"                    330 bytes
    "id: QID\\n", the other envelope lines, "\\n"
    <size message bytes>
    "RELAYD-END <20 digits>\\n"                                 32 bytes

The mailbox line is absent in records of a relayd from before it was
stored. S is Q (queued), H (held), D (delivered) or X (dead-lettered). The segment
relayd is appending to may end in NUL bytes (space allocated ahead): a NUL
byte where a record would start ends the data. A segment whose records are
all D or X may linger until relayd deletes it. dead/QID is a file of one
record beside dead/QID.reason; names starting with "." are relayd's
temporary files.

Standard library only. A file that is not whole, well-formed records
raises SpoolError.
"""

import os
import re

MAGIC = b"RELAYD-SPOOL 2\n"
STATE_LEN = 200
SIZE_LEN = 27
TRAILER_LEN = 32
QUEUED = ("Q", "H")         # states relayd still has to deliver

_STATE = re.compile(rb"state: ([QHDX]) attempts=\d{5} next=\d{13} "
                    rb"error=[^\n]*\n")
_SIZE = re.compile(rb"size: (\d{20})\n")
_MAILBOX = re.compile(rb"mailbox: [^\n]{320}\n")
_ID = re.compile(rb"id: ([0-9A-F]{16})\n")


class SpoolError(Exception):
    """A spool file that is not whole, well-formed records."""


def records(data, name="segment"):
    """Yield (qid, state, offset, length) for each record in data, the
    bytes of a segment, in order; name is only for error messages."""
    if not data:
        raise SpoolError(f"{name}: empty")
    o = 0
    while o < len(data):
        where = f"{name}: record at byte {o}"
        if o and data[o] == 0:
            if data[o:].strip(b"\0"):
                raise SpoolError(f"{where}: NUL bytes, then other bytes")
            return
        state_at = o + len(MAGIC)
        size_at = state_at + STATE_LEN
        env_at = size_at + SIZE_LEN
        state = _STATE.fullmatch(data, state_at, size_at)
        size = _SIZE.fullmatch(data, size_at, env_at)
        mb = _MAILBOX.match(data, env_at)
        qid = _ID.match(data, mb.end() if mb else env_at)
        if data[o:state_at] != MAGIC or not (state and size and qid):
            raise SpoolError(f"{where}: bad record head {data[o:o + 40]!r}")
        body_at = data.find(b"\n\n", env_at) + 2
        if body_at < 2:
            raise SpoolError(f"{where}: no end of envelope")
        end = body_at + int(size.group(1))
        if data[end:end + TRAILER_LEN] != b"RELAYD-END %s\n" % size.group(1):
            raise SpoolError(f"{where}: no trailer for {int(size.group(1))} "
                             f"bytes at byte {end}")
        yield (qid.group(1).decode(), state.group(1).decode(), o,
               end + TRAILER_LEN - o)
        o = end + TRAILER_LEN


def read_file(path):
    """The records of a segment (or dead/QID) file, as records() gives
    them; SpoolError also when the file is not named by its first record's
    queue id."""
    with open(path, "rb") as f:
        recs = list(records(f.read(), path))
    if recs[0][0] != os.path.basename(path):
        raise SpoolError(f"{path}: named {os.path.basename(path)} but its "
                         f"first record is {recs[0][0]}")
    return recs


def _names(spool_dir, sub):
    """The files of spool_dir/sub, without relayd's temporary ones."""
    d = os.path.join(spool_dir, sub)
    if not os.path.isdir(d):
        return []
    return [os.path.join(d, n) for n in sorted(os.listdir(d))
            if not n.startswith(".") and os.path.isfile(os.path.join(d, n))]


def count_queue(spool_dir):
    """(queued records (state Q or H), other records (D or X), segment
    files) in spool_dir/queue/. A segment relayd deletes while it is being
    counted (all its records done) counts as nothing."""
    queued = other = segments = 0
    for path in _names(spool_dir, "queue"):
        try:
            recs = read_file(path)
        except FileNotFoundError:
            continue
        segments += 1
        for _qid, state, _off, _len in recs:
            if state in QUEUED:
                queued += 1
            else:
                other += 1
    return queued, other, segments


def count_dead(spool_dir):
    """Dead-lettered messages: the dead/QID files (one record each), not
    their dead/QID.reason."""
    n = 0
    for path in _names(spool_dir, "dead"):
        if path.endswith(".reason"):
            continue
        if len(read_file(path)) != 1:
            raise SpoolError(f"{path}: more than one record")
        n += 1
    return n
