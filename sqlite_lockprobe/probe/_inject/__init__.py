"""The directory `lockprobe trace` puts first on the traced program's PYTHONPATH."""
