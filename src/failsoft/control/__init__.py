"""The control plane: tenants with their API keys and quotas."""
