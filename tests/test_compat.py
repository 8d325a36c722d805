"""``qevm state --compat`` and ``qevm desc`` print what analyze-migration.py prints."""

from __future__ import annotations

import io
import json
import lzma

import pytest
from conftest import STREAMS, expected, unpack

import qevm
from qevm.render import compat, jsonout

WITH_STATE = sorted(n for n in STREAMS if expected(n, "state"))
WITH_DESC = sorted(n for n in STREAMS if expected(n, "desc"))


def _expected_text(name: str, kind: str) -> str:
    return lzma.decompress(expected(name, kind).read_bytes()).decode()


@pytest.mark.parametrize("name", WITH_STATE)
def test_state_compat_equals_reference(name):
    with qevm.open(unpack(STREAMS[name])) as mig:
        out = io.StringIO()
        jsonout.dump(compat.state_compat(mig), out, indent=4)
    ref = _expected_text(name, "state")
    assert json.loads(out.getvalue()) == json.loads(ref)
    # the script's output is also reproduced byte for byte
    assert out.getvalue() == ref


@pytest.mark.parametrize("name", WITH_DESC)
def test_desc_equals_reference(name):
    with qevm.open(unpack(STREAMS[name]), decode_devices=False) as mig:
        out = io.StringIO()
        jsonout.dump(compat.desc_compat(mig), out, indent=4)
    assert out.getvalue() == _expected_text(name, "desc")


def test_jsonout_matches_json_module():
    samples = [
        {"a": [1, 2, {"x": []}], "b": {}, "c": 'é\n"', "d": [True, None, "s"], "e": [[]]},
        [],
        {},
        "text",
        [[1], [2]],
        {"n": -5, "big": 2**64 - 1},
    ]
    for obj in samples:
        assert jsonout.dumps(obj) == json.dumps(obj, indent=4, separators=(",", ": "))
        assert jsonout.dumps(obj, 2) == json.dumps(obj, indent=2, separators=(",", ": "))
