"""Which parts of the package import which: the audit and the erasure share the probes of
anonemo.probes, and neither imports the other (no import circle between audit and models)."""

import subprocess
import sys

import pytest

# module -> packages it must not load, directly or through anything it imports
CONTRACTS = {
    "anonemo.audit.suite": ("anonemo.models", "anonemo.erasure", "anonemo.recipes"),
    "anonemo.audit.attackers": ("anonemo.models", "anonemo.erasure", "anonemo.recipes"),
    "anonemo.probes": ("anonemo.models", "anonemo.erasure", "anonemo.audit", "anonemo.data"),
    "anonemo.dropout_ahead": ("anonemo.models", "anonemo.erasure", "anonemo.audit", "anonemo.data", "anonemo.recipes"),
    "anonemo.erasure": ("anonemo.audit", "anonemo.recipes"),
    "anonemo.models.networks": ("anonemo.audit", "anonemo.erasure", "anonemo.recipes"),
}


@pytest.mark.parametrize("module", CONTRACTS)
def test_a_module_loads_none_of_the_packages_it_must_not_depend_on(module):
    forbidden = CONTRACTS[module]
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert module in loaded
    assert not [name for name in loaded if name.startswith(forbidden)]
