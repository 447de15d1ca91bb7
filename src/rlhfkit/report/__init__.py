"""Reports of runs: plots (PNG files, base64 for embedding in HTML) and the tables beside them."""
