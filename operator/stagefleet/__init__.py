"""stagefleet: build container images by running independent Dockerfile stages in parallel worker pods."""

__version__ = "0.1.0"
