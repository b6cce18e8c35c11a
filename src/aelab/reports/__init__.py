"""What a person looks at: the run's grids, loss curves and report.md (report), report.html with its in-browser
decoder (page, page.html, page.js), image tiling and files (images), and TensorBoard/MLflow (trackers)."""
