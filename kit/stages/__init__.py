"""Stages: plain functions (params, run_dir) that the notebooks call."""
