"""Resuming a killed job (``resume=true``): where its checkpoints are and what they must hold.

Every training phase of a job checkpoints ``last.ckpt`` after each epoch under
``<paths.output_dir>/checkpoints/<mlflow run id>/<phase>/``. Lightning's checkpoint holds the
weights, both optimizers' states, the epoch (hence the Hybrid's phase and round) and the
callbacks' states (early stopping, best checkpoint). For the resumed run to end with the metrics
of an uninterrupted one, it must also hold what draws random numbers: the global torch generator
(dropout, head re-initialisation; :class:`RandomState`) and the datamodule's shuffling generator
(see ``GroupedFoldDataModule.state_dict``). Phases after a fit (fresh heads, audit) re-run from
their own seed, so they give the same numbers whether or not the job was interrupted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

LAST = "last.ckpt"
FIT_DONE = "fit.done"  # written when a phase's fit returned: resuming skips that fit


class RandomState(pl.Callback):
    """Checkpoints the global torch random generator and restores it on resume."""

    def state_dict(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])


def resumable_callbacks(folder: Path) -> list[pl.Callback]:
    """What a resumable fit adds: ``folder/last.ckpt`` after every epoch (once validation, early
    stopping and the best-checkpoint choice have seen it, or after the Hybrid's round-end work:
    checkpoint callbacks run last) and the random state."""
    # save_last=True would not do: Lightning writes "last" only in epochs where a monitored
    # checkpoint improved. An unmonitored top-1 checkpoint named "last" is the newest epoch.
    return [ModelCheckpoint(dirpath=folder, filename=LAST.removesuffix(".ckpt"), save_top_k=1, monitor=None),
            RandomState()]


def checkpoint_dir(output_dir: str | Path, run_id: str, phase: str) -> Path:
    return Path(output_dir) / "checkpoints" / run_id / phase


def fit_resumably(trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule,
                  folder: Path, resume: bool) -> None:
    """``trainer.fit``, continued from ``folder/last.ckpt`` when resuming. When that fit had
    already returned, it is not run again: ``module`` gets the final epoch's state instead."""
    done, last = folder / FIT_DONE, folder / LAST
    if resume and done.exists():
        log.info("Resume: the fit checkpointed in %s had finished; loading its last epoch", folder)
        checkpoint = torch.load(last, map_location=module.device, weights_only=False)  # written by this job
        module.load_state_dict(checkpoint["state_dict"])
        module.on_load_checkpoint(checkpoint)
        for callback in trainer.callbacks:  # what they keep of the fit (the Hybrid's round history)
            if callback.state_key in checkpoint.get("callbacks", {}):
                callback.load_state_dict(checkpoint["callbacks"][callback.state_key])
        return
    ckpt_path = str(last) if resume and last.exists() else None
    if ckpt_path:
        log.info("Resume: continuing from %s", last)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    done.touch()
