"""Models and data modules of a federation, built by the same CLI as ``fit`` and with one feature encoding."""

from __future__ import annotations

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.cli import build_cli, example_shape
from metaclinic.data.datamodule import EpisodicDataModule
from metaclinic.data.preprocess import TablePreprocessor
from metaclinic.data.table_datamodule import TableEpisodes
from metaclinic.federated.config import FederationError


def build_model_and_data(
    args: list[str], preprocessor: TablePreprocessor | None = None, seeded: bool = False
) -> tuple[EpisodicModule, EpisodicDataModule]:
    """The model and data module of ``args`` (fit's command line), encoding tables with ``preprocessor``.

    With a ``preprocessor`` (the federation's, :mod:`metaclinic.federated.statistics`) the backbone is sized
    for its features and the data module uses it instead of fitting its own: every site, the server and
    the meta-test encode alike. ``seeded``: the model's initial weights come from the config's
    ``seed_everything`` (the server's global model, so that it starts where the central run starts).
    """
    shape_of = example_shape if preprocessor is None else (lambda data: (preprocessor.width,))
    seed = [] if seeded else ["--seed_everything=false"]
    cli = build_cli([*args, *seed], save_config=False, with_trainer=False, input_shape_of=shape_of)
    model, data = cli.model, cli.datamodule
    if not model.meta_trained:
        raise FederationError(
            f"{type(model).__name__} has nothing to meta-train, so there is nothing to federate; federate a "
            "meta-learner (MAML, ProtoNet, Reptile, ...) and find the baselines beside it in the report"
        )
    if preprocessor is not None:
        if not isinstance(data, TableEpisodes):
            raise FederationError(f"feature statistics are for tables, but the data is {type(data).__name__}")
        data.preprocessor = preprocessor  # before anything is read: _load keeps it instead of fitting one
    return model, data
