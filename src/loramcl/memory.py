"""Measured memory: the peak of a training step, and the per-row, per-layer probe the planner scales.

Peak memory is read from the allocator, never estimated:
    cuda  `torch.cuda.max_memory_allocated` over the step (everything live, weights included);
    cpu   the running total of the CPU allocator's events recorded by the torch profiler
          (`profile_memory=True`), i.e. the bytes allocated above what was live when the step
          started, plus those live bytes counted from the model, optimizer and inputs.

The planner (`scripts/plan_memory.py`) cannot run a 7B model on a small device, so it measures a
probe: the real model class at its true width, with ONE language-model layer (and one encoder
layer), on ONE row (one replica of one worst-case item), in the backbone's dtype. The probe gives
    peak_row       bytes above the static weights at the peak of forward + backward (adapter
                   gradients excluded: they are per model, not per row);
    saved_layer    bytes one language-model layer leaves allocated after its forward (what it
                   keeps for the backward and its output; with gradient checkpointing, about its
                   input and output), read from the allocator around that layer;
and a training step of L layers on R rows peaks at R x (peak_row + (L - 1) x saved_layer): every
tensor of a row is per row (rows are independent), and the extra layers only add what they keep
for the backward, which is all live at the peak (the start of the backward). The frozen encoder
keeps nothing for the backward (no adapter, nothing requires grad), so its depth adds nothing.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn

GiB = 1024**3


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views and shared tensors counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def live_bytes(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
               inputs: Optional[dict] = None) -> dict[str, int]:
    """Bytes held by the weights, the gradients, the optimizer state and the inputs."""
    params = list(model.parameters()) + list(model.buffers())
    state = [v for s in (optimizer.state.values() if optimizer else []) for v in s.values() if torch.is_tensor(v)]
    return {"weights": unique_bytes(params),
            "gradients": unique_bytes(p.grad for p in model.parameters() if p.grad is not None),
            "optimizer": unique_bytes(state),
            "inputs": unique_bytes(v for v in (inputs or {}).values() if torch.is_tensor(v))}


class PeakMeter:
    """Peak allocated bytes over a block, on CUDA (allocator stats) or on the CPU (profiler events).

        with PeakMeter(device) as meter:
            step()
        meter.extra   # bytes above what was allocated when the block started
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.extra = 0
        self.start = 0

    def __enter__(self) -> "PeakMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile

            self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._profiler.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.start
            return
        self._profiler.__exit__(*exc)
        events = list(self._profiler.profiler.kineto_results.events())
        memory = sorted((e for e in events if e.name() == "[memory]"
                         and e.device_type() == torch.autograd.DeviceType.CPU), key=lambda e: e.start_ns())
        self._times, self._totals = [], []
        total = peak = 0
        for e in memory:
            total += e.nbytes()
            peak = max(peak, total)
            self._times.append(e.start_ns())
            self._totals.append(total)
        self.extra = peak
        self._ranges = {}
        for e in events:
            if e.name().startswith("loramcl::"):
                self._ranges.setdefault(e.name(), []).append((e.start_ns(), e.start_ns() + e.duration_ns()))

    def growth(self, name: str) -> list[int]:
        """Allocated bytes added across each run of the range `loramcl::<name>` (CPU; see `mark`)."""
        import bisect

        def total_at(ns: int) -> int:
            i = bisect.bisect_right(self._times, ns)
            return self._totals[i - 1] if i else 0

        return [total_at(end) - total_at(start) for start, end in self._ranges.get(f"loramcl::{name}", [])]


@contextmanager
def growth_of(module: nn.Module, name: str, device: torch.device | str) -> Iterator[list[int]]:
    """Allocated bytes each forward of `module` leaves behind (what it keeps for the backward, and its
    output), collected into the yielded list; on the CPU inside a `PeakMeter` (read with `meter.growth`)."""
    device = torch.device(device)
    growth: list[int] = []
    marks: list = []

    def before(m: nn.Module, args: tuple) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            marks.append(torch.cuda.memory_allocated(device))
        else:
            marks.append(torch.autograd.profiler.record_function(f"loramcl::{name}").__enter__())

    def after(m: nn.Module, args: tuple, output: Any) -> None:
        mark = marks.pop()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            growth.append(torch.cuda.memory_allocated(device) - mark)
        else:
            mark.__exit__(None, None, None)

    handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield growth
    finally:
        for h in handles:
            h.remove()


@dataclass
class StepResult:
    """Median time (s) and peak allocated memory (bytes, everything live) of a training step."""

    seconds: float
    peak: int
    static: int

    def as_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_and_peak(step: Callable[[], None], device: torch.device | str, static: Callable[[], int],
                  repeats: int = 3, warmup: int = 1) -> StepResult:
    """Run `step` warmup + repeats times; the median time, and the peak of one more (untimed on the CPU) run.

    `static()` gives the bytes live before a step (weights, optimizer state, inputs) for the CPU
    peak; on CUDA the allocator's peak already includes them.
    """
    device = torch.device(device)
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    with PeakMeter(device) as meter:
        step()
    peak = meter.start + meter.extra if device.type == "cuda" else static() + meter.extra
    return StepResult(statistics.median(times), int(peak), int(static()))


@dataclass
class Probe:
    """Memory of one row through one language-model layer, measured (see the module docstring)."""

    device: str
    dtype: str
    seq_len: int
    gradient_checkpointing: bool
    peak_row: int  # bytes above the weights at the peak of forward + backward, one row, one layer
    saved_layer: int  # bytes one language-model layer leaves allocated after its forward, per row
    seconds: float  # how long the probe took

    def activations(self, rows: int, layers: int) -> int:
        """Peak activation bytes of `rows` rows through `layers` language-model layers."""
        return int(rows * (self.peak_row + (layers - 1) * self.saved_layer))


def run_probe(model: nn.Module, batch: dict[str, torch.Tensor], device: str, gradient_checkpointing: bool) -> Probe:
    """Measure `model` (an adapter model with one language-model layer) on a one-row `batch`."""
    from loramcl.backbones import enable_checkpointing, transformer_blocks
    from loramcl.layers import lora_layers

    start = time.perf_counter()
    base = model.base_model
    if gradient_checkpointing:
        enable_checkpointing(base)
    model.train()
    for layer in lora_layers(model):  # dropout changes no size; zero it so the probe is deterministic
        layer.lora_dropout = nn.Identity()
    lm, _ = transformer_blocks(base)
    if len(lm) != 1:
        raise ValueError(f"a probe has one language-model layer, this model has {len(lm)}")
    adapters = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)

    def step() -> None:
        model(**batch).loss.backward()

    step()  # warm up (lazy initialisations, kernels)
    model.zero_grad(set_to_none=True)
    with growth_of(lm[0], "lm", device) as lm_growth, PeakMeter(device) as meter:
        step()
    model.zero_grad(set_to_none=True)
    if torch.device(device).type != "cuda":
        lm_growth = meter.growth("lm")
    dtype = next(p.dtype for p in base.parameters() if not p.requires_grad)
    return Probe(device=str(device), dtype=str(dtype).replace("torch.", ""), seq_len=int(batch["input_ids"].shape[1]),
                 gradient_checkpointing=gradient_checkpointing, peak_row=int(meter.extra - adapters),
                 saved_layer=int(lm_growth[0]),
                 seconds=round(time.perf_counter() - start, 1))
