"""The card's peak BF16 Tensor Core throughput, for ``benchmarks.throughput --peak_tflops``.

    python -m benchmarks.gpu_peak     # prints the peak of GPU 0 in TFLOP/s, or nothing if it is not listed

Dense figures (no structured sparsity) from NVIDIA's data sheets; the throughput runs of
``scripts/gpu_checks.sh`` use ``--precision bf16-mixed``, so this is the peak they are measured against.
Fewer FLOP/s than that are expected: MAML-style inner loops run in fp32, and a few-shot episode is small.
"""

from __future__ import annotations

# Most specific names first: "NVIDIA H100 PCIe" must not match "H100" (the SXM card's figure).
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.5),
    ("H200", 989.5),
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.0),
    ("H100", 989.5),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),  # SXM4 and PCIe
)


def peak_tflops(device_name: str) -> float | None:
    """The dense BF16 peak of a card named ``device_name`` (``torch.cuda.get_device_name()``), if listed."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


if __name__ == "__main__":
    import torch

    peak = peak_tflops(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    print("" if peak is None else peak)
