"""Data in: Fashion-MNIST, image folders, arrays and activation vectors, loaded and split (load); the in-memory
and memory-mapped sets the trainer batches from (datasets); the bounded readers of untrusted files (readers); and a
trained layer's activations written out for an SAE (activations)."""

from aelab.data.load import DataConfig, load_dataset

__all__ = ["DataConfig", "load_dataset"]
