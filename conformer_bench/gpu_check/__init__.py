"""``make gpu-check``: every CUDA path once on a real GPU, with PASS/FAIL checks and a summary table."""
