"""What a run is made of besides the model and the data: its directory and config record, checkpoints,
callbacks, the W&B logger, and the Lightning internals metaclinic relies on (each tested)."""
