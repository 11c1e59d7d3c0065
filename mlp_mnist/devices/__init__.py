"""Device code: `pmap` data parallelism and trial spreading, ahead-of-time compilation with its CPU
options, and the multi-process (multi-host) set-up."""
