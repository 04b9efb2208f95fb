"""Sources of classes, seeded episode sampling and the episodic DataModules."""

from metaclinic.data.datamodule import EpisodicDataModule
from metaclinic.data.episodes import EpisodeDataset, MetaBatchSampler
from metaclinic.data.medmnist_datamodule import MedMNISTEpisodes
from metaclinic.data.pool import ClassInfo, ClassPool
from metaclinic.data.task import Task, TaskBatch

__all__ = [
    "ClassInfo",
    "ClassPool",
    "EpisodeDataset",
    "EpisodicDataModule",
    "MedMNISTEpisodes",
    "MetaBatchSampler",
    "Task",
    "TaskBatch",
]
