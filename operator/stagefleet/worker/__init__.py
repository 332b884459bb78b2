"""`stagefleet-worker`: build ONE plan group with buildah, push it by digest, report a JSON result.

The decisions (argument parsing, buildah argv, output parsing, error classification, result JSON) are
pure functions in small modules; `main.py` and `fetch.py` hold the subprocess and file I/O.
"""
