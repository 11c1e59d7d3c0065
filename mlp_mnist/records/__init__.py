"""What a run leaves in its workdir: the workdir itself (resume, restart, process 0 as the only
writer), the files written whole, checkpoints, TensorBoard events, provenance, plots, the console."""
