"""The shared third-party corpus (../shared/corpus), message by message.

test_corpus.py and test_fidelity.py both walk it: .msg and .eml files,
haraka's .txt specimens, and each message of an .mbox file (split at its
"From " lines, ">From " unquoted), named "path#N". SOURCES.md there says
where each set comes from. Empty when ../shared is absent.
"""
from relaydtest.env import SRCDIR

SHARED = SRCDIR.parent / "shared"
CORPUS = SHARED / "corpus"


def corpus_messages():
    """[(name, bytes)] in path order; names are relative to CORPUS."""
    if not CORPUS.is_dir():
        return []
    out = []
    for p in sorted(CORPUS.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(CORPUS)
        if p.suffix in (".msg", ".eml") or (rel.parts[0] == "haraka"
                                            and p.suffix == ".txt"):
            out.append((str(rel), p.read_bytes()))
        elif p.suffix == ".mbox":
            for i, m in enumerate(split_mbox(p.read_bytes())):
                out.append(("%s#%d" % (rel, i + 1), m))
    return out


def split_mbox(data):
    msgs, cur = [], None
    for line in data.splitlines(keepends=True):
        if line.startswith(b"From "):
            if cur is not None:
                msgs.append(b"".join(cur))
            cur = []
            continue
        if cur is not None:
            cur.append(line[1:] if line.startswith(b">From ") else line)
    if cur:
        msgs.append(b"".join(cur))
    return msgs


def as_stored(data):
    """The message as relayd stores it: CRLF line ends."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
