"""``import markov_lens as ml``: every exported name resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import markov_lens as ml


@pytest.mark.parametrize("name", ml.__all__)
def test_every_export_resolves(name):
    assert getattr(ml, name) is not None
    assert name in dir(ml)


def test_exports_are_the_home_objects():
    from interp.report import write_report
    from training.chains import BinaryChain

    assert ml.BinaryChain is BinaryChain
    assert ml.html_report is write_report


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ml.nope  # noqa: B018


def test_import_is_light():
    code = "import sys, markov_lens; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
