"""Built-in model zoo: published architectures written in plain torch (no torchvision).

Every model is built with random weights drawn from a fixed seed, so the same name always gives
the same weights (and the same content hash) without any download. The architectures follow
the published definitions closely enough that parameter counts match the reference figures in
:data:`REFERENCE_PARAMS` (checked by the tests to within 1%).

The CNN definitions live in :mod:`costmeter.models.zoo.cnn`, built from the layer library
:mod:`costmeter.models.layers` and parameterised by width and depth (the family variants of
:mod:`costmeter.models.families` are those builders at other widths and depths); the
transformers and the tiny test models are here. Torch is imported inside functions only, so
importing this module is cheap.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ZOO_SEED = 0
# Bump when initialization or calibration changes the weights of existing zoo models: it is part
# of their content hash (architecture changes are caught by the hash on their own).
ZOO_RECIPE = 1

# Reference parameter counts and their sources (the zoo must match within 1%, see tests).
# torchvision's figures are the "num_params" of its documented pretrained weights.
REFERENCE_PARAMS: dict[str, tuple[int, str]] = {
    "resnet18": (11_689_512, "torchvision ResNet18_Weights; He et al. 2016, arXiv:1512.03385"),
    "resnet50": (25_557_032, "torchvision ResNet50_Weights; He et al. 2016, arXiv:1512.03385"),
    "mobilenet_v2": (
        3_504_872, "torchvision MobileNet_V2_Weights; Sandler et al. 2018, arXiv:1801.04381"
    ),
    "mobilenet_v3_small": (
        2_542_856, "torchvision MobileNet_V3_Small_Weights; Howard et al. 2019, arXiv:1905.02244"
    ),
    "mobilenet_v3_large": (
        5_483_032, "torchvision MobileNet_V3_Large_Weights; Howard et al. 2019, arXiv:1905.02244"
    ),
    "efficientnet_b0": (
        5_288_548, "torchvision EfficientNet_B0_Weights; Tan & Le 2019, arXiv:1905.11946"
    ),
    "vit_tiny": (
        5_717_416, "timm vit_tiny_patch16_224 (DeiT-Ti: Touvron et al. 2021, 5.7M)"
    ),
    "bert_tiny": (
        4_400_000, "Turc et al. 2019, arXiv:1908.08962: BERT-Tiny (L=2, H=128) 4.4M, rounded"
    ),
}


@dataclass(frozen=True)
class ZooInput:
    """One input of a zoo model, batch dimension excluded."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: int | None = None
    high: int | None = None


@dataclass(frozen=True)
class ZooEntry:
    """How to build one zoo model and what it takes as input."""

    name: str
    build: Callable[[], Any]
    inputs: tuple[ZooInput, ...]
    description: str


def image_inputs(resolution: int = 224) -> tuple[ZooInput, ...]:
    """The input spec of an image classifier at ``resolution`` (pixels per side, RGB)."""
    return (ZooInput("input", (3, resolution, resolution)),)


IMAGE_224 = image_inputs(224)
BERT_SEQ_LEN = 128
BERT_VOCAB = 30522


def _tiny_mlp() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def _tiny_cnn() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU6(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def _self_attention(torch: Any, x: Any, qkv: Any, proj: Any, heads: int) -> Any:
    """Multi-head self-attention written as explicit MatMul/Softmax (exports as a MatMul chain)."""
    batch, tokens, dim = x.shape
    head_dim = dim // heads
    q, k, v = qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (head_dim**-0.5)
    context = torch.matmul(scores.softmax(dim=-1), v)
    return proj(context.transpose(1, 2).reshape(batch, tokens, dim))


def _vit_tiny() -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
            super().__init__()
            self.heads = heads
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

        def forward(self, x: Any) -> Any:
            x = x + _self_attention(torch, self.norm1(x), self.qkv, self.proj, self.heads)
            return x + self.mlp(self.norm2(x))

    class VisionTransformer(nn.Module):
        def __init__(self, image=224, patch=16, dim=192, depth=12, heads=3, classes=1000) -> None:
            super().__init__()
            tokens = (image // patch) ** 2 + 1
            self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block(dim, heads, 4 * dim) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, classes)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)

        def forward(self, x: Any) -> Any:
            x = self.patch_embed(x).flatten(2).transpose(1, 2)
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1) + self.pos_embed
            x = self.norm(self.blocks(x))
            return self.head(x[:, 0])

    return VisionTransformer()


def _bert_tiny() -> Any:
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self, hidden: int, heads: int, intermediate: int) -> None:
            super().__init__()
            self.heads = heads
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)
            self.attn_out = nn.Linear(hidden, hidden)
            self.attn_norm = nn.LayerNorm(hidden, eps=1e-12)
            self.ffn = nn.Sequential(
                nn.Linear(hidden, intermediate), nn.GELU(), nn.Linear(intermediate, hidden)
            )
            self.ffn_norm = nn.LayerNorm(hidden, eps=1e-12)

        def forward(self, x: Any) -> Any:
            batch, tokens, hidden = x.shape
            head_dim = hidden // self.heads

            def split(t: Any) -> Any:
                return t.reshape(batch, tokens, self.heads, head_dim).transpose(1, 2)

            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = torch.matmul(q, k.transpose(-2, -1)) * (head_dim**-0.5)
            context = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2)
            x = self.attn_norm(x + self.attn_out(context.reshape(batch, tokens, hidden)))
            return self.ffn_norm(x + self.ffn(x))

    class BertEncoder(nn.Module):
        """BERT encoder + pooler (Devlin et al. 2019); token types are all zero, no mask."""

        def __init__(self, vocab=BERT_VOCAB, hidden=128, layers=2, heads=2, inter=512) -> None:
            super().__init__()
            self.word_embeddings = nn.Embedding(vocab, hidden)
            self.position_embeddings = nn.Embedding(512, hidden)
            self.token_type_embeddings = nn.Embedding(2, hidden)
            self.embed_norm = nn.LayerNorm(hidden, eps=1e-12)
            self.layers = nn.Sequential(*[Layer(hidden, heads, inter) for _ in range(layers)])
            self.pooler = nn.Linear(hidden, hidden)
            self.register_buffer("position_ids", torch.arange(512).unsqueeze(0), persistent=False)
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(module.weight, std=0.02)
                if isinstance(module, nn.Linear):
                    nn.init.zeros_(module.bias)

        def forward(self, input_ids: Any) -> tuple[Any, Any]:
            positions = self.position_ids[:, : input_ids.shape[1]]
            x = (
                self.word_embeddings(input_ids)
                + self.position_embeddings(positions)
                + self.token_type_embeddings.weight[0]
            )
            x = self.layers(self.embed_norm(x))
            return x, torch.tanh(self.pooler(x[:, 0]))

    return BertEncoder()


def _registry() -> dict[str, ZooEntry]:
    from costmeter.models.zoo import cnn as zoo_cnn

    cnn = "ImageNet classifier, 3x224x224 input, 1000 classes"
    entries = [
        ZooEntry("resnet18", zoo_cnn.resnet18, IMAGE_224, f"ResNet-18 {cnn}"),
        ZooEntry("resnet50", zoo_cnn.resnet50, IMAGE_224, f"ResNet-50 {cnn}"),
        ZooEntry("mobilenet_v2", zoo_cnn.mobilenet_v2, IMAGE_224, f"MobileNetV2 {cnn}"),
        ZooEntry(
            "mobilenet_v3_small", zoo_cnn.mobilenet_v3_small, IMAGE_224, f"MobileNetV3-S {cnn}"
        ),
        ZooEntry(
            "mobilenet_v3_large", zoo_cnn.mobilenet_v3_large, IMAGE_224, f"MobileNetV3-L {cnn}"
        ),
        ZooEntry("efficientnet_b0", zoo_cnn.efficientnet_b0, IMAGE_224, f"EfficientNet-B0 {cnn}"),
        ZooEntry("vit_tiny", _vit_tiny, IMAGE_224, "ViT-Ti/16 (dim 192, depth 12, 3 heads), 224px"),
        ZooEntry(
            "bert_tiny",
            _bert_tiny,
            (ZooInput("input_ids", (BERT_SEQ_LEN,), "int64", 0, BERT_VOCAB),),
            "BERT-Tiny encoder (2 layers, hidden 128, 2 heads), 128 token ids",
        ),
        ZooEntry("tiny_mlp", _tiny_mlp, (ZooInput("input", (64,)),), "3 Linear layers, 64->10"),
        ZooEntry(
            "tiny_cnn", _tiny_cnn, (ZooInput("input", (3, 32, 32)),),
            "3 convs (BN, ReLU, ReLU6) on 3x32x32",
        ),
    ]
    return {e.name: e for e in entries}


def zoo_entries() -> dict[str, ZooEntry]:
    """All zoo entries by name (registration order)."""
    return _registry()


def build_zoo_model(name: str) -> Any:
    """Build zoo model ``name`` in eval mode with weights from :data:`ZOO_SEED`, BatchNorm
    statistics calibrated on one seeded input (see :func:`build_seeded`).

    The global torch RNG state is left untouched. Raises KeyError for unknown names (the caller,
    ``models.source``, turns that into a ConfigError with suggestions).
    """
    entry = _registry()[name]
    return build_seeded(entry.build, entry.inputs)


def build_seeded(build: Callable[[], Any], inputs: tuple[ZooInput, ...] | None = None) -> Any:
    """``build()`` with the torch RNG seeded from :data:`ZOO_SEED`, in eval mode.

    The same builder gives the same weights every time, and the global torch RNG state is left
    untouched. With ``inputs``, BatchNorm running statistics are set from one seeded random
    input of that spec (:func:`_calibrate_batchnorm`); without, they keep their initial values.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ZOO_SEED)
        module = build()
        if inputs is not None:
            _calibrate_batchnorm(torch, module, inputs)
    return module.eval()


def _calibrate_batchnorm(torch: Any, module: Any, inputs: tuple[ZooInput, ...]) -> None:
    """Set BatchNorm running statistics from one seeded random input (batch of 1).

    With random weights and unit running statistics, deep CNNs give outputs that vanish
    (~1e-9) or explode, which makes output-parity checks between runtimes meaningless. After
    this pass every BatchNorm normalizes its input to roughly unit scale, so outputs are O(1).
    """
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or any(spec.dtype != "float32" for spec in inputs):
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, exactly its statistics
    batch = [torch.randn((1, *spec.shape)) for spec in inputs]
    module.train()
    with torch.no_grad():
        module(*batch)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
