"""``SystemProbe``: the process's memory and the host's load, for the ADAPTIVE strategy."""

from __future__ import annotations

import os

import psutil

from bbp_dist_resume.policy import SystemSample


class SystemProbe:
    """Samples with psutil; cheap enough to call at every decision (~20 us)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._cores = os.cpu_count() or 1

    def rss_bytes(self) -> int:
        return int(self._process.memory_info().rss)

    def sample(self) -> SystemSample:
        load = os.getloadavg()[0] / self._cores
        return SystemSample(rss_mb=self.rss_bytes() / (1 << 20), load_per_core=load)
