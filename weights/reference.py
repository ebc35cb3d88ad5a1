"""timm's reference models for checking our conversion (needs torch, timm).

timm's ``legacy_*`` models are exactly the architectures of the 2017-2019
published checkpoints; timm's ``ResNet`` variants (``seresnet50``,
``seresnextaa101d_32x8d``, ...) are our models of the same names.
`conditioned_reference` builds one with random weights that behaves
numerically like a trained network (see its docstring), so that comparing
logits tests the weight mapping rather than float32 rounding.
"""

# Our registry name -> timm's legacy_* model: the published 2017-2019 files.
TIMM_NAMES = {
    "se_resnet18": "legacy_seresnet18",
    "se_resnet34": "legacy_seresnet34",
    "se_resnet50": "legacy_seresnet50",
    "se_resnet101": "legacy_seresnet101",
    "se_resnet152": "legacy_seresnet152",
    "se_resnext26_32x4d": "legacy_seresnext26_32x4d",
    "se_resnext50_32x4d": "legacy_seresnext50_32x4d",
    "se_resnext101_32x4d": "legacy_seresnext101_32x4d",
    "senet154": "legacy_senet154",
}
# timm's ResNet-based SE family: our models of the same names ("timm" layout).
TIMM_RESNETS = (
    "seresnet50",
    "seresnet152d",
    "seresnext26d_32x4d",
    "seresnext26t_32x4d",
    "seresnext50_32x4d",
    "seresnext101_32x4d",
    "seresnext101_64x4d",
    "seresnext101_32x8d",
    "seresnext101d_32x8d",
    "seresnextaa101d_32x8d",
    "seresnextaa201d_32x8d",
)
# Every model with a timm counterpart: our name -> timm's name.
TIMM_MODELS = dict(TIMM_NAMES, **{name: name for name in TIMM_RESNETS})


def conditioned_reference(name, seed=0, calibration_size=64, **timm_kwargs):
    """timm's reference for ``name`` (a key of `TIMM_MODELS`) with random
    weights, conditioned like a trained network (`condition`), in eval mode.

    ``timm_kwargs`` go to ``timm.create_model`` (e.g. ``layers=(1, 1, 1, 1)``
    for a shallower model of the same design, ``in_chans``).
    """
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(TIMM_MODELS[name], pretrained=False, **timm_kwargs)
    return condition(model, calibration_size=calibration_size)


def condition(model, calibration_size=64):
    """Conditions a randomly initialised timm SE-ResNet/ResNeXt like a trained
    network; returns it in eval mode.

    A randomly initialised 100-layer network is chaotic: float32 rounding
    alone moves its logits by more than 1e-4 (measured: torch float32 vs
    float64 differ by 1.3e-4 on SE-ResNet-101). So, as in a trained network,
    every BN's statistics are those of its actual inputs (estimated in train
    mode on a batch of 8 random images) with random affine parameters, and
    the last BN of each residual branch has a small scale. The network's own
    float32 noise is then ~1e-6, while every tensor (statistics included) is distinct and
    non-trivial. In both timm families (``legacy_*`` and ``ResNet``) the
    last BN of a residual branch is ``bn3`` of a bottleneck block, ``bn2`` of
    a basic one, inside the ``layer1`` .. ``layer4`` stages.

    ``calibration_size``: the side of the random images the statistics are
    estimated on; even, so that timm's anti-aliased models (whose 2x2 pools
    need even sides at every stage) accept them.
    """
    import torch

    last_bn = "bn3" if hasattr(model.layer1[0], "bn3") else "bn2"
    in_chans = next(
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ).in_channels
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.reset_running_stats()
                module.momentum = None  # cumulative average
        model.train()
        model(torch.randn(8, in_chans, calibration_size, calibration_size))
        for module_name, module in model.named_modules():
            if module_name.startswith("layer") and module_name.endswith("." + last_bn):
                module.weight.uniform_(0.1, 0.4)
    return model.eval()
