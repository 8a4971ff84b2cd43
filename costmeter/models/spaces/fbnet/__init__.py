"""FBNet search space, HW-NAS-Bench's CIFAR-100 variant: encodings, features, torch network.

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
classifier to 100 classes. MACs range from 11.6 M (all skips) to 105 M (all ``k5_e6``).

Checked against the data: (filled in below by the measured figures)
"""
from __future__ import annotations

from typing import Any

from costmeter.errors import UnsupportedError
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


def enumerate_archs() -> list[str]:
    """Not available: the space holds 9^22 architectures."""
    raise UnsupportedError(f"fbnet has {SIZE:.3g} architectures and cannot be enumerated; "
                           "use sample(n) instead")


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
    "enumerate_archs",
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
    "to_codes",
]
