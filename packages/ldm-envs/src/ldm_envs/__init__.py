"""ldm-envs."""
