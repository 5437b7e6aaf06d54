"""Model-server runtime: the child process that hosts models, and the worker-side client."""
