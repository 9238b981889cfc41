"""Tools outside the render path, for tests, benchmarks and the offline quickstart: the small
SDXL-architecture model builder and its phantom pretraining, the full-size SDXL architecture
with random weights, and the generation bench. Nothing that renders, writes or evaluates a
run imports them (tests/test_architecture.py checks)."""
