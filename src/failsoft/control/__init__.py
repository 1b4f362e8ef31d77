"""The control plane: tenants and their quotas, chaos faults, the artifact
registry's bytes (content-addressed copies in several locations; references
such as ``iris@v3``), and the rollout analysis that judges a candidate
version against the stable one."""
