"""The golden mapping cases in tests/data/map are well formed.

Each NAME.eml has a NAME.env and a NAME.json, messages use CRLF line ends,
and every expected body validates against graph.sendMailRequest from the
shared Graph schema (repo_root/../shared/graph/schemas). Without ../shared
the schema tests are skipped; the file checks still run.
"""
import json
import os
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(os.environ.get("RELAYD_SRCDIR")
                 or Path(__file__).resolve().parent.parent.parent)
MAP_DIR = REPO_ROOT / "tests" / "data" / "map"
SCHEMA = (REPO_ROOT.parent / "shared" / "graph" / "schemas"
          / "graph-mail-v1.0.schema.json")

EMLS = sorted(MAP_DIR.glob("*.eml"))
JSONS = sorted(MAP_DIR.glob("*.json"))
ENV_LINE = re.compile(r"^(mail-from:( \S+)?|rcpt: \S+|save-to-sent-items: (true|false))$")


def test_cases_exist():
    assert len(EMLS) >= 45, "expected at least 45 golden cases in %s" % MAP_DIR


def test_no_orphans():
    orphans = [p.name for p in sorted(MAP_DIR.glob("*.env")) + JSONS
               if not p.with_suffix(".eml").is_file()]
    assert not orphans, "files without a .eml: %s" % orphans


@pytest.mark.parametrize("eml", EMLS, ids=lambda p: p.stem)
def test_case_files(eml):
    env, js = eml.with_suffix(".env"), eml.with_suffix(".json")
    assert env.is_file(), "missing %s" % env.name
    assert js.is_file(), "missing %s" % js.name

    data = eml.read_bytes()
    assert data.endswith(b"\r\n"), "%s does not end with CRLF" % eml.name
    assert data.count(b"\n") == data.count(b"\r\n"), "bare LF in %s" % eml.name
    assert data.count(b"\r") == data.count(b"\r\n"), "bare CR in %s" % eml.name

    lines = env.read_text(encoding="ascii").splitlines()
    assert lines and lines[0].startswith("mail-from:"), lines
    assert any(l.startswith("rcpt: ") for l in lines), "no rcpt line"
    for line in lines:
        assert ENV_LINE.match(line), "bad .env line %r" % line
    body = json.loads(js.read_text(encoding="utf-8"))
    assert body["saveToSentItems"] is ("save-to-sent-items: false" not in lines)


@pytest.fixture(scope="module")
def validator():
    if not SCHEMA.is_file():
        pytest.skip("shared Graph schema not found at %s (../shared is absent "
                    "next to the repository)" % SCHEMA)
    jsonschema = pytest.importorskip("jsonschema")
    root = json.loads(SCHEMA.read_text(encoding="utf-8"))
    schema = {"$schema": root["$schema"], "$defs": root["$defs"],
              "$ref": "#/$defs/graph.sendMailRequest"}
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_validator_rejects_bad_bodies(validator):
    good = {"message": {"subject": "x", "body": {"contentType": "text",
                                                 "content": ""}},
            "saveToSentItems": True}
    assert validator.is_valid(good)
    too_many = [{"name": "X-H%d" % i, "value": ""} for i in range(6)]
    bad = [dict(good, message=dict(good["message"],
                                   internetMessageHeaders=too_many)),
           dict(good, message=dict(good["message"], sender=None)),
           dict(good, message=dict(good["message"], bogus=1))]
    for b in bad:
        assert not validator.is_valid(b), b


@pytest.mark.parametrize("path", JSONS, ids=lambda p: p.stem)
def test_json_validates(validator, path):
    body = json.loads(path.read_text(encoding="utf-8"))
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        "%s: %s" % ("/".join(map(str, e.path)), e.message) for e in errors)
