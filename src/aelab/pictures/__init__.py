"""Pictures at the lowest floor, for models, training and reports alike: image grids and PNG/GIF files (images), the
loss curves and bar charts (charts)."""
