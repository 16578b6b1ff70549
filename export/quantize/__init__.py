"""Quantization: the precision recipes registry and what the int8 recipe is made of."""
