"""Downstream classifiers (torchvision CNNs) trained on real and real+synthetic mixes.

Filled by the evaluation stage; `eval/` reads shards and manifests and trains these.
"""
