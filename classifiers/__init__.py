"""Downstream classifiers: torchvision CNNs on one-channel chest images, and their training loop.

`eval/` trains these on real and real+synthetic mixes; nothing here knows about arms or the
generator.
"""
