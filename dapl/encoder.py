"""The frozen image tower at one precision (fp32, bf16, fp16), with a ResNet's BatchNorms folded at reduced
precision: what extraction runs, and what ``auto`` precision resolves to on this machine."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from dapl.clip import ClipBundle

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# `auto` on a CPU with native bf16. Measured on the toy benchmark (12 pairs × 3 seeds, docs/PERFORMANCE.md,
# block precision-cpu) with the stable toy recipe: bf16 features (BatchNorms folded) moved the DAPL average by +0.27
# points and zero-shot by -0.07, within the 0.3-point limit issue 13 sets, so `auto` picks bf16 there (2.55x faster
# extraction). Rerun `python -m bench.precision` after changing the encoder path: the margin is small.
AUTO_CPU_BF16 = True


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in ``/proc/cpuinfo`` (torch's capability string does not say)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device | str, native_bf16: bool | None = None) -> str:
    """``auto`` -> fp16 on CUDA (what the released code ran); on a CPU with native bf16, bf16 only while
    ``AUTO_CPU_BF16`` allows it (the toy accuracy check passed); else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"features.precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if precision != "auto":
        if precision == "fp16" and dev.type == "cpu":
            pass  # allowed (slow on most CPUs), never chosen by auto
        return precision
    if dev.type == "cuda":
        return "fp16"
    if dev.type == "cpu" and AUTO_CPU_BF16 and (cpu_has_native_bf16() if native_bf16 is None else native_bf16):
        return "bf16"
    return "fp32"


def fold_batchnorm(visual: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` of a ModifiedResNet (open_clip's and OpenAI's CLIP ResNets) into the
    convolution that feeds it, in place; returns how many were folded.

    Why: the frozen BN is an affine map per channel, so ``bn(conv(x))`` is one convolution with scaled weights
    and a bias; oneDNN then skips a full pass over every activation (measured 1.15-1.17x for RN50/RN101 in
    bf16 on one core, docs/PERFORMANCE.md). The pairs are taken from the modules' own forward
    (``bnN(convN(.))``, downsample ``1(0(.))``), never guessed from the graph. Folding is done in fp32, before
    any cast, so a reduced-precision encoder rounds once per layer instead of twice.
    """
    from open_clip.modified_resnet import Bottleneck, ModifiedResNet

    def fold(parent: nn.Module, conv_name: str, bn_name: str) -> int:
        conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
        if not (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and not bn.training
                and bn.track_running_stats and conv.weight.dtype == torch.float32):
            return 0
        new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            new.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            new.bias.copy_(bias)
        new.requires_grad_(False)
        setattr(parent, conv_name, new.to(conv.weight.device))
        setattr(parent, bn_name, nn.Identity())
        return 1

    n = 0
    for m in list(visual.modules()):
        if isinstance(m, (Bottleneck, ModifiedResNet)):
            n += sum(fold(m, f"conv{i}", f"bn{i}") for i in (1, 2, 3))
        if isinstance(m, Bottleneck) and isinstance(m.downsample, nn.Sequential):
            n += fold(m.downsample, "0", "1")
    return n


class ImageEncoder:
    """The frozen visual tower at one precision: weights and inputs cast (the released code's ``.half()`` on
    GPU; measured faster than autocast on a bf16 CPU), channels_last for convolutional towers (measured faster
    for RN50 on CPU; a ViT only has its patch conv). At reduced precision a ResNet's BatchNorms are folded into
    its convolutions (:func:`fold_batchnorm`); fp32 keeps the model's own computation, the exact reference.
    The bundle's own model is left untouched."""

    def __init__(self, bundle: ClipBundle, precision: str = "fp32", fold_bn: bool = True):
        self.device = bundle.device
        self.precision = resolve_precision(precision, bundle.device)
        self.dtype = TORCH_DTYPES[self.precision]
        visual = bundle.model.visual
        convs = sum(isinstance(m, nn.Conv2d) for m in visual.modules())
        self.channels_last = convs > 1
        self.folded = 0
        if self.precision != "fp32" or self.channels_last:
            visual = copy.deepcopy(visual).eval()
            if self.precision != "fp32" and fold_bn:
                self.folded = fold_batchnorm(visual)
            visual = visual.to(self.dtype)
            if self.channels_last:
                visual = visual.to(memory_format=torch.channels_last)
        self.visual = visual.eval()

    @property
    def recipe(self) -> str:
        return f"{self.precision}{'-cl' if self.channels_last else ''}{'-bnfold' if self.folded else ''}"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.visual(x).float()
