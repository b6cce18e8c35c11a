"""Training: the one Trainer every model trains with (train), and joining torchrun's process group for
data-parallel training (distributed)."""
