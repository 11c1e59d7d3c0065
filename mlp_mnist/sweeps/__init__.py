"""Hyperparameter sweeps: sweep files, trials of one program trained at once (`vmap` over a trial
axis, spread over the devices), the runner with its trial folders, and the results."""
