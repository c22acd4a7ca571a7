"""Operator settings: flags ⇔ K80S_OPERATOR_* env, defaults, errors naming flag and variable."""

from __future__ import annotations

from dataclasses import fields

import pytest

from k80s.core.errors import InvalidSpec
from k80s.operator.settings import OperatorSettings, describe, env_name, flag_name, load


def test_defaults() -> None:
    s = load([], {})
    assert s.die_free_mib == 11366
    assert s.health_port == 8080 and s.scheduler_name == "k80s"
    assert s.registry_url == "https://registry.ollama.ai" and not s.registry_first
    assert s.leader_elect and s.namespaces == ()


def test_every_field_is_a_flag_and_an_env_variable() -> None:
    rows = describe()
    assert [r[0] for r in rows] == [flag_name(f.name) for f in fields(OperatorSettings)]
    assert all(r[1].startswith("K80S_OPERATOR_") and r[3] for r in rows)
    assert env_name("die_free_mib") == "K80S_OPERATOR_DIE_FREE_MIB"


def test_flag_beats_env_beats_default() -> None:
    env = {"K80S_OPERATOR_DIE_FREE_MIB": "11000", "K80S_OPERATOR_HEALTH_PORT": "9000",
           "K80S_OPERATOR_LEADER_ELECT": "false", "K80S_OPERATOR_NAMESPACES": "a, b"}
    s = load(["--health-port", "0"], env)
    assert (s.die_free_mib, s.health_port, s.leader_elect, s.namespaces) == (11000, 0, False, ("a", "b"))


def test_runtime_policy_rules_resolve_aliases() -> None:
    s = load(["--runtime-policies", "reg.local/ollama37:*=round-robin, x/y:*=ollama37-2026"], {})
    assert s.runtime_policies == (("reg.local/ollama37:*", "upstream-v0.11.4"), ("x/y:*", "ollama37-2026"))


@pytest.mark.parametrize(
    ("argv", "env", "where"),
    [
        (["--die-free-mib", "0"], {}, "--die-free-mib / K80S_OPERATOR_DIE_FREE_MIB"),
        ([], {"K80S_OPERATOR_DIE_FREE_MIB": "lots"}, "--die-free-mib / K80S_OPERATOR_DIE_FREE_MIB"),
        (["--leader-elect", "maybe"], {}, "--leader-elect / K80S_OPERATOR_LEADER_ELECT"),
        (["--renew-deadline-s", "20"], {}, "--renew-deadline-s / K80S_OPERATOR_RENEW_DEADLINE_S"),
        (["--runtime-policies", "no-equals"], {}, "--runtime-policies / K80S_OPERATOR_RUNTIME_POLICIES"),
        (["--bogus"], {}, "k80s-operator"),
    ],
)
def test_bad_values_name_flag_and_variable(argv: list[str], env: dict[str, str], where: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        load(argv, env)
    assert info.value.path == where
