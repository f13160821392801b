"""Make the CUDA/cuDNN libraries of the nvidia-* wheels visible to the dynamic loader (gpu target).

onnxruntime-gpu's CUDA provider links against libcudart, libcublas, ... and dlopens cuDNN, but
its wheel sets no search path into the nvidia-* wheels that its [cuda,cudnn] extras install
(onnxruntime.preload_dlls() would do it from Python at run time). Registering their lib folders
with ldconfig covers every process in the image. Then check that every library the provider
needs resolves, except libcuda.so.1: the driver's, mounted by the NVIDIA container toolkit.
"""

from __future__ import annotations

import ctypes
import pathlib
import subprocess
import sys

import nvidia  # namespace package of the nvidia-* wheels
import onnxruntime

CONF = pathlib.Path("/etc/ld.so.conf.d/nvidia-wheels.conf")
DRIVER = "libcuda.so"


def main() -> int:
    folders = sorted(
        {
            str(lib.parent)
            for root in nvidia.__path__
            for lib in pathlib.Path(root).glob("*/lib/*.so*")
        }
    )
    CONF.write_text("\n".join(folders) + "\n")
    subprocess.run(["ldconfig"], check=True)
    provider = (
        pathlib.Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    )
    ldd = subprocess.run(["ldd", str(provider)], capture_output=True, text=True, check=True).stdout
    missing = [
        line.split()[0] for line in ldd.splitlines() if "not found" in line and DRIVER not in line
    ]
    for library in ("libcudnn.so.9", "libcublasLt.so.13", "libcufft.so.12", "libnvrtc.so.13"):
        try:
            ctypes.CDLL(library)
        except OSError as error:
            missing.append(f"{library} ({error})")
    if missing:
        sys.stderr.write(f"CUDA libraries not found for {provider.name}: {missing}\n")
        return 1
    sys.stdout.write(f"{provider.name}: CUDA libraries resolve from {', '.join(folders)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
