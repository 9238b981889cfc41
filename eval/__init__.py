"""Evaluation: arms, metrics (classifier AUC, FID) and the report.

Reads Parquet shards and real manifests only; never imports the generator.
"""
