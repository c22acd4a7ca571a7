"""Plugin settings: one frozen dataclass, every field a flag and an env var, pure `load`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from k80s.core.errors import InvalidSpec
from k80s.plugin.settings import PluginSettings, describe, env_name, flag_name, load


def test_defaults_match_the_design() -> None:
    s = load([], {})
    assert s.mode == "exclusive"
    assert s.context_reserve_mib == 68
    assert s.metrics_port == 9480
    assert s.kubelet_root == Path("/var/lib/kubelet")
    assert s.ignored_xids == frozenset({13, 31, 43, 45, 68, 109})
    assert s.plugin_socket == Path("/var/lib/kubelet/device-plugins/k80s.sock")
    assert s.kubelet_socket == Path("/var/lib/kubelet/device-plugins/kubelet.sock")
    assert s.pod_resources_socket == Path("/var/lib/kubelet/pod-resources/kubelet.sock")


def test_settings_are_frozen_and_documented() -> None:
    s = load([], {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.metrics_port = 1  # type: ignore[misc]
    for f in dataclasses.fields(PluginSettings):
        assert len(f.metadata["doc"]) > 20, f.name


VALUES = {
    "mode": ("shared", "shared"),
    "kubelet_root": ("/tmp/kr", Path("/tmp/kr")),
    "socket_name": ("x.sock", "x.sock"),
    "node_name": ("n1", "n1"),
    "kubeconfig": ("/k", "/k"),
    "simulate": ("4xK80", "4xK80"),
    "simulate_faults": ("/f", "/f"),
    "nvml_library": ("/lib.so", "/lib.so"),
    "context_reserve_mib": ("70", 70),
    "metrics_address": ("127.0.0.1", "127.0.0.1"),
    "metrics_port": ("0", 0),
    "ignored_xids": ("13, 31", frozenset({13, 31})),
    "sticky_xids": ("79", frozenset({79})),
    "health_recovery_s": ("1.5", 1.5),
    "memory_poll_s": ("2", 2.0),
    "pod_resources_poll_s": ("3", 3.0),
    "socket_check_s": ("0.2", 0.2),
    "startup_taint": ("example.com/starting", "example.com/starting"),
    "log_format": ("json", "json"),
    "log_level": ("DEBUG", "DEBUG"),
}


def test_every_field_is_covered_here() -> None:
    assert set(VALUES) == {f.name for f in dataclasses.fields(PluginSettings)}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_flag_and_env_are_one_to_one(name: str) -> None:
    raw, expected = VALUES[name]
    needs = {"simulate_faults": ("simulate", "2xK80"), "mode": ("node_name", "n1")}.get(name)
    extra = [flag_name(needs[0]), needs[1]] if needs else []
    assert getattr(load([flag_name(name), raw, *extra], {}), name) == expected
    env = {env_name(name): raw, **({env_name(needs[0]): needs[1]} if needs else {})}
    assert getattr(load([], env), name) == expected
    assert env_name(name) == "K80S_PLUGIN_" + name.upper()


def test_flag_wins_over_env() -> None:
    s = load(["--metrics-port", "1234"], {"K80S_PLUGIN_METRICS_PORT": "4321", "K80S_PLUGIN_NODE_NAME": "n"})
    assert (s.metrics_port, s.node_name) == (1234, "n")


@pytest.mark.parametrize(("argv", "env", "names"), [
    (["--metrics-port", "x"], {}, "--metrics-port / K80S_PLUGIN_METRICS_PORT"),
    ([], {"K80S_PLUGIN_CONTEXT_RESERVE_MIB": "-1"}, "K80S_PLUGIN_CONTEXT_RESERVE_MIB"),
    ([], {"K80S_PLUGIN_IGNORED_XIDS": "13,abc"}, "K80S_PLUGIN_IGNORED_XIDS"),
    (["--metrics-port", "70000"], {}, "--metrics-port"),
    (["--log-format", "xml"], {}, "--log-format"),
    (["--simulate-faults", "/f"], {}, "--simulate-faults"),
    (["--socket-name", "a/b"], {}, "--socket-name"),
    (["--kubelet-root", "/" + "x" * 120], {}, "--kubelet-root"),
    (["--no-such-flag"], {}, "no-such-flag"),
    (["--mode", "fractional"], {}, "--mode / K80S_PLUGIN_MODE"),
    ([], {"K80S_PLUGIN_MODE": "shared"}, "--node-name / K80S_PLUGIN_NODE_NAME"),
])
def test_bad_values_name_the_flag_and_env(argv: list[str], env: dict[str, str], names: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        load(argv, env)
    assert names in str(info.value)


def test_describe_lists_every_setting_for_the_readme() -> None:
    rows = describe()
    assert [r[0] for r in rows] == [flag_name(f.name) for f in dataclasses.fields(PluginSettings)]
    assert ("--context-reserve-mib", "K80S_PLUGIN_CONTEXT_RESERVE_MIB", "68") in [r[:3] for r in rows]
    assert rows[0][:3] == ("--mode", "K80S_PLUGIN_MODE", "exclusive")


def test_readme_documents_every_env_var() -> None:
    readme = (Path(__file__).resolve().parents[2] / "plugin" / "README.md").read_text()
    for flag, env, _default, _doc in describe():
        assert env in readme and flag in readme, env
