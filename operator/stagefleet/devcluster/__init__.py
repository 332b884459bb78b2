"""Local dev cluster: an API-server emulator plus a local kubelet running pods as host processes.

A development and test tool, not a production Kubernetes.
"""
