"""Models: building SMP models by name without downloads, norm policies, gradient checkpointing, checkpoints."""

import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rs_pgd.errors import CheckpointError, ModelError
from rs_pgd.models import (
    CheckpointedModule,
    FrozenBatchNorm2d,
    ModelSpec,
    build_model,
    enable_grad_checkpointing,
    group_count,
    load_checkpoint,
    load_training_state,
    model_from_checkpoint,
    save_checkpoint,
    save_training_state,
    set_norm_mode,
    training_state_path,
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


# -- checkpoints --------------------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    spec = ModelSpec("Unet", "resnet18", 5, 3, "frozen")
    model, _ = spec.build()
    meta = {"model": spec.to_dict(), "classes": {"values": [1, 2, 3]}, "tile": 256, "note": "été"}
    path = save_checkpoint(tmp_path / "model.safetensors", model, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file left behind
    state, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    rebuilt, meta2 = model_from_checkpoint(path)
    assert meta2 == meta and not rebuilt.training
    x = torch.randn(1, 5, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_pickle_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as handle:
        pickle.dump(_Payload(str(marker)), handle)
    torch_path = tmp_path / "model.pth"
    torch.save({"x": _Payload(str(marker))}, torch_path)
    for candidate in (path, torch_path):
        with pytest.raises(CheckpointError, match="not an rs-pgd checkpoint"):
            load_checkpoint(candidate)
        with pytest.raises(CheckpointError, match="not an rs-pgd checkpoint"):
            model_from_checkpoint(candidate)
    state_file = training_state_path(path)
    torch.save({"x": _Payload(str(marker))}, state_file)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_training_state(path)
    assert not marker.exists()
    with open(path, "rb") as handle:  # the payload is live: unpickling it would have written the marker
        pickle.load(handle)
    assert marker.exists()


def test_other_files_are_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="no rs-pgd metadata"):
        load_checkpoint(plain)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not an rs-pgd checkpoint"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    save_checkpoint(tmp_path / "good.safetensors", {"w": torch.ones(1000)}, {"model": {}})
    truncated.write_bytes((tmp_path / "good.safetensors").read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not an rs-pgd checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "bad.safetensors", {"w": torch.ones(1)}, {"f": object()})


def test_training_state_round_trip(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=10)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": 3,
        "rng": torch.get_rng_state(),
    }
    path = tmp_path / "model.safetensors"
    save_training_state(path, state)
    loaded = load_training_state(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["rng"], state["rng"])
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    assert torch.equal(
        fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    with pytest.raises(CheckpointError, match="only tensors and plain containers"):
        save_training_state(path, {"optimizer": optimizer})
    with pytest.raises(CheckpointError, match="not found"):
        load_training_state(tmp_path / "other.safetensors")


class _Payload:
    """Unpickling this object writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))
