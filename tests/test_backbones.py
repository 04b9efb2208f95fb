"""ResNet-12 and pretrained torchvision/timm backbones: shapes, inductive norms, meta-learning, weights."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from metaclinic.algorithms import MAML, ProtoNet
from metaclinic.data.task import TaskBatch
from metaclinic.models import PretrainedBackbone, ResNet12
from metaclinic.models.normalization import EpisodeNorm, forward_queries, support_rows
from metaclinic.models.pretrained import BackboneError, MissingPackageError

SMALL = (8, 16, 16, 32)


def tasks(
    count: int,
    n_way: int = 5,
    n_shot: int = 2,
    n_query: int = 3,
    shape: tuple[int, int, int] = (3, 28, 28),
    noise: float = 1.0,
    seed: int = 0,
) -> TaskBatch:
    """Episodes whose classes are new random 4x4 patterns (upsampled to the image size) under pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = shape

    def images(templates: torch.Tensor, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n_way).repeat_interleave(per_class)
        pixels = torch.randn(len(labels), *shape, generator=generator)
        return templates[labels] + noise * pixels, labels

    fields: dict[str, list[torch.Tensor]] = {"support_x": [], "support_y": [], "query_x": [], "query_y": []}
    for _ in range(count):
        patterns = torch.randn(n_way, channels, 4, 4, generator=generator)
        templates = F.interpolate(patterns, size=(height, width), mode="nearest")
        for part, per_class in (("support", n_shot), ("query", n_query)):
            x, y = images(templates, per_class)
            fields[f"{part}_x"].append(x)
            fields[f"{part}_y"].append(y)
    stacked = {k: torch.stack(v) for k, v in fields.items()}
    classes = torch.arange(n_way).expand(count, n_way)
    return TaskBatch(**stacked, classes=classes, episode_index=torch.arange(count))


# -- ResNet-12 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 28, 28), (1, 28, 28), (3, 64, 64)])
def test_resnet12_embeds_any_image_size_to_its_last_width(shape: tuple[int, int, int]):
    network = ResNet12(shape)
    assert network.out_features == 640
    assert network(torch.randn(2, *shape)).shape == (2, 640)
    small = ResNet12(shape, widths=SMALL, norm="running")
    assert small.out_features == 32 and small(torch.randn(2, *shape)).shape == (2, 32)
    # Four residual blocks of three 3x3 convolutions and a 1x1 shortcut each, none with a bias.
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    assert [m.kernel_size for m in convs] == [(3, 3), (3, 3), (3, 3), (1, 1)] * 4
    assert all(m.bias is None for m in convs)
    assert convs[0].in_channels == shape[0]


@pytest.mark.parametrize(
    ("shape", "message"),
    [((28, 28), "channels, height, width"), ((3, 12, 28), "at least 16x16"), ((1, 28, 8), "at least 16x16")],
)
def test_resnet12_rejects_images_it_cannot_take(shape: tuple[int, ...], message: str):
    with pytest.raises(ValueError, match=message):
        ResNet12(shape)


def test_resnet12_query_embedding_depends_only_on_the_support_set_and_itself():
    network = ResNet12((3, 28, 28), widths=SMALL).eval()
    batch = tasks(1)
    support_x, query_x = batch.support_x[0], batch.query_x[0]
    with torch.no_grad():
        together = forward_queries(network, support_x, query_x)
        alone = torch.cat([forward_queries(network, support_x, query_x[i : i + 1]) for i in range(4)])
        order = torch.randperm(len(query_x), generator=torch.Generator().manual_seed(1))
        permuted = forward_queries(network, support_x, query_x[order])
        with support_rows(network, len(support_x)):  # the support rows' moments, whatever follows them
            shuffled_support = network(torch.cat([support_x.flip(0), query_x]))[len(support_x) :]
    torch.testing.assert_close(alone, together[:4], atol=1e-5, rtol=0)
    torch.testing.assert_close(permuted, together[order], atol=1e-5, rtol=0)
    torch.testing.assert_close(shuffled_support, together, atol=1e-5, rtol=0)
    assert together.std(0).max() > 1e-3  # the query itself matters
    # Batch statistics (transductive) do make one query's embedding depend on the others.
    transductive = ResNet12((3, 28, 28), widths=SMALL, norm="transductive")
    with torch.no_grad():
        mixed = transductive(torch.cat([support_x, query_x]))[len(support_x)]
        lone = transductive(torch.cat([support_x, query_x[:1]]))[len(support_x)]
    assert (mixed - lone).abs().max() > 1e-4


@pytest.mark.parametrize("first_order", [False, True])
def test_resnet12_trains_inside_maml_with_a_finite_meta_gradient(first_order: bool):
    model = MAML(
        ResNet12((3, 28, 28), widths=SMALL), n_way=5, inner_lr=0.4, train_steps=1, first_order=first_order
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss, accuracy = model.training_loss(tasks(2))
    loss.backward()
    assert torch.isfinite(loss) and accuracy.shape == (2,)
    convs = [m.weight for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0 for w in convs)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_protonet_with_a_small_resnet12_learns_synthetic_tasks_above_chance():
    torch.manual_seed(0)
    model = ProtoNet(ResNet12((1, 28, 28), widths=SMALL))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    noisy = dict(shape=(1, 28, 28), noise=3.0)  # hard enough that random embeddings are near chance
    held_out = tasks(8, **noisy, seed=100)

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            _, per_task = model._step(held_out)
        model.train()
        return per_task.mean().item()

    before = accuracy()
    for step in range(30):
        loss, _ = model.training_loss(tasks(2, **noisy, seed=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy()
    assert after > 0.6, f"5-way accuracy {before:.2f} -> {after:.2f} (chance is 0.2)"
    assert after > before + 0.3, f"meta-training did not help: {before:.2f} -> {after:.2f}"


# -- pretrained torchvision and timm networks ---------------------------------------------------------------
def resnet18_weights(tmp_path: Path, builder=torchvision.models.resnet18, suffix: str = ".pt") -> Path:
    """A resnet18 state dict (head included) with known values in a convolution and a batch norm."""
    torch.manual_seed(1)
    network = builder()
    with torch.no_grad():
        network.layer1[0].conv1.weight[0, 0, 0, 0] = 3.25
        network.layer2[0].bn1.weight.fill_(0.5)
        network.layer2[0].bn1.bias.fill_(-0.25)
        network.layer2[0].bn1.running_mean.fill_(0.125)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(network.state_dict(), str(path))
    else:
        torch.save(network.state_dict(), path)
    return path


def test_torchvision_resnet18_loads_a_local_file_without_its_head(tmp_path: Path, caplog):
    path = resnet18_weights(tmp_path)
    with caplog.at_level(logging.INFO, logger="metaclinic"):
        backbone = PretrainedBackbone((3, 32, 32), "torchvision:resnet18", weights=str(path), norm="running")
    assert "fc.weight" in caplog.text and "fc.bias" in caplog.text  # the head's keys, ignored and reported
    assert backbone.out_features == 512 and isinstance(backbone.network.fc, nn.Identity)
    assert backbone.network.layer1[0].conv1.weight[0, 0, 0, 0].item() == 3.25
    assert backbone.network.layer2[0].bn1.running_mean.eq(0.125).all()
    # The same embedding as the torchvision network with those weights and its head cut off, in eval mode.
    reference = torchvision.models.resnet18()
    reference.load_state_dict(torch.load(path, weights_only=True))
    reference.fc = nn.Identity()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), reference.eval()(x))


def test_a_headless_file_loads_too_and_nothing_is_reported(tmp_path: Path, caplog):
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "checkpoint.pth")  # a training checkpoint
    with caplog.at_level(logging.INFO, logger="metaclinic"):
        backbone = PretrainedBackbone((3, 32, 32), weights=str(tmp_path / "checkpoint.pth"), norm="running")
    assert "ignoring" not in caplog.text
    torch.testing.assert_close(backbone.network.conv1.weight, state["conv1.weight"])


def test_weights_that_do_not_fit_are_named_with_the_file(tmp_path: Path):
    state = torchvision.models.resnet18().state_dict()
    wrong_shape = {**state, "layer3.0.conv2.weight": torch.zeros(256, 256, 1, 1)}
    missing = {k: v for k, v in state.items() if k != "layer4.1.bn2.weight"}
    unexpected = {**state, "layer9.weight": torch.zeros(1)}
    cases = [
        ("shape.pt", wrong_shape, r"shape mismatches: layer3\.0\.conv2\.weight \(file \(256, 256, 1, 1\)"),
        ("missing.pt", missing, r"missing keys: layer4\.1\.bn2\.weight"),
        ("unexpected.pt", unexpected, r"unexpected keys: layer9\.weight"),
    ]
    for file_name, weights, message in cases:
        torch.save(weights, tmp_path / file_name)
        with pytest.raises(BackboneError, match=rf"{file_name}.*{message}"):
            PretrainedBackbone((3, 32, 32), weights=str(tmp_path / file_name))
    with pytest.raises(BackboneError, match="does not exist"):
        PretrainedBackbone((3, 32, 32), weights=str(tmp_path / "nowhere.pt"))


def test_support_norm_replaces_every_batch_norm_and_keeps_its_affine_weights(tmp_path: Path):
    path = resnet18_weights(tmp_path)
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in torchvision.models.resnet18().modules())
    backbone = PretrainedBackbone((3, 32, 32), weights=str(path), norm="support")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    assert sum(isinstance(m, EpisodeNorm) for m in backbone.modules()) == batch_norms == 20
    norm = backbone.network.layer2[0].bn1
    assert isinstance(norm, EpisodeNorm) and norm.weight.eq(0.5).all() and norm.bias.eq(-0.25).all()
    # A query's embedding now depends only on the support set and the query.
    batch = tasks(1, n_query=2, shape=(3, 32, 32))
    support_x, query_x = batch.support_x[0], batch.query_x[0]
    with torch.no_grad():
        together = forward_queries(backbone, support_x, query_x)
        alone = forward_queries(backbone, support_x, query_x[3:4])
    torch.testing.assert_close(alone, together[3:4], atol=1e-5, rtol=0)


def test_small_one_channel_images_are_repeated_and_resized_inside_forward():
    backbone = PretrainedBackbone((1, 28, 28), "torchvision:resnet18", norm="running", resize=64).eval()
    assert backbone.out_features == 512
    x = torch.rand(2, 1, 28, 28)
    expected = F.interpolate(x.repeat(1, 3, 1, 1), size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone.network(expected))
    with pytest.raises(BackboneError, match="3-channel images"):
        PretrainedBackbone((2, 28, 28))


@pytest.mark.parametrize(
    ("name", "message"),
    [("resnet18", "'torchvision:<model>' or 'timm:<model>'"), ("torchvision:resnet_nine", "no model")],
)
def test_unknown_backbone_names_get_a_clear_error(name: str, message: str):
    with pytest.raises(BackboneError, match=message):
        PretrainedBackbone(name=name)


def test_asking_for_timm_without_timm_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails, installed or not
    with pytest.raises(MissingPackageError, match="pip install timm"):
        PretrainedBackbone(name="timm:resnet18")


def test_timm_resnet18_loads_a_local_file_without_its_head(tmp_path: Path, caplog):
    timm = pytest.importorskip("timm")
    pytest.importorskip("safetensors")
    path = resnet18_weights(tmp_path, builder=lambda: timm.create_model("resnet18"), suffix=".safetensors")
    with caplog.at_level(logging.INFO, logger="metaclinic"):
        backbone = PretrainedBackbone((3, 32, 32), "timm:resnet18", weights=str(path), norm="support")
    assert "fc.weight" in caplog.text
    assert backbone.out_features == 512
    assert backbone.network.layer1[0].conv1.weight[0, 0, 0, 0].item() == 3.25
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    assert backbone.network.layer2[0].bn1.weight.eq(0.5).all()
