"""VRAM monitor against a fake NVML (the one hardware edge where fakes are allowed), plus one real read."""

import ctypes
import sys
import threading
import time
from types import SimpleNamespace

import pynvml
import pytest
import torch

from charlora import monitor
from charlora.monitor import VramMonitor, default_monitor, format_bytes, process_peak_bytes

GIB = 1024**3


class FakeNVML:
    """Stands in for the driver: replaces pynvml's functions, keeps its real error classes and codes."""

    def __init__(self, devices=(("NVIDIA GeForce RTX 4080", 16 * GIB, int(6.8 * GIB)),), init_error=None):
        self.devices = list(devices)  # (name, total, used)
        self.init_error = init_error  # an NVML error code nvmlInit fails with
        self.read_error = None  # an NVML error code the memory read fails with
        self.init_delay = 0.0
        self.init_calls = 0
        self.shutdown_calls = 0

    def install(self, monkeypatch):
        for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
                     "nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo"):
            monkeypatch.setattr(pynvml, name, getattr(self, name))
        return self

    def nvmlInit(self):
        self.init_calls += 1
        time.sleep(self.init_delay)  # widens the window in which racing threads could all init
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return self.devices[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle):
        if self.read_error is not None:
            raise pynvml.NVMLError(self.read_error)
        _, total, used = self.devices[handle]
        return SimpleNamespace(total=total, used=used, free=total - used)


def test_reads_a_16_gib_device(monkeypatch):
    FakeNVML().install(monkeypatch)
    reading = VramMonitor().read()

    assert reading.available
    assert reading.index == 0
    assert reading.device_name == "NVIDIA GeForce RTX 4080"
    assert reading.total_bytes == 16 * GIB
    assert reading.used_bytes == int(6.8 * GIB)
    assert reading.free_bytes == 16 * GIB - int(6.8 * GIB)
    assert reading.percent == pytest.approx(42.5)
    assert reading.peak_tensor_bytes is None  # no CUDA here
    assert reading.message == "GPU 0 NVIDIA GeForce RTX 4080: 6.8 of 16.0 GiB used (42%)"


@pytest.mark.parametrize("name", [b"NVIDIA RTX A4000", "NVIDIA RTX A4000"])
def test_device_name_as_bytes_or_str(monkeypatch, name):
    FakeNVML(devices=[(name, 16 * GIB, GIB)]).install(monkeypatch)
    reading = VramMonitor().read()
    assert reading.device_name == "NVIDIA RTX A4000"
    assert "b'" not in reading.message


def test_second_device(monkeypatch):
    FakeNVML(devices=[("GPU A", 8 * GIB, GIB), ("GPU B", 24 * GIB, 12 * GIB)]).install(monkeypatch)
    reading = VramMonitor().read(1)
    assert reading.available
    assert (reading.index, reading.device_name, reading.total_bytes) == (1, "GPU B", 24 * GIB)
    assert reading.percent == pytest.approx(50.0)
    assert reading.message.startswith("GPU 1 GPU B: 12.0 of 24.0 GiB used (50%)")


@pytest.mark.parametrize("index", [2, -1])
def test_index_out_of_range(monkeypatch, index):
    FakeNVML(devices=[("GPU A", 8 * GIB, GIB), ("GPU B", 8 * GIB, GIB)]).install(monkeypatch)
    reading = VramMonitor().read(index)
    assert not reading.available
    assert f"GPU index {index} does not exist" in reading.message
    assert "2 NVIDIA GPU(s)" in reading.message


def test_no_devices(monkeypatch):
    FakeNVML(devices=[]).install(monkeypatch)
    reading = VramMonitor().read()
    assert not reading.available
    assert reading.message.startswith("no NVIDIA GPU detected")


def test_library_not_found_is_remembered(monkeypatch):
    fake = FakeNVML(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND).install(monkeypatch)
    mon = VramMonitor()

    first = mon.read()
    assert not first.available
    assert first.message == "no NVIDIA GPU detected (NVML library not found); training runs on the CPU"
    assert mon.read().message == first.message
    assert fake.init_calls == 1  # the failure is remembered, not retried every tick

    # A reset, or a new instance, tries again (e.g. after the user installed a driver).
    fake.init_error = None
    mon.reset()
    assert mon.read().available
    assert not VramMonitor().read(5).available
    assert fake.init_calls == 3


def test_driver_not_loaded(monkeypatch):
    FakeNVML(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED).install(monkeypatch)
    reading = VramMonitor().read()
    assert not reading.available
    assert reading.message.startswith("NVIDIA driver not loaded")


def test_other_init_error(monkeypatch):
    FakeNVML(init_error=pynvml.NVML_ERROR_NO_PERMISSION).install(monkeypatch)
    reading = VramMonitor().read()
    assert not reading.available
    assert reading.message == "could not start NVML to read GPU memory: Insufficient Permissions"


def test_read_error_after_good_init(monkeypatch):
    fake = FakeNVML().install(monkeypatch)
    mon = VramMonitor()
    assert mon.read().available

    fake.read_error = pynvml.NVML_ERROR_GPU_IS_LOST
    reading = mon.read()  # must not raise
    assert not reading.available
    assert reading.message == "could not read GPU memory: GPU is lost"

    fake.read_error = None  # a transient error does not poison the monitor
    assert mon.read().available
    assert fake.init_calls == 1


def test_reset_shuts_down_what_it_initialised(monkeypatch):
    fake = FakeNVML().install(monkeypatch)
    mon = VramMonitor()
    mon.reset()
    assert fake.shutdown_calls == 0
    mon.read()
    mon.reset()
    assert fake.shutdown_calls == 1


def test_pynvml_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    reading = VramMonitor().read()
    assert not reading.available
    assert reading.message == "nvidia-ml-py is not installed; run setup again"


def test_threads_initialise_once(monkeypatch):
    fake = FakeNVML().install(monkeypatch)
    fake.init_delay = 0.05
    mon = VramMonitor()
    start = threading.Barrier(8)
    readings = []

    def worker():
        start.wait()
        readings.append(mon.read())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)

    assert fake.init_calls == 1
    assert len(readings) == 8
    assert all(r.available and r.total_bytes == 16 * GIB for r in readings)


def test_peak_and_current_device_when_cuda_is_initialised(monkeypatch):
    # Pretend CUDA is up on device 1, to check the monitor follows torch's device and reports its peak.
    FakeNVML(devices=[("GPU A", 8 * GIB, GIB), ("GPU B", 8 * GIB, 2 * GIB)]).install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 512 * 1024**2)

    assert process_peak_bytes() == 512 * 1024**2
    reading = VramMonitor().read()
    assert reading.index == 1 and reading.device_name == "GPU B"
    assert reading.peak_tensor_bytes == 512 * 1024**2
    assert reading.message.endswith("; peak tensors 512 MiB")


def test_peak_is_none_without_cuda(monkeypatch):
    assert process_peak_bytes() is None

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    assert process_peak_bytes() is None


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (2048, "2 KiB"),
        (512 * 1024**2, "512 MiB"),
        (GIB, "1.0 GiB"),
        (int(6.8 * GIB), "6.8 GiB"),
        (16 * GIB, "16.0 GiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_default_monitor_is_shared():
    assert default_monitor() is default_monitor()
    assert isinstance(default_monitor(), VramMonitor)


def _nvml_library_present():
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        return True
    except OSError:
        return False


@pytest.mark.skipif(_nvml_library_present(), reason="an NVIDIA driver is installed here")
def test_real_machine_without_driver():
    reading = VramMonitor().read()
    assert not reading.available
    assert "no NVIDIA GPU" in reading.message
    assert reading.message == monitor.VramMonitor().read().message
