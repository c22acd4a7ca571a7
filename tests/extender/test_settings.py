"""Extender settings: flags and K80S_EXTENDER_* environment variables 1:1, flags win."""

from __future__ import annotations

from dataclasses import fields

import pytest

from k80s.core.errors import InvalidSpec
from k80s.extender.settings import ExtenderSettings, describe, env_name, flag_name, help_text, load


def test_defaults_are_the_design_endpoints() -> None:
    s = load([], {})
    assert (s.address, s.port, s.url_prefix) == ("127.0.0.1", 8888, "/k80s")
    assert (s.metrics_address, s.metrics_port) == ("0.0.0.0", 8889)
    assert s.kubeconfig == ""


def test_every_field_has_a_flag_an_env_var_and_a_doc() -> None:
    rows = describe()
    assert [r[0] for r in rows] == [flag_name(f.name) for f in fields(ExtenderSettings)]
    for flag, env, _default, doc in rows:
        assert env == "K80S_EXTENDER_" + flag[2:].replace("-", "_").upper()
        assert doc and flag in help_text()


def test_flags_win_over_environment() -> None:
    env = {env_name("port"): "9000", env_name("kubeconfig"): "/env/kubeconfig", env_name("log_format"): "json"}
    s = load(["--port", "0", "--metrics-port", "0"], env)
    assert (s.port, s.metrics_port, s.kubeconfig, s.log_format) == (0, 0, "/env/kubeconfig", "json")


@pytest.mark.parametrize(
    ("argv", "env", "where"),
    [
        (["--port", "http"], {}, "--port / K80S_EXTENDER_PORT"),
        ([], {"K80S_EXTENDER_METRICS_PORT": "70000"}, "--metrics-port / K80S_EXTENDER_METRICS_PORT"),
        (["--url-prefix", "k80s"], {}, "--url-prefix"),
        (["--url-prefix", "/k80s/"], {}, "--url-prefix"),
        (["--workers", "0"], {}, "--workers"),
        (["--log-format", "xml"], {}, "--log-format"),
        (["--log-level", "chatty"], {}, "--log-level"),
        (["--no-such-flag", "1"], {}, "k80s-extender"),
    ],
)
def test_bad_values_name_the_flag_and_variable(argv: list[str], env: dict[str, str], where: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        load(argv, env)
    assert str(info.value).startswith(where)


def test_the_readme_documents_every_flag_and_variable() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "extender" / "README.md").read_text()
    for flag, env, default, _doc in describe():
        assert f"| `{flag}` | `{env}` |" in readme, flag
        assert f"`{default}`" in readme or default == "", (flag, default)
