"""Molecules as few-shot tasks: MoleculeNet-style CSVs of SMILES and binary assays, one task per assay.

The protocol of the few-shot molecular property literature (Altae-Tran, Ramsundar, Pappu and Pande, "Low
Data Drug Discovery with One-Shot Learning", ACS Central Science 3(4), 2017; Wang, Abuduweili, Yao and Dou,
"Property-Aware Relation Networks for Few-Shot Molecular Property Prediction", NeurIPS 2021): each assay, a
column of ``0`` (inactive), ``1`` (active) or empty (not measured), is a task. The *assays* are divided
between meta-train, meta-val and meta-test, not the molecules: a molecule of a test assay may have been seen
in training, with the labels of other assays, as in the published benchmarks. An episode is 2-way K-shot on
one assay: K inactive and K active molecules as support, ``n_query`` of each among the assay's other measured
molecules as query. Local class 0 is always "inactive" and 1 "active" (the episode's positive class), so the
AUROC of the report is that of "active", and a meta-learned head (MAML) keeps one meaning across assays.

Molecules are Morgan fingerprints (Rogers and Hahn, "Extended-Connectivity Fingerprints", J. Chem. Inf.
Model. 50(5), 2010) computed by RDKit, radius 2 and 2048 bits by default, as float32 0/1 vectors. They are
computed once per file and cached under ``cache_dir``, named by a hash of the CSV's bytes and of the
fingerprint settings (and RDKit's version), so a changed file, or other settings, is featurised again.
SMILES RDKit cannot parse stop set-up with their rows, unless ``invalid_smiles: drop`` says to leave them
out (their count is logged). Logs hold counts only, never a SMILES or a fingerprint.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from metaclinic.data.cases import Cases, SupportSet, _sorted_by_class
from metaclinic.data.datamodule import SPLITS, EpisodicDataModule, default_data_root
from metaclinic.data.episodes import EpisodeDataset
from metaclinic.data.pool import ClassInfo, ClassPool
from metaclinic.data.problems import MAX_LISTED, Problems
from metaclinic.data.table import Table, TableSpec, read_table
from metaclinic.data.task import Task
from metaclinic.errors import DataError

log = logging.getLogger(__name__)

InvalidSmiles = Literal["error", "drop"]
INVALID_SMILES = ("error", "drop")
CACHE_FORMAT = 1  # bump when the cached arrays change meaning
MAX_LISTED_SMILES = 20  # invalid SMILES named in one error: the user fixes them all in one pass
SMILES_SHOWN = 80  # characters of each (a salt or a polymer is written in hundreds)
INACTIVE, ACTIVE = "0", "1"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/metaclinic/fingerprints`` (``~/.cache/...``): data folders are often read-only."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metaclinic" / "fingerprints"


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'SR-HSE'?)`` for the candidate closest to ``name``, ignoring case; else empty."""
    lower = {c.lower(): c for c in candidates}
    closest = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
    return f" (did you mean {lower[closest[0]]!r}?)" if closest else ""


# -- featurisation -------------------------------------------------------------------------------------------
@dataclass
class Fingerprints:
    """The fingerprints of a list of SMILES: ``bits (valid, n_bits)`` uint8 0/1 of the parsed ones, in
    order, ``valid (smiles,)`` which were parsed, and ``molecule (valid,)`` an id shared by the SMILES of
    one molecule (equal canonical SMILES), so that one molecule written twice is drawn as one."""

    bits: np.ndarray
    valid: np.ndarray
    molecule: np.ndarray


@dataclass(frozen=True)
class MorganFingerprints:
    """RDKit Morgan fingerprints: ``GetMorganGenerator(radius, fpSize=n_bits)``, no chirality, as bits.

    Radius 2 is ECFP4, the fingerprint of the few-shot molecular literature's non-graph baselines.
    """

    radius: int = 2
    n_bits: int = 2048

    def settings(self) -> dict[str, Any]:
        """What the bits depend on (saved in checkpoints, part of the cache key)."""
        return {"kind": "morgan", "radius": self.radius, "n_bits": self.n_bits, "rdkit": rdkit_version()}

    def __call__(self, smiles: Sequence[str | None]) -> Fingerprints:
        """Fingerprints of ``smiles``; ``None``, empty and unparsable SMILES are marked invalid."""
        from rdkit import Chem, rdBase
        from rdkit.Chem import rdFingerprintGenerator

        generator = rdFingerprintGenerator.GetMorganGenerator(radius=self.radius, fpSize=self.n_bits)
        bits, canonical, valid = [], [], np.zeros(len(smiles), dtype=bool)
        with rdBase.BlockLogs():  # RDKit's parse errors would print the SMILES
            for i, text in enumerate(smiles):
                molecule = Chem.MolFromSmiles(text) if text else None  # "" parses as an empty molecule
                if molecule is None:
                    continue
                valid[i] = True
                bits.append(generator.GetFingerprintAsNumPy(molecule).astype(np.uint8))
                canonical.append(Chem.MolToSmiles(molecule))
        stacked = np.stack(bits) if bits else np.zeros((0, self.n_bits), dtype=np.uint8)
        ids = np.unique(np.array(canonical, dtype=str), return_inverse=True)[1] if canonical else []
        return Fingerprints(stacked, valid, np.asarray(ids, dtype=np.int64).reshape(-1))

    def cached(self, file: Path, smiles: Sequence[str | None], cache_dir: Path, column: str) -> Fingerprints:
        """The fingerprints of ``smiles`` (column ``column`` of ``file``), from ``cache_dir`` when computed
        before for the same bytes of ``file`` and the same settings; computed and cached otherwise."""
        settings = {**self.settings(), "smiles_column": column, "format": CACHE_FORMAT}
        content = hashlib.sha256(file.read_bytes()).hexdigest()
        key = hashlib.sha256(f"{content}|{json.dumps(settings, sort_keys=True)}".encode()).hexdigest()
        path = cache_dir / f"{file.stem}-{key[:24]}.npz"
        found = _read_cache(path, content, len(smiles), self.n_bits)
        if found is not None:
            log.info(
                "%s: fingerprints of %d molecules read from the cache %s", file.name, len(found.bits), path
            )
            return found
        start = time.perf_counter()
        fingerprints = self(smiles)
        log.info(
            "%s: %d molecules featurised (Morgan radius %d, %d bits) in %.1f s",
            file.name, len(fingerprints.bits), self.radius, self.n_bits, time.perf_counter() - start,
        )  # fmt: skip
        _write_cache(path, content, fingerprints)
        return fingerprints


def rdkit_version() -> str:
    try:
        from rdkit import __version__
    except ImportError:
        raise DataError("molecules need RDKit: pip install rdkit (a metaclinic dependency)") from None
    return __version__


def _read_cache(path: Path, content: str, rows: int, n_bits: int) -> Fingerprints | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["csv_sha256"]) != content or len(saved["valid"]) != rows:
                return None
            valid = saved["valid"].astype(bool)
            bits = np.unpackbits(saved["bits"], axis=1, count=n_bits)
            return Fingerprints(bits, valid, saved["molecule"].astype(np.int64))
    except (OSError, ValueError, KeyError) as error:  # a damaged cache file is computed again
        log.warning("%s: unreadable fingerprint cache (%s); featurising again", path, type(error).__name__)
        return None


def _write_cache(path: Path, content: str, fingerprints: Fingerprints) -> None:
    """Writes the cache atomically (a temporary file moved over it); failing to is a warning, not an error."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        csv_sha256=np.array(content),
        bits=np.packbits(fingerprints.bits, axis=1),
        valid=fingerprints.valid,
        molecule=fingerprints.molecule,
    )
    # Per host and process: the cache folder may be shared by nodes that each featurise (prepare_data).
    partial = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(buffer.getvalue())
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        log.warning("fingerprints not cached (%s: %s); set data.init_args.cache_dir", path, error.strerror)


def assay_values(table: Table, column: str, problems: Problems) -> np.ndarray:
    """An assay column as int8: 0, 1, or -1 where not measured (empty); other cells go to ``problems``."""
    values = np.full(len(table), -1, dtype=np.int8)
    bad = []
    for row, text in enumerate(table.column(column)):
        if text is None:
            continue
        try:
            number = float(text)
        except ValueError:
            number = None
        if number in (0.0, 1.0):  # "1" and "1.0" (pandas writes floats once a column has NaN)
            values[row] = int(number)
        else:
            bad.append(row)
    if bad:
        cells = "; ".join(f"row {table.row_in_file[r]}: {table.cells[column][r]!r}" for r in bad[:MAX_LISTED])
        more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        problems.add(
            f"{table.files[0]}: assay column {column!r} has {len(bad)} cell(s) other than 0, 1 or empty (not "
            f"measured): {cells}{more}"
        )
    return values


def invalid_smiles_message(file: str, table: Table, smiles: np.ndarray, invalid: np.ndarray) -> str:
    """Names the first invalid SMILES by row, each cut to ``SMILES_SHOWN`` characters."""

    def shown(text: str | None) -> str:
        text = text or ""
        return repr(text if len(text) <= SMILES_SHOWN else text[: SMILES_SHOWN - 3] + "...")

    listed = "; ".join(f"row {table.row_in_file[r]}: {shown(smiles[r])}" for r in invalid[:MAX_LISTED_SMILES])
    more = f" and {len(invalid) - MAX_LISTED_SMILES} more" if len(invalid) > MAX_LISTED_SMILES else ""
    return f"{file}: {len(invalid)} SMILES cannot be parsed by RDKit: {listed}{more}"


# -- episodes ------------------------------------------------------------------------------------------------
class AssayEpisodes(EpisodeDataset):
    """Episodes of one assay each: local class 0 its inactive molecules, 1 its active ones (positive).

    The draws are those of :class:`EpisodeDataset` (seeded by ``(seed, stream, episode)``, distinct molecules,
    none in both support and query); only the order of the two classes is fixed, because "active" means the
    same in every assay. With ``balanced`` (the evaluation streams), episode ``i`` is of assay
    ``i % assays``, so every assay has the same number of episodes and the mean over episodes is the mean
    over assays (exactly when the number of episodes is a multiple of the number of assays).
    """

    def __init__(
        self,
        pool: ClassPool,
        n_shot: int,
        n_query: int,
        seed: int,
        stream: int,
        num_episodes: int | None = None,
        balanced: bool = False,
    ) -> None:
        super().__init__(pool, 2, n_shot, n_query, seed, stream, num_episodes)
        self._assays = [np.array(ids) for ids in pool.domains().values()]
        if any(len(ids) != 2 for ids in self._assays):
            raise DataError("AssayEpisodes: every assay needs exactly two classes, inactive then active")
        self.balanced = balanced

    def __getitem__(self, episode: int) -> tuple[Task, int]:
        rng = np.random.default_rng([self.seed, self.stream, episode])
        assay = episode % len(self._assays) if self.balanced else int(rng.integers(len(self._assays)))
        classes = self._assays[assay]  # (inactive, active)
        rows = self._draw_examples(rng, classes, episode)
        task = self.episode_task(classes, rows, positive_class=1, domain=assay)
        return task, episode


# -- the data module -----------------------------------------------------------------------------------------
class MoleculeEpisodes(EpisodicDataModule):
    """2-way K-shot tasks over the assays of a MoleculeNet-style CSV (Tox21, SIDER, ...), one per assay.

    The CSV has a SMILES column and one column per assay (``0``/``1``, empty = not measured); every column
    but the SMILES one is an assay that the meta-splits may name. The meta-splits list assays and must not
    share one. A listed assay needs at least ``n_shot + n_query`` measured active and as many inactive
    molecules (distinct molecules: the same canonical SMILES twice counts once), in every split. The report
    breaks the meta-test results down by assay (each is a domain), and its evaluation episodes are spread
    evenly over the assays (:class:`AssayEpisodes`).

    Args:
        path: the CSV; relative paths start at ``root``.
        meta_train: assays to meta-train on (Tox21: the nine ``NR-*``, ``SR-ARE``, ``SR-ATAD5``).
        meta_val: assays to validate on; may be empty (the literature's protocol: no validation assay).
        meta_test: assays to report on (Tox21: ``SR-HSE``, ``SR-MMP``, ``SR-p53``).
        smiles_column: the column of SMILES strings.
        root: folder that a relative ``path`` starts from; default ``$METACLINIC_DATA_DIR``, else ``./data``.
        cache_dir: where fingerprints are cached; default ``$XDG_CACHE_HOME/metaclinic/fingerprints``
            (``~/.cache/...``). Never inside the package; data folders are often read-only.
        invalid_smiles: ``error`` (default): SMILES that RDKit cannot parse stop set-up, named by row;
            ``drop``: those molecules are left out, and their count is logged.
        radius: Morgan fingerprint radius (2: ECFP4).
        n_bits: fingerprint length, the model's input width.
        n_way: 2, an assay's inactive and active molecules (the only value allowed).
        n_shot: support molecules per class (1 and 10 in the literature).
        n_query: query molecules per class.
        **kwargs: the other episode settings of :class:`EpisodicDataModule` (meta_batch_size, ...).
    """

    def __init__(
        self,
        path: str,
        meta_train: list[str],
        meta_val: list[str],
        meta_test: list[str],
        smiles_column: str = "smiles",
        root: str | None = None,
        cache_dir: str | None = None,
        invalid_smiles: InvalidSmiles = "error",
        radius: int = 2,
        n_bits: int = 2048,
        n_way: int = 2,
        n_shot: int = 10,
        n_query: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(n_way=n_way, n_shot=n_shot, n_query=n_query, **kwargs)
        problems = Problems()
        if n_way != 2:
            problems.add(
                f"data.n_way must be 2 for molecules (an assay's inactive and active molecules), got {n_way}"
            )
        if invalid_smiles not in INVALID_SMILES:
            problems.add(f"data.invalid_smiles must be one of {list(INVALID_SMILES)}, got {invalid_smiles!r}")
        if radius < 0 or n_bits < 1:
            problems.add(f"data.radius must be >= 0 and data.n_bits >= 1, got {radius} and {n_bits}")
        self.selectors = {"meta_train": meta_train, "meta_val": meta_val, "meta_test": meta_test}
        why = "meta-splits must not share an assay (a test assay seen in training is no few-shot task)"
        problems.check_meta_splits(self.selectors, "assay", why)
        problems.raise_if_any()
        self.path, self.smiles_column, self.invalid_smiles = path, smiles_column, invalid_smiles
        self.root = Path(root) if root else default_data_root()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.featuriser = MorganFingerprints(radius, n_bits)
        self.features: Tensor | None = None
        self.molecule_rows: np.ndarray | None = None  # the file row (from 1) of every featurised molecule

    # -- what the DataModule provides ------------------------------------------------------------------------
    @property
    def example_shape(self) -> tuple[int]:
        return (self.featuriser.n_bits,)

    def prepare_data(self) -> None:
        """Featurises the molecules into the fingerprint cache, once per node: Lightning runs this on each
        node's local rank 0 before any process sets up, so the other processes read the cache."""
        table, file = self._read()
        smiles = table.column(self.smiles_column).tolist()
        self.featuriser.cached(file, smiles, self.cache_dir, self.smiles_column)

    def build_pools(self) -> dict[str, ClassPool]:
        table, file = self._read()
        problems = Problems()
        values = {a: assay_values(table, a, problems) for chosen in self.selectors.values() for a in chosen}
        problems.raise_if_any()
        smiles = table.column(self.smiles_column)
        fingerprints = self.featuriser.cached(file, smiles.tolist(), self.cache_dir, self.smiles_column)
        invalid = np.flatnonzero(~fingerprints.valid)
        if invalid.size and self.invalid_smiles == "error":
            raise DataError(
                f"{invalid_smiles_message(str(file), table, smiles, invalid)}. Fix them, or set "
                "data.init_args.invalid_smiles: drop to leave these molecules out (their count is logged)"
            )
        if invalid.size:
            log.warning(
                "%s: %d of %d SMILES cannot be parsed by RDKit and are left out (invalid_smiles: drop)",
                file.name, invalid.size, len(table),
            )  # fmt: skip
        valid = fingerprints.valid
        self.features = torch.from_numpy(fingerprints.bits.astype(np.float32))
        self.molecule_rows = table.row_in_file[valid]
        molecules = torch.from_numpy(fingerprints.molecule)
        pools, short = {}, []
        for split, chosen in self.selectors.items():
            indices, classes = [], []
            for assay in chosen:
                measured = values[assay][valid]
                rows = [np.flatnonzero(measured == v) for v in (0, 1)]
                counts = [len(np.unique(fingerprints.molecule[r])) for r in rows]
                if min(counts) < self.n_shot + self.n_query:
                    short.append(f"{split}: {assay!r} has {counts[1]} active and {counts[0]} inactive")
                indices += [torch.from_numpy(r) for r in rows]
                classes += [
                    ClassInfo(f"{assay}={INACTIVE}", f"{assay}: inactive", assay),
                    ClassInfo(f"{assay}={ACTIVE}", f"{assay}: active", assay),
                ]
                log.info(
                    "%s: assay %s, %d active and %d inactive molecules", split, assay, counts[1], counts[0]
                )
            pools[split] = ClassPool(
                self.features, indices, classes, groups=molecules, same_domain_episodes=True
            )
        if short:
            needed = self.n_shot + self.n_query
            raise DataError(
                f"{len(short)} assay(s) have fewer than n_shot + n_query = {self.n_shot} + {self.n_query} = "
                f"{needed} measured molecules of a class: {'; '.join(short)}. Lower n_shot or n_query, or "
                "move these assays out of their split"
            )
        return pools

    def state_dict(self) -> dict[str, Any]:
        """How molecules were featurised, saved in every checkpoint (adapt featurises new ones alike)."""
        return {"featuriser": self.featuriser.settings(), "smiles_column": self.smiles_column}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "featuriser" in state:
            self._saved_featuriser(state, "the checkpoint")

    def saved_input_shape(self, state: dict[str, Any], source: str) -> tuple[int, ...]:
        return (self._saved_featuriser(state, source).n_bits,)

    def case_reader(
        self, state: dict[str, Any], label_column: str | None = None, id_column: str | None = None
    ) -> MoleculeCases:
        """Reads CSVs of SMILES (a support set with a 0/1 label column, molecules to predict) as training
        featurised its molecules."""
        featuriser = self._saved_featuriser(state, "the checkpoint")
        return MoleculeCases(
            featuriser, state.get("smiles_column", self.smiles_column), label_column, id_column
        )

    def _saved_featuriser(self, state: dict[str, Any], source: str) -> MorganFingerprints:
        """The checkpoint's featurisation, which must be this configuration's (RDKit versions may differ)."""
        saved = state.get("featuriser")
        if saved is None:
            raise DataError(f"{source} holds no molecule featurisation; was it written by metaclinic.fit?")
        featuriser = MorganFingerprints(int(saved["radius"]), int(saved["n_bits"]))
        if featuriser != self.featuriser:
            raise DataError(
                f"{source} was trained on Morgan fingerprints of radius {featuriser.radius} and "
                f"{featuriser.n_bits} bits, but this configuration makes radius {self.featuriser.radius} and "
                f"{self.featuriser.n_bits} bits; use the run's config.yaml"
            )
        if saved.get("rdkit") != rdkit_version():
            log.warning(
                "%s: fingerprints were computed with RDKit %s, this is RDKit %s; bits may differ slightly",
                source, saved.get("rdkit"), rdkit_version(),
            )  # fmt: skip
        return featuriser

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.trainer is not None and self.pools is not None and self.pools["meta_val"].num_classes == 0:
            # No validation assay is the configuration (the literature's protocol): Lightning would still ask
            # for validation loaders and warn that there are none.
            self.trainer.limit_val_batches = 0

    def _episodes(self, split: str, seed: int, num_episodes: int | None = None) -> EpisodeDataset:
        assert self.pools is not None, "call setup() first"
        stream = SPLITS.index(split)
        balanced = split != "meta_train"
        return AssayEpisodes(
            self.pools[split], self.n_shot, self.n_query, seed, stream, num_episodes, balanced
        )

    # -- reading -------------------------------------------------------------------------------------------
    def _read(self) -> tuple[Table, Path]:
        """The CSV as text cells, its SMILES column and the meta-splits' assays checked."""
        spec = TableSpec(path=self.path, label_column=[], missing_values=[""])
        table = read_table(spec, self.root)
        file = Path(table.files[0])
        columns = list(table.cells)
        problems = Problems()
        if self.smiles_column not in columns:
            problems.add(
                f"{file}: no SMILES column {self.smiles_column!r}{did_you_mean(self.smiles_column, columns)};"
                f" the file has the columns {columns} (set data.init_args.smiles_column)"
            )
        assays = [c for c in columns if c != self.smiles_column]
        for split, chosen in self.selectors.items():
            for assay in chosen:
                if assay not in assays:
                    problems.add(
                        f"data.{split}: unknown assay {assay!r}{did_you_mean(assay, assays)}; {file.name} "
                        f"has the assays {assays}"
                    )
        problems.raise_if_any()
        return table, file


# -- a clinic's (a lab's) molecules for metaclinic.adapt -----------------------------------------------------
class MoleculeCases:
    """Reads CSVs of SMILES for ``metaclinic.adapt``, featurised as training featurised its molecules.

    The support CSV has the SMILES column and a label column of ``0`` (inactive) and ``1`` (active), the
    classes ``"0"`` and ``"1"`` (local classes 0 and 1 of training episodes); the CSV to predict needs the
    SMILES column only. Every SMILES must parse: an invalid one is an error naming its row (a prediction
    file cannot leave a row out). ``predictions.csv`` identifies each molecule by its row, the ``id_column``
    when given, and its SMILES (molecules are not patients).

    Args:
        featuriser: the checkpoint's fingerprint settings.
        smiles_column: the SMILES column (the training config's).
        label_column: the support set's label column; default its only column besides SMILES and
            ``id_column``.
        id_column: a column copied into ``predictions.csv``.
    """

    def __init__(
        self,
        featuriser: MorganFingerprints,
        smiles_column: str = "smiles",
        label_column: str | None = None,
        id_column: str | None = None,
    ) -> None:
        self.featuriser, self.smiles_column = featuriser, smiles_column
        self.label_column, self.id_column = label_column, id_column

    def read_support(self, path: str | Path) -> SupportSet:
        table, x = self._read(Path(path), labelled=True)
        column = self._label(table, Path(path))
        problems = Problems()
        values = assay_values(table, column, problems)
        problems.raise_if_any()
        unlabelled = np.flatnonzero(values < 0)
        if unlabelled.size:
            raise DataError(
                f"{path}: label column {column!r} is empty in {unlabelled.size} row(s): "
                f"{table.rows_message(unlabelled)}; every support molecule needs a label (0 or 1)"
            )
        return _sorted_by_class(x, [str(v) for v in values], str(path), [INACTIVE, ACTIVE])

    def read_cases(self, path: str | Path) -> Cases:
        table, x = self._read(Path(path), labelled=False)
        ids: dict[str, Any] = {"row": table.row_in_file}
        if self.id_column is not None:
            ids[self.id_column] = table.column(self.id_column)
        ids[self.smiles_column] = table.column(self.smiles_column)
        return Cases(x, pd.DataFrame(ids), str(path))

    def describe(self) -> dict[str, Any]:
        settings = self.featuriser.settings()
        return {
            "kind": "molecules",
            "smiles_column": self.smiles_column,
            "fingerprint": settings,
            "classes": {INACTIVE: "inactive", ACTIVE: "active"},
            "encoding": (
                f"RDKit Morgan fingerprint of the SMILES: rdFingerprintGenerator.GetMorganGenerator(radius="
                f"{self.featuriser.radius}, fpSize={self.featuriser.n_bits}).GetFingerprintAsNumPy(mol) for "
                "mol = Chem.MolFromSmiles(smiles), as float32 0/1, shape (n_bits,)"
            ),
        }

    def _read(self, file: Path, labelled: bool) -> tuple[Table, Tensor]:
        if not file.is_file():
            raise DataError(f"{file}: no such CSV file")
        table = read_table(
            TableSpec(path=str(file.resolve()), label_column=[], missing_values=[""]), file.parent
        )
        for column in (self.smiles_column, None if labelled else self.id_column):
            if column is not None and column not in table.cells:
                raise DataError(
                    f"{file}: no column {column!r}{did_you_mean(column, list(table.cells))}; the file has "
                    f"{list(table.cells)}"
                )
        smiles = table.column(self.smiles_column)
        fingerprints = self.featuriser(smiles.tolist())
        invalid = np.flatnonzero(~fingerprints.valid)
        if invalid.size:
            raise DataError(invalid_smiles_message(str(file), table, smiles, invalid))
        return table, torch.from_numpy(fingerprints.bits.astype(np.float32))

    def _label(self, table: Table, file: Path) -> str:
        if self.label_column is not None:
            if self.label_column not in table.cells:
                raise DataError(
                    f"{file}: no label column {self.label_column!r}"
                    f"{did_you_mean(self.label_column, list(table.cells))}; the file has {list(table.cells)}"
                )
            return self.label_column
        others = [c for c in table.cells if c not in (self.smiles_column, self.id_column)]
        if len(others) != 1:
            raise DataError(
                f"{file}: say which column holds the support molecules' 0/1 labels with --label_column; the "
                f"file has the columns {list(table.cells)}"
            )
        return others[0]
