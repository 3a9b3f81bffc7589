"""Device models: slot arithmetic with the exact `fixed` model, and the ssd coefficients."""

from __future__ import annotations

import pytest

from ioband.core.request import Request
from ioband.sim.disk import MODELS, DiskModel, FixedModel, Param, SSDModel, create_disk, register


def fixed(queue_depth=1, service_time=0.0, byte_time=0.0) -> FixedModel:
    params = {
        "queue_depth": queue_depth,
        "nr_requests": 128,
        "service_time": service_time,
        "byte_time": byte_time,
    }
    disk = create_disk("d", "fixed", params)
    assert isinstance(disk, FixedModel)
    return disk


def req(length=4096, write=False) -> Request:
    return Request(write, 0, length)


def test_fixed_single_slot_is_fifo():
    disk = fixed(service_time=0.25)
    a, b, c = req(), req(), req()
    assert disk.submit(a, 0.0) == 0.25
    assert disk.submit(b, 0.0) is None
    assert disk.submit(c, 0.125) is None
    assert disk.in_flight == 3
    assert disk.finish(a, 0.25) == (b, 0.5)
    assert disk.finish(b, 0.5) == (c, 0.75)
    assert disk.finish(c, 0.75) is None
    assert (disk.free, disk.in_flight, disk.ios, disk.bytes) == (1, 0, 3, 3 * 4096)
    assert disk.busy == 0.75
    assert disk.utilization(1.0) == 0.75


def test_fixed_per_byte_time():
    disk = fixed(service_time=0.5, byte_time=1 / 1024)
    assert disk.service_time(req(length=512)) == 1.0
    assert disk.service_time(req(length=4096)) == 4.5


def test_fixed_parallel_slots():
    disk = fixed(queue_depth=2, service_time=1.0)
    r = [req() for _ in range(3)]
    assert disk.submit(r[0], 0.0) == 1.0
    assert disk.submit(r[1], 0.5) == 1.5
    assert disk.submit(r[2], 0.5) is None
    assert disk.finish(r[0], 1.0) == (r[2], 2.0)
    assert disk.finish(r[1], 1.5) is None
    assert disk.finish(r[2], 2.0) is None
    assert disk.free == 2
    assert disk.utilization(2.0) == pytest.approx(3.0 / 4.0)
    assert disk.utilization(2.0, overhang=1.0) == pytest.approx(2.0 / 4.0)


def test_ssd_coefficients_follow_the_formula():
    qd, iops, bw = 32, 20000.0, 500 * 2**20
    a, b = SSDModel.coefficients(qd, iops, bw)
    assert b == qd / bw
    assert a == pytest.approx(qd / iops - 4096 * b)
    # Full queue of 4 KiB requests: exactly `iops` per second.
    assert qd / (a + 4096 * b) == pytest.approx(iops)
    # Large sequential requests approach the bandwidth.
    big = 8 << 20
    assert qd * big / (a + big * b) == pytest.approx(bw, rel=0.01)


def test_ssd_bandwidth_bound_device_has_no_fixed_part():
    a, b = SSDModel.coefficients(4, iops=10**9, bandwidth=100 * 2**20)
    assert a == 0.0 and b == 4 / (100 * 2**20)


def test_ssd_writes_use_their_own_figures():
    params = dict(
        queue_depth=1,
        nr_requests=128,
        iops=1000.0,
        bandwidth=2**30,
        write_iops=500.0,
        write_bandwidth=None,
    )
    disk = create_disk("s", "ssd", params)
    assert disk.service_time(req()) == pytest.approx(1 / 1000)
    assert disk.service_time(req(write=True)) == pytest.approx(1 / 500)


def test_a_new_model_is_a_small_registered_class():
    @register
    class Constant(DiskModel):
        model = "test-constant"
        PARAMS = {**DiskModel.PARAMS, "seconds": Param("seconds", 1.0)}

        def service_time(self, req):
            return self.params["seconds"]

    try:
        disk = create_disk("x", "test-constant", {"queue_depth": 1, "nr_requests": 4, "seconds": 2})
        assert disk.submit(req(), 1.0) == 3.0
    finally:
        del MODELS["test-constant"]
