"""processing/data_version.py: the fingerprint of the raw inputs that keys Preprocess's cache, and Preprocess's
check that its inputs are the data that fingerprint names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_outputs_survive_faults, run_script

import data_version
import preprocess


def version_of(**inputs: Path) -> str:
    return data_version.describe(inputs)["version"]


def test_the_version_follows_the_contents_not_the_names_or_times(raw_data, tmp_path):
    claims, customers = raw_data["claims"], raw_data["customers"]
    version = version_of(claims=claims, customers=customers)
    folder = tmp_path / "claims"
    folder.mkdir()
    shutil.copy(claims, folder / "claims.csv")  # as a processing input: a folder holding the file
    assert version_of(claims=folder, customers=customers) == version

    edited = tmp_path / "edited" / "claims.csv"
    edited.parent.mkdir()
    edited.write_bytes(claims.read_bytes().replace(b",Collision,", b",Theft,", 1))
    assert version_of(claims=edited, customers=customers) != version
    assert version_of(claims=customers, customers=claims) != version  # which table is which counts


def test_bare_run_writes_version_json(raw_data, tmp_path):
    result = run_script(
        "processing/data_version.py",
        "--input", f"claims={raw_data['claims']}", "--input", f"customers={raw_data['customers']}",
        "--output-dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "out" / "version.json").read_text())
    assert document["version"] == version_of(claims=raw_data["claims"], customers=raw_data["customers"])
    assert [f["file"] for f in document["inputs"]["claims"]] == ["claims.csv"]
    assert document["inputs"]["claims"][0]["bytes"] == raw_data["claims"].stat().st_size
    assert f"data version {document['version']}" in result.stdout


def test_a_missing_input_exits_2(tmp_path):
    result = run_script(
        "processing/data_version.py", "--input", f"claims={tmp_path / 'none'}", "--output-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "none: input 'claims' not found" in result.stderr


def test_preprocess_records_the_version_it_checked(raw_data, tmp_path):
    version = version_of(claims=raw_data["claims"], customers=raw_data["customers"])
    argv = ["--claims", str(raw_data["claims"]), "--customers", str(raw_data["customers"]), "--event-time", "0"]
    assert preprocess.main([*argv, "--output-dir", str(tmp_path / "out"), "--data-version", version]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest" / "manifest.json").read_text())
    assert manifest["data_version"] == version


def test_preprocess_refuses_data_that_changed_since_it_was_versioned(raw_data, tmp_path, capsys):
    argv = ["--claims", str(raw_data["claims"]), "--customers", str(raw_data["customers"]), "--event-time", "0"]
    assert preprocess.main([*argv, "--output-dir", str(tmp_path / "out"), "--data-version", "0123456789abcdef"]) == 2
    err = capsys.readouterr().err
    assert "the data changed during the execution (data version 0123456789abcdef expected" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["claims", "=x", "claims="])
def test_input_must_be_name_equals_path(text):
    with pytest.raises(SystemExit):
        data_version.parse_args(["--input", text])


def test_version_json_is_all_or_nothing(raw_data, small_disk, tmp_path):
    disk = small_disk(64)
    inputs = [f"claims={raw_data['claims']}", f"customers={raw_data['customers']}"]
    first = ["--input", inputs[0], "--input", inputs[1], "--output-dir", str(disk / "version")]
    rerun = ["--input", inputs[0], "--output-dir", str(disk / "version")]
    assert_outputs_survive_faults("processing/data_version.py", disk, first, rerun, tmp_path / "marker")
