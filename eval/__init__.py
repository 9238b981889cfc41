"""Evaluation: does adding synthetic images raise AUC on held-out real data, against honest
controls? Reads the real manifest and the run's Parquet shards; never imports the generator.
"""
