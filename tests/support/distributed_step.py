"""Run by tests/training/test_distributed.py, alone or under torchrun: for each MODEL (a name, or NAME,KEY=VALUE,... with model
settings, and steps=N), one training step (or N) on the first global batches of DATA (each rank its share); rank 0
saves the gradients left by the last step and the weights (and buffers) after it to OUT/MODEL.safetensors."""

import sys

import torch
from safetensors.torch import save_file

from aelab import devices
from aelab.experiments.pipeline import build_for
from aelab.runs.settings import resolve
from aelab.training import distributed
from aelab.training.train import Trainer

data, out, *names = sys.argv[1:]
torch.set_num_threads(1)
for spec in names:
    name, *settings = spec.split(",")
    settings = dict(s.split("=") for s in settings)
    steps = int(settings.pop("steps", 1))
    config = resolve(name, None, {"data.path": data, "train.batch_size": 64, "train.device": "cpu", **settings})
    train_set, test_set = config.data.load()
    torch.manual_seed(0)
    trainer = Trainer(build_for(config, train_set), train_set, test_set, config.train)
    for _, index in zip(range(steps), trainer.train_set.index_batches(64, trainer.shuffle)):
        trainer.train_batch(index)
    if devices.is_main():
        model = trainer.model
        save_file({**{f"grad.{k}": p.grad for k, p in model.named_parameters() if p.grad is not None},
                   **{f"weight.{k}": v.contiguous() for k, v in model.state_dict().items()}},
                  f"{out}/{spec}.safetensors")
distributed.finish()
