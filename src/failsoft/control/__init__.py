"""The control plane: tenants and their quotas, chaos faults, and the artifact
registry's bytes (content-addressed copies in several locations; references
such as ``iris@v3``)."""
