"""`k80s guard`: the shared pod's entrypoint check, run as the init container `k80s-guard`
(reference/sharing.md §7.4; docs/sharing.md).

K80 dies have no memory isolation, so this is the one runtime check that a shared pod got what its
plan was placed on. From the Downward-API env the operator gives the pod (`K80S_ASSIGNMENT`,
`CUDA_VISIBLE_DEVICES`, `NVIDIA_VISIBLE_DEVICES`, all from the binder's annotations) and NVML's
free memory per die it decides:
- the assignment is present and valid (empty: the pod was bound without the k80s binder);
- its die UUIDs in slot order equal `CUDA_VISIBLE_DEVICES` (the order CUDA enumerates, F6) and
  `NVIDIA_VISIBLE_DEVICES` (the dies the container runtime injected);
- every die is visible through NVML and has at least its slot's `mib` free (a foreign process, a
  leak, or a ledger bug would show here).

`check` is the pure decision; `read_free_mib` is the thin NVML shell (memory queries only, no CUDA
context, so the guard itself takes no die memory). It refuses to fix anything: it reports and the
container exits non-zero, so the pod does not start its runtime on the wrong dies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from k80s.core.errors import DeviceError, InvalidSpec
from k80s.core.sharing import ASSIGNMENT, Assignment

ASSIGNMENT_ENV: Final = "K80S_ASSIGNMENT"
CUDA_ENV: Final = "CUDA_VISIBLE_DEVICES"
NVIDIA_ENV: Final = "NVIDIA_VISIBLE_DEVICES"
MIB: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class DieCheck:
    """One die of the assignment as the guard saw it (free_mib None: not visible via NVML)."""

    uuid: str
    slot: int
    needed_mib: int
    free_mib: int | None

    def line(self) -> str:
        free = "not visible" if self.free_mib is None else f"{self.free_mib} MiB free"
        return f"{self.uuid} slot {self.slot}: needs {self.needed_mib} MiB, {free}"


@dataclass(frozen=True, slots=True)
class GuardResult:
    dies: tuple[DieCheck, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check(environ: Mapping[str, str], free_mib: Mapping[str, int]) -> GuardResult:
    """The guard's decision from the container env and NVML's free MiB per die UUID."""
    text = environ.get(ASSIGNMENT_ENV, "").strip()
    if not text:
        problem = (f"{ASSIGNMENT_ENV} is empty: the pod has no {ASSIGNMENT} annotation, so it was not bound by "
                   "the k80s binder (schedulerName must be k80s, on a node in shared mode)")
        return GuardResult((), (problem,))
    try:
        assignment = Assignment.from_json(text)
    except InvalidSpec as exc:
        return GuardResult((), (f"{ASSIGNMENT_ENV} is not a valid assignment: {exc}",))
    ordered = sorted(assignment.dies, key=lambda d: d.slot)
    expected = assignment.visible_devices
    problems: list[str] = []
    for name in (CUDA_ENV, NVIDIA_ENV):
        found = environ.get(name, "")
        if found != expected:
            problems.append(f"{name} is {found!r} but the assignment's dies in slot order are {expected!r}: "
                            "the runtime would not use the planned dies in the planned order")
    dies = tuple(DieCheck(d.uuid, d.slot, d.mib, free_mib.get(d.uuid)) for d in ordered)
    for die in dies:
        if die.free_mib is None:
            visible = ", ".join(sorted(free_mib)) or "none"
            problems.append(f"die {die.uuid} (slot {die.slot}) is not visible through NVML (visible: {visible})")
        elif die.free_mib < die.needed_mib:
            problems.append(f"die {die.uuid} (slot {die.slot}) has {die.free_mib} MiB free but the plan needs "
                            f"{die.needed_mib} MiB: something else uses this die (another process, a leak, "
                            "or an over-committed ledger)")
    return GuardResult(dies, tuple(problems))


def read_free_mib(library_path: str = "") -> dict[str, int]:
    """Free MiB of every die NVML shows this container, by UUID (R470 calls only)."""
    import ctypes

    import pynvml  # type: ignore[import-untyped, unused-ignore]

    try:
        if library_path:
            lib = ctypes.CDLL(library_path, mode=ctypes.RTLD_GLOBAL)
            if pynvml.nvmlLib is None:
                pynvml.nvmlLib = lib
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise DeviceError(f"NVML init failed: {exc}") from None
    try:
        free: dict[str, int] = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            free[uuid] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).free) // MIB  # v1 struct: R470 has no _v2
        return free
    except pynvml.NVMLError as exc:
        raise DeviceError(f"NVML query failed: {exc}") from None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
