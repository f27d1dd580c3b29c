"""Live VRAM readings for the GUI's Training tab and the CLI.

Two figures, because they answer different questions (gradio-notes, "NVML"):
- NVML's whole-device memory (every process, the CUDA context, PyTorch's cached blocks) is what
  predicts an out-of-memory error: the live gauge.
- `torch.cuda.max_memory_allocated()` is this process's peak in tensors: the "peak tensors" figure.

Nothing here raises on a machine without an NVIDIA GPU, driver or `nvidia-ml-py`: every failure
becomes a reading with `available=False` and a one-line message the user can act on.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

GIB = 1024**3
MIB = 1024**2
KIB = 1024


@dataclass
class VramReading:
    available: bool
    message: str  # one line, shown to the user as it is
    device_name: str | None = None
    used_bytes: int | None = None
    total_bytes: int | None = None
    free_bytes: int | None = None
    percent: float | None = None  # used / total * 100
    peak_tensor_bytes: int | None = None  # this process's torch.cuda.max_memory_allocated()
    index: int | None = None  # NVML device index


def format_bytes(n: int) -> str:
    """Binary units, as nvidia-smi and the GPU vendors' spec sheets use: "6.8 GiB", "512 MiB"."""
    if n >= GIB:
        return f"{n / GIB:.1f} GiB"
    if n >= MIB:
        return f"{n / MIB:.0f} MiB"
    if n >= KIB:
        return f"{n / KIB:.0f} KiB"
    return f"{n} B"


def _cuda_ready() -> bool:
    """CUDA is usable and already initialised; never initialises it (that would grab a context)."""
    torch = sys.modules.get("torch")  # not imported yet means CUDA was not initialised: skip the import
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_initialized())
    except Exception:  # a CPU-only or broken torch build must not break a gauge
        return False


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def process_peak_bytes() -> int | None:
    """This process's peak tensor memory on the current CUDA device, or None without CUDA."""
    if not _cuda_ready():
        return None
    try:
        import torch

        return int(torch.cuda.max_memory_allocated())
    except Exception:
        return None


def _default_index() -> int:
    if _cuda_ready():
        try:
            import torch

            return int(torch.cuda.current_device())
        except Exception:
            pass
    return 0


def _decode(name) -> str:
    # nvidia-ml-py returns str; older bindings returned bytes.
    if isinstance(name, bytes):
        return name.decode("utf-8", errors="replace")
    return str(name)


class VramMonitor:
    """Reads device memory through NVML, initialising it once and lazily.

    The GUI's timer calls `read` from worker threads every second or so, hence the lock around
    the one-time initialisation and the remembered failure: a machine without a driver must not
    pay for a failed library load on every tick.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml = None  # the pynvml module once nvmlInit succeeded
        self._init_error: str | None = None  # why init failed; set means "do not retry"

    def reset(self) -> None:
        """Forget the NVML state so the next read initialises again (e.g. after installing a driver)."""
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()  # nvmlInit is reference-counted: balance ours
                except Exception:
                    pass
            self._nvml = None
            self._init_error = None

    def _ensure_init(self):
        """Return (pynvml module, None) once NVML is up, else (None, why not)."""
        # Returns the error rather than letting `read` look at `_init_error`: a concurrent reset may clear it.
        with self._lock:
            if self._nvml is not None or self._init_error is not None:
                return self._nvml, self._init_error
            try:
                import pynvml
            except ImportError:
                self._init_error = "nvidia-ml-py is not installed; run setup again"
                return None, self._init_error
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as err:
                self._init_error = _init_failure_message(pynvml, err)
                return None, self._init_error
            self._nvml = pynvml
            return pynvml, None

    def read(self, device_index: int | None = None) -> VramReading:
        """One reading of NVML device `device_index` (default: torch's current device, else 0); never raises."""
        nvml, init_error = self._ensure_init()
        if nvml is None:
            return VramReading(available=False, message=init_error)

        index = _default_index() if device_index is None else device_index
        try:
            count = nvml.nvmlDeviceGetCount()
            if count == 0:
                return VramReading(available=False, message=_no_gpu("no NVIDIA GPU detected"), index=index)
            if not 0 <= index < count:
                return VramReading(
                    available=False,
                    message=f"GPU index {index} does not exist: {count} NVIDIA GPU(s) detected (0 to {count - 1})",
                    index=index,
                )
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = _decode(nvml.nvmlDeviceGetName(handle))
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except nvml.NVMLError as err:
            return VramReading(available=False, message=f"could not read GPU memory: {err}", index=index)

        used, total, free = int(memory.used), int(memory.total), int(memory.free)
        percent = 100.0 * used / total if total else 0.0
        peak = process_peak_bytes()
        message = f"GPU {index} {name}: {used / GIB:.1f} of {total / GIB:.1f} GiB used ({percent:.0f}%)"
        if peak is not None:
            message += f"; peak tensors {format_bytes(peak)}"
        return VramReading(
            available=True,
            message=message,
            device_name=name,
            used_bytes=used,
            total_bytes=total,
            free_bytes=free,
            percent=percent,
            peak_tensor_bytes=peak,
            index=index,
        )


def _no_gpu(reason: str) -> str:
    # Say where training goes instead, unless torch sees CUDA anyway (then only the gauge is missing).
    return reason if _cuda_available() else f"{reason}; training runs on the CPU"


def _init_failure_message(pynvml, err) -> str:
    # Compare codes, not classes: every binding version maps the same code to its subclass.
    code = getattr(err, "value", None)
    if code == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
        return _no_gpu("no NVIDIA GPU detected (NVML library not found)")
    if code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return _no_gpu("NVIDIA driver not loaded")
    return f"could not start NVML to read GPU memory: {err}"


_default: VramMonitor | None = None
_default_lock = threading.Lock()


def default_monitor() -> VramMonitor:
    """The one monitor the GUI and the CLI share, so NVML is initialised once per process."""
    global _default
    with _default_lock:
        if _default is None:
            _default = VramMonitor()
        return _default
