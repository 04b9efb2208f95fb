"""Adapting a meta-trained checkpoint to new labelled cases: same probabilities as evaluation, exportable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from metaclinic.adapt import load_meta_trained, main, probability_column
from metaclinic.algorithms import (
    ANIL,
    MAML,
    MAMLPlusPlus,
    MatchingNet,
    MetaSGD,
    ProtoNet,
    RelationNet,
    Reptile,
    Siamese,
)
from metaclinic.algorithms.finetune import SupportFineTuning
from metaclinic.baselines import Baseline, BaselinePlusPlus, SimpleShot
from metaclinic.data.cases import ImageCases, TableCases
from metaclinic.data.datamodule import DATA_DIR_ENV
from metaclinic.data.image_folder import images_to_unit_range
from metaclinic.data.preprocess import TablePreprocessor
from metaclinic.data.synthetic import write_synthetic_heart_disease
from metaclinic.data.table import TableSpec
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError
from metaclinic.evaluation.export import (
    adapted_classifier,
    check_support,
    class_probabilities,
    export_classifier,
)
from metaclinic.models import MLP, Conv4

from .conftest import REPO, fit_in_process

PATIENTS = 60  # per generated hospital; VA, the held-out one, is the fourth file
K = 3  # support patients (images) per class


@pytest.fixture(scope="module")
def heart(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Generated hospitals and a ProtoNet and a MAML checkpoint meta-trained on three of them."""
    root = tmp_path_factory.mktemp("heart")
    write_synthetic_heart_disease(root / "data" / "uci_heart_disease", patients=PATIENTS)
    checkpoints = {}
    for name in ("ProtoNet", "MAML", "MAML-support"):  # -support: batch norm on the support set's moments
        model, _, norm = name.partition("-")
        args = [
            "--config", str(REPO / "configs/heart_disease_loho.yaml"),
            f"--model=metaclinic.algorithms.{model}", f"--runs_dir={root / 'runs' / name}",
            "--trainer.max_steps=10", "--trainer.callbacks.init_args.every_n_train_steps=10",
            "--data.init_args.test_episodes=4",
            "--model.init_args.backbone.init_args.hidden=16",
            *([f"--model.init_args.backbone.init_args.norm={norm}"] if norm else []),
        ]  # fmt: skip
        run_dir = fit_in_process(args, data_dir=root / "data")
        checkpoints[name] = run_dir / "checkpoints" / "last.ckpt"
    return {"data": root / "data", "checkpoints": checkpoints}


@pytest.fixture(scope="module")
def image_checkpoint(medmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MAML on the synthetic MedMNIST files (configs/maml_medmnist.yaml, 5-way, RGB), a few steps."""
    runs = tmp_path_factory.mktemp("image_runs")
    args = [
        "--config", str(REPO / "configs/maml_medmnist.yaml"), f"--runs_dir={runs}",
        f"--data.init_args.root={medmnist_root}", "--data.init_args.download=false",
        "--data.init_args.n_shot=2", "--data.init_args.n_query=4",
        "--data.init_args.meta_batches_per_epoch=3", "--data.init_args.val_episodes=2",
        "--data.init_args.test_episodes=2", "--trainer.max_steps=3",
        "--model.init_args.backbone.init_args.hidden=8",
    ]  # fmt: skip
    run_dir = fit_in_process(args)
    (checkpoint,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    return checkpoint


def evaluation_probabilities(model, data, support_rows: list, query_rows: list) -> torch.Tensor:
    """The meta-test evaluation path on one episode built from the data module's meta-test pool."""
    pool = data.pools["meta_test"]
    n_way = len(support_rows)
    batch = TaskBatch(
        support_x=data.prepare_inputs(pool.examples[torch.cat(support_rows)]).unsqueeze(0),
        support_y=torch.arange(n_way).repeat_interleave(torch.tensor([len(r) for r in support_rows]))[None],
        query_x=data.prepare_inputs(pool.examples[torch.tensor(query_rows)]).unsqueeze(0),
        query_y=torch.zeros(1, len(query_rows), dtype=torch.long),
        classes=torch.arange(n_way)[None],
        episode_index=torch.zeros(1, dtype=torch.long),
    )
    model.eval()
    with torch.no_grad():
        return (
            model.class_logits(model.score_tasks(batch), batch)[0] / model.calibration_temperature
        ).softmax(-1)


def csv_probabilities(path: Path, classes: list[str]) -> torch.Tensor:
    table = pd.read_csv(path, dtype={"prediction": str})
    return torch.tensor(table[[probability_column(c) for c in classes]].to_numpy(), dtype=torch.float32)


def exported_probabilities(out: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.export.load(out / "adapted_model.pt2").module()(x)


# -- tables --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["ProtoNet", "MAML", "MAML-support"])
def test_a_table_model_adapts_as_evaluation_does(
    algorithm: str, heart: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(DATA_DIR_ENV, str(heart["data"]))
    checkpoint = heart["checkpoints"][algorithm]
    meta_trained = load_meta_trained(checkpoint)
    data = meta_trained.data
    data.setup()
    data.load_state_dict(meta_trained.data_state)
    pool = data.pools["meta_test"]
    assert [c.key for c in pool.classes] == ["va/0", "va/1"]
    support_rows = [rows[:K] for rows in pool.class_indices]
    query_rows = sorted(torch.cat([rows[K : K + 6] for rows in pool.class_indices]).tolist())
    # The held-out hospital's own lines: support with the diagnosis, the cases to predict without it.
    lines = (heart["data"] / "uci_heart_disease" / "processed.va.data").read_text().splitlines()
    line = lambda row: lines[int(row) - 3 * PATIENTS]  # noqa: E731
    (tmp_path / "support.data").write_text("".join(line(r) + "\n" for r in torch.cat(support_rows)))
    (tmp_path / "predict.data").write_text("".join(line(r).rsplit(",", 1)[0] + "\n" for r in query_rows))

    out = tmp_path / "adapted"
    main([f"--ckpt_path={checkpoint}", f"--support={tmp_path / 'support.data'}",
          f"--predict={tmp_path / 'predict.data'}", f"--out={out}"])  # fmt: skip

    predictions = pd.read_csv(out / "predictions.csv", dtype={"prediction": str})
    assert list(predictions.columns) == ["row", "prediction", "probability_0", "probability_1"]
    assert predictions["row"].tolist() == list(range(1, len(query_rows) + 1))
    probabilities = csv_probabilities(out / "predictions.csv", ["0", "1"])
    expected = evaluation_probabilities(meta_trained.model, data, support_rows, query_rows)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=0)
    assert predictions["prediction"].tolist() == [["0", "1"][i] for i in expected.argmax(-1).tolist()]

    x = data.prepare_inputs(pool.examples[torch.tensor(query_rows)])
    torch.testing.assert_close(exported_probabilities(out, x), probabilities, atol=1e-5, rtol=0)
    torch.testing.assert_close(exported_probabilities(out, x[:1]), probabilities[:1], atol=1e-5, rtol=0)
    # One patient predicted alone gets the probabilities they got among the others.
    (tmp_path / "alone.data").write_text(line(query_rows[2]).rsplit(",", 1)[0] + "\n")
    main([f"--ckpt_path={checkpoint}", f"--support={tmp_path / 'support.data'}",
          f"--predict={tmp_path / 'alone.data'}", f"--out={tmp_path / 'alone'}"])  # fmt: skip
    alone = csv_probabilities(tmp_path / "alone" / "predictions.csv", ["0", "1"])
    torch.testing.assert_close(alone, probabilities[2:3], atol=1e-5, rtol=0)
    info = json.loads((out / "adapted_model.json").read_text())
    assert info["algorithm"] == algorithm.partition("-")[0] and info["classes"] == ["0", "1"]
    assert info["support"]["counts"] == {"0": K, "1": K} and not info["batch_dependent"]
    assert info["input"]["shape"] == [len(data.feature_names)]
    assert info["input"]["feature_names"] == data.feature_names
    assert TablePreprocessor.from_state_dict(info["input"]["preprocessor"]) == data.preprocessor


# -- images --------------------------------------------------------------------------------------------------
def write_png(path: Path, image: torch.Tensor) -> None:
    """A uint8 ``(channels, height, width)`` image as a PNG file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = image.numpy()
    Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(path)


def write_image_cases(pool, folder: Path) -> tuple[list[torch.Tensor], list[int]]:
    """K support images of every meta-test class in ``folder/support/class<j>/`` and two more of each in
    ``folder/predict/``; returns their rows in ``pool``."""
    support_rows = [rows[:K] for rows in pool.class_indices]
    query_rows = [int(r) for rows in pool.class_indices for r in rows[K : K + 2]]
    for j, rows in enumerate(support_rows):
        for i, row in enumerate(rows.tolist()):
            write_png(folder / "support" / f"class{j}" / f"{i}.png", pool.examples[row])
    for i, row in enumerate(query_rows):
        write_png(folder / "predict" / f"case{i:02d}.png", pool.examples[row])
    return support_rows, query_rows


def test_an_image_model_adapts_to_class_folders(image_checkpoint: Path, tmp_path: Path):
    meta_trained = load_meta_trained(image_checkpoint)
    data = meta_trained.data
    data.setup()
    pool = data.pools["meta_test"]
    support_rows, query_rows = write_image_cases(pool, tmp_path)

    out = tmp_path / "adapted"
    main([f"--ckpt_path={image_checkpoint}", f"--support={tmp_path / 'support'}",
          f"--predict={tmp_path / 'predict'}", f"--out={out}"])  # fmt: skip

    classes = [f"class{j}" for j in range(5)]
    predictions = pd.read_csv(out / "predictions.csv")
    assert predictions["file"].tolist() == [f"case{i:02d}.png" for i in range(len(query_rows))]
    probabilities = csv_probabilities(out / "predictions.csv", classes)
    expected = evaluation_probabilities(meta_trained.model, data, support_rows, query_rows)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=0)
    x = data.prepare_inputs(pool.examples[torch.tensor(query_rows)])
    torch.testing.assert_close(exported_probabilities(out, x), probabilities, atol=1e-5, rtol=0)
    info = json.loads((out / "adapted_model.json").read_text())
    assert info["classes"] == classes and info["input"]["shape"] == [3, 28, 28]
    assert not info["batch_dependent"]  # Conv4 normalises with the support set's moments
    # One case predicted alone gets the probabilities it got among the others (issue: batch norm).
    write_png(tmp_path / "alone" / "case03.png", pool.examples[query_rows[3]])
    main([f"--ckpt_path={image_checkpoint}", f"--support={tmp_path / 'support'}",
          f"--predict={tmp_path / 'alone'}", f"--out={tmp_path / 'adapted_alone'}"])  # fmt: skip
    alone = csv_probabilities(tmp_path / "adapted_alone" / "predictions.csv", classes)
    torch.testing.assert_close(alone, probabilities[3:4], atol=1e-5, rtol=0)


# -- every algorithm -----------------------------------------------------------------------------------------
def mamlpp_with_rates(backbone: torch.nn.Module) -> MAMLPlusPlus:
    """MAML++ whose learned step sizes differ per step and tensor (and from ``inner_lr``), as after training.

    Evaluation's third step takes the second (last trained) row's rates.
    """
    model = MAMLPlusPlus(backbone, n_way=3, train_steps=2, eval_steps=3)
    with torch.no_grad():
        model.inner_lrs.copy_(torch.linspace(0.02, 0.3, model.inner_lrs.numel()).view_as(model.inner_lrs))
    return model


ALGORITHMS = {
    "MAML": lambda b: MAML(b, n_way=3, eval_steps=2),
    "MetaSGD": lambda b: MetaSGD(b, n_way=3, eval_steps=2),
    "MAMLPlusPlus": lambda b: mamlpp_with_rates(b),
    "Reptile": lambda b: Reptile(b, n_way=3, eval_steps=2),
    "ANIL": lambda b: ANIL(b, n_way=3, eval_steps=2),
    "ProtoNet": lambda b: ProtoNet(b),
    "ProtoNet-cosine": lambda b: ProtoNet(b, distance="cosine"),
    "MatchingNet": lambda b: MatchingNet(b, fce=True, fce_steps=2),
    "RelationNet": lambda b: RelationNet(b, hidden=8),
    "Siamese": lambda b: Siamese(b),
    "SimpleShot": lambda b: SimpleShot(b, num_classes=4),
    "Baseline": lambda b: Baseline(b, num_classes=4, finetune_steps=20),
    "Baseline++": lambda b: BaselinePlusPlus(b, num_classes=4, finetune_steps=20),
}
# Support fine-tuning augments images: Conv-4 only.
FINETUNED = {
    "ProtoNet-finetuned": lambda b: ProtoNet(b, support_finetuning=SupportFineTuning(steps=3)),
    "SimpleShot-finetuned": lambda b: SimpleShot(
        b, num_classes=4, support_finetuning=SupportFineTuning(steps=3)
    ),
}


@pytest.mark.parametrize(
    ("algorithm", "backbone"),
    [
        *((name, "mlp") for name in ALGORITHMS),
        ("ANIL", "conv4"),
        ("ProtoNet", "conv4"),
        ("Baseline", "conv4"),
        *((name, "conv4") for name in FINETUNED),
    ],
)
def test_the_exported_model_gives_the_evaluation_probabilities(algorithm: str, backbone: str):
    shape = (10,) if backbone == "mlp" else (1, 16, 16)
    network = MLP(shape, hidden=8) if backbone == "mlp" else Conv4(shape, hidden=4)
    model = {**ALGORITHMS, **FINETUNED}[algorithm](network)
    support_x, support_y = torch.randn(7, *shape), torch.tensor([0, 0, 1, 1, 1, 2, 2])
    query_x = torch.randn(30, *shape)  # more than 25: torch.cdist's algorithm changes there
    expected = class_probabilities(model, support_x, support_y, query_x)
    program = export_classifier(adapted_classifier(model, support_x, support_y, query_x), query_x[:4])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(query_x), expected, atol=1e-5, rtol=0)


# -- errors --------------------------------------------------------------------------------------------------
def clinic_reader() -> TableCases:
    spec = TableSpec(path="train.csv", label_column="diagnosis", categorical_columns=["smoker"])
    numeric = {"age": np.array([50.0, 60.0, np.nan]), "marker": np.array([0.1, 1.2, 2.3])}
    preprocessor = TablePreprocessor.fit(numeric, {"smoker": np.array(["yes", "no", None])}, np.arange(3))
    return TableCases(spec, preprocessor)


def test_a_table_without_a_model_input_or_label_names_file_and_columns(tmp_path: Path):
    reader = clinic_reader()
    table = pd.DataFrame({"id": ["a", "b"], "age": [40, 70], "marker": [0.5, 1.5], "smoker": ["yes", "no"]})
    table.drop(columns="marker").assign(diagnosis=["ill", "well"]).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DataError, match=r"s\.csv: missing column\(s\) \['marker'\]; the model's inputs"):
        reader.read_support(tmp_path / "s.csv")
    table.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match=r"p\.csv: missing column\(s\) \['diagnosis'\].*needs the label"):
        reader.read_support(tmp_path / "p.csv")
    cases = reader.read_cases(tmp_path / "p.csv")  # the cases to predict need no label
    assert cases.x.shape == (2, reader.preprocessor.width) and cases.ids.columns.tolist() == ["row"]
    table.to_parquet(tmp_path / "p.parquet")
    torch.testing.assert_close(reader.read_cases(tmp_path / "p.parquet").x, cases.x)
    assert TableCases(reader.spec, reader.preprocessor, id_column="id").read_cases(tmp_path / "p.csv").ids[
        "id"
    ].tolist() == ["a", "b"]
    with pytest.raises(DataError, match=r"--id_column 'age' is a model input"):
        TableCases(reader.spec, reader.preprocessor, id_column="age")


def test_support_classes_must_suit_the_model(
    heart: dict, image_checkpoint: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "empty"))  # adapting needs no training data
    # A binarised label: both classes are needed, and a headerless file needs all its columns.
    lines = (heart["data"] / "uci_heart_disease" / "processed.va.data").read_text().splitlines()
    (tmp_path / "sick.data").write_text("".join(f"{row}\n" for row in lines if not row.endswith(",0")))
    (tmp_path / "short.data").write_text("".join(row.split(",", 1)[1] + "\n" for row in lines))
    checkpoint = heart["checkpoints"]["ProtoNet"]
    for support, message in [
        ("sick.data", r"sick\.data: the support set has no case of class\(es\) \['0'\]"),
        ("short.data", r"short\.data: has 13 columns; the model's table format has 14 \(\['age'"),
    ]:
        with pytest.raises(SystemExit, match=rf"^metaclinic: error: .*{message}"):
            main(["--ckpt_path", str(checkpoint), "--support", str(tmp_path / support),
                  "--predict", str(tmp_path / "sick.data"), "--out", str(tmp_path / "out")])  # fmt: skip
    # A fixed 5-way head and 3 support classes; an empty class folder.
    image = torch.full((3, 28, 28), 100, dtype=torch.uint8)
    for name in ("a", "b", "c"):
        write_png(tmp_path / "three" / name / "1.png", image)
    write_png(tmp_path / "predict" / "x.png", image)
    args = ["--ckpt_path", str(image_checkpoint), "--predict", str(tmp_path / "predict"), f"--out={tmp_path}"]
    with pytest.raises(SystemExit, match=r"3 classes \['a', 'b', 'c'\], but MAML .* fixed 5-way head"):
        main([*args, "--support", str(tmp_path / "three")])
    (tmp_path / "three" / "d").mkdir()
    with pytest.raises(SystemExit, match=r"support class folder\(s\) without images .*three/d"):
        main([*args, "--support", str(tmp_path / "three")])
    with pytest.raises(DataError, match=r"has 1 class\(es\) \['a'\]; it needs two or more"):
        check_support(ProtoNet(MLP((4,))), ["a"], "support.csv")
    assert "Traceback" not in capsys.readouterr().err


def test_image_channels_are_converted_only_without_loss(tmp_path: Path):
    gray = torch.arange(32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(1, 32, 32)
    write_png(tmp_path / "gray" / "g.png", gray)
    write_png(tmp_path / "gray_as_rgb" / "g.png", gray.expand(3, -1, -1).contiguous())
    colour = torch.stack([gray[0], gray[0].flip(0), gray[0].flip(1)])
    write_png(tmp_path / "colour" / "c.png", colour)
    rgb_model, gray_model = ImageCases(3, 28, images_to_unit_range), ImageCases(1, 28, images_to_unit_range)
    x = rgb_model.read_cases(tmp_path / "gray").x  # grayscale for an RGB model: the channel repeated
    assert x.shape == (1, 3, 28, 28) and (x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()
    assert gray_model.read_cases(tmp_path / "gray_as_rgb").x.shape == (1, 1, 28, 28)  # resized, gray
    with pytest.raises(DataError, match=r"colour/c\.png: a colour image \(mode RGB\), but the model was"):
        gray_model.read_cases(tmp_path / "colour")
    (tmp_path / "broken" / "b.png").parent.mkdir()
    (tmp_path / "broken" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"1 image\(s\) cannot be used:\n.*broken/b\.png: cannot be read"):
        rgb_model.read_cases(tmp_path / "broken")
