"""Single cells as few-shot tasks: AnnData matrices (dense, sparse, layers), genes by name, errors, adapt."""

from __future__ import annotations

import json
import warnings
import zlib
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import sparse

from metaclinic.adapt import load_meta_trained, main
from metaclinic.data import CellEpisodes, single_cell
from metaclinic.data.datamodule import DATA_DIR_ENV
from metaclinic.errors import DataError

from .conftest import REPO, SHARED_DATA, fit_in_process, one_thread
from .test_adapt import csv_probabilities, evaluation_probabilities, exported_probabilities

CONFIG = REPO / "configs" / "cells_protonet.yaml"
PBMC = SHARED_DATA / "genomics" / "pbmc68k_reduced.h5ad"
GENES = [f"G{i:03d}" for i in range(60)]
INFORMATIVE = 8  # the first genes carry the cell type; the others are noise
TRAIN_TYPES = ["T cell", "B cell", "NK cell", "Monocyte", "Dendritic"]
TEST_TYPES = ["CD34+", "Platelet", "Mast cell"]
PER_TYPE = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks are tiny: on a shared 2-core machine a second thread only adds waiting."""
    with one_thread():
        yield


def expression(types: list[str], per_type: int = PER_TYPE, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Cells of ``types``: a type's centre on the informative genes (the same in every file, seeded by its
    name) plus a little noise, and noise of spread 1 on every other gene: well-separated types."""
    rng = np.random.default_rng(seed)
    values, labels = [], []
    for name in types:
        centre = np.random.default_rng(zlib.crc32(name.encode())).normal(0, 3.0, INFORMATIVE)
        cells = rng.normal(0, 1.0, (per_type, len(GENES)))
        cells[:, :INFORMATIVE] = centre + rng.normal(0, 0.5, (per_type, INFORMATIVE))
        values.append(cells)
        labels += [name] * per_type
    return np.concatenate(values).astype(np.float32), labels


def write_h5ad(
    path: Path,
    values: np.ndarray | sparse.spmatrix,
    labels: list[str | None],
    genes: list[str] = GENES,
    label_key: str = "cell_type",
    layers: dict | None = None,
    prefix: str = "cell",
) -> Path:
    # anndata 0.12.6, the newest that allows pandas 3, cannot write pandas 3's Arrow strings: text as objects.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infer_string.*")
        with pd.option_context("future.infer_string", False):
            obs = pd.DataFrame(
                {label_key: pd.Categorical(labels), "donor": ["d1"] * len(labels)},
                index=[f"{prefix}{i}" for i in range(len(labels))],
            )
            cells = anndata.AnnData(X=values, obs=obs, var=pd.DataFrame(index=genes), layers=layers)
            cells.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def cells_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every generated type in one dense file: the data dir's genomics/cells.h5ad."""
    folder = tmp_path_factory.mktemp("data") / "genomics"
    folder.mkdir()
    values, labels = expression(TRAIN_TYPES + TEST_TYPES)
    return write_h5ad(folder / "cells.h5ad", values, labels)


def make_data(files: list[Path], **overrides) -> CellEpisodes:
    settings = dict(
        files=[str(f) for f in files], meta_train=TRAIN_TYPES, meta_val=[], meta_test=TEST_TYPES,
        label_key="cell_type", n_way=3, n_shot=2, n_query=3, test_episodes=8,
    )  # fmt: skip
    return CellEpisodes(**{**settings, **overrides})


# -- reading -------------------------------------------------------------------------------------------------
def test_dense_sparse_and_layer_matrices_read_as_stored(tmp_path: Path):
    values, labels = expression(TEST_TYPES, per_type=4)
    values = np.where(values > 1, values, 0).astype(np.float32)  # mostly zeros, as counts are
    counts = np.round(np.abs(values) * 10).astype(np.int32)
    dense = write_h5ad(tmp_path / "dense.h5ad", values, labels, layers={"counts": sparse.csr_matrix(counts)})
    csr = write_h5ad(tmp_path / "csr.h5ad", sparse.csr_matrix(values), labels)
    csc = write_h5ad(tmp_path / "csc.h5ad", sparse.csc_matrix(values), labels)
    for path in (dense, csr, csc):
        cells = single_cell.read_cells(path, GENES, "cell_type")
        assert cells.values.dtype == np.float32 and cells.values.shape == (12, len(GENES))
        np.testing.assert_array_equal(cells.values, values)  # as stored: no normalisation
        assert cells.labels.tolist() == labels and cells.cell_names[0] == "cell0"
    layer = single_cell.read_cells(dense, GENES, "cell_type", layer="counts")
    np.testing.assert_array_equal(layer.values, counts.astype(np.float32))
    with pytest.raises(DataError, match=r"dense\.h5ad: no layer 'spliced'; its layers are \['counts'\]"):
        single_cell.read_cells(dense, GENES, layer="spliced")


def test_a_second_file_is_aligned_to_the_first_by_gene_name(tmp_path: Path):
    first_values, first_labels = expression(TRAIN_TYPES[:3], per_type=5, seed=1)
    second_values, second_labels = expression(TRAIN_TYPES[:3], per_type=4, seed=2)
    first = write_h5ad(tmp_path / "a.h5ad", first_values, first_labels)
    order = np.random.default_rng(3).permutation(len(GENES))
    extra = np.full((len(second_labels), 1), 7.0, dtype=np.float32)  # a gene the first file lacks
    second = write_h5ad(
        tmp_path / "b.h5ad",
        np.hstack([second_values[:, order], extra]),
        second_labels,
        genes=[GENES[i] for i in order] + ["EXTRA"],
        prefix="other",
    )
    np.testing.assert_array_equal(single_cell.read_cells(second, GENES).values, second_values)
    data = make_data(
        [first, second], meta_train=TRAIN_TYPES[:2], meta_val=[], meta_test=[TRAIN_TYPES[2]], n_way=2
    )
    assert data.genes == GENES and data.example_shape == (len(GENES),)  # the first file's genes and order
    pools = data.build_pools()
    train = pools["meta_train"]
    assert [c.key for c in train.classes] == TRAIN_TYPES[:2]
    assert train.class_sizes() == [5 + 4, 5 + 4]  # a type is one class across both files
    rows = train.class_indices[0]
    expected = np.concatenate([first_values[:5], second_values[:4]])
    np.testing.assert_array_equal(train.examples[rows].numpy(), expected)
    # Genes of a reference file, or a list, set which genes are read and in which order.
    assert make_data([first], gene_reference=str(second)).genes == [GENES[i] for i in order] + ["EXTRA"]
    chosen = make_data(
        [first, second], meta_train=TRAIN_TYPES[:2], meta_test=[TRAIN_TYPES[2]], genes=["G005", "G001"]
    )
    assert chosen.example_shape == (2,)
    np.testing.assert_array_equal(
        chosen.build_pools()["meta_test"].examples[:5].numpy(), first_values[:5, [5, 1]]
    )


def test_missing_genes_are_an_error_naming_the_first_few_and_their_count(tmp_path: Path):
    values, labels = expression(TEST_TYPES, per_type=4)
    first = write_h5ad(tmp_path / "a.h5ad", values, labels)
    second = write_h5ad(tmp_path / "b.h5ad", values[:, 7:], labels, genes=GENES[7:])
    data = make_data([first, second], meta_train=TEST_TYPES[:2], meta_test=[TEST_TYPES[2]], n_way=2)
    with pytest.raises(
        DataError,
        match=r"b\.h5ad: 7 of the 60 genes are not in its var_names: 'G000', 'G001', 'G002', 'G003', "
        r"'G004' and 2 more; genes are matched by name",
    ):
        data.setup()
    twice = write_h5ad(tmp_path / "twice.h5ad", values[:, :3], labels, genes=["G000", "G001", "G000"])
    with pytest.raises(DataError, match=r"twice\.h5ad: the gene name\(s\) 'G000' occur more than once"):
        single_cell.read_cells(twice, ["G000", "G001"])


def test_nan_and_infinite_values_name_the_file_cell_and_gene(tmp_path: Path):
    values, labels = expression(TEST_TYPES, per_type=4)
    values[5, 9] = np.nan
    values[7, 2] = np.inf
    path = write_h5ad(tmp_path / "holes.h5ad", sparse.csr_matrix(values), labels)
    with pytest.raises(
        DataError, match=r"holes\.h5ad: 2 expression value\(s\) are NaN or infinite .* the first of cell "
        r"'cell5' \(obs row 5\) and gene 'G009'; expression values must be finite",
    ):  # fmt: skip
        single_cell.read_cells(path, GENES)
    # Only the genes read count: a NaN in a gene left out is harmless.
    assert np.isfinite(single_cell.read_cells(path, GENES[:2]).values).all()


# -- labels and meta-splits ----------------------------------------------------------------------------------
def test_classes_are_the_obs_values_and_unknown_ones_are_named(cells_file: Path):
    data = make_data([cells_file])
    data.setup()
    assert {s: [c.key for c in p.classes] for s, p in data.pools.items()} == {
        "meta_train": TRAIN_TYPES, "meta_val": [], "meta_test": TEST_TYPES
    }  # fmt: skip
    assert data.pools["meta_test"].class_sizes() == [PER_TYPE] * 3
    with pytest.raises(
        DataError, match=r"data\.meta_test: no cell type 'Platelets' \(did you mean 'Platelet'\?\) in "
        r"obs\['cell_type'\] of cells\.h5ad; its values \(cells\) are 'B cell' \(16\), 'CD34\+' \(16\)",
    ):  # fmt: skip
        make_data([cells_file], meta_test=["CD34+", "Platelets", "Mast cell"]).setup()
    with pytest.raises(
        DataError, match=r"no obs column 'bulk_labels'; its obs columns are \['cell_type', 'donor'\]"
    ):
        make_data([cells_file], label_key="bulk_labels").setup()


def test_a_type_smaller_than_k_plus_q_is_named_with_its_size(tmp_path: Path):
    values, labels = expression(TRAIN_TYPES + TEST_TYPES)
    labels = [None if label == "Platelet" and i % 16 >= 7 else label for i, label in enumerate(labels)]
    path = write_h5ad(tmp_path / "rare.h5ad", values, labels)  # Platelet: 7 labelled cells, 9 without
    with pytest.raises(
        DataError, match=r"meta_test: 1 cell type\(s\) have fewer than n_shot \+ n_query = 5 \+ 3 = 8 cells: "
        r"'Platelet' \(7 cells\)\. The rarest type of a split bounds n_shot \+ n_query \(here to 7\)",
    ):  # fmt: skip
        make_data([path], n_shot=5).setup()
    data = make_data([path], n_shot=4)
    data.setup()  # 4 + 3 = 7 fits; the unlabelled cells are in no class
    assert data.pools["meta_test"].class_sizes() == [PER_TYPE, 7, PER_TYPE]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"meta_test": ["CD34+", "Platelet", "B cell"]}, r"'B cell' is in both data\.meta_train and"),
        ({"meta_test": ["CD34+", "CD34+", "Platelet"]}, r"data\.meta_test lists cell type\(s\) \['CD34\+'\]"),
        ({"genes": ["G001"], "gene_reference": "x.h5ad"}, r"give data\.genes or data\.gene_reference, not"),
        ({"genes": ["G001", "G001"]}, r"data\.genes must name distinct genes; 'G001' occur twice"),
        ({"n_way": 4}, r"meta_test has 3 classes, fewer than n_way=4"),
    ],
)
def test_bad_configurations_are_named(cells_file: Path, overrides: dict, message: str):
    with pytest.raises(DataError, match=message):
        make_data([cells_file], **overrides).setup()


def test_missing_and_unreadable_files_are_named(tmp_path: Path, cells_file: Path):
    with pytest.raises(FileNotFoundError, match=r"no such \.h5ad file\(s\): .*nowhere\.h5ad"):
        make_data([cells_file, tmp_path / "nowhere.h5ad"], genes=GENES).setup()
    (tmp_path / "text.h5ad").write_text("not hdf5\n")
    with pytest.raises(DataError, match=r"text\.h5ad: not a readable AnnData \.h5ad file"):
        single_cell.read_cells(tmp_path / "text.h5ad", GENES)


# -- meta-training and adapting ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cells_run(cells_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/cells_protonet.yaml on the generated cells, a small MLP, 60 steps."""
    runs = tmp_path_factory.mktemp("runs")
    args = [
        "--config", str(CONFIG), f"--runs_dir={runs}", "--trainer.max_steps=60",
        "--data.init_args.files=[genomics/cells.h5ad]", "--data.init_args.label_key=cell_type",
        f"--data.init_args.meta_train={json.dumps(TRAIN_TYPES)}",
        f"--data.init_args.meta_test={json.dumps(TEST_TYPES)}",
        "--data.init_args.test_episodes=40", "--data.init_args.meta_batches_per_epoch=30",
        "--model.init_args.backbone.init_args.hidden=32",
    ]  # fmt: skip
    return fit_in_process(args, data_dir=cells_file.parent.parent)


def test_protonet_tells_unseen_types_apart_and_the_report_has_the_baselines(cells_run: Path):
    report = json.loads((cells_run / "meta_test_report.json").read_text())
    assert report["n_way"] == 3 and report["n_shot"] == 5 and report["episodes"] == 40
    assert report["metrics"]["accuracy"]["mean"] > 0.85  # chance: 1/3 (0.93 when written)
    assert report["metrics"]["auroc"]["mean"] > 0.9
    # The no-learning baselines on the same episodes; on types this well apart the raw centroid is as good.
    assert {"NearestCentroid", "SupportLogisticRegression"} <= set(report["references"])
    assert report["references"]["NearestCentroid"]["metrics"]["accuracy"]["mean"] > 0.9


def test_adapt_on_h5ad_files_gives_the_evaluation_probabilities(
    cells_run: Path, cells_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(DATA_DIR_ENV, str(cells_file.parent.parent))  # the evaluation path sets up the data
    checkpoint = cells_run / "checkpoints" / "last.ckpt"
    meta_trained = load_meta_trained(checkpoint)
    data = meta_trained.data
    assert meta_trained.input_shape == (len(GENES),) and meta_trained.data_state["cells"]["genes"] == GENES
    data.setup()
    pool = data.pools["meta_test"]
    values, labels = expression(TRAIN_TYPES + TEST_TYPES)
    classes = sorted(TEST_TYPES)  # the support set's classes: its cell types, sorted
    support_rows = [pool.class_indices[TEST_TYPES.index(c)][:3] for c in classes]
    query_rows = [int(pool.class_indices[j][k]) for k in range(3, 5) for j in range(3)]
    # The lab's files order their genes otherwise: they are read by name.
    order = np.random.default_rng(4).permutation(len(GENES))
    genes = [GENES[i] for i in order]
    rows = torch.cat(support_rows).tolist()
    write_h5ad(tmp_path / "support.h5ad", values[rows][:, order], [labels[i] for i in rows], genes=genes)
    predict_labels = [labels[i] if k % 2 else None for k, i in enumerate(query_rows)]
    write_h5ad(tmp_path / "new.h5ad", values[query_rows][:, order], predict_labels, genes=genes, prefix="new")

    out = tmp_path / "adapted"
    main([f"--ckpt_path={checkpoint}", f"--support={tmp_path / 'support.h5ad'}",
          f"--predict={tmp_path / 'new.h5ad'}", f"--out={out}", "--id_column=donor"])  # fmt: skip

    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(predictions.columns) == [
        "cell", "donor", "label", "prediction", *(f"probability_{c}" for c in classes)
    ]  # fmt: skip
    assert predictions["cell"].tolist() == [f"new{i}" for i in range(6)]
    assert predictions["label"].tolist() == [p or "" for p in predict_labels]  # copied, never used
    probabilities = csv_probabilities(out / "predictions.csv", classes)
    expected = evaluation_probabilities(meta_trained.model, data, support_rows, query_rows)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=0)
    x = pool.examples[torch.tensor(query_rows)]
    torch.testing.assert_close(exported_probabilities(out, x), probabilities, atol=1e-5, rtol=0)
    assert (predictions["prediction"] == [labels[i] for i in query_rows]).mean() > 0.8
    info = json.loads((out / "adapted_model.json").read_text())
    assert info["classes"] == classes and info["support"]["counts"] == dict.fromkeys(classes, 3)
    assert info["input"]["kind"] == "cells" and info["input"]["genes"] == GENES
    assert info["input"]["shape"] == [len(GENES)] and not info["batch_dependent"]


def test_case_files_need_labelled_support_cells_and_known_columns(tmp_path: Path):
    values, labels = expression(TEST_TYPES, per_type=3)
    reader = single_cell.CellCases(GENES, label_key="cell_type")
    unlabelled = write_h5ad(tmp_path / "s.h5ad", values, [None, *labels[1:]])
    with pytest.raises(
        DataError, match=r"s\.h5ad: 1 support cell\(s\) have no obs\['cell_type'\] value, e\.g\. 'cell0'"
    ):
        reader.read_support(unlabelled)
    other = write_h5ad(tmp_path / "o.h5ad", values, labels, label_key="annotation")
    support = single_cell.CellCases(GENES, label_key="annotation").read_support(other)  # --label_column
    assert support.classes == sorted(TEST_TYPES) and support.counts() == dict.fromkeys(TEST_TYPES, 3)
    with pytest.raises(
        DataError, match=r"no obs column 'cell_type'; its obs columns are \['annotation', 'donor'\]"
    ):
        reader.read_support(other)
    cases = single_cell.CellCases(GENES, "cell_type", id_column="batch")
    with pytest.raises(DataError, match=r"o\.h5ad: no obs column 'batch' \(--id_column\)"):
        cases.read_cases(other)
    assert "label" not in reader.read_cases(other).ids  # no label column there: nothing copied


def test_a_resumed_run_must_read_the_genes_it_was_trained_on(cells_file: Path):
    data = make_data([cells_file])
    state = data.state_dict()
    assert state == {"cells": {"genes": GENES, "layer": None, "label_key": "cell_type"}}
    data.load_state_dict(state)
    with pytest.raises(
        DataError, match=r"the checkpoint was trained on 60 genes, this configuration reads 2"
    ):
        make_data([cells_file], genes=["G001", "G002"]).load_state_dict(state)


# -- the real file -------------------------------------------------------------------------------------------
@pytest.mark.skipif(not PBMC.is_file(), reason="../shared/data/genomics/pbmc68k_reduced.h5ad is not here")
def test_the_real_pbmc_file_reads_as_the_config_expects():
    split = yaml.safe_load((REPO / "configs" / "parts" / "cells_data.yaml").read_text())["init_args"]
    settings = {k: split[k] for k in ("files", "label_key", "meta_train", "meta_val", "meta_test", "n_way")}
    data = CellEpisodes(**settings, root=str(SHARED_DATA), n_shot=split["n_shot"], n_query=split["n_query"])
    data.setup()
    assert data.example_shape == (765,) and data.genes[:3] == ["HES4", "TNFRSF4", "SSU72"]
    sizes = {c.key: n for p in data.pools.values() for c, n in zip(p.classes, p.class_sizes(), strict=True)}
    assert sum(sizes.values()) == 700 and len(sizes) == 10
    assert sizes["Dendritic"] == 240 and min(sizes, key=sizes.get) == "CD4+/CD45RA+/CD25- Naive T"
    assert sizes["CD4+/CD45RA+/CD25- Naive T"] == 8 == split["n_shot"] + split["n_query"]
    assert sorted(sizes, key=sizes.get, reverse=True)[:5] == split["meta_train"]  # the five largest
    x = data.pools["meta_train"].examples
    raw = single_cell.read_anndata(PBMC).X
    np.testing.assert_array_equal(x.numpy(), raw)  # X as stored (already scaled)
    with pytest.raises(DataError, match=r"'CD4\+/CD45RA\+/CD25- Naive T' \(8 cells\)"):
        CellEpisodes(**settings, root=str(SHARED_DATA), n_shot=5, n_query=4).setup()
