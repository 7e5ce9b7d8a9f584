"""Segmentation models and checkpoints.

Models come from segmentation-models-pytorch (SMP) by name. Nothing is downloaded: encoder weights are either
``None`` (random initialisation) or a local ``.pth``/``.safetensors`` file holding the encoder's state dict.

Normalisation policy (``norm``):

``"frozen"`` (default)
    BatchNorm layers use their running statistics in training too (they are swapped for
    :class:`FrozenBatchNorm2d`, a BatchNorm2d whose ``train()`` keeps it in eval mode); their affine parameters
    stay trainable. This is what makes the window gradients sum to the whole-scene gradient: no layer sees
    statistics across a window or a batch.
``"batch"``
    Ordinary BatchNorm (batch statistics in training). Window gradients are then approximate.
``"group"``
    BatchNorm2d replaced by GroupNorm (affine parameters copied). GroupNorm normalises over each window's extent,
    so it does not make PGD exact either.

Checkpoint files (schema, header, save/load, resume state) belong to :mod:`rs_pgd.checkpoint`;
:func:`model_from_checkpoint` rebuilds the model one describes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from rs_pgd.errors import CheckpointError, ModelError

NORM_POLICIES = ("frozen", "batch", "group")


# -- model specification ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model: SMP architecture and encoder names, band and class counts, norm policy."""

    arch: str = "Unet"
    encoder: str = "resnet34"
    in_channels: int = 3
    classes: int = 2
    norm: str = "frozen"

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """Rebuild from :meth:`to_dict` output; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def build(self, encoder_weights: str | os.PathLike | None = None) -> tuple[nn.Module, int]:
        """Build the model (see :func:`build_model`)."""
        return build_model(
            self.arch, self.encoder, self.in_channels, self.classes, encoder_weights, self.norm
        )


# -- building -----------------------------------------------------------------------------------------------
def build_model(
    arch: str = "Unet",
    encoder: str = "resnet34",
    in_channels: int = 3,
    classes: int = 2,
    encoder_weights: str | os.PathLike | None = None,
    norm: str = "frozen",
) -> tuple[nn.Module, int]:
    """Build an SMP segmentation model without any download.

    Parameters
    ----------
    arch : str
        SMP architecture name (case-insensitive), e.g. ``"Unet"``, ``"FPN"``, ``"DeepLabV3Plus"``.
    encoder : str
        SMP encoder name, e.g. ``"resnet34"``.
    in_channels, classes : int
        Number of input bands and of output classes.
    encoder_weights : path or None
        ``None`` for random weights, or a local ``.pth``/``.pt``/``.safetensors`` file holding the encoder's
        state dict (keys with or without an ``encoder.`` prefix). 3-band weights are adapted to other band
        counts the way SMP does.
    norm : {"frozen", "batch", "group"}
        Normalisation policy (see the module docstring).

    Returns
    -------
    model : torch.nn.Module
        The model, in training mode.
    output_stride : int
        The encoder's downsampling factor (32 for most SMP encoders): window origins and sizes must be multiples
        of it.
    """
    import segmentation_models_pytorch as smp

    _check_arch(arch)
    _check_encoder(encoder)
    _check_norm(norm)
    if int(in_channels) < 1 or int(classes) < 1:
        raise ModelError(
            f"in_channels={in_channels} and classes={classes} must be positive; give the band and class counts"
        )
    weights = _read_encoder_weights(encoder_weights) if encoder_weights is not None else None
    model = smp.create_model(
        arch, encoder_name=encoder, encoder_weights=None, in_channels=int(in_channels), classes=int(classes)
    )
    if weights is not None:
        model = _load_encoder_weights(
            model, weights, arch, encoder, int(in_channels), int(classes), encoder_weights
        )
    apply_norm_policy(model, norm)
    return model, output_stride_of(model)


def output_stride_of(model: nn.Module, default: int = 32) -> int:
    """The downsampling factor of a model's encoder (``encoder.output_stride``, or ``model.output_stride``)."""
    for owner in (getattr(model, "encoder", None), model):
        value = getattr(owner, "output_stride", None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def architecture_names() -> list[str]:
    """The SMP architecture names, as SMP spells them."""
    import segmentation_models_pytorch as smp

    return [cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()]


def encoder_names() -> list[str]:
    """The SMP encoder names."""
    import segmentation_models_pytorch as smp

    return list(smp.encoders.get_encoder_names())


def _check_arch(arch: str) -> None:
    import segmentation_models_pytorch as smp

    if not isinstance(arch, str) or arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ModelError(f"unknown architecture {arch!r}; choose one of {', '.join(architecture_names())}")


def _check_encoder(encoder: str) -> None:
    names = encoder_names()
    if encoder not in names:
        shown = ", ".join(names[:12])
        raise ModelError(
            f"unknown encoder {encoder!r}; choose an SMP encoder such as {shown} ... ({len(names)} in all, "
            "see segmentation_models_pytorch.encoders.get_encoder_names())"
        )


def _check_norm(norm: str) -> None:
    if norm not in NORM_POLICIES:
        raise ModelError(f"unknown norm policy {norm!r}; choose one of {', '.join(NORM_POLICIES)}")


# -- encoder weights from a local file ----------------------------------------------------------------------
def _read_encoder_weights(source) -> dict[str, torch.Tensor]:
    if not isinstance(source, (str, os.PathLike)):
        raise ModelError(f"encoder_weights must be None or a local file path, not {type(source).__name__}")
    path = Path(source)
    if not path.suffix and not path.exists():
        raise ModelError(
            f"encoder_weights {str(source)!r} is not a file: rs-pgd never downloads weights; "
            "give a local .pth or .safetensors file of the encoder's state dict, or None"
        )
    if not path.is_file():
        raise ModelError(f"encoder weights file {str(path)!r} not found; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file is unusable
        raise ModelError(
            f"cannot read encoder weights {str(path)!r} ({type(exc).__name__}); give a state dict saved with torch.save or safetensors"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            f"encoder weights {str(path)!r} are not a state dict of tensors; save encoder.state_dict()"
        )
    if state and all(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items()}
    return state


def _load_encoder_weights(model, state, arch, encoder, in_channels, classes, source):
    import segmentation_models_pytorch as smp

    error = _try_load(model.encoder, state)
    if error is None:
        return model
    # 3-band (e.g. RGB) weights: load them into a 3-band model, then adapt the first conv the way SMP does
    if in_channels != 3:
        model3 = smp.create_model(
            arch, encoder_name=encoder, encoder_weights=None, in_channels=3, classes=classes
        )
        if _try_load(model3.encoder, state) is None:
            model3.encoder.set_in_channels(in_channels, pretrained=True)
            return model3
    raise ModelError(
        f"encoder weights {str(source)!r} do not fit encoder {encoder!r}: {error}; give weights of that encoder"
    )


def _try_load(module: nn.Module, state: dict) -> str | None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        return f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        return (
            f"shape mismatch in {wrong[0]} ({tuple(state[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)})"
        )
    module.load_state_dict(state, strict=True)
    return None


# -- normalisation policy -----------------------------------------------------------------------------------
class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that always normalises with its running statistics: ``train()`` keeps it in eval mode.

    Same parameters, buffers and state-dict keys as :class:`torch.nn.BatchNorm2d`; the affine weight and bias stay
    trainable unless frozen with :func:`set_norm_mode`.
    """

    def train(self, mode: bool = True):
        return super().train(False)


def apply_norm_policy(model: nn.Module, norm: str) -> nn.Module:
    """Apply a normalisation policy in place: swap BatchNorm2d layers for frozen ones or GroupNorm.

    ``"batch"`` leaves the model as is. Returns the model.
    """
    _check_norm(norm)
    if norm == "frozen":
        _swap_batchnorm(model, _frozen_copy, skip=FrozenBatchNorm2d)
        model.train(model.training)
    elif norm == "group":
        _swap_batchnorm(model, _groupnorm_copy, skip=())
    return model


def set_norm_mode(model: nn.Module, norm: str = "frozen", train_affine: bool = True) -> nn.Module:
    """Put normalisation layers in the mode a policy needs; call it after ``model.train()``.

    With ``"frozen"``, every BatchNorm layer is set to eval mode (running statistics) and its affine parameters
    are trainable only if ``train_affine``. Other policies change nothing. Returns the model.
    """
    _check_norm(norm)
    if norm != "frozen":
        return model
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for param in (module.weight, module.bias):
                if param is not None:
                    param.requires_grad_(train_affine)
    return model


def group_count(channels: int, preferred: int = 32) -> int:
    """The largest number of groups ``<= preferred`` that divides ``channels``."""
    for groups in range(min(preferred, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def _swap_batchnorm(model: nn.Module, make, skip) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d) and not isinstance(child, skip):
                setattr(parent, name, make(child))


def _frozen_copy(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **_factory_of(bn)
    )
    frozen.load_state_dict(bn.state_dict())
    _copy_requires_grad(bn, frozen)
    return frozen


def _groupnorm_copy(bn: nn.BatchNorm2d) -> nn.GroupNorm:
    gn = nn.GroupNorm(
        group_count(bn.num_features), bn.num_features, eps=bn.eps, affine=bn.affine, **_factory_of(bn)
    )
    if bn.affine:
        with torch.no_grad():
            gn.weight.copy_(bn.weight)
            gn.bias.copy_(bn.bias)
        _copy_requires_grad(bn, gn)
    return gn


def _copy_requires_grad(src: nn.Module, dst: nn.Module) -> None:
    if src.weight is not None:
        dst.weight.requires_grad_(src.weight.requires_grad)
        dst.bias.requires_grad_(src.bias.requires_grad)


def _factory_of(module: nn.Module) -> dict:
    """``device`` and floating ``dtype`` of a module's tensors, to build its replacement alike."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return {"device": tensor.device, "dtype": tensor.dtype}
    return {}


# -- gradient checkpointing ---------------------------------------------------------------------------------
class CheckpointedModule(nn.Module):
    """Runs a wrapped module under :func:`torch.utils.checkpoint.checkpoint` while training with gradients.

    Activations inside the module are recomputed in the backward pass instead of stored. State-dict keys are
    those of the wrapped module (no ``module.`` level), so checkpoints do not depend on checkpointing. Use it with
    frozen (or no) BatchNorm: the recomputation would update train-mode running statistics twice.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self._register_state_dict_hook(_drop_wrapper_prefix)
        self.register_load_state_dict_pre_hook(_add_wrapper_prefix)

    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self.module, *args, use_reentrant=False, **kwargs)
        return self.module(*args, **kwargs)


def _drop_wrapper_prefix(module, state_dict, prefix, local_metadata):
    inner = prefix + "module."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)
    return state_dict


def _add_wrapper_prefix(
    module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
):
    inner = prefix + "module."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Wrap an SMP model's encoder stages and decoder blocks in :class:`CheckpointedModule`, in place.

    Encoder stages are ``layer1..layer4`` (ResNet-style encoders), else the items of ``encoder.blocks``
    (timm/EfficientNet-style), else the whole encoder; decoder blocks are the items of ``decoder.blocks``, else
    the whole decoder. Library code is not patched; only submodules are replaced by wrappers. Returns the number
    of wrapped modules (0 if already enabled or nothing fits).
    """
    count = 0
    for part_name in ("encoder", "decoder"):
        part = getattr(model, part_name, None)
        if part is None or isinstance(part, CheckpointedModule):
            continue
        stages = [
            (part, n)
            for n in ("layer1", "layer2", "layer3", "layer4")
            if isinstance(getattr(part, n, None), nn.Module)
        ]
        blocks = getattr(part, "blocks", None)
        if not stages and isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            stages = [(blocks, n) for n, _ in blocks.named_children()]
        if not stages:
            stages = [(model, part_name)]
        for owner, name in stages:
            child = getattr(owner, name)
            if not isinstance(child, CheckpointedModule):
                setattr(owner, name, CheckpointedModule(child))
                count += 1
    return count


# -- checkpoints --------------------------------------------------------------------------------------------
def model_from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, object]:
    """Rebuild the model stored in a checkpoint: ``(model in eval mode, CheckpointMeta)``.

    The file is read by :func:`rs_pgd.checkpoint.load` (safetensors, no unpickling).
    """
    from rs_pgd.checkpoint import load

    state, meta = load(path)
    try:
        spec = ModelSpec.from_dict(meta.model)
        model, _ = spec.build()
    except (ModelError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} names a model that cannot be built: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"checkpoint {str(path)!r} weights do not fit its model ({first}); the file may be damaged"
        ) from None
    return model.to(device).eval(), meta
