"""``models.cpu_share``: llama.cpp's thread counts follow the cores other processes leave free."""

from __future__ import annotations

import os

import pytest

from rstitch_engine.models.cpu_share import CpuSample, ThreadShare, cores_held_by_others, read_cpu_sample


@pytest.mark.parametrize(("others_cpu_seconds", "held"), [
    (0.0, 0), (0.2, 0),  # daemons and short jobs hold no core
    (0.5, 1), (1.0, 1), (1.2, 1),  # a process on one core, also while this one crowds it out to half a core
    (1.3, 2), (2.0, 2),
])
def test_whole_cores_held_by_other_processes(others_cpu_seconds, held):
    before = CpuSample(all_processes=100.0, this_process=10.0, wall=50.0)
    after = CpuSample(all_processes=100.0 + 1.7 + others_cpu_seconds, this_process=11.7, wall=51.0)  # we used 1.7 s
    assert cores_held_by_others(before, after) == held


class Machine:
    """Recorded samples: a clock, and the CPU seconds others and this process have used so far."""

    def __init__(self) -> None:
        self.wall, self.others, self.mine = 0.0, 0.0, 0.0

    def run(self, seconds: float, others_cores: float, my_cores: float) -> None:
        self.wall += seconds
        self.others += seconds * others_cores
        self.mine += seconds * my_cores

    def sample(self) -> CpuSample:
        return CpuSample(self.others + self.mine, self.mine, self.wall)


def test_the_counts_drop_while_another_process_holds_a_core_and_come_back_after():
    machine = Machine()
    share = ThreadShare(interval=0.5, sample=machine.sample, cores=2, logical=2, clock=lambda: machine.wall)
    assert share.threads() == (2, 2)  # no history yet: every core
    machine.run(0.2, others_cores=1.0, my_cores=1.0)
    assert share.threads() == (2, 2)  # not yet an interval: no new sample
    machine.run(0.4, others_cores=1.0, my_cores=1.0)
    assert share.threads() == (1, 1)
    machine.run(1.0, others_cores=1.0, my_cores=1.0)
    assert share.threads() == (1, 1)  # never below one
    machine.run(1.0, others_cores=0.05, my_cores=1.0)
    assert share.threads() == (2, 2)


def test_counts_stay_within_their_ceilings_and_an_unreadable_system_keeps_them():
    machine = Machine()
    share = ThreadShare(interval=0.5, sample=machine.sample, cores=4, logical=8, clock=lambda: machine.wall)
    machine.run(1.0, others_cores=2.0, my_cores=4.0)
    assert share.threads() == (2, 6)
    machine.run(1.0, others_cores=9.0, my_cores=0.5)
    assert share.threads() == (1, 1)
    blind = ThreadShare(sample=lambda: None, cores=4, logical=8)
    assert blind.threads() == (4, 8)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the system-wide CPU time is read from Linux's /proc/stat")
def test_this_machine_can_be_read():
    sample = read_cpu_sample()
    assert sample is not None and sample.all_processes > 0 and sample.this_process > 0
