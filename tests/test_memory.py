"""The allocator settings a job makes: a training step's freed activations are not faulted in again."""

import subprocess
import sys

import pytest

from anonemo import memory

# Training steps of the paper's base on 64x64 faces, in a fresh interpreter; prints the median page
# faults of a step after the warm-up (a kept heap still grows now and then, into pages touched once).
STEPS = """
import resource, statistics, torch
from anonemo.memory import keep_freed_memory
from anonemo.models.networks import ClassifierHead, ConvBase
assert keep_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
base = ConvBase(64)
head = ClassifierHead(base.out_features, 7)
model = torch.nn.Sequential(base, head)
optimizer = torch.optim.Adam(model.parameters())
images, labels = torch.rand(64, 1, 64, 64), torch.randint(0, 7, (64,))
faults = []
for step in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults[3:]))
"""


def faults_per_step() -> float:
    done = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's settings")
def test_kept_memory_spares_a_training_step_its_page_faults():
    # glibc's own settings give most such steps thousands (1,000-14,000 in six runs here, 0 in one)
    assert faults_per_step() < 50


@pytest.mark.parametrize(("variable", "value"), [("MALLOC_MMAP_THRESHOLD_", "65536"),
                                                 ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")])
def test_the_users_own_allocator_settings_are_left_alone(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert not memory.keep_freed_memory()
