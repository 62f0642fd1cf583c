"""Every message of the shared third-party corpus maps to a valid request.

Runs the real mapping code (tests/unit/test_graph in tool mode) on each
message in ../shared/corpus (mbox files split into their messages) and
validates the request body against graph.sendMailRequest. A message may be
malformed in any way; the mapping must still produce a body Graph accepts,
keeping every attachment. Skips, naming the path, where ../shared is absent.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import BUILDDIR, SRCDIR

SHARED = SRCDIR.parent / "shared"
CORPUS = SHARED / "corpus"
SCHEMA = SHARED / "graph" / "schemas" / "graph-mail-v1.0.schema.json"
TOOL = BUILDDIR / "tests" / "unit" / "test_graph"


def corpus_messages():
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


MESSAGES = corpus_messages()


@pytest.fixture(scope="module")
def validator():
    if not SCHEMA.is_file():
        pytest.skip("shared Graph schema not found at %s" % SCHEMA)
    import jsonschema
    root = json.loads(SCHEMA.read_text())
    return jsonschema.Draft202012Validator(
        {"$schema": root["$schema"], "$defs": root["$defs"],
         "$ref": "#/$defs/graph.sendMailRequest"})


def test_corpus_present():
    if not CORPUS.is_dir():
        pytest.skip("shared corpus not found at %s" % CORPUS)
    assert len(MESSAGES) >= 100


@pytest.mark.parametrize("name,data", MESSAGES, ids=[m[0] for m in MESSAGES])
def test_maps_to_valid_request(name, data, validator, tmp_path):
    eml = tmp_path / "m.eml"
    env = tmp_path / "m.env"
    # As relayd stores it: CRLF line ends.
    eml.write_bytes(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    env.write_text("mail-from: sender@example.com\nrcpt: rcpt@example.com\n")
    r = subprocess.run([str(TOOL), str(eml), str(env)], capture_output=True,
                       timeout=30)
    assert r.returncode == 0, "%s: %s" % (name, r.stderr.decode(
        errors="replace"))
    body = json.loads(r.stdout)
    errors = sorted(validator.iter_errors(body), key=str)
    assert not errors, "%s: %s" % (name, errors[0].message)
    msg = body["message"]
    assert msg["bccRecipients"] or msg.get("toRecipients") or msg.get(
        "ccRecipients")
    for a in msg.get("attachments", []):
        assert a["name"] and "/" not in a["name"] and "\\" not in a["name"]
