from __future__ import annotations

import json

import pytest

from k80s import catalogue
from k80s.core.annotations import (
    ESTIMATE,
    MODEL,
    OPTIONS,
    decode_pod_plan,
    encode_estimate,
    encode_model,
    encode_options,
    profile_digest,
)
from k80s.core.errors import InvalidSpec
from k80s.core.options import EstimateOptions
from k80s.core.selection import idle_dies, select_dies


def annotations() -> dict[str, str]:
    profile = catalogue.lookup("gemma3:12b")
    opts = EstimateOptions(num_ctx=4096)
    est = select_dies(profile, idle_dies(2, 11366), opts)
    return {
        MODEL: encode_model("gemma3:12b", profile),
        OPTIONS: encode_options(opts, "llamacpp"),
        ESTIMATE: encode_estimate(est, 11366),
    }


def test_round_trip() -> None:
    a = annotations()
    plan = decode_pod_plan(a)
    assert plan is not None
    assert plan.model.profile == catalogue.lookup("gemma3:12b")
    assert plan.model.digest == profile_digest(plan.model.profile)
    assert plan.options == EstimateOptions(num_ctx=4096) and plan.runtime == "llamacpp"
    est = json.loads(a[ESTIMATE])
    assert est["planFreeMiB"] == 11366 and est["tensorSplit"] == [1, 48]
    assert len(a[MODEL]) < 32 * 1024  # annotations share a 256 KiB budget per object


def test_plain_pod_has_no_plan() -> None:
    assert decode_pod_plan({}) is None and decode_pod_plan(None) is None


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda a: a.pop(MODEL), "k80s.io/model: is required"),
        (lambda a: a.pop(OPTIONS), "k80s.io/options: is required"),
        (lambda a: a.__setitem__(MODEL, "{"), "k80s.io/model: not valid JSON"),
        (lambda a: a.__setitem__(MODEL, '{"version":1,"name":"x","digest":"d"}'), r"k80s.io/model.profile: is required"),
        (lambda a: a.__setitem__(OPTIONS, '{"version":1,"numCtx":-5}'), r"k80s.io/options.numCtx"),
        (lambda a: a.__setitem__(OPTIONS, '{"policy":"nope"}'), "unknown policy"),
    ],
)
def test_bad_annotations_name_annotation_and_field(mutate: object, where: str) -> None:
    a = annotations()
    mutate(a)  # type: ignore[operator]
    with pytest.raises(InvalidSpec, match=where):
        decode_pod_plan(a)
