"""FBNet search space, HW-NAS-Bench's CIFAR-100 variant: encodings, features, torch network
(lookup-table blocks in :mod:`.lut`).

Blocks (Wu et al., "FBNet", CVPR 2019): ``kK_eE`` is an inverted residual -- 1x1 expansion to
``E x c_in`` channels, KxK depthwise conv, 1x1 linear projection, BN after each conv, ReLU
after the first two, the input added back where the shapes match; ``_g2`` makes both 1x1
convs grouped (2 groups) with a channel shuffle after the first; ``skip`` is an identity where
the shapes allow and a 1x1 conv (with the stride) + BN + ReLU where they do not (the first
layer of stages 2-7: 6 of the 22 layers), as in HW-NAS-Bench's network.

Macro network (HW-NAS-Bench, Li et al., ICLR 2021, CIFAR setting), input 3x32x32:
3x3 stem conv to 16 channels, stride 1, + BN + ReLU; seven stages of 1/4/4/4/4/4/1 searchable
layers with widths 16/24/32/64/112/184/352 and first-layer strides 1/1/2/2/1/2/1 (feature maps
32, 32, 16, 8, 8, 4, 4); a 1x1 head conv to 1504 + BN + ReLU; global average pool; linear
classifier to 100 classes. MACs range from 11.6 M (all ``skip``) to 161 M (all ``k5_e6``) at
batch 1; :func:`macs` and :func:`param_count` equal torch's FlopCounterMode / 2 and the
module's parameter count (tested).

Checked against the data (the 5,000 architectures x 21 devices of the HELP release, Spearman
rho of an analytic feature against each latency column):

- MACs: GPUs at batch 1 0.19-0.24, batch 32 0.36-0.52, batch 64 0.62-0.67; Xeon CPUs
  0.64-0.69; pixel3 0.949, samsung_a50 0.87, samsung_s7 0.70, essential_ph_1 0.70. Low on the
  GPUs because a 32x32 network of 22 small layers is launch-bound there, not because the widths
  are wrong: the count of tensor ops (``n_ops``, which depends on the blocks and on where
  ``skip`` is an identity and residuals are added, not on widths) reaches 0.94-0.99 at batch 1,
  and the activation elements 0.88-0.90 at batch 64. So the GPU columns check the layer
  structure; the widths and strides are checked on pixel3:
- pixel3 is compute-bound and an exact sum of per-(layer, block) table entries (least squares on
  the 198 one-hot columns leaves 5e-14 ms), so it tests the shapes directly: the fitted entries
  are identical for layers 3-5, 7-9, 11-13, 15-17 and 19-21 (same shapes here) and differ for
  layers 1 and 2; they rank like this module's per-block MACs (rho 0.93 over the 176 entries).
- Alternatives score worse on pixel3's MACs rho: ImageNet strides (1/2/2/2/1/2/1) 0.906,
  expansion on the output width 0.900 (chosen network 0.949). A stride-2 stem scales every
  layer alike and cannot be told apart by ranks; the source's CIFAR setting has stride 1.
"""
from __future__ import annotations

from typing import Any

from costmeter.models.spaces.fbnet.encoding import (
    BLOCKS,
    HEAD_WIDTH,
    LAYERS,
    N_LAYERS,
    NUM_CLASSES,
    RESOLUTION,
    SKIP_IS_CONV,
    STAGE_DEPTHS,
    STAGE_STRIDES,
    STAGE_WIDTHS,
    STEM_WIDTH,
    canonical,
    check_codes,
    format_arch,
    format_many,
    layer_name,
    parse,
    sample,
    sample_codes,
    to_codes,
)
from costmeter.models.spaces.fbnet.analytic import (
    FEATURE_SCHEMA_VERSION,
    feature_matrix,
    feature_names,
    features,
    macs,
    onehot_feature_names,
    param_count,
)

NAME = "fbnet"
SIZE = len(BLOCKS) ** N_LAYERS  # 9^22, about 9.8e20
#: optional parts (see :mod:`costmeter.models.spaces`): one-hot layer columns, lookup-table
#: blocks (:mod:`.lut`); far too large to enumerate or index
CAPABILITIES: frozenset[str] = frozenset({"onehot", "lut"})


def to_array(archs: Any) -> Any:
    """Canonical ``(n, 22)`` int8 op codes of many architectures (vectorised for canonical
    strings; see :func:`~costmeter.models.spaces.fbnet.encoding.to_codes`)."""
    return to_codes(archs)


def input_shape(arch: Any = None, batch: int = 1) -> tuple[int, ...]:
    """Input tensor shape (NCHW): CIFAR images, 3x32x32, for every architecture."""
    return (int(batch), 3, RESOLUTION, RESOLUTION)


def build_torch(arch: Any, num_classes: int = NUM_CLASSES) -> Any:
    """The CIFAR-100 network of ``arch`` as a ``torch.nn.Module`` (random init, eval mode)."""
    from costmeter.models.spaces.fbnet.torch_module import FBNetCifar

    codes = to_codes([arch] if not hasattr(arch, "shape") else arch)[0]
    return FBNetCifar(codes.tolist(), num_classes=num_classes).eval()


__all__ = [
    "BLOCKS",
    "CAPABILITIES",
    "FEATURE_SCHEMA_VERSION",
    "HEAD_WIDTH",
    "LAYERS",
    "NAME",
    "N_LAYERS",
    "NUM_CLASSES",
    "SIZE",
    "SKIP_IS_CONV",
    "STAGE_DEPTHS",
    "STAGE_STRIDES",
    "STAGE_WIDTHS",
    "STEM_WIDTH",
    "build_torch",
    "canonical",
    "check_codes",
    "feature_matrix",
    "feature_names",
    "features",
    "format_arch",
    "format_many",
    "input_shape",
    "layer_name",
    "macs",
    "onehot_feature_names",
    "param_count",
    "parse",
    "sample",
    "sample_codes",
    "to_array",
    "to_codes",
]
