"""Every option of every config group composes, resolves and builds, without training."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import CONF, make_config
from hydra import compose, initialize_config_dir
from hydra.core.plugins import Plugins
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anonemo.audit.attackers import build_attackers
from anonemo.config import build
from anonemo.data.check import dataset_source
from anonemo.data.records import FaceSource
from anonemo.data.pipeline import face_cropper
from anonemo.erasure import Erasure
from anonemo.models.networks import Networks
from anonemo.precision import cpu_has_native_bf16
from anonemo.probes import Attacker
from anonemo.recipes.base import Recipe

# Every config group of conf/, and the command-line key that picks one of its options in a training job
# (hydra/launcher and hparams_search choose how jobs run; attackers and optimizer sit under other keys).
GROUPS = {"dataset": "dataset", "model": "model", "network": "network", "erasure": "erasure", "trainer": "trainer",
          "fresh_head": "fresh_head", "logger": "logger", "paths": "paths", "experiment": "experiment",
          "hparams_search": "hparams_search", "hydra/launcher": "hydra/launcher",
          "attackers": "attackers@audit.attackers", "optimizer": "optimizer@model.optimizer",
          "face_crop": "face_crop@dataset.face_crop", "privacy": "privacy@model.privacy"}
OPTIONS = [(GROUPS[group], path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
LAUNCHERS = ("basic", "joblib", "submitit_local")  # Hydra's own options, beside this project's


def target_nodes(node, path=""):
    """(dotted path, node) of every ``_target_`` node in a config tree, outermost first."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
            return  # its children are built with it
        for key in node:
            yield from target_nodes(node[key], f"{path}.{key}".lstrip("."))


def test_every_config_group_on_disk_is_tested():
    """Each folder of conf/ holding options (but Hydra's own settings, conf/hydra, and the benchmark's
    suites and sweeper, which tests/test_benchmark.py plans and the launchers' test builds) is a group
    whose every option the next test builds."""
    on_disk = {path.parent.relative_to(CONF).as_posix() for path in CONF.rglob("*/*.yaml")} - {"hydra", "suite", "hydra/sweeper"}
    assert on_disk == set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_resolves_and_builds(tmp_path, group, option):
    # a privacy term is an option of the in-training models' config (conf/model/hybrid.yaml)
    cfg = make_config(tmp_path, *["model=hybrid"] * group.startswith("privacy"), f"{group}={option}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    built = {path: build(node, path) for path, node in target_nodes(cfg)
             if path != "trainer" and not path.startswith("audit.attackers.")}
    assert all(isinstance(attacker, Attacker) for attacker in build_attackers(cfg.audit.attackers))
    assert isinstance(built["model"], Recipe) and isinstance(built["network"], Networks)
    assert built["model"].name == cfg.model.name
    assert {"model", "network", "fresh_head.optimizer"} <= set(built)
    assert isinstance(dataset_source(cfg.dataset), FaceSource)
    if group == "erasure" or option.startswith("emotion_"):
        assert isinstance(built["erasure"], Erasure)  # an erasure option, or a model that brings one
    assert isinstance(instantiate(cfg.trainer, logger=False), pl.Trainer)  # a job's Trainer logs to its run
    face_cropper(cfg.dataset)


@pytest.mark.parametrize("launcher", [o for g, o in OPTIONS if g == "hydra/launcher"] + list(LAUNCHERS))
def test_launchers_and_the_search_build(tmp_path, launcher):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", f"hydra/launcher={launcher}",
                                          "hparams_search=hybrid_optuna"], return_hydra_config=True)
    plugins = Plugins.instance()  # Hydra builds its plugins itself, outside declarative instantiation
    assert type(plugins._instantiate(cfg.hydra.launcher)).__name__.endswith("Launcher")
    assert type(plugins._instantiate(cfg.hydra.sweeper)).__name__ == "OptunaSweeper"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        planned = compose("train", overrides=["hydra/sweeper=plan", "hydra.sweeper.plan=jobs.json"],
                          return_hydra_config=True)
    assert type(plugins._instantiate(planned.hydra.sweeper)).__name__ == "PlanSweeper"  # the benchmark's
    for callback in cfg.hydra.callbacks.values():
        instantiate(callback)


def test_model_options_choose_their_networks(tmp_path):
    """A model may ask for another base shape (hybrid_robust: network=compact); a command-line
    network= still wins."""
    shape = {name: build(make_config(tmp_path, f"model={name}").network, "network") for name in ("hybrid", "hybrid_robust")}
    assert (shape["hybrid"].bottleneck, shape["hybrid_robust"].bottleneck) == (0, 8)
    assert build(make_config(tmp_path, "model=hybrid_robust", "network=paper").network, "network").bottleneck == 0


def test_conf_holds_no_option_outside_a_group():
    assert sorted(p.name for p in Path(CONF).glob("*.yaml")) == [
        "audit.yaml", "bench.yaml", "benchmark.yaml", "calibrate.yaml", "export.yaml", "preview.yaml", "report.yaml", "train.yaml"
    ]


def test_default_precision_is_bf16_only_where_the_hardware_computes_in_bf16(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx avx2 fma\n")
    assert not cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_native_bf16(cpuinfo)
    assert not cpu_has_native_bf16(tmp_path / "no_cpuinfo")  # macOS, Windows
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train")
    if not torch.cuda.is_available():
        assert cfg.trainer.precision == ("bf16-mixed" if cpu_has_native_bf16() else "32-true")
