"""Reading and planting spool files, as the daemon writes them.

spool files: segments of records (format version 2)

A segment file in queue/ holds one or more records back to back and is
named by the queue id of its first record. A record:

  "RELAYD-SPOOL 2\n"                                          15 bytes
  "state: S attempts=NNNNN next=NNNNNNNNNNNNN error=TEXT   \n"  200 bytes
  "size: <20 digits>\n"                                        27 bytes
  "id: QID\n" "arrival: ...\n" ... "rcpt: ...\n" "\n"          the envelope
  <size bytes of message>
  "RELAYD-END <20 digits>\n"                                   32 bytes

S is Q (queued), H (held), D (delivered) or X (dead-lettered). As the
daemon does, a state line that does not parse (a torn in-place write)
reads as queued. The daemon allocates its current segment ahead, so a
segment may end in NUL bytes where the next record would start.
"""
import re
import time
from pathlib import Path

from relaydtest.smtp import QID_RE

SPOOL_MAGIC = b"RELAYD-SPOOL 2\n"
SPOOL_STATE_LEN = 200
SPOOL_SIZE_LEN = 27
SPOOL_TRAILER_LEN = 32
SPOOL_STATE_RE = re.compile(
    rb"^state: ([QHDX]) attempts=(\d{5}) next=(\d{13}) error=([^\n]*)\n$")
SPOOL_SIZE_RE = re.compile(rb"^size: (\d{20})\n$")
SPOOL_TRAILER_RE = re.compile(rb"^RELAYD-END (\d{20})\n$")
LIVE_STATES = ("Q", "H")


class SpoolRecord:
    """One message record, parsed from `data` at `offset` (a segment's
    bytes). Raises ValueError, saying where and why, if it is not whole and
    well formed. `.fields` holds the envelope without the state and size
    lines; `.raw` is the record's own bytes; `.end` is where the next one
    begins."""

    def __init__(self, data, offset=0, segment=None):
        self.segment = Path(segment) if segment is not None else None
        self.offset = offset
        where = "%s: record at byte %d" % (segment, offset)

        def bad(why, *args):
            raise ValueError("%s: %s" % (where, why % args))

        o = offset
        if data[o:o + len(SPOOL_MAGIC)] != SPOOL_MAGIC:
            if SPOOL_MAGIC.startswith(data[o:]):
                bad("cut off in the first line (%d bytes)", len(data) - o)
            bad("bad first line %r", data[o:o + 20])
        o += len(SPOOL_MAGIC)
        state = data[o:o + SPOOL_STATE_LEN]
        nl = data.find(b"\n", o)
        if nl < 0:
            bad("cut off in the state line (%d bytes of %d)",
                len(data) - o, SPOOL_STATE_LEN)
        if nl != o + SPOOL_STATE_LEN - 1:
            bad("state line is %d bytes, not %d", nl + 1 - o, SPOOL_STATE_LEN)
        self.state_line = state
        m = SPOOL_STATE_RE.match(state)
        self.state_ok = m is not None
        if m:
            self.state = m.group(1).decode()
            self.attempts = int(m.group(2))
            self.next_ms = int(m.group(3))
            self.error = m.group(4).decode("utf-8", "replace").rstrip(" ")
        else:                               # torn: queued, as the daemon
            self.state, self.attempts, self.next_ms, self.error = (
                "Q", 0, 0, "")
        o += SPOOL_STATE_LEN
        sizeline = data[o:o + SPOOL_SIZE_LEN]
        m = SPOOL_SIZE_RE.match(sizeline)
        if not m:
            bad("bad size line %r", sizeline)
        self.size = int(m.group(1))
        o += SPOOL_SIZE_LEN
        self.fields = []                    # [(key, value)] in order
        while True:
            nl = data.find(b"\n", o)
            if nl < 0:
                bad("no blank line after the envelope")
            line = data[o:nl]
            o = nl + 1
            if not line:
                break
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                bad("envelope line %r is not UTF-8", line)
            key, sep, value = text.partition(": ")
            if not sep:
                if text.endswith(":"):      # "key:" with an empty value
                    key, value = text[:-1], ""
                else:
                    bad("bad envelope line %r", text)
            self.fields.append((key, value))
        if not QID_RE.match(self.id or ""):
            bad("no valid id in the envelope (id=%r)", self.id)
        if o + self.size + SPOOL_TRAILER_LEN > len(data):
            bad("size line says %d message bytes, %d bytes are left for "
                "message and trailer", self.size, len(data) - o)
        self.message = data[o:o + self.size]
        o += self.size
        trailer = data[o:o + SPOOL_TRAILER_LEN]
        m = SPOOL_TRAILER_RE.match(trailer)
        if not m:
            bad("bad trailer %r after %d message bytes", trailer, self.size)
        if int(m.group(1)) != self.size:
            bad("trailer says %d bytes, size line %d",
                int(m.group(1)), self.size)
        self.end = o + SPOOL_TRAILER_LEN
        self.raw = data[offset:self.end]

    @property
    def path(self):
        """The file holding the record (its segment)."""
        return self.segment

    @property
    def live(self):
        return self.state in LIVE_STATES

    def get(self, key, default=None):
        for k, v in self.fields:
            if k == key:
                return v
        return default

    def getall(self, key):
        return [v for k, v in self.fields if k == key]

    @property
    def id(self):
        return self.get("id")

    @property
    def mailbox(self):
        """The sending mailbox decided at commit ("<>": none), None if
        the record has none (blank: from before it was stored)."""
        v = (self.get("mailbox") or "").rstrip(" ")
        return v or None

    @property
    def mail_from(self):
        return self.get("mail-from")

    @property
    def rcpts(self):
        return self.getall("rcpt")

    @property
    def received_header(self):
        """Our Received: header, with its continuation lines."""
        assert self.message.startswith(b"Received: "), self.message[:80]
        end = 0
        while True:
            nl = self.message.index(b"\r\n", end) + 2
            end = nl
            if self.message[nl:nl + 1] not in (b"\t", b" "):
                return self.message[:end]

    @property
    def body(self):
        """The message as the client sent it (after our Received:)."""
        return self.message[len(self.received_header):]

    def __repr__(self):
        return "<record %s state=%s at %s:%d>" % (
            self.id, self.state,
            self.segment.name if self.segment else "?", self.offset)


def parse_records(data, segment=None, strict=True):
    """The records in a segment's bytes, in order, up to NUL bytes that
    fill the rest (space allocated ahead). strict: any damage raises
    ValueError; otherwise the whole records before it are returned (what
    the daemon keeps queued from a damaged segment)."""
    records, o = [], 0
    if not data and strict:
        raise ValueError("%s: empty segment" % segment)
    while o < len(data):
        if records and data[o] == 0:
            if not data[o:].strip(b"\0"):
                break                       # allocated ahead, unused
            if not strict:
                break
            raise ValueError("%s: NUL bytes at byte %d after %d record(s), "
                             "then other bytes" % (segment, o, len(records)))
        if (records and data[o:o + len(SPOOL_MAGIC)] != SPOOL_MAGIC
                and not SPOOL_MAGIC.startswith(data[o:])):
            if not strict:
                break
            raise ValueError("%s: %d bytes of trailing garbage at byte %d "
                             "after %d record(s): %r"
                             % (segment, len(data) - o, o, len(records),
                                data[o:o + 20]))
        try:
            r = SpoolRecord(data, o, segment)
        except ValueError:
            if strict:
                raise
            break
        records.append(r)
        o = r.end
    return records


def parse_segment(path, strict=True):
    """The records of a segment file, in order; ValueError on any framing
    problem (see parse_records for strict=False). FileNotFoundError if the
    file is not there."""
    path = Path(path)
    return parse_records(path.read_bytes(), path, strict)


class SpoolFile(SpoolRecord):
    """A file holding exactly one record, such as dead/QID."""

    def __init__(self, path):
        path = Path(path)
        data = path.read_bytes()
        super().__init__(data, 0, path)
        if self.end != len(data):
            raise ValueError("%s: %d bytes after its one record"
                             % (path, len(data) - self.end))


def parse_spool_file(path):
    return SpoolFile(path)


def make_record(qid, mail_from="sender@a.test", rcpts=("rcpt@b.test",),
                message=b"Subject: planted\r\n\r\nplanted\r\n", state="Q",
                attempts=0, next_ms=0, error="", arrival=None,
                client="127.0.0.1", listener="127.0.0.1:25",
                helo="client.test", user="", mail_params="", extra=()):
    """The bytes of one record in the spool format, for tests that plant
    files. `extra` is [(key, value)] added after the rcpt lines. An error
    too long for the state line is cut."""
    if arrival is None:
        arrival = "%.6f" % time.time()
    state_line = (b"state: %s attempts=%05u next=%013u error=%s"
                  % (state.encode(), attempts, next_ms, error.encode()))
    room = SPOOL_STATE_LEN - 1
    state_line = state_line[:room].ljust(room) + b"\n"
    env = [("id", qid), ("arrival", arrival), ("client", client),
           ("listener", listener), ("helo", helo), ("user", user),
           ("mail-from", mail_from), ("mail-params", mail_params)]
    env += [("rcpt", r) for r in rcpts]
    env += list(extra)
    head = b"".join(b"%s: %s\n" % (k.encode(), v.encode()) for k, v in env)
    return (SPOOL_MAGIC + state_line + b"size: %020u\n" % len(message)
            + head + b"\n" + message + b"RELAYD-END %020u\n" % len(message))


def list_dir(path):
    p = Path(path)
    if not p.is_dir():
        return []
    return sorted(x.name for x in p.iterdir() if not x.name.startswith("."))
