"""Sources of classes, seeded episode sampling and the episodic DataModules."""

from metaclinic.data.datamodule import EpisodicDataModule
from metaclinic.data.episodes import EpisodeDataset, MetaBatchSampler
from metaclinic.data.image_folder import ImageFolderEpisodes
from metaclinic.data.medmnist_datamodule import MedMNISTEpisodes
from metaclinic.data.molecules import MoleculeEpisodes as MoleculeEpisodes
from metaclinic.data.pool import ClassInfo, ClassPool
from metaclinic.data.single_cell_datamodule import CellEpisodes as CellEpisodes
from metaclinic.data.table import TableSpec
from metaclinic.data.table_datamodule import TableEpisodes
from metaclinic.data.task import Task, TaskBatch
from metaclinic.data.timeseries_datamodule import TimeSeriesEpisodes as TimeSeriesEpisodes

__all__ = [
    "ClassInfo",
    "ClassPool",
    "EpisodeDataset",
    "EpisodicDataModule",
    "ImageFolderEpisodes",
    "MedMNISTEpisodes",
    "MetaBatchSampler",
    "TableEpisodes",
    "TableSpec",
    "Task",
    "TaskBatch",
]
