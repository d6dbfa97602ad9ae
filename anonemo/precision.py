"""The default arithmetic precision (``trainer.precision: ${anonemo.fastest_precision:}``): bf16
autocast where the hardware computes in bf16, float32 elsewhere. Emulated bf16 (a CPU with AVX2
only) is much slower than float32 and not bit-reproducible (docs/performance.md)."""

from __future__ import annotations

from pathlib import Path

NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has bf16 instructions (AVX512-BF16 or AMX); False where /proc/cpuinfo is
    missing (macOS, Windows), where float32 is the safe choice."""
    try:
        words = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(NATIVE_BF16_CPU_FLAGS & words)


def fastest_precision() -> str:
    """``bf16-mixed`` on a CUDA GPU with bf16 or a CPU with native bf16, ``32-true`` elsewhere."""
    import torch  # resolved when a job reads its trainer config, once torch is needed anyway

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
