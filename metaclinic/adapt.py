"""``python -m metaclinic.adapt``: adapt a meta-trained checkpoint to labelled cases and predict new ones.

    python -m metaclinic.adapt --ckpt_path runs/<run>/<time>/checkpoints/last.ckpt \\
        --support support.csv --predict new_patients.csv --out adapted/

The model and its data module are rebuilt from the run's ``config.yaml`` (next to ``checkpoints/``, or
``--config``); the checkpoint gives the weights and, for tables, the fitted preprocessing. Support and
prediction sets come in the format the model was trained on:

- tables (CSV, TSV, Parquet): the training table's columns, read with its settings and encoded with the
  checkpoint's preprocessing; the support set needs the label column, the prediction set may lack it;
- images: the support set is a folder with one sub-folder of images per class, the prediction set a flat
  folder of images (or one image file); images are resized to the model's size;
- series (ECG): UCR-format TSV files, the integer label first (``?`` or empty for a series to predict, so a
  ``_TEST.tsv`` predicts as it is), or ``.npz`` files with ``x`` (and ``y``); resampled and z-normalised
  as in meta-training;
- molecules: CSVs with the training's SMILES column, the support set with one 0/1 column (or
  ``--label_column``); featurised with the checkpoint's Morgan fingerprint settings;
- single cells: AnnData ``.h5ad`` files, genes matched by name to the checkpoint's gene list; the support
  set's classes are its ``obs[label_key]`` cell types (or ``--label_column``), cells are named by
  ``obs_names`` (and ``--id_column``).

Classes are the support set's label values (or class folder names, cell types), in sorted order. The model
adapts as in meta-test evaluation (its inner loop, or its prototypes / comparisons) with the prediction set as
the query set, and writes to ``--out``:

- ``predictions.csv``: one row per case: its row number (and ``--id_column``) or file name, the predicted
  class and one ``probability_<class>`` column per class;
- ``adapted_model.pt2``: the adapted model as a ``torch.export`` program, from preprocessed inputs
  ``(batch, *input shape)`` to class probabilities; ``torch.export.load(path).module()(x)`` runs it
  with PyTorch alone;
- ``adapted_model.json``: its classes, input shape and how to make its inputs (for tables the feature
  names and the full preprocessing state).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.cli import build_model_and_data
from metaclinic.data.cases import CaseReader, Cases, SupportSet
from metaclinic.data.datamodule import EpisodicDataModule
from metaclinic.errors import DataError, MetaclinicError, MissingDataError
from metaclinic.evaluation.export import (
    adapted_classifier,
    check_support,
    class_probabilities,
    export_classifier,
)
from metaclinic.experiment.run_record import CONFIG_FILE
from metaclinic.experiment.storage import load_checkpoint, write_atomically
from metaclinic.models.normalization import uses_batch_statistics

PREDICTIONS_FILE = "predictions.csv"
MODEL_FILE = "adapted_model.pt2"
MODEL_INFO_FILE = "adapted_model.json"
TOLERANCE = 1e-5  # the exported model must reproduce predictions.csv to this (absolute, on probabilities)


@dataclass
class MetaTrained:
    """A meta-trained model rebuilt from its run's config and checkpoint, with its data's saved state."""

    model: EpisodicModule
    data: EpisodicDataModule
    data_state: dict[str, Any]
    input_shape: tuple[int, ...]
    ckpt_path: Path
    config: Path


def load_meta_trained(ckpt_path: str | Path, config: str | Path | None = None) -> MetaTrained:
    """Rebuilds the model and data module of ``config`` and loads the checkpoint into them.

    ``config`` defaults to the run's ``config.yaml`` (the checkpoint's ``../../config.yaml``); it is built
    as ``metaclinic.fit`` built it (:func:`metaclinic.cli.build_model_and_data`), except that backbones are
    sized from the checkpoint's data state, so nothing is read from the training data: a table model's
    input width and preprocessing come from the checkpoint, an image model's input shape from the data
    configuration. The checkpoint is loaded with ``weights_only=True``: tensors and plain data only, so
    loading it never runs code from it.
    """
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise MissingDataError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    config = Path(config) if config else ckpt_path.resolve().parent.parent / CONFIG_FILE
    if not config.is_file():
        raise MissingDataError(
            f"{config}: no such config file; give the run's config.yaml with --config (a run directory holds "
            "config.yaml and checkpoints/)"
        )
    _check_run_config(config)
    checkpoint = load_checkpoint(ckpt_path)

    def data_state(data: EpisodicDataModule) -> dict[str, Any]:
        return checkpoint.get(type(data).__qualname__) or {}  # where Lightning saves a data module's state

    def saved_input_shape(data: EpisodicDataModule) -> tuple[int, ...]:
        return data.saved_input_shape(data_state(data), str(ckpt_path))

    model, data = build_model_and_data(config, input_shape_of=saved_input_shape)
    if not model.meta_trained:
        raise DataError(f"{type(model).__name__} is not meta-trained: it has no checkpoint to adapt")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:  # missing, unexpected or differently shaped weights: another config
        detail = " ".join(line.strip() for line in str(error).splitlines()[:2])
        raise DataError(f"{ckpt_path} does not fit the model of {config}: {detail}") from None
    return MetaTrained(model.eval(), data, data_state(data), saved_input_shape(data), ckpt_path, config)


def _check_run_config(config: Path) -> None:
    """Refuses a file that is not a run config, with a message, before the command line's parser sees it."""
    try:
        raw = yaml.safe_load(config.read_text())
    except yaml.YAMLError as error:
        raise DataError(f"{config}: not a YAML file: {error}") from None
    missing = [k for k in ("model", "data") if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise DataError(f"{config}: no {' or '.join(missing)} section; give the run's config.yaml")


@dataclass
class Adapted:
    """What ``adapt`` computed and wrote."""

    support: SupportSet
    cases: Cases
    probabilities: torch.Tensor
    program: torch.export.ExportedProgram
    out: Path


def adapt(
    ckpt_path: str | Path,
    support: str | Path,
    predict: str | Path,
    out: str | Path,
    config: str | Path | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
) -> Adapted:
    """Adapts the checkpoint to ``support``, predicts ``predict`` and writes the three files into ``out``."""
    meta_trained = load_meta_trained(ckpt_path, config)
    model = meta_trained.model
    reader = meta_trained.data.case_reader(meta_trained.data_state, label_column, id_column)
    support_set = reader.read_support(support)
    check_support(model, support_set.classes, support_set.source)
    cases = reader.read_cases(predict)
    probabilities = class_probabilities(model, support_set.x, support_set.y, cases.x)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / PREDICTIONS_FILE, cases, support_set.classes, probabilities)
    classifier = adapted_classifier(model, support_set.x, support_set.y, cases.x)
    program = export_classifier(classifier, cases.x)
    with torch.no_grad():
        exported = program.module()(cases.x)
    if not torch.allclose(exported, probabilities, rtol=0.0, atol=TOLERANCE):
        difference = (exported - probabilities).abs().max().item()
        raise RuntimeError(f"the exported model differs from the adapted one by {difference:.2e}")
    torch.export.save(program, out / MODEL_FILE)
    info = _model_info(meta_trained, reader, support_set)
    write_atomically(out / MODEL_INFO_FILE, json.dumps(info, indent=1) + "\n")
    counts = ", ".join(f"{c}: {n}" for c, n in support_set.counts().items())
    print(
        f"{type(model).__name__} adapted to {len(support_set.classes)} classes ({counts} support cases); "
        f"{len(cases.ids)} predictions: {out / PREDICTIONS_FILE}\nAdapted model: {out / MODEL_FILE} "
        f"(described in {MODEL_INFO_FILE})",
        flush=True,
    )
    return Adapted(support_set, cases, probabilities, program, out)


def probability_column(name: str) -> str:
    return f"probability_{name}"


def _write_predictions(path: Path, cases: Cases, classes: list[str], probabilities: torch.Tensor) -> None:
    table = cases.ids.copy()
    table["prediction"] = [classes[i] for i in probabilities.argmax(-1).tolist()]
    for i, name in enumerate(classes):
        table[probability_column(name)] = probabilities[:, i].double().numpy()
    table.to_csv(path, index=False)


def _model_info(meta_trained: MetaTrained, reader: CaseReader, support: SupportSet) -> dict:
    batch_dependent = uses_batch_statistics(meta_trained.model)
    return {
        "file": MODEL_FILE,
        "usage": f"torch.export.load('{MODEL_FILE}').module()(x): x float32 (batch, *input.shape) -> "
        "class probabilities (batch, len(classes)) in the order of classes",
        "algorithm": type(meta_trained.model).__name__,
        "checkpoint": str(meta_trained.ckpt_path.resolve()),
        "config": str(meta_trained.config.resolve()),
        "classes": support.classes,
        "support": {"source": support.source, "counts": support.counts()},
        "input": {"shape": list(meta_trained.input_shape), "dtype": "float32", **reader.describe()},
        "batch_dependent": batch_dependent,
        "note": (
            "the backbone normalises with batch statistics: a case's probabilities depend on the other cases "
            "of its batch; predictions.csv scored all predicted cases in one batch"
            if batch_dependent
            else "every case is scored on its own: its probabilities do not depend on the rest of the batch"
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m metaclinic.adapt",
        description="Adapt a meta-trained checkpoint to labelled cases and predict new ones. Cases come in "
        "the training's kind: tables (CSV, TSV, Parquet), image folders, series (UCR .tsv, .npz), molecules "
        "(SMILES CSVs) or single cells (.h5ad).",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint of a metaclinic.fit run")
    parser.add_argument(
        "--support",
        required=True,
        help="labelled cases: a table, a folder of class folders, a .tsv/.npz of series, a SMILES CSV with a "
        "0/1 column or an .h5ad file",
    )
    parser.add_argument(
        "--predict",
        required=True,
        help="cases to predict, of the same kind: a table, a folder of images (or one image), series, SMILES "
        "or cells",
    )
    parser.add_argument("--out", required=True, help="folder for predictions.csv and the adapted model")
    parser.add_argument(
        "--config", default=None, help="the run's config.yaml (default: next to checkpoints/)"
    )
    parser.add_argument(
        "--label_column", default=None, help="tables, molecules, cells: the support set's class column"
    )
    parser.add_argument(
        "--id_column", default=None, help="tables, molecules, cells: a column identifying predicted cases"
    )
    args = parser.parse_args(argv)
    try:
        adapt(**vars(args))
    except (
        MetaclinicError
    ) as error:  # bad input or a failed write: the message says what to change, a traceback adds nothing
        raise SystemExit(f"metaclinic: error: {error}") from None


if __name__ == "__main__":
    main()
