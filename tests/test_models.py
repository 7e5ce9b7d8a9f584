"""Models: building SMP models by name without downloads, norm policies, gradient checkpointing (checkpoint files:
test_checkpoint.py)."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rs_pgd.errors import ModelError
from rs_pgd.models import (
    CheckpointedModule,
    FrozenBatchNorm2d,
    ModelSpec,
    build_model,
    enable_grad_checkpointing,
    group_count,
    set_norm_mode,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batchnorms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# -- building -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bands", [6, 13])
def test_unet_resnet18_runs_on_many_bands(bands):
    model, output_stride = build_model("Unet", "resnet18", in_channels=bands, classes=3)
    assert output_stride == 32
    with torch.no_grad():
        out = model.eval()(torch.randn(1, bands, 64, 64))
    assert out.shape == (1, 3, 64, 64)


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(ModelError) as info:
        build_model("Unetz", "resnet18")
    message = str(info.value)
    assert "Unetz" in message and "Unet" in message and "FPN" in message and "DeepLabV3Plus" in message
    assert "\n" not in message


def test_unknown_encoder_lists_some_valid_ones():
    with pytest.raises(ModelError) as info:
        build_model("Unet", "resnet19")
    message = str(info.value)
    assert "resnet19" in message and "resnet18" in message and "resnet34" in message
    assert "\n" not in message and len(message) < 400


def test_unknown_norm_policy():
    with pytest.raises(ModelError, match="frozen, batch, group"):
        build_model("Unet", "resnet18", norm="layer")


def test_encoder_weights_are_never_downloaded(tmp_path):
    with pytest.raises(ModelError, match="never downloads"):
        build_model("Unet", "resnet18", encoder_weights="imagenet")
    with pytest.raises(ModelError, match="not found"):
        build_model("Unet", "resnet18", encoder_weights=tmp_path / "missing.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_weights_from_a_local_file(tmp_path, suffix):
    source, _ = build_model("Unet", "resnet18", in_channels=3, norm="batch")
    state = {k: v.clone() for k, v in source.encoder.state_dict().items()}
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    model, _ = build_model("Unet", "resnet18", in_channels=3, encoder_weights=path)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    # 3-band weights adapted to 6 bands the way SMP does
    six, _ = build_model("Unet", "resnet18", in_channels=6, encoder_weights=path)
    assert six.encoder.conv1.weight.shape[1] == 6
    assert torch.equal(six.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    with pytest.raises(ModelError, match="do not fit encoder 'resnet34'"):
        build_model("Unet", "resnet34", encoder_weights=path)


# -- norm policies ------------------------------------------------------------------------------------------
def test_frozen_batchnorm_stays_in_eval_mode_after_train():
    model, _ = build_model("Unet", "resnet18", in_channels=4, norm="frozen")
    model.train()
    bns = batchnorms(model)
    assert bns and all(isinstance(bn, FrozenBatchNorm2d) and not bn.training for bn in bns)
    assert model.training and model.decoder.training
    assert all(bn.weight.requires_grad for bn in bns)  # affine parameters stay trainable
    before = bns[0].running_mean.clone()
    model(torch.randn(2, 4, 64, 64) * 5 + 3).sum().backward()
    assert torch.equal(bns[0].running_mean, before)  # running statistics untouched by a training pass
    assert bns[0].weight.grad is not None


def test_batch_policy_keeps_ordinary_batchnorm_and_set_norm_mode_freezes_it():
    model, _ = build_model("Unet", "resnet18", norm="batch")
    model.train()
    assert all(type(bn) is nn.BatchNorm2d and bn.training for bn in batchnorms(model))
    set_norm_mode(model, "frozen", train_affine=False)
    assert all(not bn.training and not bn.weight.requires_grad for bn in batchnorms(model))
    assert model.encoder.conv1.weight.requires_grad


def test_group_policy_leaves_no_batchnorm_and_copies_affine_parameters():
    reference, _ = build_model("Unet", "resnet18", norm="batch")
    with torch.no_grad():
        reference.encoder.bn1.weight.uniform_(0.5, 1.5)
    torch.manual_seed(0)
    model, _ = build_model("Unet", "resnet18", norm="group")
    assert batchnorms(model) == []
    groups = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert groups and all(m.num_channels % m.num_groups == 0 for m in groups)
    from rs_pgd.models import apply_norm_policy

    apply_norm_policy(reference, "group")
    assert isinstance(reference.encoder.bn1, nn.GroupNorm)
    assert reference.encoder.bn1.weight.min() >= 0.5  # copied, not re-initialised to ones
    assert group_count(64) == 32 and group_count(48) == 24 and group_count(7) == 7 and group_count(37) == 1


def test_model_spec_round_trip():
    spec = ModelSpec("FPN", "resnet18", 6, 4, "group")
    assert ModelSpec.from_dict(spec.to_dict() | {"extra": 1}) == spec
    model, stride = spec.build()
    assert stride == 32 and not batchnorms(model)


# -- gradient checkpointing ---------------------------------------------------------------------------------
def test_grad_checkpointing_gives_the_same_gradients_and_state_dict_keys():
    torch.manual_seed(0)
    model, _ = build_model("Unet", "resnet18", in_channels=3, classes=2)
    keys = list(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    model.train()
    model(x).square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    wrapped = enable_grad_checkpointing(model)
    assert wrapped == 4 + len(model.decoder.blocks)
    assert enable_grad_checkpointing(model) == 0  # idempotent
    assert isinstance(model.encoder.layer1, CheckpointedModule)
    model(x).square().mean().backward()
    for a, p in zip(plain, model.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-5, atol=1e-7)
    assert list(model.state_dict()) == keys
    fresh, _ = build_model("Unet", "resnet18", in_channels=3, classes=2)
    fresh.load_state_dict(model.state_dict())
    model.load_state_dict(fresh.state_dict())  # loads into the wrapped model too
