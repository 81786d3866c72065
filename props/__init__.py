"""Packaged property YAMLs: ``props/<Model>.yaml`` holds each model's defaults."""
