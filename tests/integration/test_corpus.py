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

from relaydtest.corpus import CORPUS, SHARED, as_stored, corpus_messages
from relaydtest.env import BUILDDIR

SCHEMA = SHARED / "graph" / "schemas" / "graph-mail-v1.0.schema.json"
TOOL = BUILDDIR / "tests" / "unit" / "test_graph"


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
    eml.write_bytes(as_stored(data))
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
