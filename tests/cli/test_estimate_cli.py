"""`k80s estimate` and `k80s models` through click's runner, plus one real console-script run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from k80s.cli import main


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_seed_split_for_gemma3_12b_on_one_board() -> None:
    code, out, _ = invoke("estimate", "gemma3:12b", "--dies", "2")
    assert code == 0
    assert "split 1,48" in out and "11.9 GiB" in out


def test_compare_puts_both_policies_side_by_side() -> None:
    code, out, _ = invoke("estimate", "gemma3:12b", "--dies", "2", "--compare")
    assert code == 0
    assert "1,48" in out and "25,24" in out
    assert "books 1.09 GiB less" in out


def test_json_is_the_estimate_object() -> None:
    code, out, _ = invoke("estimate", "gemma3:12b", "--free-mib", "11366,11366", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["tensorSplit"] == [1, 48] and data["perDieBytes"] == [3_578_124_224, 9_245_650_944]
    code, out, _ = invoke("estimate", "gemma3:12b", "--json", "--compare")
    assert [d["policy"] for d in json.loads(out)] == ["seed-241a0340", "upstream-v0.11.4"]


def test_short_context_fits_one_die_and_the_runtime_rule_applies() -> None:
    code, out, _ = invoke("estimate", "gemma3:12b", "--dies", "4", "--ctx", "2048", "--json")
    assert code == 0 and json.loads(out)["diesUsed"] == 1


def test_not_fitting_exits_1_with_the_shortfall() -> None:
    code, out, _ = invoke("estimate", "deepseek-r1:32b", "--dies", "1")
    assert code == 1
    assert "does not fit" in out and "of 65 layers" in out


def test_flash_attention_is_a_what_if_with_a_warning() -> None:
    code, _, err = invoke("estimate", "gemma3:12b", "--flash-attention", "--kv-cache-type", "q8_0")
    assert code == 0 and "no flash attention" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("estimate", "nosuch:model"), "neither a file nor a catalogue tag"),
        (("estimate", "gemma3:12b", "--policy", "round-robin", "--secondary-graph-mib", "100"), "seed-family"),
    ],
)
def test_errors_are_one_line_without_traceback(args: tuple[str, ...], message: str) -> None:
    code, out, err = invoke(*args)
    assert code == 1
    assert message in err and "Traceback" not in err + out
    assert err.count("\n") == 1


def test_usage_errors_exit_2() -> None:
    code, _, err = invoke("estimate", "gemma3:12b", "--dies", "2", "--free-mib", "100")
    assert code == 2 and "either --dies or --free-mib" in err
    code, _, err = invoke("estimate", "gemma3:12b", "--free-mib", "a,b")
    assert code == 2 and "comma-separated" in err


def test_profile_files(tmp_path: Path) -> None:
    shape = tmp_path / "mini.yaml"
    shape.write_text(
        "shape: {name: mini, architecture: llama, layers: 8, embedding: 1024, heads: 8, kv_heads: 8, head_dim: 128,\n"
        "        feed_forward: 4096, vocab_tokens: 32000, context_length: 4096, tied: false}\n"
    )
    code, out, _ = invoke("estimate", str(shape), "--dies", "1", "--json")
    assert code == 0 and json.loads(out)["model"] == "mini" and json.loads(out)["layersTotal"] == 9
    bad = tmp_path / "bad.json"
    bad.write_text('{"architecture": "llama", "blockCount": "many", "tensorGroups": {}}')
    code, _, err = invoke("estimate", str(bad))
    assert code == 1 and "blockCount" in err


def test_models_lists_the_catalogue_with_grades() -> None:
    code, out, _ = invoke("models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["gemma3:12b"]["grade"] == "A" and rows["gpt-oss:20b"]["derivation"]
    code, out, _ = invoke("models")
    assert "deepseek-r1:14b" in out


def test_console_script_is_installed() -> None:
    result = subprocess.run(["k80s", "estimate", "gemma3:12b", "--dies", "2", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tensorSplit"] == [1, 48]
