"""The pure core of k80s: GGUF parsing, model profiles, the estimator and die placement.

No I/O, no clock, no logging, and no Kubernetes, gRPC, kopf or NVML imports (a test checks it).
Shells (device plugin, extender, operator, CLI) decode wire data into these types, call the core
and encode the result.
"""

from k80s.core.errors import (
    DeviceError,
    GgufFormatError,
    InvalidInput,
    InvalidSpec,
    K80sError,
    UnknownModel,
)
from k80s.core.estimate import DieBreakdown, DieCapacity, Estimate, estimate
from k80s.core.gguf import GgufHeader, GgufTensor, parse_gguf_bytes, parse_gguf_file, parse_gguf_header
from k80s.core.inventory import DieInfo, NodeInventory, parse_node_shape, simulated_dies
from k80s.core.modelfile import describe_header, profile_from_gguf
from k80s.core.options import EstimateOptions
from k80s.core.placement import BoundPod, preferred_dies, taken_dies
from k80s.core.policies import POLICIES, Policy, resolve_policy
from k80s.core.profile import ModelProfile
from k80s.core.selection import plan_for_idle_dies, select_dies

__all__ = [
    "POLICIES",
    "BoundPod",
    "DeviceError",
    "DieBreakdown",
    "DieCapacity",
    "DieInfo",
    "Estimate",
    "EstimateOptions",
    "GgufFormatError",
    "GgufHeader",
    "GgufTensor",
    "InvalidInput",
    "InvalidSpec",
    "K80sError",
    "ModelProfile",
    "NodeInventory",
    "Policy",
    "UnknownModel",
    "describe_header",
    "estimate",
    "parse_gguf_bytes",
    "parse_gguf_file",
    "parse_gguf_header",
    "parse_node_shape",
    "plan_for_idle_dies",
    "preferred_dies",
    "profile_from_gguf",
    "resolve_policy",
    "select_dies",
    "simulated_dies",
    "taken_dies",
]
