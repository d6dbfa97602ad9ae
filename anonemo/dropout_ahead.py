"""Dropout masks drawn ahead of the steps that use them, on a helper thread: the same masks, the
same numbers, less time (a leaf module: the Hybrid's re-fit and the probes import it).

On a CPU, ``nn.Dropout`` multiplies its input by a mask that ``bernoulli_`` draws from the global
generator, scaled by ``1 / (1 - p)``. On CPUs where PyTorch draws it one element at a time, the
masks of a small head's step cost about as much as its matrix products (docs/performance.md,
"Masks drawn ahead"). A mask depends only on the generator's state, not on the step's results, so
it can be drawn before the step, by another thread, as long as every draw comes in the same order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DropoutSite:
    """One call of a dropout module in a forward pass: its mask's shape per row and its dtype."""

    module: nn.Dropout
    row_shape: tuple[int, ...]
    dtype: torch.dtype

    def draw(self, rows: int) -> torch.Tensor:
        """The mask ``nn.Dropout`` would draw for ``rows`` rows: the same calls on the same generator."""
        keep = 1 - self.module.p
        return torch.empty((rows, *self.row_shape), dtype=self.dtype).bernoulli_(keep).div_(keep)


def drawing_dropouts(model: nn.Module) -> list[nn.Dropout]:
    """The dropout modules of ``model`` that draw a mask in a forward pass (training, 0 < p < 1)."""
    return [module for module in model.modules()
            if type(module) is nn.Dropout and module.training and 0 < module.p < 1]


def trace_sites(model: nn.Module, forward: Callable[[torch.Tensor], object], batch: torch.Tensor) -> list[DropoutSite]:
    """The dropout calls of one ``forward(batch)``, in order, seen on a pass with the dropouts off
    (eval mode: no draw). ``forward`` must draw nothing else from the global generator."""
    dropouts = drawing_dropouts(model)
    sites: list[DropoutSite] = []

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        sites.append(DropoutSite(module, tuple(output.shape[1:]), output.dtype))

    hooks = [module.register_forward_hook(record) for module in dropouts]
    state = torch.random.get_rng_state()
    try:
        for module in dropouts:
            module.eval()
        with torch.no_grad():
            forward(batch[:1])
    finally:
        for module, hook in zip(dropouts, hooks):
            module.train()
            hook.remove()
    if not torch.equal(state, torch.random.get_rng_state()):
        raise RuntimeError("the forward pass draws random numbers besides its dropout masks: they cannot be drawn ahead")
    return sites


def draw_masks(sites: Sequence[DropoutSite], batches: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Every mask of ``batches``' forward passes, in the order the passes draw them."""
    for batch in batches:
        for site in sites:
            yield site.draw(len(batch))


class _Finished:
    """What the helper thread puts after the last mask."""


def on_helper_thread(masks: Iterator[torch.Tensor], ahead: int = 8) -> Iterator[torch.Tensor]:
    """The masks of ``masks``, drawn by a helper thread up to ``ahead`` masks before they are taken.
    Torch kernels release the interpreter's lock, so the drawing runs beside the steps' kernels."""
    drawn: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def draw() -> None:
        try:
            for mask in masks:
                if stop.is_set():
                    return
                drawn.put(mask)
            drawn.put(_Finished())
        except BaseException as error:  # handed to the consumer, which raises it
            drawn.put(error)

    thread = threading.Thread(target=draw, name="dropout-masks", daemon=True)
    thread.start()
    try:
        while not isinstance(item := drawn.get(), _Finished):
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a helper waiting to put
            try:
                drawn.get_nowait()
            except queue.Empty:
                thread.join(0.01)


@contextmanager
def masks_drawn_ahead(model: nn.Module, forward: Callable[[torch.Tensor], object], batches: Sequence[torch.Tensor],
                      helper_thread: bool) -> Iterator[None]:
    """Inside, the forward passes of ``batches`` (each ``forward(batch)``, in order, exactly once)
    take the dropout masks of ``model`` from masks drawn ahead for them, on a helper thread if
    ``helper_thread``: what each step computes is unchanged. Leaves the global generator where
    the same passes with ``nn.Dropout`` drawing would leave it. CPU only; elsewhere (a CUDA
    generator, fused dropout kernels) the dropouts draw as usual."""
    if not batches or not drawing_dropouts(model) or any(p.device.type != "cpu" for p in model.parameters()):
        yield
        return
    sites = trace_sites(model, forward, batches[0])
    masks = draw_masks(sites, batches)
    if helper_thread:
        masks = on_helper_thread(masks)
    expected = iter(site for _ in batches for site in sites)

    def apply_mask(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        site, mask = next(expected, None), next(masks, None)
        if site is None or site.module is not module or mask is None or mask.shape != output.shape \
                or mask.dtype != output.dtype:
            raise RuntimeError("a forward pass called its dropouts otherwise than the traced pass: "
                               "masks_drawn_ahead needs the same calls, in the same order, for every batch")
        return output * mask

    dropouts = list(dict.fromkeys(site.module for site in sites))
    hooks = [module.register_forward_hook(apply_mask) for module in dropouts]
    try:
        for module in dropouts:
            module.eval()
        yield
        if next(expected, None) is not None:
            raise RuntimeError("fewer forward passes than batches ran inside masks_drawn_ahead: masks were drawn "
                               "that nn.Dropout would not have drawn")
    finally:
        for module, hook in zip(dropouts, hooks):
            module.train()
            hook.remove()
        if helper_thread:
            masks.close()


def fit_with_masks_ahead(model: nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor], batches: Sequence[torch.Tensor],
              optimizer: torch.optim.Optimizer, helper_thread: bool) -> None:
    """One ``optimizer`` step per batch of ``batches`` on ``loss_of(batch)``, with ``model``'s dropout
    masks drawn ahead (:func:`masks_drawn_ahead`)."""
    with masks_drawn_ahead(model, loss_of, batches, helper_thread):
        for batch in batches:
            optimizer.zero_grad()
            loss_of(batch).backward()
            optimizer.step()
