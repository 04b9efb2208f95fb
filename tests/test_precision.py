"""Mixed precision and memory: meta-gradients stay right in bf16/fp16, and nothing grows or leaks.

The gradient-based algorithms adapt in the precision of the meta-parameters with autocast off (see
``metaclinic/algorithms/inner_loop.py``); these tests pin that down against fp32, float64 finite
differences and the first-order formula, then train every algorithm under ``bf16-mixed``.
"""

from __future__ import annotations

import dataclasses
import functools
import gc

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.plugins import MixedPrecision, Precision
from torch import Tensor, nn
from torch.utils.data import DataLoader

from metaclinic import algorithms
from metaclinic.data.task import TaskBatch
from metaclinic.models import MLP, Conv4

from .test_algorithms import FIXED_HEAD, SETTINGS, tiny_batch
from .test_maml import quiet_trainer

SGD0 = functools.partial(torch.optim.SGD, lr=0.0)  # the step we look at leaves the weights as they were


class MetaGradient(Callback):
    """Keeps the (unscaled) gradient the optimizer is about to apply."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.gradient = torch.cat([p.grad.flatten().float() for p in pl_module.parameters()])


def trainer_meta_gradient(make_model, batch: TaskBatch, precision: str | Precision) -> Tensor:
    """The meta-gradient of one real Lightning training step on ``batch`` at ``precision`` (or plugin)."""
    torch.manual_seed(0)
    grab = MetaGradient()
    setting = {"plugins": [precision]} if isinstance(precision, Precision) else {"precision": precision}
    trainer = quiet_trainer(max_steps=1, **setting, accelerator="cpu", callbacks=[grab])
    trainer.fit(make_model(), train_dataloaders=DataLoader([batch], batch_size=None))
    return grab.gradient


def medmnist_batch(make_datamodule) -> TaskBatch:
    data = make_datamodule()
    data.setup()
    return data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)


def gaussian_batch(
    tasks: int = 4, n_way: int = 5, n_shot: int = 2, n_query: int = 4, d: int = 16
) -> TaskBatch:
    """5-way tasks of 16-d points around random class means."""
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(tasks, n_way, d, generator=generator)
    support_y = torch.arange(n_way).repeat_interleave(n_shot).repeat(tasks, 1)
    query_y = torch.arange(n_way).repeat_interleave(n_query).repeat(tasks, 1)

    def points(labels: Tensor) -> Tensor:
        return torch.stack([m[y] for m, y in zip(means, labels, strict=True)]) + 0.5 * torch.randn(
            *labels.shape, d, generator=generator
        )

    classes = torch.arange(n_way).repeat(tasks, 1)
    return TaskBatch(points(support_y), support_y, points(query_y), query_y, classes, torch.arange(tasks))


def cosine(a: Tensor, b: Tensor) -> float:
    return F.cosine_similarity(a.double(), b.double(), dim=0).item()


# -- 1. half precision against fp32 ----------------------------------------------------------------------
# A plain bf16 gradient of Conv4 (ProtoNet, no inner loop) has cosine ~0.987 to its fp32 gradient: batch
# norm over a few images in bf16 is that noisy. Second-order MAML cannot be asked to do better than the
# network it trains, so Conv4 gets 0.98; the tiny layer-norm MLP is far better conditioned and gets 0.999.
# Both catch a bf16 inner loop: it gave 0.27-0.58 (Conv4) and 0.87-0.99 (MLP) with 5 inner steps.
@pytest.mark.parametrize(("backbone", "min_cosine"), [("mlp", 0.999), ("conv4", 0.98)])
def test_bf16_mixed_second_order_meta_gradient_is_close_to_fp32(backbone: str, min_cosine, make_datamodule):
    if backbone == "mlp":
        batch, network = gaussian_batch(), functools.partial(MLP, (16,), hidden=16, depth=2)
    else:
        batch, network = medmnist_batch(make_datamodule), functools.partial(Conv4, (3, 28, 28), hidden=8)

    def make_model():
        return algorithms.MAML(network(), n_way=5, inner_lr=0.4, train_steps=5, optimizer=SGD0)

    fp32 = trainer_meta_gradient(make_model, batch, "32-true")
    bf16 = trainer_meta_gradient(make_model, batch, "bf16-mixed")
    similarity, norm_ratio = cosine(fp32, bf16), (bf16.norm() / fp32.norm()).item()
    print(f"{backbone}: bf16 vs fp32 meta-gradient cosine {similarity:.5f}, norm ratio {norm_ratio:.4f}")
    assert torch.isfinite(bf16).all()
    assert similarity > min_cosine
    assert abs(norm_ratio - 1) < 0.05


def test_fp16_autocast_with_loss_scaling_gives_a_finite_meta_gradient_close_to_fp32(make_datamodule):
    """What ``16-mixed`` does on a GPU, on the CPU: fp16 autocast for the step, the outer loss scaled by
    2**16 before backward and the gradients unscaled after (Lightning turns ``16-mixed`` into
    ``bf16-mixed`` on the CPU, so this runs autocast by hand). An fp16 inner loop made every entry NaN at
    any scale from 2**8 up (pytorch #64655), and cosine 0.49-0.71 unscaled."""
    batch = medmnist_batch(make_datamodule)
    gradients = {}
    for dtype in (torch.float32, torch.float16):
        torch.manual_seed(0)
        model = algorithms.MAML(Conv4((3, 28, 28), hidden=8), n_way=5, inner_lr=0.4, train_steps=5)
        with torch.autocast("cpu", dtype=torch.float16, enabled=dtype == torch.float16):
            loss, _ = model._step(batch)
        (loss * 2.0**16).backward()
        gradients[dtype] = torch.cat([p.grad.flatten() for p in model.parameters()]) / 2.0**16
    similarity = cosine(gradients[torch.float32], gradients[torch.float16])
    print(f"fp16 vs fp32 meta-gradient cosine {similarity:.5f}")
    assert torch.isfinite(gradients[torch.float16]).all()
    assert similarity > 0.99


def test_lightnings_fp16_loss_scaler_scales_each_tasks_loss_and_gives_the_fp32_meta_gradient(make_datamodule):
    """``16-mixed`` through Lightning's own plugin and GradScaler (2**16, as on a GPU; on the CPU only an
    explicit plugin keeps fp16): the task-by-task meta-gradient (``InnerLoopModule.training_loss``) scales
    every task's loss as Lightning scales the returned one, so it is finite and matches fp32."""
    batch = medmnist_batch(make_datamodule)

    def make_model() -> nn.Module:
        return algorithms.MAML(Conv4((3, 28, 28), hidden=8), n_way=5, inner_lr=0.4, train_steps=5)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    fp16 = trainer_meta_gradient(make_model, batch, MixedPrecision("16-mixed", "cpu", scaler))
    fp32 = trainer_meta_gradient(make_model, batch, "32-true")
    assert scaler.get_scale() == 2.0**16, "the scaler skipped the step: the scaled meta-gradient overflowed"
    assert torch.isfinite(fp16).all()
    assert cosine(fp32, fp16) > 0.99


@pytest.mark.parametrize("name", ["MAML", "ANIL"])
def test_inner_loop_runs_in_fp32_under_autocast_and_the_query_does_not(name: str):
    model = getattr(algorithms, name)(MLP((16,), hidden=16), n_way=5, train_steps=2)
    head = model.head.module if name == "ANIL" else model.learner.module[1]  # the linear head
    dtypes = []
    head.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model._step(gaussian_batch(tasks=1))
    # learn2learn clones share the hooks: two support forwards in the inner loop, then the query.
    assert dtypes == [torch.float32, torch.float32, torch.bfloat16]


# -- 2. exact second-order gradients, float64 ----------------------------------------------------------------
class TanhLayer(nn.Module):
    """A tiny backbone with parameters: 2-d points to 3 tanh features."""

    out_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.linear(x))


def tiny_model(name: str, **overrides) -> algorithms.InnerLoopModule:
    """MAML, FOMAML, Meta-SGD or ANIL on ``TanhLayer`` (17 parameters, 34 for Meta-SGD), in float64."""
    cls = {"MAML": algorithms.MAML, "MetaSGD": algorithms.MetaSGD, "ANIL": algorithms.ANIL}[name]
    torch.manual_seed(0)
    return cls(TanhLayer(), **{"n_way": 2, "inner_lr": 0.5, "train_steps": 3, **overrides}).double()


def tiny_batch64() -> TaskBatch:
    batch = tiny_batch()
    return dataclasses.replace(batch, support_x=batch.support_x.double(), query_x=batch.query_x.double())


def meta_gradient(model: algorithms.InnerLoopModule, batch: TaskBatch) -> Tensor:
    model.zero_grad()
    loss, _ = model._step(batch)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def tiny_logits(p: list[Tensor], x: Tensor) -> Tensor:
    """``TanhLayer`` plus the linear head, written out: ``p`` is (weight, bias, head weight, head bias)."""
    return torch.tanh(x @ p[0].T + p[1]) @ p[2].T + p[3]


def query_loss_by_hand(params: list[Tensor], batch: TaskBatch, lr: float = 0.5, steps: int = 3) -> Tensor:
    """Second-order MAML's post-adaptation query loss on the tiny model, averaged over the tasks."""
    losses = []
    for task in batch:
        fast = params
        for _ in range(steps):
            support_loss = F.cross_entropy(tiny_logits(fast, task.support_x), task.support_y)
            grads = torch.autograd.grad(support_loss, fast, create_graph=True)
            fast = [p - lr * g for p, g in zip(fast, grads, strict=True)]
        losses.append(F.cross_entropy(tiny_logits(fast, task.query_x), task.query_y))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("name", ["MAML", "MetaSGD", "ANIL"])
def test_second_order_meta_gradient_matches_central_finite_differences(name: str):
    model, batch, h = tiny_model(name), tiny_batch64(), 1e-6
    analytic = meta_gradient(model, batch)
    numeric = []
    for param in model.parameters():
        for i in range(param.numel()):
            losses = []
            for sign in (1, -1):
                with torch.no_grad():
                    param.view(-1)[i] += sign * h
                losses.append(model._step(batch)[0].item())
                with torch.no_grad():
                    param.view(-1)[i] -= sign * h
            numeric.append((losses[0] - losses[1]) / (2 * h))
    numeric = torch.tensor(numeric, dtype=torch.float64)
    error = ((analytic - numeric).norm() / numeric.norm()).item()
    print(f"{name}: relative error of the meta-gradient against finite differences {error:.2e}")
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_maml_differentiates_the_post_adaptation_query_loss():
    model, batch = tiny_model("MAML"), tiny_batch64()
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    expected = query_loss_by_hand(params, batch)
    expected_gradient = torch.cat([g.flatten() for g in torch.autograd.grad(expected, params)])
    loss, _ = model._step(batch)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(meta_gradient(model, batch), expected_gradient, rtol=1e-10, atol=1e-14)


# -- 3. first order ------------------------------------------------------------------------------------------
def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_parameters():
    batch = tiny_batch64()
    second = meta_gradient(tiny_model("MAML"), batch)
    first = meta_gradient(tiny_model("MAML", first_order=True), batch)

    # The formula: adapt by hand with the gradients as constants, then differentiate the query loss with
    # respect to the adapted parameters themselves (FOMAML's d phi / d theta = identity).
    theta = [p.detach().clone() for p in tiny_model("MAML").parameters()]
    expected = torch.zeros_like(first)
    for task in batch:
        phi = [t.clone().requires_grad_() for t in theta]
        for _ in range(3):
            support_loss = F.cross_entropy(tiny_logits(phi, task.support_x), task.support_y)
            phi = [
                (p - 0.5 * g).detach().requires_grad_()
                for p, g in zip(phi, torch.autograd.grad(support_loss, phi), strict=True)
            ]
        query_loss = F.cross_entropy(tiny_logits(phi, task.query_x), task.query_y)
        expected += torch.cat([g.flatten() for g in torch.autograd.grad(query_loss, phi)]) / len(batch)

    difference = ((first - second).norm() / second.norm()).item()
    print(f"first- vs second-order meta-gradient: relative difference {difference:.3f}")
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-14)
    assert difference > 1e-2


# -- 4. every algorithm under bf16-mixed -----------------------------------------------------------------
class StepLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.item())


@pytest.mark.parametrize("name", SETTINGS)
def test_every_algorithm_trains_and_evaluates_under_bf16_mixed(name: str, make_datamodule):
    seed_everything(0)
    cls, settings = SETTINGS[name]
    model = cls(Conv4((3, 28, 28), hidden=8), **({"n_way": 5} if name in FIXED_HEAD else {}), **settings)
    data = make_datamodule(val_episodes=8, test_episodes=8)
    losses = StepLosses()
    trainer = quiet_trainer(
        max_steps=3, precision="bf16-mixed", accelerator="cpu", callbacks=[losses], limit_val_batches=1.0
    )
    trainer.fit(model, datamodule=data)
    assert len(losses.losses) == 3 and all(torch.isfinite(torch.tensor(losses.losses)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed: the weights stay fp32
    (validation,) = trainer.validate(model, datamodule=data, verbose=False)
    trainer.test(model, datamodule=data, verbose=False)
    report = model.test_report.metrics
    numbers = [
        validation["val/loss"],
        validation["val/accuracy"],
        report["accuracy"].mean,
        report["auroc"].mean,
    ]
    assert all(torch.isfinite(torch.tensor(numbers))), f"{name}: {numbers}"


# -- 5. memory ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "wrapper"), [("MAML", "learner"), ("MetaSGD", "learner"), ("ANIL", "head")])
def test_evaluation_adapts_without_a_graph_back_to_the_meta_parameters(name: str, wrapper: str):
    model = tiny_model(name)
    meta = list(model.parameters())
    task = next(iter(tiny_batch64()))
    support = model.backbone(task.support_x) if name == "ANIL" else task.support_x

    def graph_to_meta(adapted: nn.Module) -> bool:
        outputs = sum(p.sum() for p in adapted.module.parameters())
        return any(g is not None for g in torch.autograd.grad(outputs, meta, allow_unused=True))

    model.train()  # training needs the graph: the adapted weights are functions of the meta-parameters
    assert graph_to_meta(model.inner_loop(getattr(model, wrapper), support, task.support_y))
    model.eval()  # evaluation does not: its adaptation starts from a detached copy
    with torch.no_grad():  # as Lightning's evaluation loop runs (inference_mode=False)
        adapted = model.inner_loop(getattr(model, wrapper), support.detach(), task.support_y)
        scores = model.score_tasks(tiny_batch64())
    assert not graph_to_meta(adapted)
    assert scores.grad_fn is None and not scores.requires_grad


def live_tensors() -> tuple[int, int]:
    """Number of tensors the garbage collector can see, and the bytes of their distinct storages."""
    gc.collect()
    count, storages = 0, {}
    for obj in gc.get_objects():
        try:
            if issubclass(type(obj), Tensor) and obj.device.type == "cpu":
                count += 1
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        except (ReferenceError, RuntimeError):
            continue
    return count, sum(storages.values())


class LiveTensors(Callback):
    def __init__(self, every: int) -> None:
        self.every, self.samples = every, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self.samples.append((trainer.global_step, *live_tensors()))


def test_memory_stays_flat_across_meta_iterations_and_validations(make_datamodule):
    """30 second-order MAML steps under bf16-mixed, with a validation run after every 10 (one epoch)."""
    seed_everything(0)
    cls, settings = SETTINGS["MAML"]
    model = cls(Conv4((3, 28, 28), hidden=8), **{**settings, "n_way": 5, "train_steps": 2})
    probe = LiveTensors(every=10)
    trainer = quiet_trainer(
        max_steps=30, precision="bf16-mixed", accelerator="cpu", callbacks=[probe], limit_val_batches=1
    )
    trainer.fit(model, datamodule=make_datamodule(meta_batch_size=2, val_episodes=8))
    print("step, live tensors, bytes:", probe.samples)
    (_, count_warm, bytes_warm), *_, (_, count_end, bytes_end) = probe.samples
    assert count_end <= count_warm + 5
    assert bytes_end <= bytes_warm * 1.02 + 4096


# -- 6. on a CUDA GPU (pytest -m gpu; scripts/gpu_checks.sh runs them) -------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_meta_gradient(make_model, batch: TaskBatch, precision: str):
    """The meta-gradient of one Lightning training step on the GPU at ``precision``, and its trainer."""
    torch.manual_seed(0)
    grab = MetaGradient()
    trainer = quiet_trainer(
        max_steps=1, precision=precision, accelerator="gpu", devices=1, deterministic=False, callbacks=[grab]
    )
    trainer.fit(make_model(), train_dataloaders=DataLoader([batch], batch_size=None))
    return grab.gradient.cpu(), trainer


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", ["MAML", "ANIL"])
def test_on_a_gpu_half_precision_meta_gradients_are_finite_and_close_to_fp32(
    name: str, precision: str, make_datamodule, monkeypatch: pytest.MonkeyPatch
):
    """Second-order meta-gradients through CUDA autocast with the fp32 inner loop; ``16-mixed`` with
    Lightning's own GradScaler (2**16), which must not have skipped the step. The fp32 reference runs
    without TF32, which cuDNN otherwise uses for fp32 convolutions."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    batch = medmnist_batch(make_datamodule)

    def make_model() -> nn.Module:
        network = Conv4((3, 28, 28), hidden=8)
        return getattr(algorithms, name)(network, n_way=5, inner_lr=0.4, train_steps=5, optimizer=SGD0)

    fp32, _ = gpu_meta_gradient(make_model, batch, "32-true")
    half, trainer = gpu_meta_gradient(make_model, batch, precision)
    similarity, norm_ratio = cosine(fp32, half), (half.norm() / fp32.norm()).item()
    print(f"GPU {name} {precision}: cosine to fp32 {similarity:.5f}, norm ratio {norm_ratio:.4f}")
    assert torch.isfinite(half).all()
    if precision == "16-mixed":
        scaler = trainer.precision_plugin.scaler
        assert scaler is not None and scaler.get_scale() == 2.0**16, "the scaler skipped the step (overflow)"
    assert similarity > (0.98 if precision == "bf16-mixed" else 0.99)
    assert abs(norm_ratio - 1) < 0.05


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_on_a_gpu_the_inner_loop_runs_in_fp32_under_autocast_and_the_query_does_not(dtype: torch.dtype):
    model = algorithms.MAML(MLP((16,), hidden=16), n_way=5, train_steps=2).cuda()
    dtypes = []
    model.learner.module[1].register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    batch = gaussian_batch(tasks=1)
    on_gpu = {f.name: getattr(batch, f.name).cuda() for f in dataclasses.fields(batch)
              if isinstance(getattr(batch, f.name), Tensor)}  # fmt: skip
    with torch.autocast("cuda", dtype=dtype):
        loss, _ = model._step(dataclasses.replace(batch, **on_gpu))
    assert dtypes == [torch.float32, torch.float32, dtype]
    assert torch.isfinite(loss)
