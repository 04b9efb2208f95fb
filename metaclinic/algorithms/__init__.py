"""Meta-learning algorithms: one LightningModule each, on the shared :class:`EpisodicModule` base."""

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.algorithms.maml import MAML

__all__ = ["MAML", "EpisodicModule"]
