"""Files on disk at the lowest floor: safe writes and locks (files) and the one hardened safetensors reader and
writer (tensorfile). The run folder, which needs the models, is aelab.runs."""
