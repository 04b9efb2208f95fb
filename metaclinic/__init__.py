"""metaclinic: meta-learning (few-shot learning) on medical data, on PyTorch Lightning and learn2learn."""

__version__ = "0.1.0"
