"""timm's reference models for checking our conversion (needs torch, timm).

timm's ``legacy_*`` models are exactly the architectures of the published
checkpoints. `conditioned_reference` builds one with random weights that
behaves numerically like a trained network (see its docstring), so that
comparing logits tests the weight mapping rather than float32 rounding.
"""

# Our registry name -> timm's model name.
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


def conditioned_reference(name, seed=0):
    """timm's reference for ``name`` with random weights, conditioned like a
    trained network, in eval mode.

    A randomly initialised 100-layer network is chaotic: float32 rounding
    alone moves its logits by more than 1e-4 (measured: torch float32 vs
    float64 differ by 1.3e-4 on SE-ResNet-101). So, as in a trained network,
    every BN's statistics are those of its actual inputs (estimated in train
    mode on random images) with random affine parameters, and the last BN of
    each residual branch has a small scale. The network's own float32 noise
    is then ~1e-6, while every tensor (statistics included) is distinct and
    non-trivial.
    """
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(TIMM_NAMES[name])
    last_bn = "bn3" if hasattr(model.layer1[0], "bn3") else "bn2"
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.reset_running_stats()
                module.momentum = None  # cumulative average
        model.train()
        for _ in range(2):
            model(torch.randn(8, 3, 64, 64))
        for module_name, module in model.named_modules():
            if module_name.startswith("layer") and module_name.endswith("." + last_bn):
                module.weight.uniform_(0.1, 0.4)
    return model.eval()
