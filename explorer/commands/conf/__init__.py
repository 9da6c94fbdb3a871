"""Hydra primary configs of the predict and calibrate commands (pkg://explorer.commands.conf)."""
