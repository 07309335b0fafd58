"""The service: the pipeline (the composition root), its jobs, status, the control socket."""
