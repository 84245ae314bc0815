"""How a run that did not finish ended, for the command line's exit status (kept free of torch and Ray, so that
`raylpclip` itself imports fast)."""

EXIT_STOPPED = 143  # 128 + SIGTERM: what a process ended by SIGTERM reports; Kubernetes restarts such a pod


class RunStopped(RuntimeError):
    """A run that stopped on notice (SIGTERM, preemption) after checkpointing; the same command resumes it."""
