"""The machine a benchmark ran on, in one line: CPU model, core count and widest vector ISA.

A speed figure is a property of the CPU it was measured on, so every benchmark here prints
this line with its results. Standard library only.
"""

from __future__ import annotations

import os
import platform

# Widest first: the first of these that the CPU reports is its widest vector ISA.
_ISAS = (("amx_tile", "AMX + AVX-512"), ("avx512f", "AVX-512"), ("avx2", "AVX2"),
         ("avx", "AVX"), ("sse4_2", "SSE4.2"), ("asimd", "NEON"))


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name or platform.processor() or platform.machine() or "unknown CPU", flags


def cpu_name() -> str:
    return _cpuinfo()[0]


def widest_isa() -> str:
    flags = _cpuinfo()[1]
    return next((label for flag, label in _ISAS if flag in flags), "unknown")


def describe() -> str:
    """E.g. "AMD EPYC, 2 logical cores, widest vector ISA AVX-512"."""
    return f"{cpu_name()}, {os.cpu_count()} logical cores, widest vector ISA {widest_isa()}"
