"""The GPU memory estimator: Ollama's `EstimateGPULayers` for an ordered list of dies
(estimator.md §8, variants §13). It sizes a model on the dies it is given; it does not choose
dies (that is `k80s.core.selection`).

The port is literal: the same steps, the same integer arithmetic and the same quirks (§12), so
the result is what the chosen ollama/ollama37 build computes for the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from k80s.core.graph import graph_size, vision_graph_size
from k80s.core.options import EstimateOptions
from k80s.core.policies import Fill
from k80s.core.profile import ModelProfile
from k80s.core.units import MIB, mib

MINIMUM_MEMORY: Final = 457 * MIB
"""Ollama's per-GPU `minimum_memory` for CUDA (479,199,232 B)."""

MIN_CONTEXT_V0114: Final = 2048
"""v0.11.4 raises every estimate's context to at least 2048 tokens (quirk 7)."""

FA_MIN_DRIVER_MAJOR: Final = 7
"""v0.11.4 declares CUDA flash attention from this *driver* major on, which a K80 passes."""

# v0.12: the batch for GraphSize when num_batch is 0 (§13.4); inert since requests pre-fill 512.
_FAMILY_BATCH: Final = {"deepseek2": 2048, "phi2": 256}


@dataclass(frozen=True, slots=True)
class DieCapacity:
    """One die as the estimator sees it (estimator.md §3.1)."""

    free_bytes: int
    index: int = 0
    compute: str = "3.7"
    library: str = "cuda"
    minimum_bytes: int = MINIMUM_MEMORY
    driver_major: int = 11  # R470 ships CUDA 11.4


@dataclass(frozen=True, slots=True)
class DieBreakdown:
    """What the estimate books on one die. The parts add up to `total_bytes` (Ollama's GPUSizes entry)."""

    index: int
    free_bytes: int
    layers: int  # repeating blocks, plus 1 if the output layer is booked here
    reserve_bytes: int  # minimum_memory + buffer (one block + its KV), on every accepted die
    weights_bytes: int  # repeating-block weights
    kv_bytes: int
    output_bytes: int  # output weights + vision tower + vision graph, when booked here
    graph_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.reserve_bytes + self.weights_bytes + self.kv_bytes + self.output_bytes + self.graph_bytes


@dataclass(frozen=True, slots=True)
class Estimate:
    """The estimator's answer for one ordered die list (design.md, the Estimate object).

    Per-die values are parallel tuples in the order the dies were given (empty when nothing was
    placed); `dies` gives them as `DieBreakdown` records.
    """

    model: str
    policy: str
    fits: bool
    die_indices: tuple[int, ...]
    die_free_bytes: tuple[int, ...]
    tensor_split: tuple[int, ...]  # layers per die in list (CUDA) order
    per_die_bytes: tuple[int, ...]  # Ollama's GPUSizes
    die_reserve_bytes: tuple[int, ...]
    die_weights_bytes: tuple[int, ...]
    die_kv_bytes: tuple[int, ...]
    die_output_bytes: tuple[int, ...]
    die_graph_bytes: tuple[int, ...]
    vram_bytes: int
    total_bytes: int
    layers_offloaded: int
    layers_total: int  # blocks + the output layer
    graph_bytes: int  # the reported graph: full if fully loaded, else partial
    graph_partial_bytes: int
    graph_full_bytes: int
    kv_bytes: int
    repeating_bytes: int
    output_bytes: int  # Wout: output (or tied token_embd) + output_norm
    vision_bytes: int  # vision tower weights + vision graph
    context_tokens: int
    batch_tokens: int

    @property
    def dies(self) -> tuple[DieBreakdown, ...]:
        return tuple(
            DieBreakdown(*fields)
            for fields in zip(
                self.die_indices,
                self.die_free_bytes,
                self.tensor_split,
                self.die_reserve_bytes,
                self.die_weights_bytes,
                self.die_kv_bytes,
                self.die_output_bytes,
                self.die_graph_bytes,
                strict=True,
            )
        )

    @property
    def dies_used(self) -> int:
        """Dies holding at least one layer; the die count a pod must get."""
        return sum(1 for c in self.tensor_split if c > 0)

    @property
    def weights_bytes(self) -> int:
        return self.repeating_bytes + self.output_bytes

    def to_dict(self) -> dict[str, Any]:
        """The Estimate object of design.md (camelCase), with the per-die breakdown added."""
        return {
            "version": 1,
            "model": self.model,
            "policy": self.policy,
            "fits": self.fits,
            "diesUsed": self.dies_used,
            "perDieMiB": [mib(b) for b in self.per_die_bytes],
            "perDieBytes": list(self.per_die_bytes),
            "vramMiB": mib(self.vram_bytes),
            "vramBytes": self.vram_bytes,
            "totalMiB": mib(self.total_bytes),
            "totalBytes": self.total_bytes,
            "tensorSplit": list(self.tensor_split),
            "layersOffloaded": self.layers_offloaded,
            "layersTotal": self.layers_total,
            "graphMiB": mib(self.graph_bytes),
            "kvMiB": mib(self.kv_bytes),
            "weightsMiB": mib(self.weights_bytes),
            "visionMiB": mib(self.vision_bytes),
            "contextTokens": self.context_tokens,
            "batchTokens": self.batch_tokens,
            "dies": [
                {
                    "index": d.index,
                    "layers": d.layers,
                    "freeMiB": mib(d.free_bytes),
                    "totalMiB": mib(d.total_bytes),
                    "weightsMiB": mib(d.weights_bytes + d.output_bytes),
                    "kvMiB": mib(d.kv_bytes),
                    "graphMiB": mib(d.graph_bytes),
                    "reserveMiB": mib(d.reserve_bytes),
                }
                for d in self.dies
            ],
        }


@dataclass(frozen=True, slots=True)
class _ModelSizes:
    """Option-independent sizes of one profile in one era, computed once per profile."""

    blocks: tuple[int | None, ...]  # size(blk.i), None when the group is missing
    block_weights: tuple[int, ...]  # size of block i as the loop sees it (missing groups carried over)
    kv_source: tuple[int, ...] | None  # whose KV block i carries; None when no group is missing
    first_block: int
    repeating: int
    output: int  # Wout (step 7)
    vision_weights: int
    vision_graph: int
    heads_over_kv_min: int  # H div max(Hkv_min, 1), for the fallback graph


def _model_sizes(profile: ModelProfile, v012: bool) -> _ModelSizes:
    cache: dict[bool, _ModelSizes] | None = getattr(profile, "_k80s_sizes", None)
    if cache is None:
        cache = {}
        object.__setattr__(profile, "_k80s_sizes", cache)  # profiles are immutable; this is a memo
    sizes = cache.get(v012)
    if sizes is None:
        groups = profile.tensor_groups
        blocks = tuple(
            profile.group_bytes(f"blk.{i}", v012=v012) if f"blk.{i}" in groups else None
            for i in range(profile.block_count)
        )
        output = profile.group_bytes("output_norm", v012=v012) + (
            profile.group_bytes("output", v012=v012)
            if "output" in groups
            else profile.group_bytes("token_embd", v012=v012)
        )
        w_vis, g_vis = vision_graph_size(profile, v012=v012)
        weights, source = [], []
        w, src = profile.group_bytes("blk.0", v012=v012), 0
        for i in range(profile.block_count - 1, -1, -1):  # the loop runs from L−1 down (quirk 17)
            size_i = blocks[i]
            if size_i is not None:
                w, src = size_i, i
            weights.append(w)
            source.append(src)
        weights.reverse()
        source.reverse()
        sizes = _ModelSizes(
            blocks=blocks,
            block_weights=tuple(weights),
            kv_source=None if all(b is not None for b in blocks) else tuple(source),
            first_block=profile.group_bytes("blk.0", v012=v012),
            repeating=sum(b for b in blocks if b is not None),
            output=output,
            vision_weights=w_vis,
            vision_graph=g_vis,
            heads_over_kv_min=profile.heads_max // max(profile.kv_heads_min, 1),
        )
        cache[v012] = sizes
    return sizes


def effective_context(profile: ModelProfile, options: EstimateOptions) -> tuple[int, int]:
    """(C, B): the context and batch the estimate uses (estimator.md §3.6, §13.3–§13.5)."""
    policy = options.resolved_policy
    num_ctx = options.num_ctx
    if 0 < profile.context_length < num_ctx:
        num_ctx = profile.context_length
    context = num_ctx * options.num_parallel
    if not policy.v012:
        context = max(context, MIN_CONTEXT_V0114)
    num_batch = options.num_batch
    if policy.v012 and num_batch == 0:
        num_batch = _FAMILY_BATCH.get(profile.architecture, 512)
    if policy.clamp_batch:
        num_batch = _clamp_batch(profile, min(num_batch, num_ctx), num_ctx)
    return context, min(context, num_batch)


def _clamp_batch(profile: ModelProfile, num_batch: int, num_ctx: int) -> int:
    """ollama37-2026 `llm/server.go` clamps (estimator.md §13.5); they only lower the batch."""
    arch, k = profile.architecture, 1024
    if arch == "qwen35moe":
        limit = 128 if num_ctx > 192 * k else 256 if num_ctx > 32 * k else num_batch
    elif arch == "qwen35":
        big = profile.block_count >= 48
        low_from = 64 * k if big else 128 * k
        limit = 128 if num_ctx > low_from else 256 if num_ctx > 32 * k else num_batch
    elif arch in ("gptoss", "gpt-oss"):
        limit = 128 if num_ctx > 32 * k else num_batch
    else:
        limit = num_batch
    return min(num_batch, limit)


def _model_supports_flash_attention(profile: ModelProfile, v012: bool) -> bool:
    if profile.pooling or (profile.architecture == "gptoss" and not v012):
        return False
    return profile.key_dim == profile.value_dim != 0


_Fill = tuple[list[int], list[int], list[int], int, int]


def _fill_last_die_first(
    block_w: Sequence[int], block_kv: Sequence[int], cap: int, accepted: list[int], room: list[int], n: int
) -> _Fill:
    """Seed fill: every block goes to the last remaining die; a die that rejects one is dropped.
    Blocks at or above `cap` from the top are placed first (num_gpu counts placements)."""
    count, weights, kv_on = [0] * n, [0] * n, [0] * n
    placed = unplaced = 0
    pos = len(accepted) - 1
    n_blocks = len(block_w)
    for i in range(n_blocks - 1, n_blocks - 1 - cap, -1):
        w, k = block_w[i], block_kv[i]
        layer = w + k
        while pos >= 0:
            g = accepted[pos]
            if room[g] > layer:
                room[g] -= layer
                weights[g] += w
                kv_on[g] += k
                count[g] += 1
                placed += 1
                break
            pos -= 1  # permanent drop (quirk 3)
        else:
            unplaced += layer
    del accepted[pos + 1 :]
    return count, weights, kv_on, placed, unplaced


def _fill_dealt(
    block_w: Sequence[int], block_kv: Sequence[int], cap: int, accepted: list[int], room: list[int], n: int, fill: Fill
) -> _Fill:
    """Baseline fill: block i to S[i mod j] (round-robin) or S[placed mod j] (fabe2c5c)."""
    count, weights, kv_on = [0] * n, [0] * n, [0] * n
    placed = unplaced = 0
    n_blocks = len(block_w)
    by_index = fill is Fill.ROUND_ROBIN
    for i in range(n_blocks - 1, n_blocks - 1 - cap, -1):
        w, k = block_w[i], block_kv[i]
        layer = w + k
        j = len(accepted)
        while j > 0:
            slot = (i if by_index else placed) % j
            g = accepted[slot]
            if room[g] > layer:
                room[g] -= layer
                weights[g] += w
                kv_on[g] += k
                count[g] += 1
                placed += 1
                break
            del accepted[slot]  # permanent drop (quirk 3)
            j -= 1
        else:
            unplaced += layer
    return count, weights, kv_on, placed, unplaced


def estimate(profile: ModelProfile, dies: Sequence[DieCapacity], options: EstimateOptions) -> Estimate:
    """Size `profile` on `dies` in the given order (estimator.md §8, steps 1–13)."""
    policy = options.resolved_policy
    v012 = policy.v012
    sizes = _model_sizes(profile, v012)
    n = len(dies)
    n_blocks = profile.block_count
    overhead = options.overhead_mib * MIB
    num_gpu = options.num_gpu

    # Steps 1, 3, 4: context, flash attention, KV and graph.
    context, batch = effective_context(profile, options)
    fa = (
        options.flash_attention
        and all(d.library == "cuda" and d.driver_major >= FA_MIN_DRIVER_MAJOR for d in dies)
        and _model_supports_flash_attention(profile, v012)
    )
    kv_type = options.kv_cache_type if fa else "f16"
    graph = graph_size(profile, context, batch, options.num_parallel, kv_type, v012=v012, flash_attention=fa)
    kv = graph.kv
    kv_total = sum(kv)
    kv0 = kv[0] if kv else 0
    buffer = sizes.first_block + kv0  # step 2 + 4: "one layer worth of memory as a buffer"

    # Step 5: fallback for architectures without a formula; then the graph safety multiplier (§13.4).
    g_partial, g_full = graph.partial, graph.full
    if g_partial == 0:
        g_partial = sizes.heads_over_kv_min * kv_total // 6
    if g_full == 0:
        g_full = g_partial
    multiplier = options.multiplier
    if multiplier != 1.0:
        g_partial, g_full = int(g_partial * multiplier), int(g_full * multiplier)

    # Step 6: multi-die loads always use the partial graph.
    if n > 1:
        g_full = g_partial
    if policy.kepler_graph_discount and n and dies[0].library == "cuda" and dies[0].compute == "3.7":
        g_partial, g_full = g_partial * 85 // 100, g_full * 85 // 100
    g_max = max(g_partial, g_full)

    # Step 8: the filter demands the full graph on every die (seed included, quirk 2).
    free = [d.free_bytes for d in dies]
    alloc = [0] * n
    accepted: list[int] = []
    for g, d in enumerate(dies):
        if d.free_bytes < overhead + g_max + d.minimum_bytes + 2 * buffer:
            continue
        accepted.append(g)
        alloc[g] = d.minimum_bytes + buffer
    reserve = list(alloc)

    # Step 9: seed family reserves a constant graph on secondaries, by position in the original list.
    if policy.secondary_graph and n > 1:
        secondary = options.secondary_graph_bytes
        graph_res = [secondary] * (n - 1) + [g_max]
    else:
        graph_res = [g_max] * n

    # Step 10: repeating blocks from L−1 down to 0. `room[g]` is what a die may still take:
    # free − overhead − its graph reservation − what it already holds (the fit check is strict >).
    room = [free[g] - overhead - graph_res[g] - alloc[g] for g in range(n)]
    block_w = sizes.block_weights
    block_kv = kv if sizes.kv_source is None else [kv[j] for j in sizes.kv_source]
    cap = n_blocks if num_gpu < 0 else min(num_gpu, n_blocks)
    if policy.fill is Fill.REVERSE:
        count, weights, kv_on, placed, unplaced = _fill_last_die_first(block_w, block_kv, cap, accepted, room, n)
    else:
        count, weights, kv_on, placed, unplaced = _fill_dealt(block_w, block_kv, cap, accepted, room, n, policy.fill)
    never_offered = sum(block_w[: n_blocks - cap]) + sum(block_kv[: n_blocks - cap])
    if placed >= cap:  # the num_gpu cap was reached: the rest spills (counted by every policy)
        overflow = never_offered
    else:  # the dies ran out first, so the rest would not have been placed either
        overflow, unplaced = 0, unplaced + never_offered
    if policy.overflow_unplaced:
        overflow += unplaced
    for g in range(n):
        alloc[g] += weights[g] + kv_on[g]
    fully_loaded = placed >= n_blocks

    # Step 11: the "last layer": output weights plus the vision tower, as one unit (quirk 5).
    last = sizes.output + sizes.vision_weights + sizes.vision_graph
    output_on = [0] * n
    if last > 0:
        if num_gpu < 0 or placed < num_gpu:
            for j in range(len(accepted), 0, -1):
                g = accepted[j - 1] if policy.fill is Fill.REVERSE else accepted[placed % j]
                if free[g] > overhead + alloc[g] + graph_res[g] + last:
                    alloc[g] += last
                    output_on[g] = last
                    count[g] += 1
                    placed += 1
                    break
        if placed < n_blocks + 1:
            fully_loaded = False
            overflow += last

    # Step 12: the final graph on every die that holds layers.
    reported_graph = g_full if fully_loaded else g_partial
    graph_on = [0] * n
    for g in range(n):
        if count[g] > 0:
            graph_on[g] = graph_res[g] if policy.secondary_graph else reported_graph
            alloc[g] += graph_on[g]

    # Step 13: results.
    vram = sum(alloc)
    total = vram + overflow
    if placed == 0 or n == 0:
        placed, vram = 0, 0
        per_die: tuple[tuple[int, ...], ...] = ((),) * 8
    else:
        per_die = (
            tuple(d.index for d in dies), tuple(free), tuple(count), tuple(alloc), tuple(reserve),
            tuple(weights), tuple(kv_on), tuple(output_on),
        )
    fits = placed > 0 and (placed >= n_blocks + 1 if num_gpu < 0 else placed >= num_gpu)
    return Estimate(
        model=profile.name,
        policy=policy.id,
        fits=fits,
        die_indices=per_die[0],
        die_free_bytes=per_die[1],
        tensor_split=per_die[2],
        per_die_bytes=per_die[3],
        die_reserve_bytes=per_die[4],
        die_weights_bytes=per_die[5],
        die_kv_bytes=per_die[6],
        die_output_bytes=per_die[7],
        die_graph_bytes=tuple(graph_on) if placed else (),
        vram_bytes=vram,
        total_bytes=total,
        layers_offloaded=placed,
        layers_total=n_blocks + 1,
        graph_bytes=reported_graph,
        graph_partial_bytes=g_partial,
        graph_full_bytes=g_full,
        kv_bytes=kv_total,
        repeating_bytes=sizes.repeating,
        output_bytes=sizes.output,
        vision_bytes=sizes.vision_weights + sizes.vision_graph,
        context_tokens=context,
        batch_tokens=batch,
    )


def physical_die_bytes(profile: ModelProfile, plan: Estimate, options: EstimateOptions) -> tuple[int, ...]:
    """What each die of `plan` will physically hold, in the plan's die order (estimator.md §11).

    The runner lays blocks out contiguously in proportion to the split (block i on the die g with
    cum[g−1] ≤ i < cum[g]) and puts the output layer on the last die holding layers, whatever die
    the estimate booked it on. Per die: its blocks' weights and KV, the graph the plan reserves
    there, and on that last die the output weights plus the vision tower, whose graph shares the
    compute buffer (max of the two, not the sum). Not in it: Ollama's per-die minimum-memory
    cushion and the CUDA context, which a shared slot pays for separately (`k80s.core.sharing`).
    """
    split = plan.tensor_split
    if not split or not any(split):
        return ()
    v012 = options.resolved_policy.v012
    sizes = _model_sizes(profile, v012)
    context, batch = effective_context(profile, options)
    fa = options.flash_attention and _model_supports_flash_attention(profile, v012)  # K80 dies pass the driver test
    kv_type = options.kv_cache_type if fa else "f16"
    kv = graph_size(profile, context, batch, options.num_parallel, kv_type, v012=v012, flash_attention=fa).kv
    block_kv = kv if sizes.kv_source is None else [kv[j] for j in sizes.kv_source]
    held = [0] * len(split)
    block = 0
    for g, count in enumerate(split):
        for _ in range(count):
            if block < profile.block_count:
                held[g] += sizes.block_weights[block] + block_kv[block]
            block += 1
    last = max(g for g, count in enumerate(split) if count > 0)
    for g, count in enumerate(split):
        if count > 0:
            graph = plan.die_graph_bytes[g]
            if g == last:
                held[g] += sizes.output + sizes.vision_weights
                graph = max(graph, sizes.vision_graph)
            held[g] += graph
    return tuple(held)
