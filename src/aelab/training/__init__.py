"""Training: the one Trainer every model trains with (train), a run from its folder's birth to its report
(pipeline), several SAEs fed from one pass over the data (sweep), and data-parallel training under torchrun
(distributed)."""
